//! Services under test, started in-process.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use common::shutdown::Supervisor;
use ingest::config::IngestConfig;

/// The bearer token every test ingest accepts.
pub const TEST_TOKEN: &str = "test-token-0123456789abcdef";

/// An ingest service running in this process, writing to its own topic.
pub struct TestIngest {
    pub address: SocketAddr,
    pub topic: String,
    pub brokers: String,
    supervisor: Supervisor,
    http: reqwest::Client,
}

impl TestIngest {
    /// Ingest on the shared test broker with a fresh topic of 3 partitions; `args` are extra
    /// command-line flags.
    pub async fn spawn(args: &[&str]) -> Self {
        Self::spawn_on(
            &crate::kafka::brokers(),
            &crate::unique("activity.events"),
            args,
        )
        .await
    }

    pub async fn spawn_on(brokers: &str, topic: &str, args: &[&str]) -> Self {
        let base = [
            "--token",
            TEST_TOKEN,
            "--kafka-brokers",
            brokers,
            "--events-topic",
            topic,
            "--events-partitions",
            "3",
        ];
        let args = base.iter().chain(args).map(|arg| (*arg).to_owned());
        Self::start(args.collect(), brokers, topic).await
    }

    /// Ingest with the command line `args` (all but where it listens), writing to `topic` on
    /// `brokers`.
    pub async fn start(args: Vec<String>, brokers: &str, topic: &str) -> Self {
        init_test_logging();
        let argv = ["ingest", "--listen", "127.0.0.1:0"]
            .into_iter()
            .map(str::to_owned)
            .chain(args);
        let config = IngestConfig::try_parse_from(argv).expect("test ingest arguments");
        let supervisor = Supervisor::new();
        let address = ingest::start(config, &supervisor)
            .await
            .expect("ingest starts");
        Self {
            address,
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
            supervisor,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// A `POST /v1/events` with the test token.
    pub fn post_events(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.http
            .post(self.url("/v1/events"))
            .bearer_auth(TEST_TOKEN)
            .header("content-type", content_type)
            .body(body)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path))
    }
}

impl TestIngest {
    /// Begins shutdown, as SIGTERM does.
    pub fn shut_down(&self) {
        self.supervisor.cancel();
    }

    /// Waits until every task of the service has stopped.
    pub async fn stopped(&self, within: Duration) -> Result<(), common::shutdown::ShutdownError> {
        self.supervisor.clone().run_until_stopped(within).await
    }
}

impl Drop for TestIngest {
    fn drop(&mut self) {
        self.supervisor.cancel();
    }
}

/// Log lines of the services under test, shown when `ACTIVITY_TEST_LOG` holds a filter
/// (e.g. `debug` or `info,librdkafka=debug`).
fn init_test_logging() {
    if let Ok(filter) = std::env::var("ACTIVITY_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs `rabbitmqctl` on the local RabbitMQ (tests that stop it or raise its alarms), failing
/// the test when it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("run rabbitmqctl (the tests control the local RabbitMQ)");
    assert!(status.success(), "rabbitmqctl {args:?} failed: {status}");
}
