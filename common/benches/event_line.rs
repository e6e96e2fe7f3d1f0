//! Reading an event line's top-level fields: `common::event_line`'s scan against serde_json
//! into a struct of just those fields, in the same run, over the same canonical events of about
//! 490 bytes; medians of 5 rounds. `cargo bench -p common --bench event_line`.
//!
//! The 1,000 events are read 100 times a round, so they stay in the CPU's cache, as a line is
//! in both services when it is read: the batcher reads a record librdkafka has just copied, the
//! uploader a line it has just decompressed. (Over 100,000 distinct events, 49 MB, each read
//! of a line's tail waits on memory the scan has no sequential stream to prefetch from.)

use common::event_line::top_level_strings;
use std::borrow::Cow;
use support::{EVENTS, PASSES, ROUNDS, canonical_event, median_ns};

mod support;

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
