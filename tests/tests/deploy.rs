//! The deployment files: the compose stack is complete and mounts files that exist, the
//! Prometheus configuration, alert rules and every dashboard expression load in `promtool`, and
//! every metric they name is one the three services really expose (scraped from a running
//! pipeline), so renaming a metric breaks this test rather than a dashboard in production.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use integration_tests::fixtures::{aws_config, moto_endpoint, new_bucket, s3_client};
use integration_tests::pipeline::Pipeline;
use integration_tests::plan::Shape;
use integration_tests::process::{labelled_metric_value, metric_value};
use reqwest::StatusCode;
use serde_json::Value;

fn root() -> PathBuf {
    integration_tests::repo_root()
}

/// A YAML file as JSON, read by Debian's python3-yaml (`scripts/local-services.sh` installs it).
fn yaml(path: &str) -> Value {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(root().join(path))
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "{path} does not load as YAML: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from python3")
}

fn promtool() -> PathBuf {
    std::env::var_os("ACTIVITY_TEST_PROMTOOL").map_or_else(
        || PathBuf::from("/opt/activity-logs/prometheus/usr/bin/promtool"),
        PathBuf::from,
    )
}

fn promtool_check(args: &[&str]) {
    let output = Command::new(promtool())
        .args(args)
        .output()
        .expect("run promtool (scripts/local-services.sh installs it)");
    assert!(
        output.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every PromQL expression of the dashboard, with Grafana's variables given values.
fn dashboard_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("deploy/grafana/dashboards/activity-logs.json"))
        .expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| {
            target["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "5m")
                .replace("$__range", "1h")
        })
        .collect()
}

fn alert_expressions() -> Vec<String> {
    yaml("deploy/prometheus/alerts.yml")["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .map(|rule| rule["expr"].as_str().expect("expr").to_owned())
        .collect()
}

/// The `activity_*` metric names an expression uses.
fn metric_names(expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expression;
    while let Some(start) = rest.find("activity_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.insert(name);
    }
    names
}

/// The metric names in a Prometheus exposition.
fn exposed(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_compose_stack_is_complete_and_its_files_load() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    for name in [
        "kafka",
        "rabbitmq",
        "s3",
        "prometheus",
        "grafana",
        "ingest",
        "batcher",
        "uploader",
    ] {
        assert!(services.contains_key(name), "no {name} service");
    }
    let kafka = &services["kafka"]["environment"];
    assert_eq!(
        kafka["KAFKA_PROCESS_ROLES"], "broker,controller",
        "Kafka runs in KRaft mode"
    );
    let local_services =
        std::fs::read_to_string(root().join("scripts/local-services.sh")).expect("the script");
    let tested = local_services
        .lines()
        .find_map(|line| line.strip_prefix("KAFKA_VERSION="))
        .expect("the script pins a Kafka version");
    assert_eq!(
        services["kafka"]["image"],
        format!("apache/kafka:{tested}"),
        "the compose stack runs the Kafka version the tests run on"
    );
    assert!(
        services["rabbitmq"]["image"]
            .as_str()
            .expect("image")
            .contains("management")
    );
    for (name, port) in [
        ("ingest", "8080"),
        ("batcher", "8081"),
        ("uploader", "8082"),
    ] {
        let service = &services[name];
        assert_eq!(
            service["build"], ".",
            "{name} is built from the one Dockerfile"
        );
        assert_eq!(service["command"][0], name);
        let health = service["healthcheck"]["test"].to_string();
        assert!(
            health.contains(&format!("{port}/readyz")),
            "{name}: {health}"
        );
        let listen = service["environment"]
            .as_object()
            .expect("environment")
            .iter()
            .find(|(key, _)| key.ends_with("_LISTEN"))
            .map(|(_, value)| value.as_str().unwrap_or_default().to_owned());
        assert_eq!(listen, Some(format!("0.0.0.0:{port}")), "{name}");
    }
    // Every file the stack mounts is in the repository.
    for (name, service) in services {
        for volume in service["volumes"].as_array().cloned().unwrap_or_default() {
            let source = volume
                .as_str()
                .expect("short volume syntax")
                .split(':')
                .next()
                .unwrap_or_default();
            if let Some(relative) = source.strip_prefix("./") {
                assert!(
                    root().join(relative).exists(),
                    "{name} mounts {source}, which does not exist"
                );
            }
        }
    }
    // One multi-stage image, running as a non-root user.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count()
            >= 2
    );
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        user.trim() != "root" && user.trim() != "0",
        "runs as {user}"
    );

    // Grafana's data source is the one the dashboard panels name.
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasource["datasources"][0]["uid"], "prometheus");
    let provider = yaml("deploy/grafana/provisioning/dashboards/dashboards.yml");
    assert_eq!(
        provider["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );

    let config = root().join("deploy/prometheus/prometheus.yml");
    promtool_check(&["check", "config", config.to_str().expect("path")]);
    let rules = root().join("deploy/prometheus/alerts.yml");
    promtool_check(&["check", "rules", rules.to_str().expect("path")]);

    // The dashboard's expressions, as recording rules, so promtool parses each one.
    let recorded: Vec<Value> = dashboard_expressions()
        .into_iter()
        .enumerate()
        .map(|(n, expr)| serde_json::json!({"record": format!("dashboard:expression_{n}"), "expr": expr}))
        .collect();
    let file = std::env::temp_dir().join(integration_tests::unique("dashboard-rules") + ".json");
    std::fs::write(
        &file,
        serde_json::json!({"groups": [{"name": "dashboard", "rules": recorded}]}).to_string(),
    )
    .expect("write the rules");
    promtool_check(&["check", "rules", file.to_str().expect("path")]);
    drop(std::fs::remove_file(file));
}

/// `promtool test rules` on `alerts.test.yml`, which must hold for every alert a case that fires
/// it (past its `for`) and a near miss that must not.
#[test]
fn every_alert_fires_on_its_fault_and_stays_quiet_on_a_near_miss() {
    let tests = root().join("deploy/prometheus/alerts.test.yml");
    promtool_check(&["test", "rules", tests.to_str().expect("path")]);
    let cases: Vec<(String, bool)> = yaml("deploy/prometheus/alerts.test.yml")["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|test| {
            test["alert_rule_test"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|case| {
            let fires = !case["exp_alerts"].as_array().is_none_or(Vec::is_empty);
            (
                case["alertname"].as_str().expect("alertname").to_owned(),
                fires,
            )
        })
        .collect();
    let alerts = yaml("deploy/prometheus/alerts.yml")["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        // Recording rules have no alert to test; what they record is tested through the alerts.
        .filter_map(|rule| rule["alert"].as_str().map(str::to_owned))
        .collect::<Vec<_>>();
    let untested: Vec<String> = alerts
        .iter()
        .flat_map(|alert| {
            [(true, "firing case"), (false, "near miss")]
                .into_iter()
                .filter(|(fires, _)| !cases.contains(&(alert.clone(), *fires)))
                .map(move |(_, what)| format!("{alert}: no {what}"))
        })
        .collect();
    assert!(untested.is_empty(), "{untested:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_name_is_exposed_by_a_running_pipeline() {
    let moto = moto_endpoint();
    // Digests on, with periods as short as the windows, so their series exist too.
    let dir = std::env::temp_dir().join(integration_tests::unique("deploy-digests"));
    std::fs::create_dir_all(&dir).expect("directory");
    let (_, key_file) = integration_tests::digests::new_key(&dir, "vendor");
    let digests = integration_tests::digests::batcher_flags(&key_file, "2s", "500ms");
    let digests: Vec<&str> = digests.iter().map(String::as_str).collect();
    let pipeline = Pipeline::start(&moto, Shape::single().with_batcher_flags(&digests)).await;
    let s3 = s3_client(&aws_config(&moto).await);
    let bucket = new_bucket(&s3).await;
    let (status, answer) = pipeline.connect("acme", &bucket).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    // A refused request, so rejections have a series.
    let refused = pipeline
        .admin
        .ingest
        .post_events("application/x-ndjson", "{\"id\":\"x\"}\n")
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);

    // Events until the first delivery is done, live batching has closed a part, an upload used
    // cached credentials and the batcher has had librdkafka's first statistics (every 5 s),
    // which give its consumer lag: every series the dashboard and the alerts name then exists.
    let mut batch = 0;
    integration_tests::wait_for(
        "a first delivery and live objects",
        Duration::from_secs(90),
        || {
            batch += 1;
            let label = format!("batch{batch}");
            let pipeline = &pipeline;
            async move {
                pipeline.post("acme", &label, 3).await;
                let batcher = pipeline.batcher.try_metrics().await?;
                let uploader = pipeline.uploader.try_metrics().await?;
                let first = labelled_metric_value(
                    &batcher,
                    "activity_batcher_first_deliveries_total",
                    "delivered",
                )?;
                let hits =
                    metric_value(&uploader, "activity_uploader_assume_role_cache_hits_total")?;
                let batcher_series = exposed(&batcher);
                let live_parts = batcher_series.contains(batcher::metrics::PARTS_CLOSED);
                let lag_known = batcher_series.contains(batcher::metrics::CONSUMER_LAG);
                let digest_stored = exposed(&uploader)
                    .contains(&format!("{}_count", uploader::metrics::DIGEST_LAG));
                (first >= 1.0 && hits >= 1.0 && live_parts && lag_known && digest_stored)
                    .then_some(())
            }
        },
    )
    .await;

    let mut names = exposed(
        &pipeline
            .admin
            .ingest
            .get("/metrics")
            .send()
            .await
            .expect("ingest metrics")
            .text()
            .await
            .expect("text"),
    );
    names.extend(exposed(&pipeline.batcher.metrics().await));
    names.extend(exposed(&pipeline.uploader.metrics().await));
    let mut missing = Vec::new();
    for expression in dashboard_expressions()
        .into_iter()
        .chain(alert_expressions())
    {
        for name in metric_names(&expression) {
            if !names.contains(&name) {
                missing.push(format!("{name} (in {expression})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not exposed by any service: {missing:#?}"
    );
    pipeline.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
