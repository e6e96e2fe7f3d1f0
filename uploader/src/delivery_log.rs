//! The delivery log: one record per attempt at a job on the deliveries topic (DESIGN §4), which
//! the admin API's delivery status and the signed digests are built from.

use std::time::Duration;

use common::clock::now_unix_ms;
use common::delivery::{self, DeliveryRecord};
use common::job::UploadJob;
use common::producer::HealingProducer;
use metrics::counter;

use crate::error::UploadError;
use crate::metrics::DELIVERY_RECORDS_FAILED;

/// Where delivery records go.
pub struct DeliveryLog {
    pub producer: HealingProducer,
    pub topic: String,
}

/// How long writing a delivery record may hold up the acknowledgement of its job.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

impl DeliveryLog {
    /// Writes a record; returns whether Kafka took it. A failure is logged and counted; the
    /// caller sends a stored object's job round again, so its record is written later.
    pub async fn write(&self, record: &DeliveryRecord) -> bool {
        let value = match serde_json::to_vec(record) {
            Ok(value) => value,
            Err(error) => {
                tracing::error!(%error, "cannot encode a delivery record");
                return false;
            }
        };
        let sent = self
            .producer
            .send(&self.topic, &record.tenant_id, Some(&value), RECORD_TIMEOUT)
            .await;
        if let Err(error) = &sent {
            counter!(DELIVERY_RECORDS_FAILED).increment(1);
            tracing::error!(%error, key = %record.relative_key, "cannot write a delivery record");
        }
        sent.is_ok()
    }
}

/// The record of one attempt at `job` (`bytes` long), and where its object went, if anywhere.
pub fn record(
    job: &UploadJob,
    bytes: usize,
    outcome: delivery::Outcome,
    error: Option<&UploadError>,
    destination: Option<(String, String)>,
) -> DeliveryRecord {
    let (bucket, key) = destination.unzip();
    DeliveryRecord {
        kind: job.kind,
        tenant_id: job.tenant_id.to_string(),
        relative_key: job.relative_key.clone(),
        bucket,
        key,
        bytes: bytes as u64,
        event_count: job.event_count,
        window_start_ms: job.window_start_ms,
        window_end_ms: job.window_end_ms,
        sha256: Some(job.sha256_hex.clone()),
        partition: Some(job.partition),
        first_offset: Some(job.first_offset),
        last_offset: Some(job.last_offset),
        outcome,
        error_class: error.map(|e| e.class),
        error_code: error.map(|e| e.code.clone()),
        error_message: error.map(|e| e.message.clone()),
        attempt: job.attempt.saturating_add(1),
        at_ms: now_unix_ms(),
    }
}
