//! Reading an event line's top-level fields: `common::event_line`'s scan against serde_json
//! into a struct of just those fields, in the same run, over the same canonical events of about
//! 490 bytes; medians of 5 rounds. `cargo bench -p common --bench event_line`.
//!
//! The 1,000 events are read 100 times a round, so they stay in the CPU's cache, as a line is
//! in both services when it is read: the batcher reads a record librdkafka has just copied, the
//! uploader a line it has just decompressed. (Over 100,000 distinct events, 49 MB, each read
//! of a line's tail waits on memory the scan has no sequential stream to prefetch from.)

use std::borrow::Cow;
use std::hint::black_box;
use std::time::Instant;

use common::event_line::top_level_strings;

const EVENTS: usize = 1_000;
const PASSES: usize = 100;
const ROUNDS: usize = 5;

/// Canonical JSON (keys sorted, compact) of a realistic event, as ingest stores it.
fn canonical_event(n: usize) -> Vec<u8> {
    let event = serde_json::json!({
        "id": format!("evt-{n:012}"),
        "tenant_id": format!("tenant-{}", n % 100),
        "type": "device.lock",
        "occurred_at": "2026-11-27T10:15:30.123Z",
        "actor": {"type": "admin", "id": "usr_8f14e45fceea167a5a36dedd4bea2543",
                  "email": "it-admin@example.com", "ip": "203.0.113.42"},
        "target": {"type": "device", "id": "dev_c9f0f895fb98ab9159f51fd0297e236d",
                   "name": "MacBook Pro (Finance-0423)", "serial": "C02XK1ZZJGH5"},
        "details": {"reason": "Lost device reported by owner", "message": "Locked via MDM command",
                    "pin_set": true, "blueprint": "Finance Laptops"},
    });
    serde_json::to_vec(&event).expect("serialize")
}

#[derive(serde::Deserialize)]
struct IdAndTenant<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    tenant_id: Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct Tenant<'a> {
    #[serde(borrow)]
    tenant_id: Cow<'a, str>,
}

/// Median nanoseconds per line of `read` over `lines`.
fn median_ns(lines: &[Vec<u8>], read: impl Fn(&[u8]) -> usize) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            let mut total = 0;
            for _ in 0..PASSES {
                for line in lines {
                    total += read(black_box(line));
                }
            }
            black_box(total);
            started.elapsed().as_nanos() as f64 / (PASSES * lines.len()) as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() {
    let lines: Vec<Vec<u8>> = (0..EVENTS).map(canonical_event).collect();
    let bytes = lines.iter().map(Vec::len).sum::<usize>() / EVENTS;
    println!(
        "{EVENTS} canonical events of {bytes} bytes on average, read {PASSES} times a round; \
         ns per event, medians of {ROUNDS} rounds\n"
    );
    let serde_both = median_ns(&lines, |line| {
        let fields: IdAndTenant<'_> = serde_json::from_slice(line).expect("event");
        fields.id.len() + fields.tenant_id.len()
    });
    let scan_both = median_ns(&lines, |line| {
        let [id, tenant] = top_level_strings(line, ["id", "tenant_id"]).expect("scanned");
        id.value().expect("id").len() + tenant.value().expect("tenant").len()
    });
    let serde_tenant = median_ns(&lines, |line| {
        let fields: Tenant<'_> = serde_json::from_slice(line).expect("event");
        fields.tenant_id.len()
    });
    let scan_tenant = median_ns(&lines, |line| {
        let [tenant] = top_level_strings(line, ["tenant_id"]).expect("scanned");
        tenant.value().expect("tenant").len()
    });
    println!("| fields (who reads them) | serde_json | event_line | serde_json / event_line |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| id and tenant_id (batcher) | {serde_both:.0} | {scan_both:.0} | {:.1} |",
        serde_both / scan_both
    );
    println!(
        "| tenant_id (uploader) | {serde_tenant:.0} | {scan_tenant:.0} | {:.1} |",
        serde_tenant / scan_tenant
    );
}
