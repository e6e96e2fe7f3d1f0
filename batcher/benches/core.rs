//! Batching core benchmarks (no services needed):
//!
//! - `throughput`: the core's rate over a stream of events (windows, dedup, frames, closes)
//!   against raw zstd compression of the same NDJSON at the same level and frame size, in the
//!   same run; medians of 5 rounds.
//! - `memory`: 10,000 tenants with open windows under a memory budget; peak RSS of a process
//!   that does only this (run in a child process so the other mode does not count).
//! - `memory-tiny`: the same with twenty times as many events of about 100 bytes, where the
//!   per-event bookkeeping (event ids) weighs most.
//!
//! `cargo bench -p batcher --bench core` runs all; `-- throughput`, `-- memory` or
//! `-- memory-tiny` one.

use std::hint::black_box;
use std::time::Instant;

use batcher::core::{Core, PartSettings, Record, WindowSettings};
use common::event::TenantId;
use common::key::Codec;

const EVENTS: usize = 200_000;
const TENANTS: usize = 100;
const ROUNDS: usize = 5;
const FRAME_BYTES: usize = 64 * 1024;
const LEVEL: i32 = 3;
/// Stream time between two events.
const STREAM_MS_PER_EVENT: usize = 50;

fn settings() -> WindowSettings {
    WindowSettings {
        length_ms: 3_600_000,
        close_delay_ms: 5_000,
        max_object_bytes: 32 * 1024 * 1024,
        max_body_bytes: batcher::config::max_body_bytes(16 * 1024 * 1024),
        future_tolerance_ms: 60_000,
        part: PartSettings {
            frame_bytes: FRAME_BYTES,
            zstd_level: LEVEL,
        },
    }
}

/// A realistic activity event, ~450 bytes of compact JSON, with the per-event variety real
/// logs have (request ids, addresses, times): repeated synthetic text would let zstd run far
/// faster than it does on real logs.
fn event(tenant: &str, n: usize) -> Vec<u8> {
    let mut state = (n as u64).wrapping_mul(6_364_136_223_846_793_005) ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 16
    };
    let request = format!("{:016x}{:016x}", next(), next());
    let (a, d, ip) = (next() % 40, next() % 5_000, next());
    let types = [
        "device.lock",
        "device.wipe",
        "blueprint.update",
        "user.invite",
        "auth.login",
    ];
    format!(
        "{{\"actor\":{{\"email\":\"admin{a}@{tenant}.example\",\"id\":\"u-{a}\",\"ip\":\"10.{}.{}.{}\",\"type\":\"user\"}},\"details\":{{\"request_id\":\"{request}\",\"result\":\"{}\",\"user_agent\":\"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_{})\"}},\"id\":\"{tenant}-evt-{n:09}\",\"occurred_at\":\"2026-11-27T{:02}:{:02}:{:02}.{:03}Z\",\"target\":{{\"id\":\"dev-{d}\",\"name\":\"MacBook Pro {d}\",\"type\":\"device\"}},\"tenant_id\":\"{tenant}\",\"type\":\"{}\"}}",
        (ip >> 16) % 256,
        (ip >> 8) % 256,
        ip % 256,
        if next() % 10 == 0 { "failure" } else { "success" },
        next() % 7,
        (n / 72_000) % 24,
        (n / 1_200) % 60,
        (n / 20) % 60,
        next() % 1_000,
        types[(next() % 5) as usize],
    )
    .into_bytes()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn throughput() {
    let tenants: Vec<TenantId> = (0..TENANTS)
        .map(|t| TenantId::parse(&format!("tenant-{t}")).expect("tenant"))
        .collect();
    let events: Vec<(usize, String, Vec<u8>)> = (0..EVENTS)
        .map(|n| {
            let tenant = tenants[n % TENANTS].as_str();
            (
                n % TENANTS,
                format!("{tenant}-evt-{n:09}"),
                event(tenant, n),
            )
        })
        .collect();
    let raw_bytes: usize = events.iter().map(|(_, _, e)| e.len() + 1).sum();
    // The same bytes the core compresses: each tenant's NDJSON per window, cut into frames
    // of FRAME_BYTES, compressed with one reused context.
    let mut per_part: std::collections::BTreeMap<(usize, usize), Vec<u8>> = Default::default();
    for (offset, (t, _, e)) in events.iter().enumerate() {
        let window = offset * STREAM_MS_PER_EVENT / 3_600_000;
        let part = per_part.entry((window, *t)).or_default();
        part.extend_from_slice(e);
        part.push(b'\n');
    }
    let mut zstd_context = zstd::bulk::Compressor::new(LEVEL).expect("zstd context");
    let spill = std::env::temp_dir().join(format!("core-bench-{}", std::process::id()));
    std::fs::create_dir_all(&spill).expect("spill dir");
    let (mut core_secs, mut zstd_secs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for ndjson in per_part.values() {
            for frame in ndjson.chunks(FRAME_BYTES) {
                black_box(zstd_context.compress(frame).expect("zstd"));
            }
        }
        zstd_secs.push(started.elapsed().as_secs_f64());

        let mut core = Core::new(settings(), usize::MAX, spill.clone());
        core.assign(0, None);
        let started = Instant::now();
        let mut closed = 0;
        // 20 events per second of stream time: 200,000 events span ~2.8 hourly windows.
        for (offset, (t, id, line)) in events.iter().enumerate() {
            let offset = i64::try_from(offset).expect("offset");
            let record = Record {
                offset,
                timestamp_ms: offset * STREAM_MS_PER_EVENT as i64,
                tenant: &tenants[*t],
                event_id: id,
                line,
                codec: Codec::Zstd,
            };
            closed += core.push(0, &record).expect("push").len();
        }
        closed += core
            .close_idle(0, i64::MAX / 4, i64::try_from(EVENTS).expect("count"))
            .expect("close")
            .len();
        core_secs.push(started.elapsed().as_secs_f64());
        black_box(closed);
    }
    std::fs::remove_dir_all(&spill).ok();
    let (core, zstd) = (median(core_secs), median(zstd_secs));
    let mb = raw_bytes as f64 / 1e6;
    println!(
        "## core throughput ({EVENTS} events of ~{} B, {TENANTS} tenants, one partition, hourly windows, zstd level {LEVEL}, frames of {} KiB; medians of {ROUNDS})",
        raw_bytes / EVENTS,
        FRAME_BYTES / 1024
    );
    println!("| path | seconds | events/s | MB/s of NDJSON |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| batching core | {core:.3} | {:.0} | {:.1} |",
        EVENTS as f64 / core,
        mb / core
    );
    println!(
        "| raw zstd of the same frames | {zstd:.3} | {:.0} | {:.1} |",
        EVENTS as f64 / zstd,
        mb / zstd
    );
    println!("ratio core / raw zstd: {:.2}", zstd / core);
}

/// Peak resident set size of this process, from /proc.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// A tiny activity event, about 100 bytes of compact JSON.
fn tiny_event(tenant: &str, n: usize) -> Vec<u8> {
    format!(
        "{{\"id\":\"{tenant}-{n:06}\",\"occurred_at\":\"2026-11-27T10:00:00Z\",\"tenant_id\":\"{tenant}\",\"type\":\"auth.login\"}}"
    )
    .into_bytes()
}

/// 10,000 tenants with `per_tenant` events each (made by `line`), all in one open window, under
/// a 128 MiB budget.
fn memory(per_tenant: usize, line: fn(&str, usize) -> Vec<u8>) {
    const OPEN_TENANTS: usize = 10_000;
    const BUDGET: usize = 128 * 1024 * 1024;
    let tenants: Vec<TenantId> = (0..OPEN_TENANTS)
        .map(|t| TenantId::parse(&format!("tenant-{t:05}")).expect("tenant"))
        .collect();
    let spill = std::env::temp_dir().join(format!("core-memory-{}", std::process::id()));
    std::fs::create_dir_all(&spill).expect("spill dir");
    let mut core = Core::new(settings(), BUDGET, spill.clone());
    core.assign(0, None);
    let baseline = peak_rss_bytes();
    let started = Instant::now();
    let (mut raw, mut events) = (0, 0);
    let mut offset = 0_i64;
    for n in 0..per_tenant {
        for tenant in &tenants {
            let line = line(tenant.as_str(), n);
            raw += line.len() + 1;
            events += 1;
            let id = format!("{tenant}-{n}");
            let record = Record {
                offset,
                // All within the first window: every tenant's window stays open.
                timestamp_ms: 1_000,
                tenant,
                event_id: &id,
                line: &line,
                codec: Codec::Zstd,
            };
            assert!(core.push(0, &record).expect("push").is_empty());
            offset += 1;
        }
    }
    let filled = started.elapsed();
    let open = core.open_windows();
    let (memory, spilled) = (core.memory_bytes(), core.spilled_bytes());
    let closed = core.close_idle(0, i64::MAX / 4, offset).expect("close");
    assert_eq!(
        closed.len(),
        OPEN_TENANTS,
        "every window closes into one object"
    );
    let peak = peak_rss_bytes();
    std::fs::remove_dir_all(&spill).ok();
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
    println!(
        "## memory: {OPEN_TENANTS} tenants with open windows, {events} events of {} bytes on average",
        raw / events
    );
    println!(
        "| open windows | raw NDJSON buffered | budget | core's count at the end | spilled to disk | peak RSS | RSS before | fill time |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {open} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.1} s |",
        mib(raw as u64),
        mib(BUDGET as u64),
        mib(memory as u64),
        mib(spilled),
        mib(peak),
        mib(baseline),
        filled.as_secs_f64()
    );
    println!(
        "peak RSS - budget: {:.0} MiB (goal: at most 64 MiB)",
        mib(peak) - mib(BUDGET as u64)
    );
}

fn main() {
    let mode = std::env::args()
        .skip(1)
        .find(|a| ["throughput", "memory", "memory-tiny"].contains(&a.as_str()));
    match mode.as_deref() {
        Some("throughput") => throughput(),
        Some("memory") => memory(40, event),
        Some("memory-tiny") => memory(800, tiny_event),
        _ => {
            throughput();
            // Fresh processes, so each peak RSS is its memory scenario's alone.
            for scenario in ["memory", "memory-tiny"] {
                let status = std::process::Command::new(std::env::current_exe().expect("self"))
                    .arg(scenario)
                    .status()
                    .expect("run the memory scenario");
                assert!(status.success());
            }
        }
    }
}
