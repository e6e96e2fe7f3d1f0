//! Making an accepted event's canonical form: `Event::from_json` (members read in place,
//! `common::canonical`) against what it did before, parsing into a `serde_json::Value` and
//! writing it (`Event::from_value`), in the same run over the same 1,000 events of about 490
//! bytes; medians of 5 rounds. `cargo bench -p common --bench canonical`.
//!
//! Both validate the four required fields and give the same bytes (checked here first). The
//! events are the producers' compact JSON with keys in another order than canonical.

use std::hint::black_box;

use common::event::Event;
use support::{EVENTS, PASSES, ROUNDS, canonical_event, median_ns};

mod support;

const LIMIT: usize = 256 * 1024;

/// The event as a producer might send it: its keys in reverse order, with spaces.
fn as_sent(canonical: &[u8]) -> Vec<u8> {
    let value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(canonical).expect("an object");
    let members: Vec<String> = value
        .iter()
        .rev()
        .map(|(key, value)| format!("{key:?}: {value}"))
        .collect();
    format!("{{{}}}", members.join(", ")).into_bytes()
}

fn main() {
    let sent: Vec<Vec<u8>> = (0..EVENTS).map(|n| as_sent(&canonical_event(n))).collect();
    for json in &sent {
        let direct = Event::from_json(json, LIMIT).expect("an event");
        let value = serde_json::from_slice(json).expect("JSON");
        let tree = Event::from_value(value, LIMIT).expect("an event");
        assert_eq!(direct.canonical_json(), tree.canonical_json());
    }
    let bytes = sent.iter().map(Vec::len).sum::<usize>() / EVENTS;
    println!(
        "{EVENTS} events of {bytes} bytes on average as sent, made canonical {PASSES} times a \
         round; ns per event, medians of {ROUNDS} rounds\n"
    );
    let tree = median_ns(&sent, |json| {
        let value = serde_json::from_slice(json).expect("JSON");
        black_box(Event::from_value(value, LIMIT).expect("an event"))
            .canonical_json()
            .len()
    });
    let direct = median_ns(&sent, |json| {
        black_box(Event::from_json(json, LIMIT).expect("an event"))
            .canonical_json()
            .len()
    });
    println!("| through a Value tree | read in place | tree / in place |");
    println!("| ---: | ---: | ---: |");
    println!("| {tree:.0} | {direct:.0} | {:.2} |", tree / direct);
}
