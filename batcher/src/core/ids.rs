//! The event ids of one open part, for dedup (DESIGN §2). They stay in memory while the part
//! does. When the part is spilled its ids go to disk too, or with many small events they would
//! hold the memory spilling is meant to free (24 bytes an id against ~100 bytes an event): a
//! sorted file of them beside the part's frames, and in memory only a Bloom filter of them
//! (about 1.2 bytes an id). A lookup reads the file only when the filter says the id may be
//! there, which is for a duplicate or about one new id in a hundred; the answer is exact either
//! way, so a spilled part dedups exactly as one that never was.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::core::part::remove_if_present;

/// Bytes of memory one id held in memory costs, with the hash set's own overhead.
const MEMORY_BYTES_PER_ID: usize = 24;
/// Bytes of one id in the file.
const ID_BYTES: u64 = 16;
/// Filter bits per spilled id, and hash functions: about 1 % false positives.
const FILTER_BITS_PER_ID: u64 = 10;
const FILTER_HASHES: u64 = 7;

/// The ids of one part.
#[derive(Debug, Default)]
pub struct EventIds {
    /// Ids added since the last spill.
    /// Already hashes (`id_hash`): a fast hasher suffices, where SipHash was 5 % of the
    /// batcher's CPU in a burst.
    recent: HashSet<u128, foldhash::fast::RandomState>,
    spilled: Option<SpilledIds>,
}

/// Ids on disk: sorted, 16 bytes each, little-endian.
#[derive(Debug)]
struct SpilledIds {
    path: PathBuf,
    count: u64,
    filter: Filter,
}

impl EventIds {
    /// Whether `id` is among the ids.
    pub fn contains(&self, id: u128) -> std::io::Result<bool> {
        if self.recent.contains(&id) {
            return Ok(true);
        }
        match &self.spilled {
            Some(spilled) if spilled.filter.may_contain(id) => spilled.find(id),
            _ => Ok(false),
        }
    }

    /// Adds `id`; `false` when it was there already.
    pub fn insert(&mut self, id: u128) -> std::io::Result<bool> {
        if self.spilled.is_some() && self.contains(id)? {
            return Ok(false);
        }
        Ok(self.recent.insert(id))
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.recent.capacity() * MEMORY_BYTES_PER_ID
            + self.spilled.as_ref().map_or(0, |s| s.filter.memory_bytes())
    }

    /// Bytes that [`Self::spill`] would free.
    pub fn spillable_bytes(&self) -> usize {
        self.recent.len() * MEMORY_BYTES_PER_ID
    }

    /// Moves the ids held in memory to the file at `path`, merged with those already spilled
    /// there (every spill of a part uses the same path).
    pub fn spill(&mut self, path: &Path) -> std::io::Result<()> {
        if self.recent.is_empty() {
            return Ok(());
        }
        let mut recent: Vec<u128> = std::mem::take(&mut self.recent).into_iter().collect();
        recent.sort_unstable();
        let previous = self.spilled.take();
        let count = previous.as_ref().map_or(0, |p| p.count) + recent.len() as u64;
        let mut filter = Filter::for_ids(count);
        let mut merged_path = path.as_os_str().to_owned();
        merged_path.push(".new");
        let merged_path = PathBuf::from(merged_path);
        {
            let mut out = BufWriter::new(File::create(&merged_path)?);
            let mut older = match &previous {
                Some(previous) => Some(BufReader::new(File::open(&previous.path)?)),
                None => None,
            };
            let mut next_older = older.as_mut().map(read_id).transpose()?.flatten();
            let mut recent = recent.into_iter().peekable();
            loop {
                let id = match (next_older, recent.peek()) {
                    (Some(old), Some(&new)) if new < old => recent.next(),
                    (Some(old), _) => {
                        next_older = older.as_mut().map(read_id).transpose()?.flatten();
                        Some(old)
                    }
                    (None, _) => recent.next(),
                };
                let Some(id) = id else { break };
                filter.add(id);
                out.write_all(&id.to_le_bytes())?;
            }
            out.flush()?;
        }
        std::fs::rename(&merged_path, path)?;
        self.spilled = Some(SpilledIds {
            path: path.to_owned(),
            count,
            filter,
        });
        Ok(())
    }

    /// Removes the file of spilled ids, if any.
    pub fn remove_file(&mut self) -> std::io::Result<()> {
        match self.spilled.take() {
            Some(spilled) => remove_if_present(&spilled.path),
            None => Ok(()),
        }
    }
}

impl Drop for EventIds {
    fn drop(&mut self) {
        drop(self.remove_file());
    }
}

impl SpilledIds {
    /// Binary search of the sorted file, opened for this lookup only (thousands of spilled
    /// parts hold no file descriptors).
    fn find(&self, id: u128) -> std::io::Result<bool> {
        let mut file = File::open(&self.path)?;
        let (mut low, mut high) = (0, self.count);
        while low < high {
            let middle = low + (high - low) / 2;
            file.seek(SeekFrom::Start(middle * ID_BYTES))?;
            let mut bytes = [0; 16];
            file.read_exact(&mut bytes)?;
            match u128::from_le_bytes(bytes).cmp(&id) {
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
            }
        }
        Ok(false)
    }
}

/// The next id of a sorted id file, or `None` at its end.
fn read_id(reader: &mut BufReader<File>) -> std::io::Result<Option<u128>> {
    let mut bytes = [0; 16];
    match reader.read_exact(&mut bytes) {
        Ok(()) => Ok(Some(u128::from_le_bytes(bytes))),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(error) => Err(error),
    }
}

/// A Bloom filter over ids, which are already hashes: its probes come from the id's two halves
/// (double hashing), with no hashing of its own.
#[derive(Debug)]
struct Filter {
    bits: Vec<u64>,
}

impl Filter {
    fn for_ids(count: u64) -> Self {
        let words = (count * FILTER_BITS_PER_ID).div_ceil(64).max(1);
        Self {
            bits: vec![0; usize::try_from(words).unwrap_or(usize::MAX)],
        }
    }

    fn probes(&self, id: u128) -> impl Iterator<Item = (usize, u64)> {
        let bits = self.bits.len() as u64 * 64;
        let (first, step) = (id as u64, ((id >> 64) as u64) | 1);
        (0..FILTER_HASHES).map(move |n| {
            let bit = first.wrapping_add(n.wrapping_mul(step)) % bits;
            (usize::try_from(bit / 64).unwrap_or(0), 1 << (bit % 64))
        })
    }

    fn add(&mut self, id: u128) {
        for (word, mask) in self.probes(id).collect::<Vec<_>>() {
            self.bits[word] |= mask;
        }
    }

    fn may_contain(&self, id: u128) -> bool {
        self.probes(id)
            .all(|(word, mask)| self.bits[word] & mask != 0)
    }

    fn memory_bytes(&self) -> usize {
        self.bits.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::part::id_hash;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ids-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn ids_spilled_any_number_of_times_are_found_exactly_and_new_ones_are_not() {
        let dir = dir("spills");
        let path = dir.join("p.ids");
        let mut ids = EventIds::default();
        for n in 0..3_000 {
            assert!(ids.insert(id_hash(&format!("e{n}"))).expect("insert"));
            if n % 1_000 == 999 {
                ids.spill(&path).expect("spill");
            }
        }
        for n in 0..3_000 {
            let id = id_hash(&format!("e{n}"));
            assert!(ids.contains(id).expect("contains"), "e{n}");
            assert!(!ids.insert(id).expect("insert"), "e{n} is a duplicate");
        }
        for n in 3_000..6_000 {
            assert!(!ids.contains(id_hash(&format!("e{n}"))).expect("contains"));
        }
        drop(ids);
        assert!(!path.exists(), "the file goes with the ids");
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[test]
    fn spilled_ids_cost_a_twentieth_of_the_memory_and_the_filter_rarely_says_maybe() {
        let dir = dir("memory");
        let path = dir.join("p.ids");
        let mut ids = EventIds::default();
        for n in 0..100_000 {
            ids.insert(id_hash(&format!("e{n}"))).expect("insert");
        }
        let in_memory = ids.memory_bytes();
        ids.spill(&path).expect("spill");
        assert!(
            ids.memory_bytes() * 20 <= in_memory,
            "{} bytes spilled against {in_memory} in memory",
            ids.memory_bytes()
        );
        let filter = &ids.spilled.as_ref().expect("spilled").filter;
        let maybe = (100_000..200_000)
            .filter(|n| filter.may_contain(id_hash(&format!("e{n}"))))
            .count();
        assert!(maybe < 2_000, "{maybe} false positives in 100,000");
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}
