//! The uploader's metrics, each declared once with its description.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Deliveries handled, by outcome and error class.
pub const UPLOADS: &str = "activity_uploader_uploads_total";
/// Time from taking a job off the queue until it is stored (successful uploads only).
pub const UPLOAD_LATENCY: &str = "activity_uploader_upload_latency_seconds";
/// Time from a window's end until its object was stored: the end-to-end delivery lag, the
/// system's key SLO (objects that were already there are not counted).
pub const DELIVERY_LAG: &str = "activity_uploader_delivery_lag_seconds";
/// Time from a digest period's end until its digest was stored: how long a customer waits to
/// verify an hour (digests already there are not counted).
pub const DIGEST_LAG: &str = "activity_uploader_digest_lag_seconds";
/// Objects stored under an alternate key because a different object already held their key.
pub const DIVERGED_OBJECTS: &str = "activity_uploader_diverged_objects_total";
/// Sizes of stored objects.
pub const OBJECT_SIZE: &str = "activity_uploader_object_size_bytes";
/// Jobs sent to a retry tier, by tier (1-based).
pub const RETRIES: &str = "activity_uploader_retries_total";
/// Uploads in progress in this process.
pub const IN_FLIGHT: &str = "activity_uploader_in_flight_uploads";
/// Messages waiting in the dead-letter queue, as last polled.
pub const DLQ_DEPTH: &str = "activity_uploader_dlq_depth_messages";
/// Delivery records that could not be written to Kafka.
pub const DELIVERY_RECORDS_FAILED: &str = "activity_uploader_delivery_records_failed_total";
/// Jobs put in the first retry tier because their tenant had its share of uploads running.
pub const DEFERRED: &str = "activity_uploader_deferred_total";
/// RabbitMQ sessions lost and reopened.
pub const RECONNECTS: &str = "activity_uploader_amqp_reconnects_total";
/// AssumeRole calls made to STS.
pub const ASSUME_ROLE_CALLS: &str = "activity_uploader_assume_role_calls_total";
/// Uploads that reused cached assumed-role credentials.
pub const ASSUME_ROLE_CACHE_HITS: &str = "activity_uploader_assume_role_cache_hits_total";

pub fn describe() {
    common::metrics::register_counters(&[
        DELIVERY_RECORDS_FAILED,
        DIVERGED_OBJECTS,
        DEFERRED,
        RECONNECTS,
        ASSUME_ROLE_CALLS,
        ASSUME_ROLE_CACHE_HITS,
    ]);
    describe_histogram!(
        UPLOAD_LATENCY,
        Unit::Seconds,
        "Time from taking a job off the queue until it is stored (successful uploads only)."
    );
    describe_histogram!(OBJECT_SIZE, Unit::Bytes, "Sizes of stored objects.");
    describe_histogram!(
        DELIVERY_LAG,
        Unit::Seconds,
        "Time from a window's end until its object was stored (objects already there are not counted)."
    );
    describe_histogram!(
        DIGEST_LAG,
        Unit::Seconds,
        "Time from a digest period's end until its digest was stored (digests already there are not counted)."
    );
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Jobs sent to a retry tier, by tier (1-based)."
    );
    describe_gauge!(
        IN_FLIGHT,
        Unit::Count,
        "Uploads in progress in this process."
    );
    describe_gauge!(
        DLQ_DEPTH,
        Unit::Count,
        "Messages waiting in the dead-letter queue, as last polled."
    );
    describe_counter!(
        UPLOADS,
        Unit::Count,
        "Deliveries handled, by outcome and error class."
    );
    describe_counter!(
        DIVERGED_OBJECTS,
        Unit::Count,
        "Objects stored under an alternate key because a different object already held their key."
    );
    describe_counter!(
        DEFERRED,
        Unit::Count,
        "Jobs put in the first retry tier because their tenant had its share of uploads running."
    );
    describe_counter!(
        RECONNECTS,
        Unit::Count,
        "RabbitMQ sessions lost and reopened."
    );
    describe_counter!(
        ASSUME_ROLE_CALLS,
        Unit::Count,
        "AssumeRole calls made to STS."
    );
    describe_counter!(
        ASSUME_ROLE_CACHE_HITS,
        Unit::Count,
        "Uploads that reused cached assumed-role credentials."
    );
}
