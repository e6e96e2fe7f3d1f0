//! An open part: the events of one tenant's window read from one partition so far, held as a
//! sequence of independently compressed frames plus a raw tail (DESIGN §2 "Memory").
//!
//! Every byte of a part is a function of its records: frames are cut when the tail reaches the
//! frame size, never for memory, and spilling only moves finished frames to disk. So a part
//! rebuilt from the log is byte-for-byte the part first built.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::codec::compress;
use common::event::TenantId;
use common::key::Codec;

/// Settings every part follows.
#[derive(Debug, Clone)]
pub struct PartSettings {
    /// The raw tail is compressed into a frame once it holds this many bytes.
    pub frame_bytes: usize,
    /// zstd level.
    pub zstd_level: i32,
}

/// Where a part's finished frames live.
#[derive(Debug)]
enum Frames {
    Memory(Vec<u8>),
    /// Spilled: `bytes` of frames in `path`, which the part owns and removes.
    Disk {
        path: PathBuf,
        file: File,
        bytes: u64,
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
    ids: HashSet<u128>,
    tail: Vec<u8>,
    frames: Frames,
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

/// Bytes of memory one remembered event id costs, with the hash set's own overhead.
const ID_MEMORY_BYTES: usize = 24;

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
            ids: HashSet::new(),
            tail: Vec::new(),
            frames: Frames::Memory(Vec::new()),
        }
    }

    /// Whether a line of `line_bytes` (newline excluded) still fits under `max_bytes`. An empty
    /// part takes any line, so an event larger than the limit still gets an object.
    pub fn fits(&self, line_bytes: usize, max_bytes: u64) -> bool {
        // The line takes its newline too.
        self.event_count == 0 || self.raw_bytes + (line_bytes as u64) < max_bytes
    }

    /// Whether `event_id` is already in this part.
    pub fn contains(&self, event_id: &str) -> bool {
        self.ids.contains(&id_hash(event_id))
    }

    /// Appends one event line unless its id is already here.
    pub fn add(
        &mut self,
        offset: i64,
        event_id: &str,
        line: &[u8],
        settings: &PartSettings,
    ) -> std::io::Result<Added> {
        if !self.ids.insert(id_hash(event_id)) {
            return Ok(Added::Duplicate);
        }
        self.tail.extend_from_slice(line);
        self.tail.push(b'\n');
        self.event_count += 1;
        self.raw_bytes += line.len() as u64 + 1;
        self.last_offset = offset;
        if self.tail.len() >= settings.frame_bytes {
            self.seal_frame(settings)?;
        }
        Ok(Added::Appended)
    }

    pub fn event_count(&self) -> u64 {
        self.event_count
    }

    /// Bytes this part holds in memory: frames not spilled, the raw tail, the event ids.
    pub fn memory_bytes(&self) -> usize {
        let frames = match &self.frames {
            Frames::Memory(frames) => frames.capacity(),
            Frames::Disk { .. } => 0,
        };
        frames + self.tail.capacity() + self.ids.capacity() * ID_MEMORY_BYTES
    }

    /// Bytes of finished frames still in memory, which spilling would free.
    pub fn spillable_bytes(&self) -> usize {
        match &self.frames {
            Frames::Memory(frames) => frames.len(),
            Frames::Disk { .. } => 0,
        }
    }

    /// Bytes of frames on disk.
    pub fn spilled_bytes(&self) -> u64 {
        match &self.frames {
            Frames::Memory(_) => 0,
            Frames::Disk { bytes, .. } => *bytes,
        }
    }

    /// Moves the finished frames to a new file at `path`; later frames are appended to it.
    pub fn spill(&mut self, path: &Path) -> std::io::Result<u64> {
        let Frames::Memory(frames) = &mut self.frames else {
            return Ok(0);
        };
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(path)?;
        file.write_all(frames)?;
        let bytes = frames.len() as u64;
        self.frames = Frames::Disk {
            path: path.to_owned(),
            file,
            bytes,
        };
        Ok(bytes)
    }

    /// Compresses the tail into a frame and returns the whole body.
    pub fn finish(mut self, settings: &PartSettings) -> std::io::Result<FinishedBody> {
        self.seal_frame(settings)?;
        let body = match std::mem::replace(&mut self.frames, Frames::Memory(Vec::new())) {
            Frames::Memory(frames) => frames,
            Frames::Disk {
                path,
                mut file,
                bytes,
            } => {
                let mut body = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
                drop(file.flush());
                let mut reader = File::open(&path)?;
                reader.read_to_end(&mut body)?;
                std::fs::remove_file(&path)?;
                body
            }
        };
        Ok(FinishedBody {
            body,
            event_count: self.event_count,
            uncompressed_bytes: self.raw_bytes,
        })
    }

    fn seal_frame(&mut self, settings: &PartSettings) -> std::io::Result<()> {
        if self.tail.is_empty() {
            return Ok(());
        }
        let frame = compress(self.codec, &self.tail, settings.zstd_level)?;
        // A fresh, exactly sized tail: a part that went quiet keeps no large buffer.
        self.tail = Vec::new();
        match &mut self.frames {
            Frames::Memory(frames) => frames.extend_from_slice(&frame),
            Frames::Disk { file, bytes, .. } => {
                file.write_all(&frame)?;
                *bytes += frame.len() as u64;
            }
        }
        Ok(())
    }
}

impl Drop for OpenPart {
    /// A part dropped unfinished (a revoked partition, a shutdown) leaves no file behind.
    fn drop(&mut self) {
        if let Frames::Disk { path, .. } = &self.frames {
            drop(std::fs::remove_file(path));
        }
    }
}

/// A 128-bit hash of an event id: two fixed-key SipHash-1-3 passes, so the same ids give the
/// same answer in every run (a part must dedup identically when rebuilt) and a false duplicate
/// needs a 128-bit collision.
fn id_hash(event_id: &str) -> u128 {
    let half = |salt: u8| {
        let mut hasher = std::hash::DefaultHasher::new();
        salt.hash(&mut hasher);
        event_id.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
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
            part.add(10, "e1", &line(1), &s).expect("add"),
            Added::Appended
        );
        assert_eq!(
            part.add(11, "e1", &line(1), &s).expect("add"),
            Added::Duplicate
        );
        assert_eq!(
            part.add(12, "e2", &line(2), &s).expect("add"),
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
    fn frames_concatenate_to_the_ndjson_in_offset_order_for_every_codec() {
        for codec in [Codec::Zstd, Codec::Gzip, Codec::None] {
            let s = settings(200);
            let mut part = part(codec);
            let mut expected = Vec::new();
            for n in 0..50 {
                part.add(10 + i64::from(n), &format!("e{n}"), &line(n), &s)
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
                part.add(i64::from(n), &format!("e{n}"), &line(n), &s)
                    .expect("add");
            }
            part.finish(&s).expect("finish")
        };
        assert_eq!(build(None), build(Some(20)));
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[test]
    fn an_unfinished_spilled_part_removes_its_file_when_dropped() {
        let path = std::env::temp_dir().join(format!("part-drop-{}", std::process::id()));
        let s = settings(10);
        let mut part = part(Codec::Zstd);
        part.add(1, "e1", &line(1), &s).expect("add");
        part.spill(&path).expect("spill");
        assert!(path.exists());
        drop(part);
        assert!(!path.exists());
    }

    #[test]
    fn the_size_limit_counts_lines_with_their_newlines_and_an_empty_part_takes_anything() {
        let s = settings(1 << 16);
        let mut part = part(Codec::None);
        assert!(
            part.fits(1_000, 10),
            "an empty part takes even an oversized event"
        );
        part.add(1, "a", b"12345", &s).expect("add");
        assert!(part.fits(3, 10), "6 + 4 bytes fit in 10");
        assert!(!part.fits(4, 10), "6 + 5 bytes do not");
    }
}
