//! A body of millions of tiny events is refused for its count before anything is kept per event
//! (a 5 MiB body of `{}` lines used to allocate some 70 MB of line entries first). The test
//! binary measures the heap with dhat, so it holds this one test.

use ingest::body::{Format, Limits, parse_events};
use ingest::error::ApiError;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

const EVENTS: usize = 1_700_000;

/// `item` `EVENTS` times between `open` and `close`, separated by `separator`, built in one
/// allocation so the heap's peak before parsing is what is live.
fn body(open: &str, item: &str, separator: &str, close: &str) -> String {
    let mut body =
        String::with_capacity(open.len() + EVENTS * (item.len() + separator.len()) + close.len());
    body.push_str(open);
    for n in 0..EVENTS {
        if n > 0 {
            body.push_str(separator);
        }
        body.push_str(item);
    }
    body.push_str(close);
    body
}

#[test]
fn millions_of_tiny_events_are_refused_without_an_entry_per_event() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let limits = Limits {
        max_event_bytes: 64 * 1024,
        max_body_bytes: 8 * 1024 * 1024,
        max_events: 1_000,
    };
    let lines = body("", "{}", "\n", "\n");
    let array = body("[", "{}", ",", "]");
    for (format, body) in [(Format::Ndjson, &lines), (Format::JsonArray, &array)] {
        let before = dhat::HeapStats::get();
        let result = parse_events(body.as_bytes(), format, &limits);
        let after = dhat::HeapStats::get();
        assert!(
            matches!(
                result,
                Err(ApiError::TooManyEvents {
                    count: EVENTS,
                    limit: 1_000
                })
            ),
            "{format:?}: {result:?}"
        );
        // The peak so far was the bodies themselves; parsing may add little to what is live.
        let peak_growth = after
            .max_bytes
            .saturating_sub(before.max_bytes.max(before.curr_bytes));
        assert!(
            peak_growth < 1024 * 1024,
            "{format:?}: the heap's peak grew by {peak_growth} bytes to refuse a {} byte body",
            body.len()
        );
    }
}
