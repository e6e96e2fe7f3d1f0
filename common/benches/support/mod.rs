//! What the event benches share: realistic events and a timing of many passes over them.

use std::hint::black_box;
use std::time::Instant;

pub const EVENTS: usize = 1_000;
pub const PASSES: usize = 100;
pub const ROUNDS: usize = 5;

/// Canonical JSON (keys sorted, compact) of a realistic event, as ingest stores it.
pub fn canonical_event(n: usize) -> Vec<u8> {
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

/// Median nanoseconds per line of `read` over `lines`.
pub fn median_ns(lines: &[Vec<u8>], read: impl Fn(&[u8]) -> usize) -> f64 {
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
