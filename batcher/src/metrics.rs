//! The batcher's metrics, each declared once with its description.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Records read from the events topic.
pub const RECORDS: &str = "activity_batcher_records_total";
/// Offsets passed over because the broker holds no record there even when read again (retention
/// deleted them before they were read, or transaction markers): their events are not delivered.
pub const SKIPPED_OFFSETS: &str = "activity_batcher_skipped_offsets_total";
/// Times a partition was read again from the offset expected next, after a record arrived at
/// another offset.
pub const REFETCHES: &str = "activity_batcher_offset_refetches_total";
/// Kafka consumers replaced, by reason: one fetched an assigned partition from no broker while
/// the cluster had a leader for it (`unfetched_partition`), or did not rejoin its group after
/// losing its session while the cluster answered (`not_rejoined`).
pub const CONSUMER_REPLACEMENTS: &str = "activity_batcher_consumer_replacements_total";
/// Records skipped because they are not readable events (logged with partition and offset).
pub const INVALID_RECORDS: &str = "activity_batcher_invalid_records_total";
/// Records of tenants without an integration, or older than the tenant's first delivery.
pub const UNDELIVERED_RECORDS: &str = "activity_batcher_undelivered_records_total";
/// Clock records written to idle partitions of the events topic (`crate::clock`).
pub const CLOCK_RECORDS: &str = "activity_batcher_clock_records_total";
/// Records stamped further ahead of the batcher's clock than the tolerance; batched at the
/// tolerance's end instead (`records::bounded_timestamp`).
pub const FUTURE_RECORDS: &str = "activity_batcher_future_records_total";
/// Records dropped because their event id was already in their part.
pub const DUPLICATES: &str = "activity_batcher_duplicate_events_total";
/// Parts closed, by reason (window, size, late).
pub const PARTS_CLOSED: &str = "activity_batcher_parts_closed_total";
/// Open (tenant, window) pairs.
pub const OPEN_WINDOWS: &str = "activity_batcher_open_windows";
/// Open parts, late parts included.
pub const OPEN_PARTS: &str = "activity_batcher_open_parts";
/// Bytes of open parts held in memory.
pub const BUFFERED_BYTES: &str = "activity_batcher_buffered_bytes";
/// Bytes of frames spilled to the disk cache.
pub const SPILLED_BYTES: &str = "activity_batcher_spilled_bytes_total";
/// Parts closed and waiting for RabbitMQ.
pub const PUBLISH_BACKLOG: &str = "activity_batcher_publish_backlog_parts";
/// Parts RabbitMQ confirmed.
pub const PUBLISHED: &str = "activity_batcher_published_parts_total";
/// Time from sending a part to RabbitMQ's confirm.
pub const PUBLISH_CONFIRM_LATENCY: &str = "activity_batcher_publish_confirm_latency_seconds";
/// Parts larger than RabbitMQ takes, not published (their partitions' offsets stay behind them).
pub const REFUSED_PARTS: &str = "activity_batcher_refused_parts_total";
/// RabbitMQ sessions that failed (the publisher reconnects).
pub const PUBLISH_FAILURES: &str = "activity_batcher_publish_failures_total";
/// Records between a partition's committed offset and what was read, by partition.
pub const COMMIT_LAG: &str = "activity_batcher_commit_lag_records";
/// Records between what was read and the end of the partition, by partition.
pub const CONSUMER_LAG: &str = "activity_batcher_consumer_lag_records";
/// The next offset to read, by partition.
pub const NEXT_OFFSET: &str = "activity_batcher_next_offset";
/// Checkpoints written and offsets committed.
pub const COMMITS: &str = "activity_batcher_commits_total";

/// First-delivery requests handled, by outcome (delivered, stale, failed, invalid).
pub const FIRST_DELIVERIES: &str = "activity_batcher_first_deliveries_total";
/// First-delivery requests waiting for their windows to close.
pub const FIRST_DELIVERIES_PENDING: &str = "activity_batcher_first_deliveries_pending";
/// Signed digests queued for upload (RabbitMQ confirmed them).
pub const DIGESTS: &str = "activity_batcher_digests_total";
/// Digests that could not be signed; the builder stops and rebuilds from its last checkpoint.
pub const DIGEST_SIGNING_FAILURES: &str = "activity_batcher_digest_signing_failures_total";
/// Records of the deliveries topic the digest builder could not read (logged with partition
/// and offset); what they said is missing from digests.
pub const DIGEST_UNREADABLE_RECORDS: &str = "activity_batcher_digest_unreadable_records_total";

pub fn describe() {
    common::metrics::register_counters(&[
        RECORDS,
        SKIPPED_OFFSETS,
        REFETCHES,
        CONSUMER_REPLACEMENTS,
        INVALID_RECORDS,
        UNDELIVERED_RECORDS,
        FUTURE_RECORDS,
        CLOCK_RECORDS,
        DUPLICATES,
        SPILLED_BYTES,
        PUBLISHED,
        PUBLISH_FAILURES,
        REFUSED_PARTS,
        COMMITS,
    ]);
    describe_counter!(
        FIRST_DELIVERIES,
        Unit::Count,
        "First-delivery requests handled, by outcome (delivered, stale, failed, invalid)."
    );
    describe_gauge!(
        FIRST_DELIVERIES_PENDING,
        Unit::Count,
        "First-delivery requests waiting for their windows to close."
    );
    describe_counter!(RECORDS, Unit::Count, "Records read from the events topic.");
    describe_counter!(
        DIGESTS,
        Unit::Count,
        "Signed digests queued for upload (RabbitMQ confirmed them)."
    );
    describe_counter!(
        DIGEST_SIGNING_FAILURES,
        Unit::Count,
        "Digests that could not be signed; the builder rebuilds from its last checkpoint."
    );
    describe_counter!(
        DIGEST_UNREADABLE_RECORDS,
        Unit::Count,
        "Records of the deliveries topic the digest builder could not read."
    );
    describe_counter!(
        SKIPPED_OFFSETS,
        Unit::Count,
        "Offsets of the events topic the broker holds no record at even when read again (retention, transaction markers): logged with partition and range."
    );
    describe_counter!(
        REFETCHES,
        Unit::Count,
        "Times a partition was read again from the offset expected next, after a record arrived at another offset."
    );
    describe_counter!(
        CONSUMER_REPLACEMENTS,
        Unit::Count,
        "Kafka consumers replaced, by reason: an assigned partition fetched from no broker while the cluster had a leader for it (unfetched_partition), or no rejoin after a lost group session while the cluster answered (not_rejoined)."
    );
    describe_counter!(
        INVALID_RECORDS,
        Unit::Count,
        "Records skipped because they are not readable events (logged with partition and offset)."
    );
    describe_counter!(
        UNDELIVERED_RECORDS,
        Unit::Count,
        "Records of tenants without an integration, or older than the tenant's first delivery."
    );
    describe_counter!(
        CLOCK_RECORDS,
        Unit::Count,
        "Clock records written to idle partitions of the events topic, whose reading closes their windows by the time."
    );
    describe_counter!(
        FUTURE_RECORDS,
        Unit::Count,
        "Records stamped further ahead of the batcher's clock than ACTIVITY_BATCHER_FUTURE_TOLERANCE, batched as if stamped that far ahead."
    );
    describe_counter!(
        DUPLICATES,
        Unit::Count,
        "Records dropped because their event id was already in their part."
    );
    describe_counter!(
        PARTS_CLOSED,
        Unit::Count,
        "Parts closed, by reason (window, size, late)."
    );
    describe_gauge!(OPEN_WINDOWS, Unit::Count, "Open (tenant, window) pairs.");
    describe_gauge!(OPEN_PARTS, Unit::Count, "Open parts, late parts included.");
    describe_gauge!(
        BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes of open parts held in memory."
    );
    describe_counter!(
        SPILLED_BYTES,
        Unit::Bytes,
        "Bytes of frames spilled to the disk cache."
    );
    describe_gauge!(
        PUBLISH_BACKLOG,
        Unit::Count,
        "Parts closed and waiting for RabbitMQ."
    );
    describe_counter!(PUBLISHED, Unit::Count, "Parts RabbitMQ confirmed.");
    describe_histogram!(
        PUBLISH_CONFIRM_LATENCY,
        Unit::Seconds,
        "Time from sending a part to RabbitMQ's confirm."
    );
    describe_counter!(
        REFUSED_PARTS,
        Unit::Count,
        "Parts larger than RabbitMQ takes, not published (their partitions' offsets stay behind them)."
    );
    describe_counter!(
        PUBLISH_FAILURES,
        Unit::Count,
        "RabbitMQ sessions that failed (the publisher reconnects)."
    );
    describe_gauge!(
        COMMIT_LAG,
        Unit::Count,
        "Records between a partition's committed offset and what was read, by partition."
    );
    describe_gauge!(
        CONSUMER_LAG,
        Unit::Count,
        "Records between what was read and the end of the partition, by partition."
    );
    describe_gauge!(
        NEXT_OFFSET,
        Unit::Count,
        "The next offset to read, by partition."
    );
    describe_counter!(
        COMMITS,
        Unit::Count,
        "Checkpoints written and offsets committed."
    );
}
