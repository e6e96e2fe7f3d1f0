//! The one builder of the services under test. A [`Shape`] says what a test runs (how many of
//! each service, on which broker, with which windows, retry tiers and extra flags); a [`Plan`]
//! gives it names unique to the test and is the one place that turns it into each service's
//! command line, for a process or (ingest) in this process. Tests change only what differs.

use std::time::Duration;

use crate::admin::{ADMIN_TOKEN, AdminIngest, AdminTopics};
use crate::batching::BatcherSetup;
use crate::process::ServiceProcess;
use crate::services::TEST_TOKEN;

/// The production ladder of retry tiers (10 s up to 2 h) compressed for tests: a transient
/// fault lasting up to about 15 s is ridden out without an operator.
const RETRY_TIERS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// The external-id secret every test ingest derives tenants' external ids from.
const EXTERNAL_ID_SECRET: &str = "external-id-secret-for-tests-0123456789";

/// What a test runs: how many of each service, on which broker, with which windows.
#[derive(Debug, Clone)]
pub struct Shape {
    pub batchers: usize,
    pub uploaders: usize,
    /// Bootstrap servers of the Kafka cluster every service uses.
    pub brokers: String,
    pub window: Duration,
    pub close_delay: Duration,
    /// Partitions of the events topic ingest creates.
    pub partitions: i32,
    pub retry_tiers: Vec<Duration>,
    /// Flags added to every batcher's command line.
    pub batcher_flags: Vec<String>,
    /// Flags added to ingest's command line.
    pub ingest_flags: Vec<String>,
    /// Flags added to every uploader's command line.
    pub uploader_flags: Vec<String>,
}

impl Shape {
    /// `batchers` batchers and `uploaders` uploaders on the shared test broker, with the fault
    /// scenarios' short windows (2 s, closing 500 ms late, over 3 partitions) and retry ladder,
    /// and uploaders that try a job 30 times before dead-lettering it.
    pub fn new(batchers: usize, uploaders: usize) -> Self {
        Self {
            batchers,
            uploaders,
            brokers: crate::kafka::brokers(),
            window: Duration::from_secs(2),
            close_delay: Duration::from_millis(500),
            partitions: 3,
            retry_tiers: RETRY_TIERS.to_vec(),
            batcher_flags: Vec::new(),
            ingest_flags: Vec::new(),
            uploader_flags: ["--max-attempts", "30"].map(str::to_owned).to_vec(),
        }
    }

    /// One service of each kind with one retry tier of a second: what a test of one behaviour
    /// needs.
    pub fn single() -> Self {
        Self {
            retry_tiers: vec![Duration::from_secs(1)],
            uploader_flags: Vec::new(),
            ..Self::new(1, 1)
        }
    }

    /// The same shape with windows of `window` closing `close_delay` late.
    pub fn with_windows(mut self, window: Duration, close_delay: Duration) -> Self {
        (self.window, self.close_delay) = (window, close_delay);
        self
    }

    /// The same shape on `cluster`: every service bootstraps from all its nodes and creates its
    /// topics with the cluster's replication.
    pub fn on_cluster(mut self, cluster: &crate::kafka_cluster::KafkaCluster) -> Self {
        self.brokers = cluster.brokers();
        let replication = [
            "--kafka-replication".to_owned(),
            cluster.size().min(3).to_string(),
        ];
        for flags in [
            &mut self.batcher_flags,
            &mut self.ingest_flags,
            &mut self.uploader_flags,
        ] {
            flags.extend(replication.iter().cloned());
        }
        self
    }

    /// The same shape with `flags` added to ingest's command line.
    pub fn with_ingest_flags(mut self, flags: &[&str]) -> Self {
        self.ingest_flags
            .extend(flags.iter().map(|f| (*f).to_owned()));
        self
    }

    /// The same shape with `flags` added to every batcher's command line.
    pub fn with_batcher_flags(mut self, flags: &[&str]) -> Self {
        self.batcher_flags
            .extend(flags.iter().map(|f| (*f).to_owned()));
        self
    }

    /// The same shape with `flags` added to every uploader's command line.
    pub fn with_uploader_flags(mut self, flags: &[&str]) -> Self {
        self.uploader_flags
            .extend(flags.iter().map(|f| (*f).to_owned()));
        self
    }

    pub fn window_ms(&self) -> i64 {
        millis(self.window)
    }

    pub fn close_delay_ms(&self) -> i64 {
        millis(self.close_delay)
    }
}

/// A duration of test settings in milliseconds.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).expect("a duration of a sane length")
}

/// A duration as the services' flags take it, in milliseconds.
fn flag_ms(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// The names one set of services uses, and how to start each of them.
pub struct Plan {
    pub shape: Shape,
    /// Ingest listens here every time it starts as a process, so producers find it after a
    /// restart.
    pub ingest_port: u16,
    pub topics: AdminTopics,
    pub events_topic: String,
    /// The batcher's names and settings, which the uploaders share (the queue and its tiers).
    pub setup: BatcherSetup,
    pub aws_endpoint: String,
}

impl Plan {
    /// `shape` with topics, queues, group and spill directory unique to the test, talking to AWS
    /// at `aws_endpoint`.
    pub fn new(aws_endpoint: &str, shape: Shape) -> Self {
        let topics = AdminTopics::unique();
        let events_topic = crate::unique("activity.events");
        let setup = BatcherSetup::for_topics(
            &events_topic,
            &topics.integrations,
            &topics.first_deliveries,
        )
        .with_retry_tiers(&shape.retry_tiers)
        .on_brokers(&shape.brokers);
        Self {
            shape,
            ingest_port: crate::services::free_port(),
            topics,
            events_topic,
            setup,
            aws_endpoint: aws_endpoint.to_owned(),
        }
    }

    /// The same plan reading integrations from `topic`, made by the test.
    pub fn with_integrations(mut self, topic: &str) -> Self {
        topic.clone_into(&mut self.topics.integrations);
        topic.clone_into(&mut self.setup.integrations);
        self
    }

    /// Ingest's command line, the admin API on, without where it listens.
    pub fn ingest_args(&self) -> Vec<String> {
        let partitions = self.shape.partitions.to_string();
        let args = [
            "--token",
            TEST_TOKEN,
            "--admin-token",
            ADMIN_TOKEN,
            "--vendor-role-arn",
            crate::admin::VENDOR_ROLE,
            "--external-id-secret",
            EXTERNAL_ID_SECRET,
            "--events-topic",
            &self.events_topic,
            "--events-partitions",
            &partitions,
            "--integrations-topic",
            &self.topics.integrations,
            "--first-deliveries-topic",
            &self.topics.first_deliveries,
            "--deliveries-topic",
            &self.topics.deliveries,
            "--aws-region",
            crate::fixtures::REGION,
            "--kafka-brokers",
            &self.shape.brokers,
            "--produce-timeout",
            "5s",
        ];
        args.into_iter()
            .map(str::to_owned)
            .chain(crate::fixtures::aws_endpoint_flags(&self.aws_endpoint))
            .chain(self.shape.ingest_flags.iter().cloned())
            .collect()
    }

    /// Ingest as a process on [`Self::ingest_port`].
    pub fn spawn_ingest(&self) -> ServiceProcess {
        let args = self.ingest_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ServiceProcess::spawn_at("ingest", self.ingest_port, &args)
    }

    /// Ingest in this process, on a port of its own, once it says it is ready.
    pub async fn start_ingest(&self) -> AdminIngest {
        AdminIngest::start(self).await
    }

    pub fn spawn_batcher(&self) -> ServiceProcess {
        self.spawn_batcher_with(&[])
    }

    /// A batcher with `flags` after the shape's own.
    pub fn spawn_batcher_with(&self, flags: &[&str]) -> ServiceProcess {
        let extra: Vec<&str> = ["--deliveries-topic", &self.topics.deliveries]
            .into_iter()
            .chain(self.shape.batcher_flags.iter().map(String::as_str))
            .chain(flags.iter().copied())
            .collect();
        self.setup.spawn(
            &flag_ms(self.shape.window),
            &flag_ms(self.shape.close_delay),
            &extra,
        )
    }

    pub fn spawn_uploader(&self) -> ServiceProcess {
        self.spawn_uploader_with(&[])
    }

    /// An uploader with `flags` after the shape's own.
    pub fn spawn_uploader_with(&self, flags: &[&str]) -> ServiceProcess {
        let args = [
            "--integrations-topic",
            &self.topics.integrations,
            "--deliveries-topic",
            &self.topics.deliveries,
            "--uploads-name",
            &self.setup.topology.queue,
            "--retry-tiers",
            &self.setup.retry_tiers,
            "--aws-region",
            crate::fixtures::REGION,
            "--kafka-brokers",
            &self.shape.brokers,
        ];
        let aws = crate::fixtures::aws_endpoint_flags(&self.aws_endpoint);
        let args: Vec<&str> = args
            .into_iter()
            .chain(aws.iter().map(String::as_str))
            .chain(self.shape.uploader_flags.iter().map(String::as_str))
            .chain(flags.iter().copied())
            .collect();
        ServiceProcess::spawn("uploader", &args)
    }
}
