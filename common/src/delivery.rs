//! Delivery records: one per handled upload job on `activity.deliveries` (DESIGN §2), keyed by
//! tenant. They are the audit trail and feed each integration's status and the signed digests.
//!
//! Two other kinds of record share the topic: the admin API's [`IntegrationChange`]s, marked by
//! the [`RECORD_KIND_HEADER`] and keyed by tenant, so they sit in order with the tenant's
//! deliveries; and the digest builder's clock records (no value, time passing on an idle
//! partition). Digests are built from this topic alone, so a rebuild sees the same tenants,
//! objects and period ends as the first build.

use serde::{Deserialize, Serialize};

use crate::job::JobKind;
use crate::kafka::TopicSpec;

/// The header naming a record that is not a [`DeliveryRecord`]; its value is one of
/// [`record_kind`]. Readers skip kinds they do not handle.
pub const RECORD_KIND_HEADER: &str = "activity-record";

/// Values of the [`RECORD_KIND_HEADER`].
pub mod record_kind {
    pub const INTEGRATION: &str = "integration";
}

/// Whether a record carrying `headers` is a delivery record.
pub fn is_delivery_record(headers: Option<&rdkafka::message::BorrowedHeaders>) -> bool {
    use rdkafka::message::Headers;
    headers.is_none_or(|headers| {
        headers
            .iter()
            .all(|header| header.key != RECORD_KIND_HEADER)
    })
}

/// A tenant's integration was saved or deleted: whether delivery is on for the tenant from
/// here on in the log, and why. Written by the admin API once the change is saved; a write that
/// fails fails the request, whose retry writes it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrationChange {
    pub tenant_id: String,
    /// Connected and enabled.
    pub active: bool,
    /// One of [`crate::digest::reason`].
    pub reason: String,
    /// The destination prefix in force, where the tenant's digests are stored; absent when
    /// the integration was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    pub at_ms: i64,
}

/// The deliveries topic as services create it, keyed by tenant.
pub fn topic_spec(name: &str, replication: i32) -> TopicSpec<'_> {
    TopicSpec {
        name,
        partitions: 12,
        replication,
        config: vec![],
    }
}

/// What happened to one attempt at a job, as records and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Stored,
    /// The key held the same object already (an earlier attempt stored it).
    AlreadyThere,
    /// Stored under an alternate key because a different object held the job's key; the
    /// record's `key` is where it went.
    Diverged,
    Retried,
    DeadLettered,
    /// The tenant has no integration: nowhere to deliver.
    Discarded,
    /// One a newer uploader records and this version does not know (a rolling upgrade): the
    /// record is still read, and counts as none of the above.
    #[serde(other)]
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::AlreadyThere => "already_there",
            Self::Diverged => "diverged",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::Discarded => "discarded",
            Self::Unknown => "unknown",
        }
    }

    /// Whether the job's object is in the bucket (under its key, or beside it when diverged).
    pub fn is_stored(self) -> bool {
        matches!(self, Self::Stored | Self::AlreadyThere | Self::Diverged)
    }
}

/// What a failure means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Transient: throttling, 5xx, timeouts, network, expired credentials. Next retry tier.
    Retryable,
    /// The customer's setup is wrong: access denied, no such bucket, wrong region, role or
    /// external id refused. Dead-letter at once and record it on the integration's status.
    Configuration,
    /// The tenant has no integration any more. Ack, count, log.
    Discard,
    /// The integration is disabled. Park in the dead-letter queue until it is enabled again.
    Park,
    /// The job itself is unusable (bad headers, tenant mismatch, checksum of the body). Dead-letter.
    InvalidJob,
    /// One a newer uploader records and this version does not know (a rolling upgrade); never
    /// the class of a failure here.
    #[serde(other)]
    Unknown,
}

impl ErrorClass {
    /// The label used in metrics and delivery records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Configuration => "configuration",
            Self::Discard => "discard",
            Self::Park => "park",
            Self::InvalidJob => "invalid_job",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to one upload job. Fields it does not know are ignored when read, so records a
/// newer uploader writes during a rolling upgrade still count in an older ingest's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// A log object or a digest; absent (a log object) in records written before digests.
    #[serde(default, skip_serializing_if = "JobKind::is_log")]
    pub kind: JobKind,
    pub tenant_id: String,
    /// The object key without the customer's prefix.
    pub relative_key: String,
    /// Bucket and full key, when the destination was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub bytes: u64,
    pub event_count: u64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// The object's SHA-256 (hex), the Kafka partition and the offsets it covers: what a
    /// tenant's signed digest lists for each stored object. Absent in records written before
    /// they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_offset: Option<i64>,
    pub outcome: Outcome,
    /// Why the attempt failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The attempt this record is about, 1 for the first.
    pub attempt: u32,
    /// When the outcome happened, milliseconds since the epoch.
    pub at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_a_newer_version_wrote_is_read() {
        let record = DeliveryRecord {
            kind: JobKind::Log,
            tenant_id: "acme".into(),
            relative_key: "acme/2026/11/30/14/acme_20261130T1400Z_0-0.jsonl.zst".into(),
            bucket: Some("acme-logs".into()),
            key: Some("audit/acme/2026/11/30/14/acme_20261130T1400Z_0-0.jsonl.zst".into()),
            bytes: 120,
            event_count: 3,
            window_start_ms: 1_796_047_200_000,
            window_end_ms: 1_796_050_800_000,
            sha256: Some("ab".repeat(32)),
            partition: Some(0),
            first_offset: Some(0),
            last_offset: Some(2),
            outcome: Outcome::Stored,
            error_class: None,
            error_code: None,
            error_message: None,
            attempt: 1,
            at_ms: 1_796_050_805_000,
        };
        let mut newer = serde_json::to_value(&record).expect("serialize");
        newer["digest"] = serde_json::json!({"hour": "2026-11-30T14"});
        let read: DeliveryRecord = serde_json::from_value(newer).expect("a newer record");
        assert_eq!(read, record);
    }

    /// A record with only the fields every version writes.
    fn fewest_fields(outcome: &str) -> serde_json::Value {
        serde_json::json!({
            "tenant_id": "acme", "relative_key": "acme/x.jsonl.zst", "bytes": 1,
            "event_count": 1, "window_start_ms": 0, "window_end_ms": 1,
            "outcome": outcome, "attempt": 1, "at_ms": 2
        })
    }

    #[test]
    fn an_outcome_a_newer_version_records_is_read_as_unknown() {
        let read: DeliveryRecord =
            serde_json::from_value(fewest_fields("quarantined")).expect("a newer record");
        assert_eq!(read.outcome, Outcome::Unknown);
        assert!(!read.outcome.is_stored());
        let written = serde_json::to_value(Outcome::AlreadyThere).expect("serialize");
        assert_eq!(written, serde_json::json!(Outcome::AlreadyThere.as_str()));
    }

    #[test]
    fn an_error_class_a_newer_version_records_is_read_as_unknown() {
        let mut newer = fewest_fields("dead_lettered");
        newer["error_class"] = serde_json::json!("quota");
        let read: DeliveryRecord = serde_json::from_value(newer).expect("a newer record");
        assert_eq!(read.error_class, Some(ErrorClass::Unknown));
        let written = serde_json::to_value(ErrorClass::InvalidJob).expect("serialize");
        assert_eq!(written, serde_json::json!(ErrorClass::InvalidJob.as_str()));
    }

    #[test]
    fn a_record_written_before_checksums_were_recorded_is_read_without_them() {
        let read: DeliveryRecord =
            serde_json::from_value(fewest_fields("stored")).expect("an older record");
        assert_eq!(
            (read.sha256, read.partition, read.first_offset),
            (None, None, None)
        );
    }
}
