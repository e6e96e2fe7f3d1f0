//! Services under test, started in-process, and a private Kafka-protocol broker for tests that
//! stop the broker.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use common::kafka::{KafkaArgs, TopicSpec};
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
        init_test_logging();
        let mut argv = vec![
            "ingest",
            "--listen",
            "127.0.0.1:0",
            "--token",
            TEST_TOKEN,
            "--kafka-brokers",
            brokers,
            "--events-topic",
            topic,
            "--events-partitions",
            "3",
        ];
        argv.extend_from_slice(args);
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

/// A Kafka-protocol broker (Tansu, in-memory) owned by one test, so the test can stop and restart
/// it. Found at `ACTIVITY_TEST_TANSU`, else where `scripts/local-services.sh` installs it.
pub struct PrivateBroker {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateBroker {
    pub fn start() -> Self {
        let port = free_port();
        let mut broker = Self { port, child: None };
        broker.restart();
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker again on the same port, with empty storage.
    pub fn restart(&mut self) {
        self.stop();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log_path = std::env::temp_dir().join(format!("private-tansu-{}.log", self.port));
        let log = std::fs::File::create(&log_path).expect("broker log file");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the private tansu broker");
        self.child = Some(child);
        let give_up = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < give_up,
                "private broker did not listen: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open and requests go unanswered, as with
    /// a broker that hangs or a network partition, until [`Self::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker go on (SIGCONT) with everything it held.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the private broker runs");
        crate::process::signal(child.id(), signal);
    }

    /// Kills the broker; connections to its port are refused until [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let args = KafkaArgs::new(self.brokers());
        args.ensure_topics(&[TopicSpec {
            name: topic,
            partitions,
            replication: 1,
            config: vec![],
        }])
        .await
        .expect("create topic on the private broker");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
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

fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("ACTIVITY_TEST_TANSU") {
        return path.into();
    }
    let installed = PathBuf::from("/opt/activity-logs/tansu-0.6.0/bin/tansu");
    if installed.exists() {
        installed
    } else {
        "tansu".into()
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
