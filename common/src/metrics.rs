//! The process-wide Prometheus recorder.
//!
//! Bucket layouts follow the metric's unit, so every `*_seconds` histogram in the system shares
//! latency buckets and every `*_bytes` histogram shares size buckets, and dashboards can compare
//! them across services.

use std::sync::Mutex;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets for latencies, from a millisecond to the two-hour delivery lag alert and beyond.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Buckets for payload sizes, from 256 B to 64 MiB.
pub const BYTES_BUCKETS: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the global recorder on first call and returns a handle to render it; later calls
/// (several services in one test process) share the same recorder.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let mut slot = HANDLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS)?
        .install_recorder()?;
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Exports `counters` at zero from the start, so a dashboard's `rate()` and an alert's
/// comparison have a series before the first event happens.
pub fn register_counters(counters: &[&'static str]) {
    for name in counters {
        metrics::counter!(*name).increment(0);
    }
}
