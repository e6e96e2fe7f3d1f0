//! Delivery records: one per handled upload job on `activity.deliveries` (DESIGN §2), keyed by
//! tenant. They are the audit trail and feed each integration's status.

use serde::{Deserialize, Serialize};

use crate::kafka::TopicSpec;

/// The deliveries topic as services create it, keyed by tenant.
pub fn topic_spec(name: &str, replication: i32) -> TopicSpec<'_> {
    TopicSpec {
        name,
        partitions: 12,
        replication,
        config: vec![],
    }
}

/// Outcome labels, shared by records and metrics.
pub mod outcome {
    pub const STORED: &str = "stored";
    pub const ALREADY_THERE: &str = "already_there";
    /// Stored under an alternate key because a different object held the job's key; the
    /// record's `key` is where it went.
    pub const DIVERGED: &str = "diverged";
    pub const RETRIED: &str = "retried";
    pub const DEAD_LETTERED: &str = "dead_lettered";
    pub const DISCARDED: &str = "discarded";
}

/// What happened to one upload job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRecord {
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
    /// One of [`outcome`].
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The attempt this record is about, 1 for the first.
    pub attempt: u32,
    /// When the outcome happened, milliseconds since the epoch.
    pub at_ms: i64,
}
