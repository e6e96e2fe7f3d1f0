//! The harness the integration tests share: real servers on loopback (started by
//! `scripts/local-services.sh`), fresh topics and queues per test, and the services started
//! from one description ([`plan`]) as processes, or in this process through their library
//! entry points.

pub mod admin;
pub mod batching;
pub mod bench;
pub mod customer;
pub mod digests;
pub mod e2e;
pub mod fault_proxy;
pub mod fixtures;
pub mod kafka;
pub mod kafka_cluster;
pub mod pipeline;
pub mod plan;
pub mod process;
pub mod prometheus;
pub mod services;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

/// The repository's root. Cargo gives a test its package's directory at run time; the path
/// compiled in is only a fallback, because a build shared between two checkouts (one target
/// directory) keeps the path of whichever checkout compiled it.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
