//! Secrets never reach the services' logs. Each service runs with every secret setting it takes
//! set to a recognisable value and its log at `debug`, is exercised (events accepted and
//! refused, admin calls, a connection test), and its log is searched for those values; a secret
//! refused at start is not echoed in the error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::fixtures::moto_endpoint;
use integration_tests::process::{binary, signal};
use integration_tests::services::free_port;
use integration_tests::{unique, wait_for};

const INGEST_TOKEN: &str = "ingest-token-SECRET-4f1c2a9b";
const ADMIN_TOKEN: &str = "admin-token-SECRET-7d3e5b10";
const EXTERNAL_ID_SECRET: &str = "external-id-secret-SECRET-0123456789abcdef";
const KAFKA_PASSWORD: &str = "kafka-password-SECRET-55aa";
const KAFKA_KEY_PASSWORD: &str = "kafka-key-password-SECRET-66bb";
const OAUTH_CONFIG: &str = "principal=SECRET-oauth-77cc";
const AWS_SECRET_KEY: &str = "aws-secret-key-SECRET-88dd";

/// Every value that must not appear in a log.
const SECRETS: [&str; 7] = [
    INGEST_TOKEN,
    ADMIN_TOKEN,
    EXTERNAL_ID_SECRET,
    KAFKA_PASSWORD,
    KAFKA_KEY_PASSWORD,
    OAUTH_CONFIG,
    AWS_SECRET_KEY,
];

/// A service process whose stderr (its log) goes to a file.
struct Logged {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Logged {
    fn spawn(name: &str, args: &[&str]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(unique(&format!("{name}-log")));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary(name))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            // Pass-through librdkafka settings, secret by name; ignored on a plaintext broker.
            .args([
                "--kafka-property",
                &format!("sasl.password={KAFKA_PASSWORD}"),
            ])
            .args([
                "--kafka-property",
                &format!("sasl.oauthbearer.config={OAUTH_CONFIG}"),
            ])
            .env(
                "ACTIVITY_KAFKA_RDKAFKA_SSL_KEY_PASSWORD",
                KAFKA_KEY_PASSWORD,
            )
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET_KEY)
            .env("ACTIVITY_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        Self { child, log, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn ready(&self) {
        wait_for(
            "the service to be ready",
            Duration::from_secs(60),
            || async {
                let answer = reqwest::get(self.url("/readyz")).await.ok()?;
                (answer.status() == 200).then_some(())
            },
        )
        .await;
    }

    /// Stops the service and returns its whole log.
    async fn stop(mut self) -> String {
        signal(self.child.id(), "-TERM");
        let give_up = std::time::Instant::now() + Duration::from_secs(45);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                std::time::Instant::now() < give_up,
                "the service did not stop within 45 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        read_log(&self.log)
    }
}

fn read_log(path: &Path) -> String {
    let log = std::fs::read_to_string(path).expect("read the log");
    let _ = std::fs::remove_file(path);
    log
}

fn assert_no_secret(service: &str, log: &str) {
    assert!(log.len() > 1_000, "{service} logged almost nothing:\n{log}");
    assert!(
        log.contains("sasl.password=<redacted>"),
        "{service} did not log its pass-through settings redacted"
    );
    for secret in SECRETS {
        assert!(
            !log.contains(secret),
            "{service}'s log holds {secret}:\n{}",
            log.lines()
                .filter(|line| line.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_of_a_run_with_every_secret_set() {
    let brokers = integration_tests::kafka::brokers();
    let topics: Vec<String> = [
        "activity.events",
        "activity.integrations",
        "activity.first-deliveries",
        "activity.deliveries",
    ]
    .iter()
    .map(|name| unique(name))
    .collect();
    let ingest = Logged::spawn(
        "ingest",
        &[
            "--kafka-brokers",
            &brokers,
            "--events-topic",
            &topics[0],
            "--integrations-topic",
            &topics[1],
            "--first-deliveries-topic",
            &topics[2],
            "--deliveries-topic",
            &topics[3],
            "--token",
            INGEST_TOKEN,
            "--admin-token",
            ADMIN_TOKEN,
            "--external-id-secret",
            EXTERNAL_ID_SECRET,
            "--vendor-role-arn",
            "arn:aws:iam::111122223333:role/ActivityDelivery",
            "--aws-endpoint-url",
            &moto_endpoint(),
            "--aws-region",
            "us-east-1",
        ],
    );
    ingest.ready().await;
    let http = reqwest::Client::new();
    let event = r#"{"id":"e1","tenant_id":"acme","type":"user.login","occurred_at":"2026-11-30T10:00:00Z"}"#;
    for token in [INGEST_TOKEN, "not-the-token-but-long-enough"] {
        http.post(ingest.url("/v1/events"))
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .body(event)
            .send()
            .await
            .expect("post events");
    }
    // Connection tests against a bucket that does not exist, and the setup documents.
    let settings = serde_json::json!({
        "aws_account_id": "123456789012", "bucket": unique("b"),
        "role_arn": "arn:aws:iam::123456789012:role/Writer", "region": "us-east-1"
    });
    for request in [
        http.post(ingest.url("/v1/tenants/acme/integrations/s3/test")),
        http.put(ingest.url("/v1/tenants/acme/integrations/s3")),
    ] {
        request
            .bearer_auth(ADMIN_TOKEN)
            .json(&settings)
            .send()
            .await
            .expect("admin call");
    }
    http.get(ingest.url("/v1/integrations/s3/setup?tenant=acme&bucket=b"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("setup");
    assert_no_secret("ingest", &ingest.stop().await);

    let uploader = Logged::spawn(
        "uploader",
        &[
            "--kafka-brokers",
            &brokers,
            "--integrations-topic",
            &topics[1],
            "--deliveries-topic",
            &topics[3],
            "--uploads-name",
            &unique("uploads"),
            "--aws-endpoint-url",
            &moto_endpoint(),
            "--aws-region",
            "us-east-1",
        ],
    );
    uploader.ready().await;
    assert_no_secret("uploader", &uploader.stop().await);
}

#[test]
fn a_refused_secret_is_not_echoed_in_the_start_up_error() {
    let short = "SECRET-short";
    for (flag, value) in [
        ("--token", short),
        ("--admin-token", short),
        ("--external-id-secret", short),
        // A secret typed with the wrong separator.
        ("--kafka-property", "sasl.password:SECRET-typo"),
    ] {
        let output = Command::new(binary("ingest"))
            .args(["--token", INGEST_TOKEN])
            .args([flag, value])
            .output()
            .expect("run ingest");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag}: {stderr}");
        assert!(stderr.contains(flag), "{flag} is named: {stderr}");
        assert!(!stderr.contains(value), "{flag} echoed: {stderr}");
    }
}
