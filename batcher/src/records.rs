//! From Kafka records to what the core needs: the event's tenant and id, checked against the
//! record key, and whether (and how) the tenant gets deliveries for the record's time.

use std::borrow::Cow;

use common::clock::now_unix_ms;
use common::event::TenantId;
use common::event_line::top_level_strings;
use common::integration::Integration;
use common::key::Codec;

use common::registry::IntegrationRegistry;
use metrics::counter;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};

use crate::clock::is_clock_record;
use crate::core::window::window_start;
use crate::core::{ClosedPart, Core, Record, WindowSettings};
use crate::metrics::{FUTURE_RECORDS, INVALID_RECORDS, RECORDS, UNDELIVERED_RECORDS};
use crate::offsets::{OffsetCheck, admit};

/// The fields of an event the batcher reads; the line itself is delivered verbatim.
#[derive(Debug)]
pub struct EventFields<'a> {
    pub tenant: TenantId,
    pub id: Cow<'a, str>,
}

/// Why a record of the events topic cannot go into an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordProblem {
    #[error("the record has no value")]
    Empty,
    #[error("the value holds a raw newline, which would split an NDJSON line")]
    Newline,
    #[error("the value is not an event: {0}")]
    NotAnEvent(String),
    #[error("tenant_id {0:?} is not a valid tenant id")]
    BadTenant(String),
    #[error("the record key {key:?} differs from the event's tenant_id {tenant}")]
    KeyMismatch { key: String, tenant: TenantId },
}

#[derive(serde::Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    tenant_id: Cow<'a, str>,
}

/// The two fields through `event_line`'s scan, which answers for nearly every record; serde_json
/// reads the rest and names what is wrong with them.
fn fast_fields(value: &[u8]) -> Option<Fields<'_>> {
    let [id, tenant_id] = top_level_strings(value, ["id", "tenant_id"])?;
    Some(Fields {
        id: id.value()?,
        tenant_id: tenant_id.value()?,
    })
}

/// Reads the tenant and id of the event in `value`, keyed `key`.
pub fn read_event<'a>(
    key: Option<&[u8]>,
    value: Option<&'a [u8]>,
) -> Result<EventFields<'a>, RecordProblem> {
    let value = value
        .filter(|v| !v.is_empty())
        .ok_or(RecordProblem::Empty)?;
    if memchr::memchr(b'\n', value).is_some() {
        return Err(RecordProblem::Newline);
    }
    let fields = fast_fields(value).map_or_else(
        || serde_json::from_slice(value).map_err(|e| RecordProblem::NotAnEvent(e.to_string())),
        Ok,
    )?;
    let tenant = TenantId::parse(&fields.tenant_id)
        .map_err(|_| RecordProblem::BadTenant(fields.tenant_id.clone().into_owned()))?;
    if let Some(key) = key
        && key != tenant.as_str().as_bytes()
    {
        return Err(RecordProblem::KeyMismatch {
            key: String::from_utf8_lossy(key).into_owned(),
            tenant,
        });
    }
    if fields.id.is_empty() {
        return Err(RecordProblem::NotAnEvent("the id is empty".into()));
    }
    Ok(EventFields {
        tenant,
        id: fields.id,
    })
}

/// Which records of a connected tenant a reader takes.
///
/// A tenant connected at `T` gets every event accepted from the start of the window before
/// `T`'s window (DESIGN §1: the first delivery covers the previous hour, nothing older). Live
/// batching cannot deliver those windows: it read them before the integration existed. So live
/// batching starts with the first window that begins after `T` plus the close delay, a point
/// every batcher has learnt of the integration long before it reads records of that time, and
/// the windows before it are the *first delivery*, built by a replay once they have closed.
/// Either side takes a record or not by the integration and the record alone, so a rebuild or a
/// second replay makes the same objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Horizon {
    /// The live batcher: windows from [`live_from_ms`].
    Live,
    /// Replays, including first deliveries: windows from [`first_delivery_from_ms`].
    Replay,
}

/// Milliseconds since the epoch of the integration's `connected_at`.
pub fn connected_ms(integration: &Integration) -> i64 {
    common::clock::unix_ms(integration.connected_at)
}

/// The start of the window before the one the integration was connected in: nothing older is
/// ever delivered.
pub fn first_delivery_from_ms(connected_ms: i64, settings: &WindowSettings) -> i64 {
    window_start(connected_ms, settings.length_ms) - settings.length_ms
}

/// The first window live batching delivers: the one after the window holding the connection
/// time plus the close delay (which also bounds how long an integration may take to reach
/// every batcher).
pub fn live_from_ms(connected_ms: i64, settings: &WindowSettings) -> i64 {
    window_start(
        connected_ms.saturating_add(settings.close_delay_ms),
        settings.length_ms,
    ) + settings.length_ms
}

/// The codec to deliver a record of `timestamp_ms` in, or `None` when this reader does not
/// take it for its tenant: without an integration, or outside the `horizon`. A disabled
/// integration still gets its objects built: the uploader parks them in the dead-letter queue
/// until the customer enables it and they are redriven.
pub fn delivery_codec(
    integration: Option<&Integration>,
    timestamp_ms: i64,
    settings: &WindowSettings,
    horizon: Horizon,
) -> Option<Codec> {
    let integration = integration?;
    let connected = connected_ms(integration);
    let from = match horizon {
        Horizon::Live => live_from_ms(connected, settings),
        Horizon::Replay => first_delivery_from_ms(connected, settings),
    };
    (timestamp_ms >= from).then_some(integration.compression)
}

/// A record's time as batching uses it: its timestamp, but never more than `tolerance_ms` past
/// `now_ms`. A producer host whose clock runs hours ahead would otherwise move its partition's
/// stream time past every open window and close them all, and put its own events in a window
/// that closes hours from now; bounded, its events go in the window of the present. Returns
/// whether the timestamp was bounded.
pub fn bounded_timestamp(timestamp_ms: i64, now_ms: i64, tolerance_ms: i64) -> (i64, bool) {
    let latest = now_ms.saturating_add(tolerance_ms);
    if timestamp_ms > latest {
        (latest, true)
    } else {
        (timestamp_ms, false)
    }
}

/// The step every reader of the events topic takes per record, live batching and replays
/// alike: the record's offset is checked against the one its partition expects (`offsets`,
/// `None` for a partition with no check), and a record in place goes into `core`. `None` when
/// the record is not taken: `consumer` reads its partition again from the offset expected.
pub fn read_record<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: Option<&mut OffsetCheck>,
    core: &mut Core,
    registry: &IntegrationRegistry,
    horizon: Horizon,
    only_tenant: Option<&TenantId>,
    message: &BorrowedMessage<'_>,
) -> std::io::Result<Option<Vec<ClosedPart>>> {
    if offsets.is_some_and(|offsets| !admit(consumer, offsets, message)) {
        return Ok(None);
    }
    take_record(core, registry, horizon, only_tenant, message).map(Some)
}

/// Feeds one record of the events topic to `core`: into its tenant's part when the tenant gets
/// deliveries for it (and is `only_tenant`, when given), else only as time passing. Returns the
/// parts it closed. Live batching and replay both go through here, so they agree.
fn take_record(
    core: &mut Core,
    registry: &IntegrationRegistry,
    horizon: Horizon,
    only_tenant: Option<&TenantId>,
    message: &BorrowedMessage<'_>,
) -> std::io::Result<Vec<ClosedPart>> {
    let (partition, offset) = (message.partition(), message.offset());
    counter!(RECORDS).increment(1);
    let Some(stamped) = message.timestamp().to_millis() else {
        counter!(INVALID_RECORDS).increment(1);
        tracing::error!(partition, offset, "record without a timestamp skipped");
        return core.skip(partition, offset, None);
    };
    let tolerance = core.settings.future_tolerance_ms;
    let (timestamp, bounded) = bounded_timestamp(stamped, now_unix_ms(), tolerance);
    if bounded {
        counter!(FUTURE_RECORDS).increment(1);
    }
    let timestamp_ms = Some(timestamp);
    if is_clock_record(message) {
        // The time a batcher wrote into the log: it closes what it closes, like any record.
        return core.skip(partition, offset, timestamp_ms);
    }
    let event = match read_event(message.key(), message.payload()) {
        Ok(event) => event,
        Err(problem) => {
            counter!(INVALID_RECORDS).increment(1);
            tracing::error!(partition, offset, %problem, "unreadable record skipped");
            return core.skip(partition, offset, timestamp_ms);
        }
    };
    if only_tenant.is_some_and(|only| *only != event.tenant) {
        return core.skip(partition, offset, timestamp_ms);
    }
    let Some(codec) = registry.inspect(&event.tenant, |integration| {
        delivery_codec(integration, timestamp, &core.settings, horizon)
    }) else {
        counter!(UNDELIVERED_RECORDS).increment(1);
        return core.skip(partition, offset, timestamp_ms);
    };
    let record = Record {
        offset,
        timestamp_ms: timestamp,
        tenant: &event.tenant,
        event_id: &event.id,
        line: message.payload().unwrap_or_default(),
        codec,
    };
    core.push(partition, &record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_gives_its_tenant_and_id() {
        let fields = read_event(
            Some(b"acme"),
            Some(br#"{"id":"e1","tenant_id":"acme","type":"device.lock"}"#),
        )
        .expect("event");
        assert_eq!(fields.tenant.as_str(), "acme");
        assert_eq!(fields.id, "e1");
    }

    #[test]
    fn unusable_records_say_why() {
        assert_eq!(read_event(None, None).unwrap_err(), RecordProblem::Empty);
        assert_eq!(
            read_event(None, Some(b"{\"id\":\"e\",\n\"tenant_id\":\"a\"}")).unwrap_err(),
            RecordProblem::Newline
        );
        assert!(matches!(
            read_event(None, Some(br#"{"tenant_id":"acme"}"#)),
            Err(RecordProblem::NotAnEvent(m)) if m.contains("id")
        ));
        assert!(matches!(
            read_event(None, Some(br#"{"id":"e","tenant_id":"../etc"}"#)),
            Err(RecordProblem::BadTenant(_))
        ));
        assert!(matches!(
            read_event(Some(b"globex"), Some(br#"{"id":"e","tenant_id":"acme"}"#)),
            Err(RecordProblem::KeyMismatch { .. })
        ));
    }

    fn integration(connected_at_ms: i64) -> Integration {
        let at = common::clock::from_unix_ms(connected_at_ms).expect("time");
        serde_json::from_value(serde_json::json!({
            "tenant_id": "acme",
            "enabled": false,
            "aws_account_id": "123456789012",
            "bucket": "acme-logs",
            "prefix": "",
            "role_arn": "arn:aws:iam::123456789012:role/Writer",
            "external_id": "ext-0123456789",
            "region": "us-east-1",
            "compression": "gzip",
            "connected_at": at.format(&time::format_description::well_known::Rfc3339).expect("format"),
            "updated_at": at.format(&time::format_description::well_known::Rfc3339).expect("format"),
        }))
        .expect("integration")
    }

    fn settings(length_ms: i64, close_delay_ms: i64) -> WindowSettings {
        WindowSettings::for_tests(length_ms, close_delay_ms)
    }

    #[test]
    fn a_record_time_is_bounded_by_the_clock_plus_the_tolerance() {
        let now = 1_800_000_000_000;
        assert_eq!(bounded_timestamp(now - 5, now, 60_000), (now - 5, false));
        assert_eq!(
            bounded_timestamp(now + 60_000, now, 60_000),
            (now + 60_000, false)
        );
        assert_eq!(
            bounded_timestamp(now + 86_400_000, now, 60_000),
            (now + 60_000, true)
        );
    }

    #[test]
    fn replays_start_with_the_window_before_the_one_connected_in() {
        const HOUR: i64 = 3_600_000;
        let hourly = settings(HOUR, 120_000);
        let connected = integration(10 * HOUR + 25 * 60_000); // 10:25
        let codec =
            |timestamp, horizon| delivery_codec(Some(&connected), timestamp, &hourly, horizon);
        assert_eq!(codec(9 * HOUR, Horizon::Replay), Some(Codec::Gzip));
        assert_eq!(codec(9 * HOUR - 1, Horizon::Replay), None);
        assert_eq!(
            delivery_codec(None, 11 * HOUR, &hourly, Horizon::Replay),
            None
        );
        assert_eq!(
            codec(11 * HOUR, Horizon::Replay),
            Some(Codec::Gzip),
            "a disabled integration still gets its objects built"
        );
    }

    #[test]
    fn live_batching_starts_with_the_window_after_the_connection_and_its_margin() {
        const HOUR: i64 = 3_600_000;
        let hourly = settings(HOUR, 120_000);
        let at_10_25 = integration(10 * HOUR + 25 * 60_000);
        assert_eq!(
            delivery_codec(Some(&at_10_25), 11 * HOUR - 1, &hourly, Horizon::Live),
            None
        );
        assert_eq!(
            delivery_codec(Some(&at_10_25), 11 * HOUR, &hourly, Horizon::Live),
            Some(Codec::Gzip)
        );
        // Connected a minute before the hour: the margin reaches into the next window, which
        // a batcher may already be reading, so live batching starts one window later.
        let at_10_59 = integration(10 * HOUR + 59 * 60_000);
        assert_eq!(live_from_ms(connected_ms(&at_10_59), &hourly), 12 * HOUR);
        assert_eq!(
            first_delivery_from_ms(connected_ms(&at_10_59), &hourly),
            9 * HOUR
        );
    }
}
