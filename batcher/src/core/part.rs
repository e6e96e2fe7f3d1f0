//! An open part: the events of one tenant's window read from one partition so far, held as a
//! sequence of independently compressed frames plus a raw tail (DESIGN §2 "Memory").
//!
//! Every byte of a part is a function of its records: frames are cut when the raw tail reaches
//! the frame size, never for memory. Spilling moves the finished frames to a file and from then
//! on parks the raw tail in a second file too (a few KiB stay buffered in memory); frames are
//! still cut at the same raw offsets. So a part rebuilt from the log, spilled or not, is
//! byte-for-byte the part first built. Files are opened per write, so ten thousand spilled
//! parts hold no file descriptors.

use std::fs::OpenOptions;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use common::codec::compress;
use common::event::TenantId;
use common::key::Codec;

use crate::core::ids::EventIds;

/// Settings every part follows.
#[derive(Debug, Clone)]
pub struct PartSettings {
    /// The raw tail is compressed into a frame once it holds this many bytes.
    pub frame_bytes: usize,
    /// zstd level.
    pub zstd_level: i32,
}

/// A spilled part's raw tail is written to its file in pieces of at least this size.
const SPILLED_TAIL_BUFFER: usize = 4096;

/// Where a part's finished frames and raw tail live.
#[derive(Debug)]
enum Storage {
    Memory {
        frames: Vec<u8>,
    },
    /// Spilled: frames in `frames_path`, the raw tail's start in `tail_path`.
    Disk {
        frames_path: PathBuf,
        frames_bytes: u64,
        tail_path: PathBuf,
        tail_bytes: usize,
    },
}

/// The events of `(tenant, window)` from one partition, starting at `first_offset`.
#[derive(Debug)]
pub struct OpenPart {
    pub tenant: TenantId,
    pub window_start_ms: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub codec: Codec,
    /// A part of a window that had already closed when its first record arrived.
    pub late: bool,
    event_count: u64,
    raw_bytes: u64,
    ids: EventIds,
    /// The raw tail held in memory: all of it, or for a spilled part what follows `tail_path`.
    tail: Vec<u8>,
    storage: Storage,
}

/// What became of a record offered to a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Appended,
    /// Its event id was already in this part: dropped (DESIGN §2).
    Duplicate,
}

/// A finished part's content, before it becomes an upload job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedBody {
    pub body: Vec<u8>,
    pub event_count: u64,
    pub uncompressed_bytes: u64,
}

/// The most bytes `raw` bytes can take once compressed into a frame by any codec: incompressible
/// input grows a little (zstd and gzip store it in blocks with small headers).
fn compressed_bound(raw: u64) -> u64 {
    raw + raw / 128 + 1024
}

impl OpenPart {
    pub fn new(
        tenant: TenantId,
        window_start_ms: i64,
        first_offset: i64,
        codec: Codec,
        late: bool,
    ) -> Self {
        Self {
            tenant,
            window_start_ms,
            first_offset,
            last_offset: first_offset,
            codec,
            late,
            event_count: 0,
            raw_bytes: 0,
            ids: EventIds::default(),
            tail: Vec::new(),
            storage: Storage::Memory { frames: Vec::new() },
        }
    }

    /// Whether a line of `line_bytes` (newline excluded) still fits: the part's uncompressed
    /// bytes stay under `max_raw_bytes`, and its body, bounded before the raw tail is
    /// compressed, within `max_body_bytes`. An empty part takes any line, so an event larger
    /// than a limit still gets an object.
    pub fn fits(&self, line_bytes: usize, max_raw_bytes: u64, max_body_bytes: u64) -> bool {
        // The line takes its newline too.
        let line = line_bytes as u64 + 1;
        let tail = self.raw_tail_bytes() as u64 + line;
        self.event_count == 0
            || (self.raw_bytes + line <= max_raw_bytes
                && self.frames_bytes() + compressed_bound(tail) <= max_body_bytes)
    }

    /// Bytes of the finished frames.
    fn frames_bytes(&self) -> u64 {
        match &self.storage {
            Storage::Memory { frames } => frames.len() as u64,
            Storage::Disk { frames_bytes, .. } => *frames_bytes,
        }
    }

    /// Whether the event whose id hashes to `id` (see [`id_hash`]) is already in this part.
    pub fn contains(&self, id: u128) -> std::io::Result<bool> {
        self.ids.contains(id)
    }

    /// Appends one event line unless its id (hashed with [`id_hash`]) is already here.
    pub fn add(
        &mut self,
        offset: i64,
        id: u128,
        line: &[u8],
        settings: &PartSettings,
    ) -> std::io::Result<Added> {
        if !self.ids.insert(id)? {
            return Ok(Added::Duplicate);
        }
        self.reserve_tail(line.len() + 1, settings.frame_bytes);
        self.tail.extend_from_slice(line);
        self.tail.push(b'\n');
        self.event_count += 1;
        self.raw_bytes += line.len() as u64 + 1;
        self.last_offset = offset;
        if self.raw_tail_bytes() >= settings.frame_bytes {
            self.seal_frame(settings)?;
        } else if matches!(self.storage, Storage::Disk { .. })
            && self.tail.len() >= SPILLED_TAIL_BUFFER
        {
            self.park_tail()?;
        }
        Ok(Added::Appended)
    }

    pub fn event_count(&self) -> u64 {
        self.event_count
    }

    /// Bytes this part holds in memory: frames not spilled, the raw tail, the event ids.
    pub fn memory_bytes(&self) -> usize {
        let frames = match &self.storage {
            Storage::Memory { frames } => frames.capacity(),
            Storage::Disk { .. } => 0,
        };
        frames + self.tail.capacity() + self.ids.memory_bytes()
    }

    /// Bytes that spilling would free.
    pub fn spillable_bytes(&self) -> usize {
        let data = match &self.storage {
            Storage::Memory { frames } => frames.len() + self.tail.capacity(),
            Storage::Disk { .. } => self.tail.capacity(),
        };
        data + self.ids.spillable_bytes()
    }

    /// Bytes on disk.
    pub fn spilled_bytes(&self) -> u64 {
        match &self.storage {
            Storage::Memory { .. } => 0,
            Storage::Disk {
                frames_bytes,
                tail_bytes,
                ..
            } => frames_bytes + *tail_bytes as u64,
        }
    }

    /// Moves the part's frames, raw tail and event ids to files at `path` (and `path` + `.tail`,
    /// `path` + `.ids`); later frames and tail bytes go there too, and later ids at the next
    /// spill. Returns the bytes of frames and tail written.
    pub fn spill(&mut self, path: &Path) -> std::io::Result<u64> {
        let mut written = 0;
        if let Storage::Memory { frames } = &self.storage {
            let mut file = OpenOptions::new().create_new(true).write(true).open(path)?;
            file.write_all(frames)?;
            written += frames.len() as u64;
            let mut tail_path = path.as_os_str().to_owned();
            tail_path.push(".tail");
            self.storage = Storage::Disk {
                frames_path: path.to_owned(),
                frames_bytes: frames.len() as u64,
                tail_path: PathBuf::from(tail_path),
                tail_bytes: 0,
            };
        }
        written += self.tail.len() as u64;
        self.park_tail()?;
        if let Storage::Disk { frames_path, .. } = &self.storage {
            let mut ids_path = frames_path.as_os_str().to_owned();
            ids_path.push(".ids");
            self.ids.spill(Path::new(&ids_path))?;
        }
        Ok(written)
    }

    /// Compresses the tail into a frame and returns the whole body.
    pub fn finish(mut self, settings: &PartSettings) -> std::io::Result<FinishedBody> {
        self.seal_frame(settings)?;
        let body =
            match std::mem::replace(&mut self.storage, Storage::Memory { frames: Vec::new() }) {
                Storage::Memory { frames } => frames,
                Storage::Disk {
                    frames_path,
                    tail_path,
                    ..
                } => {
                    let body = std::fs::read(&frames_path)?;
                    std::fs::remove_file(&frames_path)?;
                    remove_if_present(&tail_path)?;
                    self.ids.remove_file()?;
                    body
                }
            };
        Ok(FinishedBody {
            body,
            event_count: self.event_count,
            uncompressed_bytes: self.raw_bytes,
        })
    }

    fn raw_tail_bytes(&self) -> usize {
        let parked = match &self.storage {
            Storage::Memory { .. } => 0,
            Storage::Disk { tail_bytes, .. } => *tail_bytes,
        };
        parked + self.tail.len()
    }

    /// Appends the in-memory tail of a spilled part to its tail file.
    fn park_tail(&mut self) -> std::io::Result<()> {
        let Storage::Disk {
            tail_path,
            tail_bytes,
            ..
        } = &mut self.storage
        else {
            return Ok(());
        };
        if !self.tail.is_empty() {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&*tail_path)?;
            file.write_all(&self.tail)?;
            *tail_bytes += self.tail.len();
        }
        self.tail = Vec::new();
        Ok(())
    }

    /// Makes room in the raw tail for `bytes` more. The tail grows by doubling as a `Vec`
    /// does, but never past the frame size plus what is being added: a tail is compressed
    /// once it reaches the frame size, so a doubled buffer would be half unused.
    fn reserve_tail(&mut self, bytes: usize, frame_bytes: usize) {
        let needed = self.tail.len() + bytes;
        if needed > self.tail.capacity() {
            let grown = (2 * self.tail.capacity()).min(frame_bytes + bytes);
            self.tail.reserve_exact(grown.max(needed) - self.tail.len());
        }
    }

    fn seal_frame(&mut self, settings: &PartSettings) -> std::io::Result<()> {
        if self.raw_tail_bytes() == 0 {
            return Ok(());
        }
        match &mut self.storage {
            Storage::Memory { frames } => {
                frames.extend_from_slice(&compress(self.codec, &self.tail, settings.zstd_level)?);
                // A part that filled a frame is busy enough to fill the next one: it keeps its
                // buffer (counted in `memory_bytes`, freed by a spill) rather than growing a
                // fresh one, whose every doubling copies the bytes so far into new memory.
                self.tail.clear();
            }
            Storage::Disk {
                frames_path,
                frames_bytes,
                tail_path,
                tail_bytes,
            } => {
                let mut raw = if *tail_bytes > 0 {
                    std::fs::read(&*tail_path)?
                } else {
                    Vec::new()
                };
                raw.extend_from_slice(&std::mem::take(&mut self.tail));
                let frame = compress(self.codec, &raw, settings.zstd_level)?;
                OpenOptions::new()
                    .append(true)
                    .open(&*frames_path)?
                    .write_all(&frame)?;
                *frames_bytes += frame.len() as u64;
                remove_if_present(tail_path)?;
                *tail_bytes = 0;
            }
        }
        Ok(())
    }
}

impl Drop for OpenPart {
    /// A part dropped unfinished (a revoked partition, a shutdown) leaves no file behind.
    fn drop(&mut self) {
        if let Storage::Disk {
            frames_path,
            tail_path,
            ..
        } = &self.storage
        {
            drop(remove_if_present(frames_path));
            drop(remove_if_present(tail_path));
        }
    }
}

/// Removes the file at `path`; one already gone is fine.
pub(crate) fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// A 128-bit hash of an event id: fixed-key SipHash-1-3 and FNV-1a, so the same ids give the
/// same answer in every run (a part must dedup identically when rebuilt) and a false duplicate
/// needs both to collide at once.
pub fn id_hash(event_id: &str) -> u128 {
    let mut sip = std::hash::DefaultHasher::new();
    event_id.hash(&mut sip);
    let fnv = event_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    (u128::from(sip.finish()) << 64) | u128::from(fnv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::codec::decompress;

    fn settings(frame_bytes: usize) -> PartSettings {
        PartSettings {
            frame_bytes,
            zstd_level: 3,
        }
    }

    fn part(codec: Codec) -> OpenPart {
        OpenPart::new("acme".parse().expect("tenant"), 0, 10, codec, false)
    }

    fn line(n: u32) -> Vec<u8> {
        format!("{{\"id\":\"e{n}\",\"tenant_id\":\"acme\",\"type\":\"device.lock\"}}").into_bytes()
    }

    #[test]
    fn a_repeated_event_id_is_dropped_within_a_part() {
        let mut part = part(Codec::None);
        let s = settings(1 << 16);
        assert_eq!(
            part.add(10, id_hash("e1"), &line(1), &s).expect("add"),
            Added::Appended
        );
        assert_eq!(
            part.add(11, id_hash("e1"), &line(1), &s).expect("add"),
            Added::Duplicate
        );
        assert_eq!(
            part.add(12, id_hash("e2"), &line(2), &s).expect("add"),
            Added::Appended
        );
        let finished = part.finish(&s).expect("finish");
        assert_eq!(finished.event_count, 2);
        assert_eq!(
            finished.body,
            [line(1), line(2)]
                .join(&b'\n')
                .into_iter()
                .chain([b'\n'])
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_busy_part_keeps_one_tail_buffer_no_larger_than_a_frame_and_a_line() {
        let s = settings(1100);
        let mut part = part(Codec::Zstd);
        let (mut largest, mut cuts) = (0, 0);
        for n in 0..200 {
            let frames_before = part.frames_bytes();
            part.add(i64::from(n), id_hash(&format!("e{n}")), &line(n), &s)
                .expect("add");
            largest = largest.max(part.tail.capacity());
            if part.frames_bytes() > frames_before {
                cuts += 1;
                assert!(part.tail.is_empty() && part.tail.capacity() > 0, "kept");
            }
        }
        assert!(cuts > 5, "{cuts} frames cut");
        let longest_line = line(199).len() + 1;
        assert!(
            largest <= 1100 + longest_line,
            "the tail grew to {largest} bytes"
        );
    }

    #[test]
    fn frames_concatenate_to_the_ndjson_in_offset_order_for_every_codec() {
        for codec in [Codec::Zstd, Codec::Gzip, Codec::None] {
            let s = settings(200);
            let mut part = part(codec);
            let mut expected = Vec::new();
            for n in 0..50 {
                part.add(10 + i64::from(n), id_hash(&format!("e{n}")), &line(n), &s)
                    .expect("add");
                expected.extend(line(n));
                expected.push(b'\n');
            }
            let finished = part.finish(&s).expect("finish");
            assert_eq!(finished.uncompressed_bytes, expected.len() as u64);
            let raw =
                decompress(codec, &finished.body, finished.uncompressed_bytes).expect("decompress");
            assert_eq!(raw, expected, "{codec}");
        }
    }

    #[test]
    fn a_spilled_part_finishes_to_the_same_bytes_and_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("part-spill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("p");
        let s = settings(300);
        let build = |spill_at: Option<u32>| {
            let mut part = part(Codec::Zstd);
            for n in 0..40 {
                if Some(n) == spill_at {
                    assert!(part.spillable_bytes() > 0);
                    part.spill(&path).expect("spill");
                    assert_eq!(part.spillable_bytes(), 0);
                    assert!(part.spilled_bytes() > 0);
                }
                part.add(i64::from(n), id_hash(&format!("e{n}")), &line(n), &s)
                    .expect("add");
            }
            // Ids added before the spill are on disk, later ones in memory: both dedup.
            for repeated in ["e0", "e39"] {
                let added = part.add(50, id_hash(repeated), b"{}", &s).expect("add");
                assert_eq!(
                    added,
                    Added::Duplicate,
                    "{repeated} after a spill at {spill_at:?}"
                );
            }
            part.finish(&s).expect("finish")
        };
        assert_eq!(build(None), build(Some(20)));
        assert_eq!(build(None), build(Some(1)), "spilled with a short tail");
        assert!(!path.exists());
        assert!(!dir.join("p.tail").exists());
        assert!(!dir.join("p.ids").exists());
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[test]
    fn a_spilled_part_parks_its_raw_tail_on_disk_and_cuts_frames_at_the_same_places() {
        let dir = std::env::temp_dir().join(format!("part-park-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("p");
        // Frames of 20 KB; each line ~70 bytes, so the tail is parked every ~60 lines.
        let s = settings(20_000);
        let build = |spill: bool| {
            let mut part = part(Codec::Zstd);
            for n in 0..1_000 {
                if spill && n == 10 {
                    part.spill(&path).expect("spill");
                }
                part.add(i64::from(n), id_hash(&format!("e{n}")), &line(n), &s)
                    .expect("add");
                if spill && n > 10 {
                    assert!(
                        part.memory_bytes() < 8 * 1024 + 24 * 2048,
                        "the tail stays on disk"
                    );
                }
            }
            part.finish(&s).expect("finish")
        };
        assert_eq!(build(false), build(true));
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[test]
    fn an_unfinished_spilled_part_removes_its_file_when_dropped() {
        let path = std::env::temp_dir().join(format!("part-drop-{}", std::process::id()));
        let s = settings(10);
        let mut part = part(Codec::Zstd);
        part.add(1, id_hash("e1"), &line(1), &s).expect("add");
        part.spill(&path).expect("spill");
        assert!(path.exists());
        drop(part);
        assert!(!path.exists());
    }

    #[test]
    fn the_size_limit_counts_lines_with_their_newlines_and_an_empty_part_takes_anything() {
        let s = settings(1 << 16);
        let mut part = part(Codec::None);
        let no_body_limit = u64::MAX;
        assert!(
            part.fits(1_000, 10, no_body_limit),
            "an empty part takes even an oversized event"
        );
        part.add(1, id_hash("a"), b"12345", &s).expect("add");
        assert!(part.fits(3, 10, no_body_limit), "6 + 4 bytes fit in 10");
        assert!(!part.fits(4, 10, no_body_limit), "6 + 5 bytes do not");
    }

    #[test]
    fn a_body_never_outgrows_its_limit_whatever_the_codec_makes_of_the_lines() {
        // Random bytes in hex: zstd and gzip cannot shrink them much, `none` not at all.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let max_body = 200_000;
        for codec in [Codec::None, Codec::Gzip, Codec::Zstd] {
            let s = settings(16 * 1024);
            let mut parts = vec![part(codec)];
            for n in 0..2_000 {
                let line: String = (0..25).map(|_| format!("{:016x}", noise())).collect();
                let open = parts.last_mut().expect("a part");
                if !open.fits(line.len(), u64::MAX, max_body) {
                    parts.push(part(codec));
                }
                let open = parts.last_mut().expect("a part");
                open.add(n, id_hash(&n.to_string()), line.as_bytes(), &s)
                    .expect("add");
            }
            let bodies: Vec<_> = parts
                .into_iter()
                .map(|p| p.finish(&s).expect("finish").body.len() as u64)
                .collect();
            assert!(bodies.len() > 2, "{codec}: {bodies:?}");
            assert!(bodies.iter().all(|&b| b <= max_body), "{codec}: {bodies:?}");
            // Cut close to the limit, not far below it.
            assert!(bodies[0] > max_body * 3 / 4, "{codec}: {bodies:?}");
        }
    }
}
