//! The services' own binaries run as separate processes, for tests that kill, signal or outlive
//! them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::services::free_port;

/// A binary cargo built beside the running test (`cargo test --workspace` builds them all).
pub fn binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("test binary path");
    let binary = test
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .expect("target directory");
    assert!(
        binary.exists(),
        "{} is not built (cargo test --workspace builds it)",
        binary.display()
    );
    binary
}

/// A service process with its health endpoints on a free loopback port; SIGKILLed when dropped.
pub struct ServiceProcess {
    child: Child,
    base_url: String,
}

impl ServiceProcess {
    /// Starts the service binary `name` with `args`, logging to the test's stderr at the level
    /// `ACTIVITY_TEST_SERVICE_LOG` gives (default `warn`).
    pub fn spawn(name: &str, args: &[&str]) -> Self {
        Self::spawn_at(name, free_port(), args)
    }

    /// As [`Self::spawn`], listening on `port`: a service started again where its clients
    /// already send.
    pub fn spawn_at(name: &str, port: u16, args: &[&str]) -> Self {
        let child = Command::new(binary(name))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env(
                "ACTIVITY_LOG",
                std::env::var("ACTIVITY_TEST_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        Self {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The process id, for reading its CPU time and memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The HTTP status of `/readyz`, or `None` while nothing answers.
    pub async fn readiness(&self) -> Option<u16> {
        let answer = reqwest::get(self.url("/readyz")).await.ok()?;
        Some(answer.status().as_u16())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) {
        crate::wait_for(
            "the service to be ready",
            Duration::from_secs(60),
            || async { (self.readiness().await? == 200).then_some(()) },
        )
        .await;
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit; returns its exit code.
    pub async fn terminate(&mut self, within: Duration) -> Option<i32> {
        signal(self.child.id(), "-TERM");
        let give_up = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the process") {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < give_up,
                "the process did not stop within {within:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.try_metrics().await.expect("scrape /metrics")
    }

    /// The Prometheus text of `/metrics`, or `None` while the service does not answer.
    pub async fn try_metrics(&self) -> Option<String> {
        reqwest::get(self.url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (`kill`'s syntax: `-TERM`, `-STOP`) to the process `pid`, failing the test
/// when it cannot be sent.
pub fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
    assert!(
        sent.is_ok_and(|s| s.success()),
        "send {signal} to process {pid}"
    );
}

/// The value of the first sample of `metric` in a Prometheus text exposition (labels ignored).
pub fn metric_value(exposition: &str, metric: &str) -> Option<f64> {
    labelled_metric_value(exposition, metric, "")
}

/// The value of the first sample of `metric` whose labels contain `label` (`partition="0"`).
pub fn labelled_metric_value(exposition: &str, metric: &str, label: &str) -> Option<f64> {
    samples(exposition, metric)
        .find(|(labels, _)| labels.contains(label))
        .map(|(_, value)| value)
}

/// The sum of every sample of `metric`, whatever its labels.
pub fn metric_sum(exposition: &str, metric: &str) -> f64 {
    samples(exposition, metric).map(|(_, value)| value).sum()
}

/// The samples of `metric`: what follows its name (labels and value) and the value.
fn samples<'a>(exposition: &'a str, metric: &'a str) -> impl Iterator<Item = (&'a str, f64)> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(move |line| {
            let rest = line.strip_prefix(metric)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            Some((rest, rest.rsplit(' ').next()?.parse().ok()?))
        })
}
