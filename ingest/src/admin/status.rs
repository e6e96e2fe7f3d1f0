//! Each integration's delivery status, materialised from the `activity.deliveries` topic
//! (DESIGN §2): the last object stored, the last error, and what was delivered and what failed
//! over the last 24 hours, counted in hourly buckets; and which tenants are not getting their
//! logs (their uploads have failed, with none stored since, for longer than a setting).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::delivery::{DeliveryRecord, ErrorClass, Outcome};
use common::kafka::KafkaArgs;
use common::shutdown::Supervisor;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use serde::Serialize;

const HOUR_MS: i64 = 3_600_000;
/// Hourly buckets kept: the current hour and the 24 before it.
const HOURS: i64 = 24;
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The status part of `GET .../integrations/s3`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryStatus {
    pub last_delivery: Option<LastDelivery>,
    pub last_error: Option<LastError>,
    pub last_24h: Counts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastDelivery {
    pub at: String,
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub events: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    pub at: String,
    /// Why it failed; every failure the uploader records has a class.
    pub class: Option<ErrorClass>,
    pub code: Option<String>,
    pub message: Option<String>,
    /// What happened to the object: `retried` (it waits in a retry tier) or `dead_lettered`.
    pub outcome: Outcome,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub objects_delivered: u64,
    pub events_delivered: u64,
    pub objects_failed: u64,
    pub events_failed: u64,
    /// Attempts that failed and were scheduled again.
    pub retries: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.objects_delivered += other.objects_delivered;
        self.events_delivered += other.events_delivered;
        self.objects_failed += other.objects_failed;
        self.events_failed += other.events_failed;
        self.retries += other.retries;
    }
}

/// A tenant not getting its logs, as `GET /v1/stale-tenants` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleTenant {
    pub tenant_id: String,
    /// The first failed upload since the last object stored.
    pub failing_since: String,
    pub last_delivery: Option<LastDelivery>,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Default)]
struct TenantHistory {
    last_delivery: Option<(i64, LastDelivery)>,
    last_error: Option<(i64, LastError)>,
    /// When uploads started failing with no object stored since (ms since the epoch).
    failing_since: Option<i64>,
    /// Counts by hour (ms since the epoch / one hour).
    hours: BTreeMap<i64, Counts>,
}

/// Every tenant's history; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DeliveryStatuses {
    tenants: Arc<RwLock<HashMap<String, TenantHistory>>>,
}

impl DeliveryStatuses {
    /// Applies one delivery record.
    pub fn apply(&self, record: &DeliveryRecord) {
        // The status is about the tenant's logs; digests have alerts of their own.
        if record.kind != common::job::JobKind::Log {
            return;
        }
        let mut tenants = self
            .tenants
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let history = tenants.entry(record.tenant_id.clone()).or_default();
        let hour = record.at_ms.div_euclid(HOUR_MS);
        let counts = history.hours.entry(hour).or_default();
        match record.outcome {
            outcome if outcome.is_stored() => {
                counts.objects_delivered += 1;
                counts.events_delivered += record.event_count;
                if history
                    .failing_since
                    .is_some_and(|since| since <= record.at_ms)
                {
                    history.failing_since = None;
                }
                if history
                    .last_delivery
                    .as_ref()
                    .is_none_or(|(at, _)| *at <= record.at_ms)
                {
                    history.last_delivery = Some((
                        record.at_ms,
                        LastDelivery {
                            at: common::clock::rfc3339_ms(record.at_ms),
                            bucket: record.bucket.clone(),
                            key: record.key.clone(),
                            events: record.event_count,
                            bytes: record.bytes,
                        },
                    ));
                }
            }
            Outcome::Retried | Outcome::DeadLettered => {
                let stored_after = history
                    .last_delivery
                    .as_ref()
                    .is_some_and(|(at, _)| *at >= record.at_ms);
                if history.failing_since.is_none() && !stored_after {
                    history.failing_since = Some(record.at_ms);
                }
                if record.outcome == Outcome::Retried {
                    counts.retries += 1;
                } else {
                    counts.objects_failed += 1;
                    counts.events_failed += record.event_count;
                }
                if history
                    .last_error
                    .as_ref()
                    .is_none_or(|(at, _)| *at <= record.at_ms)
                {
                    history.last_error = Some((
                        record.at_ms,
                        LastError {
                            at: common::clock::rfc3339_ms(record.at_ms),
                            class: record.error_class,
                            code: record.error_code.clone(),
                            message: record.error_message.clone(),
                            outcome: record.outcome,
                            key: record.key.clone(),
                        },
                    ));
                }
            }
            // Discarded jobs belong to a tenant without an integration: no status to show; an
            // outcome a newer uploader records is not this version's to count.
            _ => {}
        }
        history.hours.retain(|h, _| *h > hour - HOURS);
    }

    /// The tenants `is_delivering` says are connected and enabled whose uploads have been
    /// failing, with no object stored since, for longer than `after_ms`, as of `now_ms`; in
    /// tenant order.
    pub fn stale(
        &self,
        now_ms: i64,
        after_ms: i64,
        is_delivering: impl Fn(&str) -> bool,
    ) -> Vec<StaleTenant> {
        let tenants = self
            .tenants
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stale: Vec<StaleTenant> = tenants
            .iter()
            .filter_map(|(tenant, history)| {
                let since = history.failing_since?;
                (now_ms - since > after_ms && is_delivering(tenant)).then(|| StaleTenant {
                    tenant_id: tenant.clone(),
                    failing_since: common::clock::rfc3339_ms(since),
                    last_delivery: history.last_delivery.as_ref().map(|(_, d)| d.clone()),
                    last_error: history.last_error.as_ref().map(|(_, e)| e.clone()),
                })
            })
            .collect();
        stale.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        stale
    }

    /// The tenant's status as of `now_ms`.
    pub fn status(&self, tenant: &str, now_ms: i64) -> DeliveryStatus {
        let tenants = self
            .tenants
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(history) = tenants.get(tenant) else {
            return DeliveryStatus::default();
        };
        let now_hour = now_ms.div_euclid(HOUR_MS);
        let mut last_24h = Counts::default();
        for counts in history.hours.range(now_hour - HOURS + 1..).map(|(_, c)| c) {
            last_24h.add(counts);
        }
        DeliveryStatus {
            last_delivery: history.last_delivery.as_ref().map(|(_, d)| d.clone()),
            last_error: history.last_error.as_ref().map(|(_, e)| e.clone()),
            last_24h,
        }
    }

    /// Forgets a tenant's history, when it disconnects.
    pub fn forget(&self, tenant: &str) {
        self.tenants
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(tenant);
    }

    /// Follows `topic` from its start under `supervisor`.
    pub async fn follow(
        &self,
        kafka: &KafkaArgs,
        topic: &str,
        supervisor: &Supervisor,
    ) -> anyhow::Result<()> {
        let consumer: StreamConsumer = kafka
            .client_config(&[
                ("group.id", "activity-deliveries-reader"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
            ])
            .create()?;
        let owned_topic = topic.to_owned();
        let consumer = tokio::task::spawn_blocking(move || {
            common::read_to_end::assign_from_beginning(&consumer, &owned_topic, METADATA_TIMEOUT)
                .map(|_| consumer)
        })
        .await??;
        let (statuses, token) = (self.clone(), supervisor.token());
        supervisor.spawn("delivery-status", async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    message = consumer.recv() => match message {
                        // Integration changes share the topic; clock records have no value.
                        Ok(message) if !common::delivery::is_delivery_record(message.headers()) => {}
                        Ok(message) => match message.payload().map(serde_json::from_slice::<DeliveryRecord>) {
                            Some(Ok(record)) => statuses.apply(&record),
                            Some(Err(error)) => tracing::warn!(partition = message.partition(), offset = message.offset(), %error, "skipped an unreadable delivery record"),
                            None => {}
                        },
                        Err(error) => tracing::warn!(%error, "reading the deliveries topic failed; retrying"),
                    },
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: Outcome, at_ms: i64, events: u64) -> DeliveryRecord {
        DeliveryRecord {
            kind: common::job::JobKind::Log,
            tenant_id: "acme".into(),
            relative_key: format!("acme/{at_ms}.jsonl.zst"),
            bucket: Some("acme-logs".into()),
            key: Some(format!("audit/acme/{at_ms}.jsonl.zst")),
            bytes: 100,
            event_count: events,
            window_start_ms: 0,
            window_end_ms: 0,
            sha256: None,
            partition: None,
            first_offset: None,
            last_offset: None,
            outcome,
            error_class: (outcome != Outcome::Stored).then_some(ErrorClass::Configuration),
            error_code: (outcome != Outcome::Stored).then(|| "AccessDenied".into()),
            error_message: None,
            attempt: 1,
            at_ms,
        }
    }

    #[test]
    fn a_tenant_is_stale_once_its_uploads_fail_longer_than_the_setting_with_none_stored() {
        let statuses = DeliveryStatuses::default();
        let (now, after) = (100 * HOUR_MS, 2 * HOUR_MS);
        statuses.apply(&record(Outcome::Stored, now - 5 * HOUR_MS, 3));
        statuses.apply(&record(Outcome::Retried, now - 3 * HOUR_MS, 3));
        statuses.apply(&record(Outcome::DeadLettered, now - HOUR_MS, 3));
        let stale = statuses.stale(now, after, |_| true);
        assert_eq!(
            stale
                .iter()
                .map(|t| (t.tenant_id.as_str(), t.failing_since.as_str()))
                .collect::<Vec<_>>(),
            [(
                "acme",
                common::clock::rfc3339_ms(now - 3 * HOUR_MS).as_str()
            )]
        );
        assert!(
            statuses.stale(now, after, |_| false).is_empty(),
            "a disabled or disconnected tenant is not waiting for logs"
        );
        // Failing for less than the setting: not yet.
        assert!(
            statuses
                .stale(now - 90 * 60_000, after, |_| true)
                .is_empty()
        );
        // An object stored since: delivering again.
        statuses.apply(&record(Outcome::Stored, now - 1000, 3));
        assert!(statuses.stale(now, after, |_| true).is_empty());
        // A failure recorded after an object stored later does not start a failing period.
        statuses.apply(&record(Outcome::Retried, now - 2000, 3));
        assert!(
            statuses
                .stale(now + 3 * HOUR_MS, after, |_| true)
                .is_empty()
        );
    }

    #[test]
    fn a_digests_delivery_is_not_a_log_delivery() {
        let statuses = DeliveryStatuses::default();
        let now = 100 * HOUR_MS;
        let mut digest = record(Outcome::Stored, now - 1000, 12);
        digest.kind = common::job::JobKind::Digest;
        statuses.apply(&digest);
        let status = statuses.status("acme", now);
        assert_eq!(status.last_24h, Counts::default());
        assert!(status.last_delivery.is_none());
    }

    #[test]
    fn the_status_shows_the_latest_of_each_and_counts_the_last_day() {
        let statuses = DeliveryStatuses::default();
        let now = 100 * HOUR_MS;
        statuses.apply(&record(Outcome::Stored, now - 30 * HOUR_MS, 7));
        statuses.apply(&record(Outcome::Stored, now - 2 * HOUR_MS, 5));
        statuses.apply(&record(Outcome::Retried, now - HOUR_MS, 3));
        statuses.apply(&record(Outcome::DeadLettered, now - 1000, 3));
        statuses.apply(&record(Outcome::AlreadyThere, now - 500, 4));
        let status = statuses.status("acme", now);
        assert_eq!(
            status.last_24h,
            Counts {
                objects_delivered: 2,
                events_delivered: 9,
                objects_failed: 1,
                events_failed: 3,
                retries: 1
            },
            "the delivery 30 h ago is outside the last 24 h"
        );
        let last = status.last_delivery.expect("delivered");
        assert_eq!(last.events, 4);
        let error = status.last_error.expect("failed");
        assert_eq!(error.outcome, Outcome::DeadLettered);
        assert_eq!(error.code.as_deref(), Some("AccessDenied"));
        assert_eq!(statuses.status("globex", now), DeliveryStatus::default());
    }
}
