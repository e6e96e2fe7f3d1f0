//! A Prometheus server of the test's own (the one `scripts/local-services.sh` unpacks), scraping
//! the services every second and evaluating a copy of the shipped alert rules on a compressed
//! time scale: every minute in a range, an offset or a `for` reads as a second, every hour as a
//! minute. The rules' expressions and thresholds are otherwise the shipped ones, so an alert seen
//! to fire here fires on the same fault in production, only later.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The server binary: `ACTIVITY_TEST_PROMETHEUS`, or where `local-services.sh` unpacks it.
fn binary() -> PathBuf {
    std::env::var_os("ACTIVITY_TEST_PROMETHEUS").map_or_else(
        || PathBuf::from("/opt/activity-logs/prometheus/usr/bin/prometheus"),
        PathBuf::from,
    )
}

/// `alerts.yml` with its durations compressed (see the module's documentation).
pub fn compressed_rules(shipped: &str) -> String {
    shipped
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("expr:") {
                line.replace("m]", "s]")
                    .replace("m:", "s:")
                    .replace("h]", "m]")
                    .replace("offset 30m", "offset 30s")
            } else if let Some(duration) = trimmed.strip_prefix("for: ") {
                let indent = &line[..line.len() - trimmed.len()];
                let seconds = duration.replace('m', "s").replace('h', "m");
                format!("{indent}for: {seconds}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    child: Child,
    url: String,
    dir: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` (job name, `host:port` targets) every second, with the
    /// shipped alert rules compressed.
    pub async fn start(jobs: &[(&str, Vec<String>)]) -> Self {
        let dir = std::env::temp_dir().join(crate::unique("prometheus"));
        std::fs::create_dir_all(&dir).expect("Prometheus directory");
        let shipped =
            std::fs::read_to_string(crate::repo_root().join("deploy/prometheus/alerts.yml"))
                .expect("the shipped alert rules");
        std::fs::write(dir.join("alerts.yml"), compressed_rules(&shipped)).expect("rules");
        let scrape: Vec<serde_json::Value> = jobs
            .iter()
            .map(|(job, targets)| {
                serde_json::json!({"job_name": job, "static_configs": [{"targets": targets}]})
            })
            .collect();
        // JSON is YAML: the configuration needs no YAML writer.
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": scrape,
        });
        std::fs::write(dir.join("prometheus.yml"), config.to_string()).expect("configuration");
        let port = crate::services::free_port();
        let child = Command::new(binary())
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Prometheus (scripts/local-services.sh unpacks it)");
        let prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::new(),
        };
        crate::wait_for(
            "Prometheus to be ready",
            Duration::from_secs(60),
            || async {
                let ready = prometheus
                    .http
                    .get(format!("{}/-/ready", prometheus.url))
                    .send()
                    .await;
                ready.ok()?.status().is_success().then_some(())
            },
        )
        .await;
        prometheus
    }

    /// The alerts in state `firing`, by name, from Prometheus's own alerts API.
    pub async fn firing(&self) -> Option<BTreeSet<String>> {
        let answer: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/alerts", self.url))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(
            answer["data"]["alerts"]
                .as_array()?
                .iter()
                .filter(|alert| alert["state"] == "firing")
                .filter_map(|alert| alert["labels"]["alertname"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// Waits until `alert` fires; prints how long it took.
    pub async fn until_firing(&self, alert: &str, deadline: Duration) {
        let started = std::time::Instant::now();
        crate::wait_for(&format!("{alert} to fire"), deadline, || async {
            self.firing().await?.contains(alert).then_some(())
        })
        .await;
        println!("{alert} fired after {:.0?}", started.elapsed());
    }

    /// Waits until `alert` no longer fires; prints how long it took.
    pub async fn until_cleared(&self, alert: &str, deadline: Duration) {
        let started = std::time::Instant::now();
        crate::wait_for(&format!("{alert} to clear"), deadline, || async {
            (!self.firing().await?.contains(alert)).then_some(())
        })
        .await;
        println!("{alert} cleared after {:.0?}", started.elapsed());
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_read_as_seconds_and_hours_as_minutes() {
        let shipped = "      - alert: X\n        expr: max(a) - max(a offset 30m) > 0 and deriv(sum(b)[15m:1m]) > 0 and increase(c[1h]) > 0\n        for: 10m\n        labels:\n          severity: page";
        assert_eq!(
            compressed_rules(shipped),
            "      - alert: X\n        expr: max(a) - max(a offset 30s) > 0 and deriv(sum(b)[15s:1s]) > 0 and increase(c[1m]) > 0\n        for: 10s\n        labels:\n          severity: page"
        );
    }
}
