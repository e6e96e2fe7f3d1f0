//! First deliveries (DESIGN §1 step 5): when a tenant connects, the windows from the one before
//! its connection up to where live batching takes over are built by a replay of that tenant
//! once they have closed (see [`crate::records::Horizon`] for why live batching cannot).
//!
//! Requests come from the first-deliveries topic, read in a consumer group of the batchers, so
//! exactly one batcher handles each; its offset is committed only once every request before it
//! is done, so a batcher that stops hands the rest to the next. A request runs again after a
//! crash, which is harmless: a replay makes the same objects, and `If-None-Match` makes the
//! second copy a no-op.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::clock::{now_unix_ms, unix_ms};
use common::integration::FirstDeliveryRequest;
use common::producer::HealingProducer;
use common::registry::IntegrationRegistry;
use metrics::{counter, gauge};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{BatcherConfig, ReplayStart};
use crate::core::WindowSettings;
use crate::metrics::{FIRST_DELIVERIES, FIRST_DELIVERIES_PENDING};
use crate::records::{connected_ms, first_delivery_from_ms, live_from_ms};
use crate::replay::{self, ReplayScope, Summary};

/// A failed first delivery is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// A request's place in the first-deliveries topic.
type Position = (i32, i64);

/// Which requests wait, when each is due, and what may be committed. Pure, so the ordering rules
/// are unit-tested.
#[derive(Debug, Default)]
pub struct Schedule {
    pending: BTreeMap<Position, Pending>,
    /// Per partition, the offset after the last record read.
    read: BTreeMap<i32, i64>,
}

#[derive(Debug, Clone)]
struct Pending {
    request: FirstDeliveryRequest,
    due_ms: i64,
}

impl Schedule {
    /// The wall-clock time a first delivery for a connection at `connected_ms` can run: once
    /// the last window it covers has closed, plus the close delay again for records accepted
    /// just before that close and written to Kafka just after.
    pub fn due_ms(connected_ms: i64, settings: &WindowSettings) -> i64 {
        live_from_ms(connected_ms, settings) + 2 * settings.close_delay_ms
    }

    /// A request read at `position`.
    pub fn add(&mut self, position: Position, request: FirstDeliveryRequest, due_ms: i64) {
        self.read_through(position);
        self.pending.insert(position, Pending { request, due_ms });
    }

    /// A record at `position` that needs no work (unreadable, already logged).
    pub fn read_through(&mut self, (partition, offset): Position) {
        let next = self.read.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
    }

    /// The request due first, if any.
    pub fn next_due(&self) -> Option<(Position, i64)> {
        self.pending
            .iter()
            .min_by_key(|(position, pending)| (pending.due_ms, **position))
            .map(|(position, pending)| (*position, pending.due_ms))
    }

    pub fn request(&self, position: Position) -> Option<&FirstDeliveryRequest> {
        self.pending.get(&position).map(|p| &p.request)
    }

    /// The request at `position` is finished (delivered, or stale).
    pub fn done(&mut self, position: Position) {
        self.pending.remove(&position);
    }

    /// The request at `position` failed; it runs again at `due_ms`.
    pub fn retry(&mut self, position: Position, due_ms: i64) {
        if let Some(pending) = self.pending.get_mut(&position) {
            pending.due_ms = due_ms;
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Per partition, the offset that may be committed: the oldest request not yet done, or
    /// everything read.
    pub fn committable(&self) -> BTreeMap<i32, i64> {
        let mut commit = self.read.clone();
        for (partition, offset) in self.pending.keys() {
            let entry = commit.entry(*partition).or_insert(*offset);
            *entry = (*entry).min(*offset);
        }
        commit
    }
}

/// How one request ended.
enum Outcome {
    Delivered(Summary),
    /// The tenant disconnected or reconnected since: nothing to do for this request.
    Stale(&'static str),
}

/// Reads first-delivery requests and runs each when due, until `token` is cancelled.
/// `writer` is the batcher's Kafka writer (`checkpoint::writer`), lent to each replay.
pub async fn run(
    config: Arc<BatcherConfig>,
    registry: IntegrationRegistry,
    writer: Arc<HealingProducer>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let topic = config.topics.first_deliveries_topic.clone();
    let group = format!("{}.first-deliveries", config.group);
    let consumer: StreamConsumer = config
        .kafka
        .client_config(&[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            common::kafka::QUIET_TOPIC_FETCH_WAIT,
        ])
        .create()
        .context("cannot create the first-deliveries consumer")?;
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("cannot subscribe to {topic}"))?;
    let settings = config.batching.window_settings();
    let mut schedule = Schedule::default();
    let mut running: Option<(Position, JoinHandle<anyhow::Result<Outcome>>)> = None;
    loop {
        gauge!(FIRST_DELIVERIES_PENDING).set(schedule.len() as f64);
        let wait = match (&running, schedule.next_due()) {
            (None, Some((_, due_ms))) => Some(Duration::from_millis(
                u64::try_from(due_ms - now_unix_ms()).unwrap_or(0),
            )),
            _ => None,
        };
        tokio::select! {
            () = token.cancelled() => {
                if let Some((_, task)) = running {
                    task.abort();
                }
                return Ok(());
            }
            message = consumer.recv() => match message {
                Ok(message) => {
                    let position = (message.partition(), message.offset());
                    match decode(message.payload()) {
                        Ok(request) => {
                            let due_ms = Schedule::due_ms(unix_ms(request.connected_at), &settings);
                            tracing::info!(tenant = %request.tenant_id, connected_at = %request.connected_at, due_in_ms = due_ms - now_unix_ms(), "first delivery scheduled");
                            schedule.add(position, request, due_ms);
                        }
                        Err(problem) => {
                            counter!(FIRST_DELIVERIES, "outcome" => "invalid").increment(1);
                            tracing::error!(partition = position.0, offset = position.1, %problem, "skipped an unreadable first-delivery request");
                            schedule.read_through(position);
                            commit(&consumer, &topic, &schedule);
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "reading first-delivery requests failed; retrying"),
            },
            () = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {
                if let Some((position, _)) = schedule.next_due()
                    && let Some(request) = schedule.request(position).cloned()
                {
                    let (config, registry, writer, token) =
                        (config.clone(), registry.clone(), writer.clone(), token.clone());
                    running = Some((position, tokio::spawn(async move {
                        deliver(&config, &registry, writer, &request, token).await
                    })));
                }
            }
            finished = async {
                match running.as_mut() {
                    Some((_, task)) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                let Some((position, _)) = running.take() else { continue };
                let tenant = schedule.request(position).map(|r| r.tenant_id.to_string()).unwrap_or_default();
                match finished.map_err(anyhow::Error::from).and_then(|result| result) {
                    Ok(Outcome::Delivered(summary)) => {
                        counter!(FIRST_DELIVERIES, "outcome" => "delivered").increment(1);
                        tracing::info!(%tenant, objects = summary.objects(), events = summary.events, "first delivery enqueued");
                        schedule.done(position);
                    }
                    Ok(Outcome::Stale(why)) => {
                        counter!(FIRST_DELIVERIES, "outcome" => "stale").increment(1);
                        tracing::info!(%tenant, why, "first-delivery request dropped");
                        schedule.done(position);
                    }
                    Err(error) => {
                        counter!(FIRST_DELIVERIES, "outcome" => "failed").increment(1);
                        tracing::warn!(%tenant, error = format!("{error:#}"), retry_in_s = RETRY_AFTER.as_secs(), "first delivery failed; it runs again");
                        let retry_ms = i64::try_from(RETRY_AFTER.as_millis()).unwrap_or(i64::MAX);
                        schedule.retry(position, now_unix_ms() + retry_ms);
                    }
                }
                commit(&consumer, &topic, &schedule);
            }
        }
    }
}

fn decode(payload: Option<&[u8]>) -> Result<FirstDeliveryRequest, String> {
    let payload = payload.ok_or("the record has no value")?;
    serde_json::from_slice(payload).map_err(|e| format!("not a first-delivery request: {e}"))
}

/// Replays the request's tenant over its first-delivery windows, if the request still matches
/// the tenant's integration.
async fn deliver(
    config: &BatcherConfig,
    registry: &IntegrationRegistry,
    writer: Arc<HealingProducer>,
    request: &FirstDeliveryRequest,
    token: CancellationToken,
) -> anyhow::Result<Outcome> {
    registry.caught_up().await;
    let connected = unix_ms(request.connected_at);
    let current = registry.inspect(&request.tenant_id, |i| i.map(connected_ms));
    match current {
        None => return Ok(Outcome::Stale("the tenant has no integration any more")),
        Some(current) if current != connected => {
            return Ok(Outcome::Stale(
                "the tenant reconnected since; that connection has its own request",
            ));
        }
        Some(_) => {}
    }
    let settings = config.batching.window_settings();
    let from_ms = first_delivery_from_ms(connected, &settings);
    let from =
        common::clock::from_unix_ms(from_ms).context("the first-delivery start is out of range")?;
    let scope = ReplayScope {
        from: ReplayStart::Time(from),
        to_ms: live_from_ms(connected, &settings),
        tenant: Some(request.tenant_id.clone()),
    };
    let tenant = request.tenant_id.to_string();
    let report: replay::Report = Arc::new(move |line| {
        tracing::info!(tenant = %tenant, "first delivery: {}", line.trim_start());
    });
    let summary = replay::execute(config, registry, writer, &scope, token, report).await?;
    Ok(Outcome::Delivered(summary))
}

fn commit(consumer: &StreamConsumer, topic: &str, schedule: &Schedule) {
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in schedule.committable() {
        if let Err(error) = offsets.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            tracing::warn!(%error, partition, offset, "cannot list a first-delivery offset");
        }
    }
    if offsets.count() > 0
        && let Err(error) = consumer.commit(&offsets, CommitMode::Async)
    {
        // The requests after the last commit run again after a restart, which is harmless.
        tracing::warn!(%error, "committing first-delivery progress failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::event::TenantId;
    use time::macros::datetime;

    fn request(tenant: &str) -> FirstDeliveryRequest {
        FirstDeliveryRequest {
            tenant_id: TenantId::parse(tenant).expect("tenant"),
            connected_at: datetime!(2026-11-27 10:25 UTC),
        }
    }

    #[test]
    fn requests_run_by_due_time_and_commits_wait_for_the_oldest() {
        let mut schedule = Schedule::default();
        schedule.add((0, 10), request("a"), 5_000);
        schedule.add((0, 11), request("b"), 1_000);
        schedule.read_through((0, 12));
        assert_eq!(schedule.next_due(), Some(((0, 11), 1_000)));
        schedule.done((0, 11));
        assert_eq!(
            schedule.committable().get(&0),
            Some(&10),
            "the request at 10 is not done"
        );
        schedule.retry((0, 10), 9_000);
        assert_eq!(schedule.next_due(), Some(((0, 10), 9_000)));
        schedule.done((0, 10));
        assert!(schedule.is_empty());
        assert_eq!(schedule.committable().get(&0), Some(&13));
    }

    #[test]
    fn a_first_delivery_is_due_after_its_last_window_closed_twice_over() {
        const HOUR: i64 = 3_600_000;
        let settings = WindowSettings::for_tests(HOUR, 120_000);
        // Connected at 10:25: live batching takes over at 11:00; the replay runs at 11:04.
        assert_eq!(
            Schedule::due_ms(10 * HOUR + 25 * 60_000, &settings),
            11 * HOUR + 240_000
        );
    }
}
