//! The live batcher's consumer: one thread owns the Kafka consumer and the windowing core, so
//! compression and rebalances run off the async runtime and the rebalance callback (which runs
//! inside `poll` on this same thread) can commit and hand partitions over in step with the core.
//!
//! Offsets move only behind confirms (DESIGN §3). The rule is [`crate::core::commit_rule`]; this
//! shell feeds it the parts sent and confirmed, and writes and commits what it allows.

use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::clock::now_unix_ms;
use common::registry::IntegrationRegistry;
use metrics::{counter, gauge};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::CheckpointStore;
use crate::clock::ClockWriter;
use crate::core::{ClosedPart, Core};
use crate::fetch_watch::{FetchWatch, rejoin_overdue};
use crate::metrics::{
    BUFFERED_BYTES, COMMIT_LAG, COMMITS, CONSUMER_LAG, DUPLICATES, NEXT_OFFSET, OPEN_PARTS,
    OPEN_WINDOWS, PARTS_CLOSED, PUBLISH_BACKLOG, SPILLED_BYTES,
};
use crate::offsets::OffsetCheck;
use crate::outbox::Outbox;
use crate::publish::{Confirmed, Outgoing};
use crate::records::{Horizon, read_record};
use crate::statistics::FetchStatistics;

/// How long a rebalance may wait for the confirms of a revoked partition's parts.
const REVOKE_CONFIRM_WAIT: Duration = Duration::from_secs(10);
/// How long reading checkpoints on assignment may take.
const CHECKPOINT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Broker requests made from the consumer thread.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Records taken in a row before confirms, the backlog, housekeeping and commits are looked at;
/// each look reads the clock twice, a cost per record worth saving in a burst.
const RECORDS_BETWEEN_CHECKS: u32 = 64;
/// How often gauges are refreshed and idle partitions checked for a clock close.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// How long one poll waits for a record when none comes. A poll returns as soon as a record
/// arrives, so this only spaces the loop's checks when idle, which need no more than the
/// housekeeping's pace; each poll is a wake-up, and rdkafka spins through the last millisecond
/// of it. Shutdown is noticed within it.
const IDLE_POLL: Duration = HOUSEKEEPING_INTERVAL;

/// Per assigned partition: where reading is and what was committed.
#[derive(Debug, Default)]
struct Progress {
    /// Checks each record's offset against the one expected next, which is the position.
    offsets: OffsetCheck,
    committed: Option<i64>,
}

impl Progress {
    /// The next offset to read (0 before the first record of a partition read from its start).
    fn position(&self) -> i64 {
        self.offsets.next().unwrap_or(0)
    }
}

/// Everything the consumer thread works on, shared with the rebalance callback.
pub struct Batching {
    pub core: Core,
    pub registry: IntegrationRegistry,
    pub store: CheckpointStore,
    /// Closes idle partitions' windows by writing the time into their log.
    pub clock: ClockWriter,
    pub events_topic: String,
    pub runtime: tokio::runtime::Handle,
    progress: HashMap<i32, Progress>,
    /// The parts sent and confirmed, and which checkpoints may be written.
    outbox: Outbox<Confirmed>,
    duplicates_reported: u64,
    /// When the consumer lost its partitions with its group session, until it is assigned
    /// again (see [`crate::fetch_watch::REJOIN_AFTER`]).
    lost_since: Option<Instant>,
}

impl Batching {
    pub fn new(
        core: Core,
        registry: IntegrationRegistry,
        store: CheckpointStore,
        clock: ClockWriter,
        outgoing: Sender<Outgoing>,
        confirms: Receiver<Confirmed>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            core,
            registry,
            store,
            events_topic: clock.topic().to_owned(),
            clock,
            runtime,
            progress: HashMap::new(),
            outbox: Outbox::new(outgoing, confirms),
            duplicates_reported: 0,
            lost_since: None,
        }
    }

    /// Takes one Kafka record, unless its offset is out of place (then `consumer` reads its
    /// partition again from the offset expected).
    fn take(
        &mut self,
        consumer: &BaseConsumer<BatcherContext>,
        message: &BorrowedMessage<'_>,
    ) -> anyhow::Result<()> {
        let offsets = self
            .progress
            .get_mut(&message.partition())
            .map(|progress| &mut progress.offsets);
        let Some(closed) = read_record(
            consumer,
            offsets,
            &mut self.core,
            &self.registry,
            Horizon::Live,
            None,
            message,
        )?
        else {
            return Ok(());
        };
        self.send(closed)
    }

    /// Hands closed parts to the publisher, keeping what does not fit in the backlog.
    fn send(&mut self, closed: Vec<ClosedPart>) -> anyhow::Result<()> {
        let now = now_unix_ms();
        for part in closed {
            counter!(PARTS_CLOSED, "reason" => part.reason.as_str()).increment(1);
            self.outbox.queue(part, now);
        }
        Ok(self.outbox.flush()?)
    }

    /// Waits up to `wait` until every part of `partitions` sent so far is confirmed.
    fn await_confirms(&mut self, partitions: &[i32], wait: Duration) -> bool {
        // Live batching's publisher refuses nothing to the outbox (it counts refusals itself),
        // and one that stopped confirms nothing more: either way the wait is over.
        self.outbox
            .await_confirms(partitions, wait)
            .unwrap_or(false)
    }

    /// Snapshots a checkpoint per partition and writes and commits those whose parts are all
    /// confirmed. A checkpoint that cannot be written leaves the commit where it was. The
    /// checkpoints are what a rebuild starts from; the offsets committed after them show the
    /// group's progress to lag monitoring.
    fn commit(
        &mut self,
        consumer: &BaseConsumer<BatcherContext>,
        partitions: &[i32],
    ) -> Result<(), KafkaError> {
        // Answers are confirms only (see `await_confirms`); a stopped publisher shows at the
        // next flush.
        let _ = self.outbox.take_answers();
        let mut ready = Vec::new();
        for &partition in partitions {
            let Some(state) = self.core.partition_mut(partition) else {
                continue;
            };
            if let Some(checkpoint) = self
                .outbox
                .ledger
                .writable(partition, || state.checkpoint())
            {
                ready.push((partition, checkpoint));
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        let store = &self.store;
        let written = self.runtime.block_on(async {
            let writes = ready
                .iter()
                .map(|(partition, checkpoint)| store.write(*partition, checkpoint));
            futures_util::future::join_all(writes).await
        });
        let mut offsets = TopicPartitionList::new();
        for ((partition, checkpoint), result) in ready.into_iter().zip(written) {
            if let Err(error) = result {
                tracing::warn!(%error, "checkpoint not written; the commit waits for the next round");
                continue;
            }
            offsets.add_partition_offset(
                &self.events_topic,
                partition,
                Offset::Offset(checkpoint.commit_offset),
            )?;
            if let Some(progress) = self.progress.get_mut(&partition) {
                progress.committed = Some(checkpoint.commit_offset);
            }
            self.outbox.ledger.written(partition, checkpoint);
        }
        if offsets.count() > 0 {
            // Synchronous: an asynchronous commit still in flight when the session expired kept
            // the consumer from ever rejoining the group (seen twice after a frozen broker, with
            // every partition left unread). A failure here is corrected by the next round.
            if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(%error, "offset commit failed; the checkpoints are written");
            }
            counter!(COMMITS).increment(offsets.count() as u64);
        }
        Ok(())
    }

    fn assigned(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.progress.keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// Writes a clock record to each caught-up partition with a window due to close by the
    /// clock; reading it back closes the window (see [`crate::clock`]).
    fn close_idle(&mut self, consumer: &BaseConsumer<BatcherContext>) {
        let now = now_unix_ms();
        for partition in self.assigned() {
            let due = self
                .core
                .partition(partition)
                .is_some_and(|state| state.idle_close_due(now, &self.core.settings));
            if !due {
                continue;
            }
            let Some(high) = consumer.context().high_watermark(partition) else {
                continue;
            };
            let position = self.progress.get(&partition).map_or(0, Progress::position);
            if position >= high {
                self.clock.tick(partition);
            }
        }
    }

    fn report(&mut self, consumer: &BaseConsumer<BatcherContext>) {
        gauge!(OPEN_WINDOWS).set(self.core.open_windows() as f64);
        gauge!(OPEN_PARTS).set(self.core.open_parts() as f64);
        gauge!(BUFFERED_BYTES).set(self.core.memory_bytes() as f64);
        gauge!(PUBLISH_BACKLOG).set(self.outbox.backlog() as f64);
        counter!(SPILLED_BYTES).absolute(self.core.spilled_bytes());
        let duplicates: u64 = self
            .core
            .assigned()
            .filter_map(|p| self.core.partition(p).map(|s| s.duplicates))
            .sum();
        counter!(DUPLICATES).increment(duplicates.saturating_sub(self.duplicates_reported));
        self.duplicates_reported = duplicates;
        for (partition, progress) in &self.progress {
            let label = partition.to_string();
            gauge!(NEXT_OFFSET, "partition" => label.clone()).set(progress.position() as f64);
            if let Some(committed) = progress.committed {
                gauge!(COMMIT_LAG, "partition" => label.clone())
                    .set((progress.position() - committed).max(0) as f64);
            }
            if let Some(high) = consumer.context().high_watermark(*partition) {
                gauge!(CONSUMER_LAG, "partition" => label)
                    .set((high - progress.position()).max(0) as f64);
            }
        }
    }

    fn assign(
        &mut self,
        consumer: &BaseConsumer<BatcherContext>,
        assignment: &mut TopicPartitionList,
    ) {
        self.lost_since = None;
        let checkpoints = match self.store.read_latest(CHECKPOINT_READ_TIMEOUT) {
            Ok(checkpoints) => checkpoints,
            Err(error) => {
                tracing::error!(%error, "checkpoints unreadable; starting from committed offsets, which can repeat events");
                HashMap::new()
            }
        };
        let committed = consumer
            .committed_offsets(assignment.clone(), REQUEST_TIMEOUT)
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read committed offsets");
                TopicPartitionList::new()
            });
        let partitions: Vec<i32> = assignment
            .elements_for_topic(&self.events_topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        for partition in partitions {
            let checkpoint = checkpoints.get(&partition).cloned();
            let committed_offset = committed
                .find_partition(&self.events_topic, partition)
                .and_then(|e| e.offset().to_raw())
                .filter(|offset| *offset >= 0);
            let start = checkpoint
                .as_ref()
                .map(|c| c.commit_offset)
                .or(committed_offset);
            let offset = start.map_or(Offset::Beginning, Offset::Offset);
            if let Err(error) =
                assignment.set_partition_offset(&self.events_topic, partition, offset)
            {
                tracing::error!(partition, %error, "cannot set the start offset");
            }
            tracing::info!(
                partition,
                ?start,
                checkpoint = checkpoint.is_some(),
                "partition assigned"
            );
            self.core.assign(partition, checkpoint.clone());
            self.outbox.ledger.assign(partition, checkpoint);
            self.progress.insert(
                partition,
                Progress {
                    offsets: OffsetCheck::starting_at(start),
                    committed: start,
                },
            );
        }
    }

    fn revoke(&mut self, consumer: &BaseConsumer<BatcherContext>, revoked: &TopicPartitionList) {
        let partitions: Vec<i32> = revoked
            .elements_for_topic(&self.events_topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        if consumer.assignment_lost() {
            // The session expired (the coordinator was out of reach): the group may already
            // have given these partitions to another member, and no commit of this generation
            // would be accepted. Waiting on confirms, checkpoint writes and a coordinator here
            // would only hold up rejoining; the next owner rebuilds from the last checkpoint.
            tracing::warn!(
                ?partitions,
                "partitions lost with the group session; the next owner rebuilds them from the last checkpoint"
            );
            self.lost_since.get_or_insert_with(Instant::now);
        } else {
            if !self.await_confirms(&partitions, REVOKE_CONFIRM_WAIT) {
                tracing::warn!(
                    ?partitions,
                    "parts still unconfirmed at revocation; the next owner rebuilds them"
                );
            }
            if let Err(error) = self.commit(consumer, &partitions) {
                tracing::warn!(%error, "commit at revocation failed");
            }
        }
        for partition in partitions {
            self.core.revoke(partition);
            self.outbox.ledger.revoke(partition);
            self.progress.remove(&partition);
            tracing::info!(partition, "partition revoked");
        }
    }
}

/// The consumer's context: rebalances go through the shared batching state, and librdkafka's
/// statistics give each partition's end offset (from its own fetches, without a request of
/// ours).
pub struct BatcherContext {
    /// Shared with the next consumer when this one is replaced.
    batching: Arc<Mutex<Batching>>,
    events_topic: String,
    high_watermarks: Mutex<HashMap<i32, i64>>,
    /// The broker each partition is fetched from (negative: none), from the statistics.
    fetched_from: Mutex<HashMap<i32, i32>>,
}

impl BatcherContext {
    pub fn new(batching: Arc<Mutex<Batching>>) -> Self {
        let events_topic = batching
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events_topic
            .clone();
        Self {
            events_topic,
            batching,
            high_watermarks: Mutex::default(),
            fetched_from: Mutex::default(),
        }
    }

    /// The broker `partition` is fetched from as of the last statistics (negative: none).
    fn fetched_from(&self, partition: i32) -> Option<i32> {
        self.fetched_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .copied()
    }

    /// The end offset of `partition` as of the last statistics (at most one interval old).
    fn high_watermark(&self, partition: i32) -> Option<i64> {
        self.high_watermarks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .copied()
    }

    /// Keeps the events partitions' end offsets and brokers from the latest statistics.
    fn take_statistics(&self, statistics: FetchStatistics) {
        let partitions = statistics.partitions_of(&self.events_topic);
        let mut high = self
            .high_watermarks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut fetched_from = self
            .fetched_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (partition, fetch) in partitions {
            if let Some(end) = fetch.end_offset() {
                high.insert(partition, end);
            }
            fetched_from.insert(partition, fetch.broker);
        }
    }

    /// The state is consistent after every step, so a panic elsewhere leaves it usable.
    fn lock(&self) -> MutexGuard<'_, Batching> {
        self.batching.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClientContext for BatcherContext {
    fn stats_raw(&self, statistics: &[u8]) {
        match serde_json::from_slice::<FetchStatistics>(statistics) {
            Ok(statistics) => self.take_statistics(statistics),
            Err(error) => tracing::warn!(%error, "unreadable librdkafka statistics"),
        }
    }
}

impl ConsumerContext for BatcherContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.lock().assign(consumer, partitions);
                if let Err(error) = consumer.assign(partitions) {
                    tracing::error!(%error, "cannot take the assigned partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.lock().revoke(consumer, partitions);
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "cannot give up the revoked partitions");
                }
            }
            other => tracing::error!(error = ?other, "rebalance failed"),
        }
    }
}

/// Why `run` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown: the final checkpoints are written.
    Shutdown,
    /// The consumer stopped fetching `partition` while the cluster has a leader for it; a new
    /// consumer is needed (closing this one hands its partitions over with a commit).
    Stuck { partition: i32, leader: i32 },
    /// The consumer lost its partitions with its group session and has not rejoined for
    /// `REJOIN_AFTER` while the cluster answers; a new consumer is needed.
    NotRejoined,
}

/// Runs the consumer until `shutdown`, then publishes what closed, commits what is safe within
/// `drain`, and leaves the rest to be rebuilt by the next owner; or until the consumer is stuck.
/// `probe` configures the clients that ask the cluster whether it answers (the broker list and
/// the operator's settings).
pub fn run(
    consumer: &BaseConsumer<BatcherContext>,
    probe: &ClientConfig,
    shutdown: &CancellationToken,
    commit_interval: Duration,
    drain: Duration,
) -> anyhow::Result<Ended> {
    let mut paused = false;
    let mut watch = FetchWatch::default();
    let mut last_commit = Instant::now();
    let mut last_housekeeping = Instant::now();
    let mut records_unchecked = 0_u32;
    while !shutdown.is_cancelled() {
        let message = consumer.poll(IDLE_POLL);
        let mut batching = consumer.context().lock();
        match message {
            Some(Ok(message)) => {
                batching.take(consumer, &message)?;
                records_unchecked += 1;
                if records_unchecked < RECORDS_BETWEEN_CHECKS {
                    continue;
                }
            }
            Some(Err(error)) => tracing::warn!(%error, "Kafka consumer error"),
            None => {}
        }
        records_unchecked = 0;
        batching.outbox.take_answers()?;
        batching.outbox.flush()?;
        // RabbitMQ is behind: stop reading (and so stop buffering) until it catches up.
        let behind = batching.outbox.backlog() > 0;
        if behind != paused {
            let assignment = consumer.assignment()?;
            if behind {
                consumer.pause(&assignment)?;
                tracing::warn!(
                    backlog = batching.outbox.backlog(),
                    "RabbitMQ is behind; consumption paused"
                );
            } else {
                consumer.resume(&assignment)?;
                tracing::info!("consumption resumed");
            }
            paused = behind;
        }
        if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
            last_housekeeping = Instant::now();
            batching.close_idle(consumer);
            batching.report(consumer);
            if let Some((partition, leader)) =
                stuck(consumer, probe, &batching.assigned(), &mut watch)
            {
                return Ok(Ended::Stuck { partition, leader });
            }
            if rejoin_overdue(batching.lost_since, Instant::now())
                && cluster_answers(probe, &batching.events_topic)
            {
                return Ok(Ended::NotRejoined);
            }
        }
        if last_commit.elapsed() >= commit_interval {
            last_commit = Instant::now();
            let partitions = batching.assigned();
            batching.commit(consumer, &partitions)?;
        }
    }
    let mut batching = consumer.context().lock();
    let partitions = batching.assigned();
    if !batching.await_confirms(&partitions, drain) {
        tracing::warn!("shutting down with parts unconfirmed; the next owner rebuilds them");
    }
    batching.commit(consumer, &partitions)?;
    tracing::info!(partitions = ?partitions, "final checkpoints written");
    Ok(Ended::Shutdown)
}

/// The cluster's metadata for `topic`, asked through a client made for the question from
/// `probe`. The consumer's own client is no witness: in the states the watchdogs exist for,
/// its requests can stay queued unsent. Seen in a frozen-broker run: after the broker resumed,
/// every metadata request of the wedged consumer failed for a minute and more while ingest
/// wrote to the same broker, so a check through it kept the consumer it should have replaced.
fn cluster_metadata(probe: &ClientConfig, topic: &str) -> KafkaResult<Metadata> {
    let client: BaseConsumer = probe.create()?;
    client.fetch_metadata(Some(topic), REQUEST_TIMEOUT)
}

/// Whether the cluster answers a metadata request for `topic`.
fn cluster_answers(probe: &ClientConfig, topic: &str) -> bool {
    match cluster_metadata(probe, topic) {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, "no partitions since the group session was lost, and the cluster does not answer; waiting");
            false
        }
    }
}

/// An assigned partition the consumer has fetched from no broker for `STUCK_AFTER` while the
/// cluster's metadata names a leader for it, with that leader.
fn stuck(
    consumer: &BaseConsumer<BatcherContext>,
    probe: &ClientConfig,
    assigned: &[i32],
    watch: &mut FetchWatch,
) -> Option<(i32, i32)> {
    let now = Instant::now();
    watch.keep_only(assigned);
    let context = consumer.context();
    let due: Vec<i32> = assigned
        .iter()
        .copied()
        .filter(|p| watch.observe(*p, context.fetched_from(*p), now))
        .collect();
    if due.is_empty() {
        return None;
    }
    let metadata = match cluster_metadata(probe, &context.events_topic) {
        Ok(metadata) => metadata,
        Err(error) => {
            tracing::warn!(%error, ?due, "partitions fetched from no broker, and the cluster's metadata is unreadable; waiting");
            due.iter().for_each(|p| watch.leaderless(*p, now));
            return None;
        }
    };
    let leaders: HashMap<i32, i32> = metadata
        .topics()
        .iter()
        .flat_map(|topic| topic.partitions())
        .map(|partition| (partition.id(), partition.leader()))
        .collect();
    for partition in due {
        match leaders.get(&partition) {
            Some(leader) if *leader >= 0 => return Some((partition, *leader)),
            _ => watch.leaderless(partition, now),
        }
    }
    None
}
