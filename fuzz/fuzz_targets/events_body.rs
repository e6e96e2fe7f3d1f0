//! Feeds arbitrary bytes to ingest's body decoder and parser, as NDJSON and as a JSON array.
//! Besides "never panics", it checks what the rest of the system relies on: every accepted event
//! is one line of canonical JSON that re-parses to the same bytes, within the size limit.
#![no_main]

use common::event::Event;
use ingest::body::{Format, Limits, decode_content, parse_events};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_event_bytes: 4096,
    max_body_bytes: 64 * 1024,
    max_events: 100,
};

fuzz_target!(|data: &[u8]| {
    for format in [Format::Ndjson, Format::JsonArray] {
        let Ok(events) = parse_events(data, format, &LIMITS) else {
            continue;
        };
        assert!(!events.is_empty() && events.len() <= LIMITS.max_events);
        for event in &events {
            let canonical = event.canonical_json();
            assert!(canonical.len() <= LIMITS.max_event_bytes);
            assert!(!canonical.contains(&b'\n'), "canonical JSON spans lines");
            let again = Event::from_json(canonical, LIMITS.max_event_bytes)
                .expect("canonical JSON of an accepted event is accepted");
            assert_eq!(again.canonical_json(), canonical);
        }
    }
    if let Ok(decoded) = decode_content(bytes::Bytes::copy_from_slice(data), Some("gzip"), LIMITS.max_body_bytes) {
        assert!(decoded.len() <= LIMITS.max_body_bytes);
    }
});
