//! The uploader's metrics, each declared once with its description.

use metrics::{Unit, describe_counter};

/// Deliveries handled, by outcome and error class.
pub const UPLOADS: &str = "activity_uploader_uploads_total";
/// Delivery records that could not be written to Kafka.
pub const DELIVERY_RECORDS_FAILED: &str = "activity_uploader_delivery_records_failed_total";
/// AssumeRole calls made to STS.
pub const ASSUME_ROLE_CALLS: &str = "activity_uploader_assume_role_calls_total";
/// Uploads that reused cached assumed-role credentials.
pub const ASSUME_ROLE_CACHE_HITS: &str = "activity_uploader_assume_role_cache_hits_total";

pub fn describe() {
    describe_counter!(
        UPLOADS,
        Unit::Count,
        "Deliveries handled, by outcome and error class."
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
