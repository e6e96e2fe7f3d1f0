//! What a record of the deliveries topic means for digests: a stored object, an integration
//! change, time passing, or nothing.

use common::delivery::{DeliveryRecord, IntegrationChange, RECORD_KIND_HEADER, record_kind};
use common::digest::{DigestedObject, timestamp_ms};
use common::event::TenantId;
use common::job::JobKind;
use rdkafka::message::{Headers, Message};

use super::fold::Entry;
use crate::clock::is_clock_record;

/// The digest entry of `message`, `Ok(None)` for a record digests do not list (a failed or
/// retried upload, a digest's own delivery, a record written before objects carried their
/// checksums, a kind of record this version does not know), or why it cannot be read.
pub fn entry_of<M: Message>(message: &M) -> Result<Option<Entry>, String> {
    if is_clock_record(message) {
        let at_ms = message
            .timestamp()
            .to_millis()
            .ok_or("a clock record without a timestamp")?;
        return Ok(Some(Entry::Clock { at_ms }));
    }
    let payload = message.payload().unwrap_or_default();
    match kind(message).as_deref() {
        None => {
            let record: DeliveryRecord = serde_json::from_slice(payload)
                .map_err(|error| format!("not a delivery record: {error}"))?;
            stored(record)
        }
        Some(record_kind::INTEGRATION) => {
            let change: IntegrationChange = serde_json::from_slice(payload)
                .map_err(|error| format!("not an integration change: {error}"))?;
            Ok(Some(Entry::Change {
                tenant: tenant(&change.tenant_id)?,
                active: change.active,
                reason: change.reason,
                prefix: change.prefix,
                at_ms: change.at_ms,
            }))
        }
        Some(_) => Ok(None),
    }
}

fn kind<M: Message>(message: &M) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|header| header.key == RECORD_KIND_HEADER)
        .map(|header| String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned())
}

fn tenant(raw: &str) -> Result<TenantId, String> {
    TenantId::parse(raw).map_err(|error| format!("tenant {raw:?}: {error}"))
}

fn stored(record: DeliveryRecord) -> Result<Option<Entry>, String> {
    if !record.outcome.is_stored() || record.kind != JobKind::Log {
        return Ok(None);
    }
    let (Some(key), Some(sha256), Some(partition), Some(first_offset), Some(last_offset)) = (
        record.key,
        record.sha256,
        record.partition,
        record.first_offset,
        record.last_offset,
    ) else {
        return Ok(None);
    };
    // The prefix is what the key holds before the relative key; an object stored under an
    // alternate key (diverged) does not show it.
    let prefix = key
        .strip_suffix(&record.relative_key)
        .map(|prefix| prefix.trim_end_matches('/').to_owned());
    Ok(Some(Entry::Stored {
        tenant: tenant(&record.tenant_id)?,
        prefix,
        object: DigestedObject {
            key,
            sha256,
            bytes: record.bytes,
            event_count: record.event_count,
            window_start: timestamp_ms(record.window_start_ms),
            window_end: timestamp_ms(record.window_end_ms),
            partition,
            first_offset,
            last_offset,
        },
        at_ms: record.at_ms,
    }))
}
