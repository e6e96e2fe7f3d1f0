//! Ingest's metrics, each declared once with its description.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Requests answered, by HTTP status code.
pub const REQUESTS: &str = "activity_ingest_requests_total";
/// Events acknowledged by Kafka and answered with 202.
pub const EVENTS_ACCEPTED: &str = "activity_ingest_events_accepted_total";
/// Events of requests that were refused, by reason (the error code of the answer).
pub const EVENTS_REJECTED: &str = "activity_ingest_events_rejected_total";
/// Time from handing a request's events to the producer until Kafka acknowledged all of them.
pub const PRODUCE_LATENCY: &str = "activity_ingest_produce_latency_seconds";
/// Request body sizes after decompression.
pub const REQUEST_BODY: &str = "activity_ingest_request_body_bytes";
/// Per partition of the events topic, the offset after the last record Kafka acknowledged to
/// this ingest: with the batchers' positions, how far they are behind (alert
/// `ActivityConsumerLagGrowing`), measured without relying on the batchers alone.
pub const EVENTS_END_OFFSET: &str = "activity_ingest_events_end_offset";
/// Request bytes held in memory right now.
pub const INFLIGHT_BYTES: &str = "activity_ingest_inflight_bytes";

/// Admin API requests answered, by route and HTTP status code.
pub const ADMIN_REQUESTS: &str = "activity_ingest_admin_requests_total";
/// Connected, enabled tenants not getting their logs (`GET /v1/stale-tenants`); no tenant
/// label, so the series count does not grow with tenants.
pub const STALE_TENANTS: &str = "activity_ingest_stale_tenants";

pub fn describe() {
    common::metrics::register_counters(&[EVENTS_ACCEPTED]);
    describe_gauge!(
        EVENTS_END_OFFSET,
        Unit::Count,
        "Per events partition, the offset after the last record Kafka acknowledged to this ingest."
    );
    describe_gauge!(
        STALE_TENANTS,
        Unit::Count,
        "Connected, enabled tenants whose uploads have failed longer than ACTIVITY_ADMIN_STALE_AFTER with none stored since."
    );
    describe_counter!(
        ADMIN_REQUESTS,
        Unit::Count,
        "Admin API requests answered, by route and HTTP status code."
    );
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Requests answered, by HTTP status code."
    );
    describe_counter!(
        EVENTS_ACCEPTED,
        Unit::Count,
        "Events acknowledged by Kafka and answered with 202."
    );
    describe_counter!(
        EVENTS_REJECTED,
        Unit::Count,
        "Events of refused requests, by reason (the answer's error code)."
    );
    describe_histogram!(
        PRODUCE_LATENCY,
        Unit::Seconds,
        "Time from handing a request's events to the producer until Kafka acknowledged all of them."
    );
    describe_histogram!(
        REQUEST_BODY,
        Unit::Bytes,
        "Request body sizes after decompression."
    );
    describe_gauge!(
        INFLIGHT_BYTES,
        Unit::Bytes,
        "Request bytes held in memory right now."
    );
}
