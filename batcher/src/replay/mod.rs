//! `batcher replay`: rebuilds the windows of a range of the events topic with the live
//! batcher's core and enqueues their objects again (DESIGN §4). Each partition starts at the
//! first record of the window holding the requested start, which is where live batching
//! started that window, so the objects come out with the same keys and bytes; the uploader's
//! `If-None-Match` makes objects already delivered a no-op.
//!
//! Where each partition is read is planned in [`plan`]; records go through the same step as
//! live batching's ([`read_record`]) and parts through the same [`Outbox`] and publisher.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::clock::now_unix_ms;
use common::event::TenantId;
use common::producer::HealingProducer;
use common::read_to_end::{EndReachedContext, PARTITION_EOF};
use common::registry::IntegrationRegistry;
use common::shutdown::Supervisor;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use tokio_util::sync::CancellationToken;

use crate::config::{BatcherConfig, ReplayArgs, ReplayStart};
use crate::core::{ClosedPart, Core};
use crate::offsets::OffsetCheck;
use crate::outbox::Outbox;
use crate::publish::{self, Confirmed, Refused};
use crate::records::{Horizon, read_record};
use plan::PartitionPlan;

mod index;
pub mod plan;

/// Parts handed to the publisher and not yet taken by it.
const PUBLISH_QUEUE: usize = 256;
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long a partition may yield no record, short of its planned end, before the replay fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A replay's consumer: told when a partition's end is reached.
type ReplayConsumer = BaseConsumer<EndReachedContext>;

/// Where a replay's plan and progress go, a line at a time.
pub type Report = std::sync::Arc<dyn Fn(String) + Send + Sync>;

/// What a replay rebuilds.
#[derive(Debug, Clone)]
pub struct ReplayScope {
    pub from: ReplayStart,
    /// Windows starting at or after this are not built.
    pub to_ms: i64,
    /// Only this tenant's objects, when given.
    pub tenant: Option<TenantId>,
}

/// What a replay enqueued.
#[derive(Debug, Default)]
pub struct Summary {
    pub records: u64,
    pub parts: BTreeMap<&'static str, u64>,
    pub events: u64,
    pub bytes: u64,
    /// Window parts the range does not close, left to live batching.
    pub left_open: usize,
}

impl Summary {
    pub fn objects(&self) -> u64 {
        self.parts.values().sum()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replayed {} record(s): {} object(s) enqueued and confirmed ({}), {} event(s), {} byte(s) compressed; {} window part(s) still open, left to live batching",
            self.records,
            self.objects(),
            self.parts
                .iter()
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.events,
            self.bytes,
            self.left_open
        )
    }
}

/// `batcher replay`: follows the integrations, rebuilds the range and prints what it did.
pub async fn run(config: &BatcherConfig, args: &ReplayArgs) -> anyhow::Result<()> {
    let supervisor = Supervisor::new();
    let registry = IntegrationRegistry::follow(
        &config.kafka,
        &config.topics.integrations_topic,
        &supervisor,
    )
    .await
    .context("cannot follow the integrations")?;
    tokio::time::timeout(Duration::from_secs(60), registry.caught_up())
        .await
        .context("the integrations topic was not read within 60 s")?;
    if let Some(tenant) = &args.tenant {
        anyhow::ensure!(
            registry.get(tenant).is_some(),
            "tenant {tenant} has no integration: there is nowhere to deliver its events"
        );
    }
    let scope = ReplayScope {
        from: args.from.clone(),
        to_ms: args.to.map_or_else(now_unix_ms, common::clock::unix_ms),
        tenant: args.tenant.clone(),
    };
    let print: Report = std::sync::Arc::new(|line| println!("{line}"));
    let writer =
        crate::checkpoint::writer(&config.kafka).context("cannot create the Kafka writer")?;
    let summary = execute(config, &registry, writer, &scope, supervisor.token(), print).await;
    supervisor.cancel();
    println!("{}", summary?);
    Ok(())
}

/// Rebuilds the windows of `scope` with the tenants' current integrations and enqueues their
/// objects, returning once RabbitMQ has confirmed every one. `report` receives the plan and
/// progress. `writer` is the batcher's Kafka writer (`checkpoint::writer`); a replay only reads
/// checkpoints, but reads them through the store that also writes them.
pub async fn execute(
    config: &BatcherConfig,
    registry: &IntegrationRegistry,
    writer: Arc<HealingProducer>,
    scope: &ReplayScope,
    token: CancellationToken,
    report: Report,
) -> anyhow::Result<Summary> {
    let settings = config.batching.window_settings();
    // A replay must cut the objects live batching cut: the same settings as the group's.
    let store = crate::checkpoint::CheckpointStore::new(
        &config.kafka,
        &config.checkpoints_topic,
        &config.group,
        &config.topics.events_topic,
        &settings,
        writer,
    );
    crate::check_object_shape(store, config.allow_settings_change).await?;
    let consumer: ReplayConsumer = config
        .kafka
        .client_config(&[
            ("group.id", "activity-batcher-replay"),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            PARTITION_EOF,
        ])
        .create_with_context(EndReachedContext)
        .context("cannot create the Kafka consumer")?;
    let topic = config.topics.events_topic.clone();
    let to_ms = scope.to_ms;
    let (consumer, plans) = {
        let (start, settings, topic) = (scope.from.clone(), settings.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            let index = index::BrokerIndex {
                consumer: &consumer,
                topic: &topic,
            };
            let plans = plan::plan(&index, &topic, &start, to_ms, &settings);
            plans.map(|plans| (consumer, plans))
        })
        .await
        .context("planning panicked")??
    };
    for line in plan::describe(&topic, &plans, to_ms, scope.tenant.as_ref(), &settings) {
        report(line);
    }
    if plans.is_empty() {
        report("nothing to replay".to_owned());
        return Ok(Summary::default());
    }

    let (parts_tx, parts_rx) = tokio::sync::mpsc::channel(PUBLISH_QUEUE);
    let (confirms_tx, confirms_rx) = std::sync::mpsc::channel::<Result<Confirmed, Refused>>();
    // The publisher stops once every part is sent (the sender is dropped) or on `token`.
    let publisher_token = token.child_token();
    let publisher = tokio::spawn(publish::run(
        config.amqp.clone(),
        config.uploads.topology(),
        settings.max_body_bytes,
        parts_rx,
        confirms_tx,
        std::sync::Arc::default(),
        publisher_token.clone(),
    ));
    let spill_dir = std::env::temp_dir().join(format!(
        "activity-batcher-replay-{}-{}",
        std::process::id(),
        REPLAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&spill_dir).context("cannot create a spill directory")?;
    let core = Core::new(
        settings,
        usize::try_from(config.memory_budget).unwrap_or(usize::MAX),
        spill_dir.clone(),
    );
    let (registry, scope) = (registry.clone(), scope.clone());
    let replay_report = report.clone();
    let shutdown = token.clone();
    let summary = tokio::task::spawn_blocking(move || {
        let replayer = Replayer {
            consumer: &consumer,
            topic: &topic,
            core,
            registry: &registry,
            scope: &scope,
            outbox: Outbox::new(parts_tx, confirms_rx),
            report: &*replay_report,
            shutdown: &shutdown,
            summary: Summary::default(),
        };
        replayer.run(&plans)
    })
    .await;
    publisher_token.cancel();
    let published = publisher.await;
    drop(std::fs::remove_dir_all(&spill_dir));
    let summary = summary.context("the replay panicked")??;
    published.context("the publisher panicked")??;
    Ok(summary)
}

/// Tells concurrent replays' spill directories apart.
static REPLAYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A replay reading its plans, one partition after another.
struct Replayer<'a> {
    consumer: &'a ReplayConsumer,
    topic: &'a str,
    core: Core,
    registry: &'a IntegrationRegistry,
    scope: &'a ReplayScope,
    outbox: Outbox<Result<Confirmed, Refused>>,
    report: &'a dyn Fn(String),
    shutdown: &'a CancellationToken,
    summary: Summary,
}

impl Replayer<'_> {
    /// Reads every plan, then waits until RabbitMQ has confirmed every part.
    fn run(mut self, plans: &[PartitionPlan]) -> anyhow::Result<Summary> {
        for plan in plans {
            self.read(plan)?;
        }
        let partitions: Vec<i32> = plans.iter().map(|plan| plan.partition).collect();
        while !self.outbox.await_confirms(&partitions, PROGRESS_INTERVAL)? {
            (self.report)(format!(
                "  waiting for RabbitMQ to confirm {} more object(s)",
                self.outbox.unconfirmed(&partitions)
            ));
        }
        Ok(self.summary)
    }

    /// Reads one partition from the plan's start to its end, publishing the parts it closes.
    fn read(&mut self, plan: &PartitionPlan) -> anyhow::Result<()> {
        let (consumer, partition) = (self.consumer, plan.partition);
        self.core.assign(partition, None);
        self.outbox.ledger.assign(partition, None);
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(
            self.topic,
            partition,
            Offset::Offset(plan.start_offset),
        )?;
        consumer.assign(&assignment)?;
        let mut offsets = OffsetCheck::starting_at(Some(plan.start_offset));
        let next = |offsets: &OffsetCheck| offsets.next().unwrap_or(plan.start_offset);
        let mut last_read = Instant::now();
        let mut last_progress = Instant::now();
        while next(&offsets) < plan.end_offset {
            anyhow::ensure!(
                !self.shutdown.is_cancelled(),
                "stopped by shutdown at offset {} of partition {partition}",
                next(&offsets),
            );
            let message = match consumer.poll(Duration::from_millis(100)) {
                None => {
                    // Records below the planned end exist, so a read that yields nothing for
                    // this long is stuck (the broker, or the client's idea of the partition's
                    // leader after a broker pause); a new replay starts with a new client.
                    anyhow::ensure!(
                        last_read.elapsed() < STALL_TIMEOUT,
                        "partition {partition}: nothing read for {} s at offset {} of {}; run the replay again",
                        STALL_TIMEOUT.as_secs(),
                        next(&offsets),
                        plan.end_offset
                    );
                    continue;
                }
                // The partition ends before the planned end offset: the offsets left hold no
                // records (transaction markers, or retention deleted them meanwhile).
                Some(Err(KafkaError::PartitionEOF(eof))) if eof == partition => break,
                Some(message) => message?,
            };
            if message.partition() != partition {
                continue;
            }
            last_read = Instant::now();
            let Some(closed) = read_record(
                consumer,
                Some(&mut offsets),
                &mut self.core,
                self.registry,
                Horizon::Replay,
                self.scope.tenant.as_ref(),
                &message,
            )?
            else {
                continue;
            };
            self.summary.records += 1;
            self.publish(closed, plan)?;
            if last_progress.elapsed() >= PROGRESS_INTERVAL {
                last_progress = Instant::now();
                (self.report)(format!(
                    "  partition {partition}: at offset {} of {}, {} object(s) enqueued so far",
                    next(&offsets),
                    plan.end_offset,
                    self.summary.objects()
                ));
            }
        }
        if plan.to_end {
            let closed = self
                .core
                .close_idle(partition, now_unix_ms(), next(&offsets))?;
            self.publish(closed, plan)?;
        }
        self.summary.left_open += self.core.partition(partition).map_or(0, |s| s.open_parts());
        self.core.revoke(partition);
        consumer.unassign()?;
        Ok(())
    }

    /// Publishes the parts of windows in the range; the rest began before it, or are live
    /// batching's.
    fn publish(&mut self, closed: Vec<ClosedPart>, plan: &PartitionPlan) -> anyhow::Result<()> {
        let now = now_unix_ms();
        for part in closed {
            if part.window_start_ms < plan.first_window_ms
                || part.window_start_ms >= self.scope.to_ms
            {
                continue;
            }
            *self.summary.parts.entry(part.reason.as_str()).or_default() += 1;
            self.summary.events += part.content.event_count;
            self.summary.bytes += part.content.body.len() as u64;
            self.outbox.queue(part, now);
        }
        Ok(self.outbox.flush_waiting()?)
    }
}
