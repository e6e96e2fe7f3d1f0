//! `batcher replay`: rebuilds the windows of a range of the events topic with the live
//! batcher's core and enqueues their objects again (DESIGN §4). Each partition starts at the
//! first record of the window holding the requested start, which is where live batching
//! started that window, so the objects come out with the same keys and bytes; the uploader's
//! `If-None-Match` makes objects already delivered a no-op.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::clock::now_unix_ms;
use common::event::TenantId;
use common::read_to_end::{EndReachedContext, PARTITION_EOF};
use common::registry::IntegrationRegistry;
use common::shutdown::Supervisor;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{BatcherConfig, ReplayArgs, ReplayStart};
use crate::core::window::window_start;
use crate::core::{ClosedPart, Core, WindowSettings};
use crate::offsets::{OffsetCheck, admit};
use crate::publish::{self, Confirmed, Outgoing, Refused};
use crate::records::{Horizon, take_record};
use tokio_util::sync::CancellationToken;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long a partition may yield no record, short of its planned end, before the replay fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A replay's consumer: told when a partition's end is reached.
type ReplayConsumer = BaseConsumer<EndReachedContext>;

/// What a replay reads from one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    pub partition: i32,
    /// The first record of the window holding the requested start.
    pub start_offset: i64,
    /// Reading stops before this offset.
    pub end_offset: i64,
    /// Parts of windows starting before this are not published (they began before the range).
    pub first_window_ms: i64,
    /// No record closes the last window: reading stops at the end offset the broker reported
    /// when the replay was planned, and windows whose close time has passed are closed by the
    /// clock; later records are live batching's.
    pub to_end: bool,
}

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
    let summary = execute(config, &registry, &scope, supervisor.token(), print).await;
    supervisor.cancel();
    println!("{}", summary?);
    Ok(())
}

/// Rebuilds the windows of `scope` with the tenants' current integrations and enqueues their
/// objects, returning once RabbitMQ has confirmed every one. `report` receives the plan and
/// progress.
pub async fn execute(
    config: &BatcherConfig,
    registry: &IntegrationRegistry,
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
    )
    .context("cannot create the checkpoint reader")?;
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
            let plans = plan(&consumer, &topic, &start, to_ms, &settings);
            plans.map(|plans| (consumer, plans))
        })
        .await
        .context("planning panicked")??
    };
    describe_plan(
        &topic,
        &plans,
        to_ms,
        scope.tenant.as_ref(),
        &settings,
        &*report,
    );
    if plans.is_empty() {
        report("nothing to replay".to_owned());
        return Ok(Summary::default());
    }

    let (parts_tx, parts_rx) = tokio::sync::mpsc::channel(256);
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
    let (registry, only_tenant) = (registry.clone(), scope.tenant.clone());
    let replay_report = report.clone();
    let shutdown = token.clone();
    let summary = tokio::task::spawn_blocking(move || {
        replay(
            &consumer,
            &topic,
            core,
            &registry,
            only_tenant.as_ref(),
            &plans,
            to_ms,
            &parts_tx,
            &confirms_rx,
            &*replay_report,
            &shutdown,
        )
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

/// Works out, per partition, where reading starts and stops.
pub fn plan(
    consumer: &ReplayConsumer,
    topic: &str,
    start: &ReplayStart,
    to_ms: i64,
    settings: &WindowSettings,
) -> anyhow::Result<Vec<PartitionPlan>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let partitions = common::kafka::topic_partitions(&metadata, topic);
    anyhow::ensure!(!partitions.is_empty(), "the topic {topic} does not exist");
    let first_windows: Vec<(i32, i64)> = match start {
        ReplayStart::Time(from) => {
            let from_ms = i64::try_from(from.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            let first = window_start(from_ms, settings.length_ms);
            partitions.iter().map(|p| (*p, first)).collect()
        }
        ReplayStart::Offsets(offsets) => {
            let mut windows = Vec::new();
            for (partition, offset) in offsets {
                anyhow::ensure!(
                    partitions.contains(partition),
                    "{topic} has no partition {partition}"
                );
                let timestamp = timestamp_at(consumer, topic, *partition, *offset)?;
                windows.push((*partition, window_start(timestamp, settings.length_ms)));
            }
            windows
        }
    };
    let last_window_end = window_start(to_ms - 1, settings.length_ms) + settings.length_ms;
    let closing_time = last_window_end + settings.close_delay_ms;
    let mut plans = Vec::new();
    for (partition, first_window_ms) in first_windows {
        if first_window_ms >= to_ms {
            continue;
        }
        let (_, high) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
        let Some(start_offset) = offset_for_time(consumer, topic, partition, first_window_ms)?
        else {
            continue;
        };
        let (end_offset, to_end) = match offset_for_time(consumer, topic, partition, closing_time)?
        {
            // That record's time closes the last window: read it too.
            Some(closing) => (closing + 1, false),
            None => (high, true),
        };
        if start_offset < end_offset {
            plans.push(PartitionPlan {
                partition,
                start_offset,
                end_offset,
                first_window_ms,
                to_end,
            });
        }
    }
    Ok(plans)
}

/// The first offset of `partition` whose timestamp is at or after `time_ms`, if any: the
/// broker's answer from its time index.
fn offset_for_time(
    consumer: &ReplayConsumer,
    topic: &str,
    partition: i32,
    time_ms: i64,
) -> anyhow::Result<Option<i64>> {
    let mut query = TopicPartitionList::new();
    query.add_partition_offset(topic, partition, Offset::Offset(time_ms))?;
    let found = consumer
        .offsets_for_times(query, REQUEST_TIMEOUT)
        .with_context(|| format!("cannot look up offsets by time in {topic}/{partition}"))?;
    Ok(found
        .find_partition(topic, partition)
        .and_then(|e| e.offset().to_raw())
        .filter(|offset| *offset >= 0))
}

/// The timestamp of the record at `offset`, read from the broker.
fn timestamp_at(
    consumer: &ReplayConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<i64> {
    let (_, high) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
    anyhow::ensure!(
        offset < high,
        "{topic}/{partition} has no record at offset {offset} (it ends at {high})"
    );
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&assignment)?;
    let give_up = Instant::now() + REQUEST_TIMEOUT;
    let timestamp = loop {
        anyhow::ensure!(
            Instant::now() < give_up,
            "could not read {topic}/{partition} at offset {offset}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        break message.timestamp().to_millis().with_context(|| {
            format!(
                "the record at {partition}:{} has no timestamp",
                message.offset()
            )
        })?;
    };
    consumer.unassign()?;
    Ok(timestamp)
}

fn describe_plan(
    topic: &str,
    plans: &[PartitionPlan],
    to_ms: i64,
    tenant: Option<&TenantId>,
    settings: &WindowSettings,
    report: &dyn Fn(String),
) {
    report(format!(
        "replay of {topic}, windows of {} s from their start up to {} (exclusive), tenant: {}",
        settings.length_ms / 1000,
        common::clock::rfc3339_ms(to_ms),
        tenant.map_or_else(|| "all with an integration".to_owned(), ToString::to_string)
    ));
    for plan in plans {
        report(format!(
            "  partition {}: offsets {} to {}{}, windows from {}",
            plan.partition,
            plan.start_offset,
            plan.end_offset - 1,
            if plan.to_end { " (end of log)" } else { "" },
            common::clock::rfc3339_ms(plan.first_window_ms)
        ));
    }
}

#[allow(clippy::too_many_arguments)]
fn replay(
    consumer: &ReplayConsumer,
    topic: &str,
    mut core: Core,
    registry: &IntegrationRegistry,
    only_tenant: Option<&TenantId>,
    plans: &[PartitionPlan],
    to_ms: i64,
    parts: &tokio::sync::mpsc::Sender<Outgoing>,
    confirms: &std::sync::mpsc::Receiver<Result<Confirmed, Refused>>,
    report: &dyn Fn(String),
    shutdown: &CancellationToken,
) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let mut sent = 0_u64;
    let mut last_progress = Instant::now();
    let mut publish =
        |part: ClosedPart, summary: &mut Summary, plan: &PartitionPlan| -> anyhow::Result<()> {
            if part.window_start_ms < plan.first_window_ms || part.window_start_ms >= to_ms {
                return Ok(());
            }
            *summary.parts.entry(part.reason.as_str()).or_default() += 1;
            summary.events += part.content.event_count;
            summary.bytes += part.content.body.len() as u64;
            let outgoing = Outgoing {
                partition: part.partition,
                sequence: sent,
                job: part.job(now_unix_ms()),
                body: part.content.body,
            };
            sent += 1;
            parts
                .blocking_send(outgoing)
                .map_err(|_| anyhow::anyhow!("the publisher stopped"))
        };
    for plan in plans {
        core.assign(plan.partition, None);
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(
            topic,
            plan.partition,
            Offset::Offset(plan.start_offset),
        )?;
        consumer.assign(&assignment)?;
        let mut offsets = OffsetCheck::starting_at(Some(plan.start_offset));
        let next = |offsets: &OffsetCheck| offsets.next().unwrap_or(plan.start_offset);
        let mut last_read = Instant::now();
        while next(&offsets) < plan.end_offset {
            anyhow::ensure!(
                !shutdown.is_cancelled(),
                "stopped by shutdown at offset {} of partition {}",
                next(&offsets),
                plan.partition
            );
            let message = match consumer.poll(Duration::from_millis(100)) {
                None => {
                    // Records below the planned end exist, so a read that yields nothing for
                    // this long is stuck (the broker, or the client's idea of the partition's
                    // leader after a broker pause); a new replay starts with a new client.
                    anyhow::ensure!(
                        last_read.elapsed() < STALL_TIMEOUT,
                        "partition {}: nothing read for {} s at offset {} of {}; run the replay again",
                        plan.partition,
                        STALL_TIMEOUT.as_secs(),
                        next(&offsets),
                        plan.end_offset
                    );
                    continue;
                }
                // The partition ends before the planned end offset: the offsets left hold no
                // records (transaction markers, or retention deleted them meanwhile).
                Some(Err(KafkaError::PartitionEOF(partition))) if partition == plan.partition => {
                    break;
                }
                Some(message) => message?,
            };
            if message.partition() != plan.partition {
                continue;
            }
            last_read = Instant::now();
            if !admit(consumer, &mut offsets, &message) {
                continue;
            }
            summary.records += 1;
            for part in take_record(&mut core, registry, Horizon::Replay, only_tenant, &message)? {
                publish(part, &mut summary, plan)?;
            }
            if last_progress.elapsed() >= PROGRESS_INTERVAL {
                last_progress = Instant::now();
                report(format!(
                    "  partition {}: at offset {} of {}, {} object(s) enqueued so far",
                    plan.partition,
                    next(&offsets),
                    plan.end_offset,
                    summary.objects()
                ));
            }
        }
        if plan.to_end {
            for part in core.close_idle(plan.partition, now_unix_ms(), next(&offsets))? {
                publish(part, &mut summary, plan)?;
            }
        }
        summary.left_open += core.partition(plan.partition).map_or(0, |s| s.open_parts());
        core.revoke(plan.partition);
        consumer.unassign()?;
    }
    let mut confirmed = 0_u64;
    while confirmed < sent {
        match confirms.recv_timeout(PROGRESS_INTERVAL) {
            Ok(Ok(_)) => confirmed += 1,
            Ok(Err(refused)) => anyhow::bail!(
                "RabbitMQ cannot take {} ({} bytes, its limit is {}): set ACTIVITY_BATCHER_MAX_MESSAGE_BYTES to at most RabbitMQ's max_message_size, for the replay and the live batchers alike",
                refused.relative_key,
                refused.body_bytes,
                refused.limit
            ),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                report(format!(
                    "  waiting for RabbitMQ to confirm {} more object(s)",
                    sent - confirmed
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!(
                    "the publisher stopped with {} object(s) unconfirmed",
                    sent - confirmed
                )
            }
        }
    }
    Ok(summary)
}
