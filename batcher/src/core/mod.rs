//! The batching core: pure windowing over Kafka records (no network, clock passed in), the
//! memory budget with its disk spill, and closed parts turned into upload jobs.

pub mod commit_rule;
pub mod ids;
pub mod part;
pub mod partition;
pub mod rebuild;
pub mod window;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::job::{JobKind, UploadJob};
use common::key::ObjectKey;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub use part::PartSettings;
pub use partition::{CloseReason, ClosedPart, PartitionState, Record, WindowSettings};
pub use rebuild::Checkpoint;

/// Spilling stops once memory is back under this share of the budget, so one spill makes
/// room for many records instead of one.
const SPILL_TARGET_PERCENT: usize = 90;

/// The open windows of every assigned partition under one memory budget.
#[derive(Debug)]
pub struct Core {
    pub settings: WindowSettings,
    memory_budget: usize,
    spill_dir: PathBuf,
    spill_files: u64,
    spilled_bytes: u64,
    partitions: BTreeMap<i32, PartitionState>,
}

impl Core {
    /// `spill_dir` must exist and belong to this process alone; it is only a cache.
    pub fn new(settings: WindowSettings, memory_budget: usize, spill_dir: PathBuf) -> Self {
        Self {
            settings,
            memory_budget,
            spill_dir,
            spill_files: 0,
            spilled_bytes: 0,
            partitions: BTreeMap::new(),
        }
    }

    /// Starts a partition, from `checkpoint` when there is one.
    pub fn assign(&mut self, partition: i32, checkpoint: Option<Checkpoint>) {
        let state = match checkpoint {
            Some(checkpoint) => PartitionState::resume(partition, checkpoint),
            None => PartitionState::new(partition),
        };
        self.partitions.insert(partition, state);
    }

    /// Drops a partition's open parts: its next owner rebuilds them from the committed offset.
    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    pub fn partition(&self, partition: i32) -> Option<&PartitionState> {
        self.partitions.get(&partition)
    }

    pub fn partition_mut(&mut self, partition: i32) -> Option<&mut PartitionState> {
        self.partitions.get_mut(&partition)
    }

    pub fn assigned(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    /// Takes one record of `partition` and returns the parts it closed. A record of a
    /// partition not assigned is ignored (it was revoked meanwhile).
    pub fn push(
        &mut self,
        partition: i32,
        record: &Record<'_>,
    ) -> std::io::Result<Vec<ClosedPart>> {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Ok(Vec::new());
        };
        let closed = state.push(record, &self.settings)?;
        if self.memory_bytes() > self.memory_budget {
            self.spill()?;
        }
        Ok(closed)
    }

    /// Moves `partition` past a record that goes in no part.
    pub fn skip(
        &mut self,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
    ) -> std::io::Result<Vec<ClosedPart>> {
        match self.partitions.get_mut(&partition) {
            Some(state) => state.skip(offset, timestamp_ms, &self.settings),
            None => Ok(Vec::new()),
        }
    }

    /// Closes by the clock the windows of `partition`, caught up at `position`.
    pub fn close_idle(
        &mut self,
        partition: i32,
        now_ms: i64,
        position: i64,
    ) -> std::io::Result<Vec<ClosedPart>> {
        match self.partitions.get_mut(&partition) {
            Some(state) => state.close_idle(now_ms, position, &self.settings),
            None => Ok(Vec::new()),
        }
    }

    /// Bytes the open parts hold in memory.
    pub fn memory_bytes(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionState::memory_bytes)
            .sum()
    }

    /// Bytes written to the spill directory so far.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_bytes
    }

    pub fn open_windows(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionState::open_windows)
            .sum()
    }

    pub fn open_parts(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionState::open_parts)
            .sum()
    }

    /// Moves the finished frames, raw tails and event ids of the largest parts to disk until
    /// memory is back under the target. Frames are still cut at the same raw offsets and ids
    /// answer exactly, so the bytes of every object never depend on memory pressure.
    fn spill(&mut self) -> std::io::Result<()> {
        let target = self.memory_budget / 100 * SPILL_TARGET_PERCENT;
        let mut candidates: Vec<(usize, i32, usize)> = Vec::new();
        for (partition, state) in &mut self.partitions {
            for (index, part) in state.parts_mut().enumerate() {
                let bytes = part.spillable_bytes();
                if bytes > 0 {
                    candidates.push((bytes, *partition, index));
                }
            }
        }
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let mut memory = self.memory_bytes();
        let mut chosen: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for (bytes, partition, index) in candidates {
            if memory <= target {
                break;
            }
            memory = memory.saturating_sub(bytes);
            chosen.entry(partition).or_default().push(index);
        }
        for (partition, indexes) in chosen {
            let Some(state) = self.partitions.get_mut(&partition) else {
                continue;
            };
            for (index, part) in state.parts_mut().enumerate() {
                if indexes.contains(&index) {
                    self.spill_files += 1;
                    let path = self.spill_dir.join(format!(
                        "{partition}-{}-{}.part",
                        part.first_offset, self.spill_files
                    ));
                    self.spilled_bytes += part.spill(&path)?;
                }
            }
            state.recount_memory();
        }
        Ok(())
    }
}

impl ClosedPart {
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            tenant_id: self.tenant.clone(),
            window_start: common::clock::from_unix_ms(self.window_start_ms)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            partition: self.partition,
            first_offset: self.first_offset,
            codec: self.codec,
        }
    }

    /// The upload job for this part (DESIGN §2), created at `now_ms`.
    pub fn job(&self, now_ms: i64) -> UploadJob {
        let sha256_hex = hex::encode(Sha256::digest(&self.content.body));
        UploadJob {
            kind: JobKind::Log,
            tenant_id: self.tenant.clone(),
            relative_key: self.key().relative(),
            codec: self.codec,
            event_count: self.content.event_count,
            window_start_ms: self.window_start_ms,
            window_end_ms: self.window_end_ms,
            partition: self.partition,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            uncompressed_bytes: self.content.uncompressed_bytes,
            sha256_hex,
            created_at_ms: now_ms,
            attempt: 0,
        }
    }
}
