//! The digest builder: each tenant's signed digest of every period, built from the deliveries
//! topic and queued for upload like a log object (README "Verifying delivered logs").
//!
//! It runs in the batchers because they already hold what it needs: Kafka consumption with
//! checkpoints on a compacted topic, clock records for idle partitions, and publishing upload
//! jobs with confirms. Ingest answers HTTP and should not sign; the uploaders write the records
//! it reads and scale with S3 traffic, not with the log. It is a consumer group of its own
//! (`{group}-digests` by default), so its partitions spread over the batchers apart from the
//! events'.
//!
//! Per partition: records are folded into digests ([`fold`]); when a record closes periods,
//! their digests are published, and once RabbitMQ confirms them the fold's state is
//! checkpointed with the next offset, then the offset committed. A builder that dies rebuilds
//! from the checkpoint and makes the same digests, which the uploader's `If-None-Match` then
//! finds already stored.

pub mod fold;
mod records;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use common::amqp::AmqpArgs;
use common::clock::now_unix_ms;
use common::digest::signing::SigningKey;
use common::job::{JobKind, UploadJob};
use common::kafka::KafkaArgs;
use common::key::Codec;
use common::producer::HealingProducer;
use common::topology::UploadTopology;
use metrics::counter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::PartitionRecords;
use crate::clock::ClockWriter;
use crate::metrics::{DIGEST_SIGNING_FAILURES, DIGEST_UNREADABLE_RECORDS, DIGESTS};
use crate::publish::{self, Confirmed, Outgoing, Refused};
use fold::{PartitionDigests, Periods, SignedDigest};

/// gzip level of digest files. Fixed: a rebuilt digest must compress to the same bytes.
const GZIP_LEVEL: i32 = 6;
/// How long reading the checkpoints may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before trying a failed checkpoint read or write again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long moving a partition's read position may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the builder needs besides Kafka and RabbitMQ.
pub struct Settings {
    pub key: Arc<SigningKey>,
    pub periods: Periods,
    pub deliveries_topic: String,
    pub checkpoints_topic: String,
    /// The builder's consumer group.
    pub group: String,
    /// The largest message RabbitMQ takes.
    pub max_body_bytes: u64,
}

/// A partition's checkpoint: the fold's state after every record before `next_offset`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    next_offset: i64,
    periods: Periods,
    state: PartitionDigests,
}

/// One assigned partition.
struct Slot {
    saved: Saved,
    /// A seek back to `saved.next_offset` was asked for: records before it arrives are what
    /// the client had fetched already.
    seeking: bool,
}

/// Builds digests until `shutdown`.
pub async fn run(
    settings: Settings,
    kafka: KafkaArgs,
    writer: Arc<HealingProducer>,
    amqp: AmqpArgs,
    topology: UploadTopology,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let group = settings.group.clone();
    // Series from the start, so alerts on them see zeros rather than nothing.
    for name in [DIGESTS, DIGEST_SIGNING_FAILURES, DIGEST_UNREADABLE_RECORDS] {
        counter!(name).increment(0);
    }
    let consumer: StreamConsumer = kafka
        .client_config(&[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
        ])
        .create()
        .context("cannot create the digest builder's Kafka consumer")?;
    consumer
        .subscribe(&[&settings.deliveries_topic])
        .with_context(|| format!("cannot subscribe to {}", settings.deliveries_topic))?;
    let (jobs, jobs_rx) = mpsc::channel(64);
    let (confirms_tx, confirms) = mpsc::unbounded_channel();
    let publisher = tokio::spawn(publish::run(
        amqp,
        topology,
        settings.max_body_bytes,
        jobs_rx,
        confirms_tx,
        Arc::new(AtomicBool::new(false)),
        shutdown.clone(),
    ));
    let clock = ClockWriter::new(
        writer.clone(),
        settings.deliveries_topic.clone(),
        tokio::runtime::Handle::current(),
    );
    let store = Store {
        records: Arc::new(PartitionRecords::new(
            &kafka,
            &settings.checkpoints_topic,
            &group,
            &settings.deliveries_topic,
            writer,
        )),
    };
    let mut builder = Builder {
        settings,
        consumer,
        store,
        clock,
        jobs,
        confirms,
        slots: HashMap::new(),
        sequence: 0,
    };
    let result = builder.run(&shutdown).await;
    drop(builder);
    publisher.await.context("the digest publisher panicked")??;
    result
}

struct Builder {
    settings: Settings,
    consumer: StreamConsumer,
    store: Store,
    clock: ClockWriter,
    jobs: mpsc::Sender<Outgoing>,
    confirms: mpsc::UnboundedReceiver<Result<Confirmed, Refused>>,
    slots: HashMap<i32, Slot>,
    sequence: u64,
}

impl Builder {
    async fn run(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        // Idle partitions close their periods by the clock records written to them.
        let tick_every = (self.settings.periods.grace_ms / 2).clamp(500, 60_000);
        let mut ticks = tokio::time::interval(Duration::from_millis(tick_every.unsigned_abs()));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = ticks.tick() => self.tick(),
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        let (partition, offset) = (message.partition(), message.offset());
                        let entry = records::entry_of(&message);
                        drop(message);
                        self.handle(partition, offset, entry, shutdown).await?;
                    }
                    Err(error) => tracing::warn!(%error, "reading the deliveries topic failed; retrying"),
                },
            }
        }
    }

    fn tick(&mut self) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        for element in assignment.elements() {
            self.clock.tick(element.partition());
        }
    }

    async fn handle(
        &mut self,
        partition: i32,
        offset: i64,
        entry: Result<Option<fold::Entry>, String>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        if !self.slots.contains_key(&partition) || self.past_expected(partition, offset) {
            // A partition new to this builder, or one another builder moved on with since.
            if let Err(error) = self.load(partition, offset).await {
                // The checkpoint cannot be read now: read this record again after a pause.
                tracing::warn!(
                    partition,
                    offset,
                    error = format!("{error:#}"),
                    "cannot take up a deliveries partition from its checkpoint; trying again"
                );
                tokio::time::sleep(RETRY_PAUSE).await;
                self.consumer
                    .seek(
                        &self.settings.deliveries_topic,
                        partition,
                        Offset::Offset(offset),
                        SEEK_TIMEOUT,
                    )
                    .with_context(|| {
                        format!("cannot read partition {partition} of the deliveries topic again")
                    })?;
                return Ok(());
            }
        }
        let Some(slot) = self.slots.get_mut(&partition) else {
            return Ok(());
        };
        if slot.seeking && offset != slot.saved.next_offset {
            return Ok(());
        }
        slot.seeking = false;
        if offset < slot.saved.next_offset {
            return Ok(());
        }
        slot.saved.next_offset = offset + 1;
        let entry = match entry {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(()),
            Err(problem) => {
                counter!(DIGEST_UNREADABLE_RECORDS).increment(1);
                tracing::error!(partition, offset, %problem, "skipped a deliveries record the digest builder cannot read");
                return Ok(());
            }
        };
        let signed = slot
            .saved
            .state
            .apply(entry, self.settings.periods, &self.settings.key)
            .map_err(|error| {
                counter!(DIGEST_SIGNING_FAILURES).increment(1);
                anyhow::anyhow!("cannot sign a digest: {error}")
            })?;
        if signed.is_empty() {
            return Ok(());
        }
        let count = signed.len() as u64;
        for digest in signed {
            if !self.publish(partition, digest).await? {
                return Ok(());
            }
        }
        counter!(DIGESTS).increment(count);
        let Some(slot) = self.slots.get(&partition) else {
            return Ok(());
        };
        self.store.write(partition, &slot.saved, shutdown).await;
        let mut commit = TopicPartitionList::new();
        commit.add_partition_offset(
            &self.settings.deliveries_topic,
            partition,
            Offset::Offset(slot.saved.next_offset),
        )?;
        if let Err(error) = self.consumer.commit(&commit, CommitMode::Async) {
            tracing::warn!(partition, %error, "cannot commit the digest builder's offset; the checkpoint holds it");
        }
        Ok(())
    }

    /// Whether `offset` lies past the record this builder expects next on `partition`.
    fn past_expected(&self, partition: i32, offset: i64) -> bool {
        self.slots
            .get(&partition)
            .is_some_and(|slot| !slot.seeking && offset > slot.saved.next_offset)
    }

    /// Takes up `partition` from its checkpoint when the record at `offset` arrives: records
    /// before the checkpoint's offset are skipped, and a checkpoint behind `offset` is read
    /// from by seeking back. Without a checkpoint the fold starts at `offset`.
    async fn load(&mut self, partition: i32, offset: i64) -> anyhow::Result<()> {
        let saved = self.store.read(partition).await?;
        let local = self.slots.remove(&partition).map(|slot| slot.saved);
        let saved = match (saved, local) {
            (Some(saved), Some(local)) if local.next_offset >= saved.next_offset => {
                tracing::warn!(
                    partition,
                    expected = local.next_offset,
                    offset,
                    "records of the deliveries topic are gone (retention); digests go on without them"
                );
                Saved {
                    next_offset: offset,
                    ..local
                }
            }
            (Some(saved), _) => saved,
            (None, Some(local)) => Saved {
                next_offset: offset,
                ..local
            },
            (None, None) => Saved {
                next_offset: offset,
                periods: self.settings.periods,
                state: PartitionDigests::default(),
            },
        };
        if saved.periods != self.settings.periods {
            tracing::warn!(
                partition,
                checkpointed = ?saved.periods,
                configured = ?self.settings.periods,
                "the digest period or grace changed; open periods close by the new settings"
            );
        }
        let seeking = saved.next_offset < offset;
        if seeking {
            self.consumer
                .seek(
                    &self.settings.deliveries_topic,
                    partition,
                    Offset::Offset(saved.next_offset),
                    SEEK_TIMEOUT,
                )
                .with_context(|| format!("cannot seek partition {partition} of the deliveries topic back to its checkpoint"))?;
        }
        self.slots.insert(partition, Slot { saved, seeking });
        Ok(())
    }

    /// Queues `digest` for upload and waits for RabbitMQ's confirm. `false` when the publisher
    /// stopped (shutdown) before confirming it.
    async fn publish(&mut self, partition: i32, digest: SignedDigest) -> anyhow::Result<bool> {
        let body = common::codec::compress(Codec::Gzip, &digest.file, GZIP_LEVEL)
            .context("cannot compress a digest")?;
        self.sequence += 1;
        let job = UploadJob {
            kind: JobKind::Digest,
            tenant_id: digest.tenant.clone(),
            relative_key: digest.relative_key.clone(),
            codec: Codec::Gzip,
            event_count: digest.objects,
            window_start_ms: digest.period_start_ms,
            window_end_ms: digest.period_end_ms,
            partition: 0,
            first_offset: 0,
            last_offset: 0,
            uncompressed_bytes: digest.file.len() as u64,
            sha256_hex: hex::encode(Sha256::digest(&body)),
            created_at_ms: now_unix_ms(),
            attempt: 0,
        };
        let outgoing = Outgoing {
            partition,
            sequence: self.sequence,
            job,
            body,
        };
        if self.jobs.send(outgoing).await.is_err() {
            return Ok(false);
        }
        loop {
            match self.confirms.recv().await {
                None => return Ok(false),
                Some(Ok(confirmed)) if confirmed.sequence == self.sequence => return Ok(true),
                Some(Ok(_)) => {}
                Some(Err(refused)) => {
                    tracing::error!(key = %refused.relative_key, bytes = refused.body_bytes, limit = refused.limit, "a digest is larger than RabbitMQ takes; it is not delivered");
                    return Ok(true);
                }
            }
        }
    }
}

/// The builder's checkpoints, on the batchers' compacted checkpoint topic under keys of its own.
struct Store {
    records: Arc<PartitionRecords>,
}

impl Store {
    async fn read(&self, partition: i32) -> anyhow::Result<Option<Saved>> {
        let records = Arc::clone(&self.records);
        let mut latest =
            tokio::task::spawn_blocking(move || records.read_latest::<Saved>(READ_TIMEOUT))
                .await
                .context("reading the digest checkpoints panicked")??;
        Ok(latest.remove(&partition))
    }

    /// Writes `saved` for `partition`, trying again until Kafka has it or `shutdown`: the
    /// digests it follows are queued already, and a builder that stops now makes them again.
    async fn write(&self, partition: i32, saved: &Saved, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.records.write(partition, saved).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(partition, %error, "cannot write a digest checkpoint; trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}
