//! Harness for the batcher: an events topic written with chosen partitions and timestamps, a
//! batcher process with its own group, checkpoints, queues and spill directory, and the jobs it
//! published read back from RabbitMQ.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::codec::decompress;
use common::job::UploadJob;
use common::kafka::{KafkaArgs, TopicSpec};
use common::topology::UploadTopology;
use lapin::Channel;
use lapin::options::BasicGetOptions;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::fixtures::IntegrationsTopic;
use crate::process::ServiceProcess;

/// A fresh events topic and a producer that picks each record's partition and timestamp.
pub struct EventsTopic {
    pub name: String,
    producer: FutureProducer,
}

impl EventsTopic {
    pub async fn create(partitions: i32) -> Self {
        let kafka = KafkaArgs::new(crate::kafka::brokers());
        let name = crate::unique("activity.events");
        kafka
            .ensure_topics(&[TopicSpec {
                name: &name,
                partitions,
                replication: 1,
                config: vec![],
            }])
            .await
            .expect("events topic");
        let producer = kafka
            .producer_config(Duration::from_secs(10))
            .create()
            .expect("producer");
        Self { name, producer }
    }

    /// Writes the event `id` of `tenant` to `partition`, accepted at `timestamp_ms`, with
    /// `pad` bytes of details so tests can reach size limits.
    pub async fn send(
        &self,
        partition: i32,
        tenant: &str,
        id: &str,
        timestamp_ms: i64,
        pad: usize,
    ) {
        let value = event_json(tenant, id, pad);
        self.producer
            .send(
                FutureRecord::to(&self.name)
                    .partition(partition)
                    .key(tenant)
                    .payload(&value)
                    .timestamp(timestamp_ms),
                Duration::from_secs(10),
            )
            .await
            .expect("write an event");
    }
}

/// An event in the compact canonical form ingest writes (keys sorted).
pub fn event_json(tenant: &str, id: &str, pad: usize) -> String {
    format!(
        "{{\"details\":{{\"note\":\"{}\"}},\"id\":\"{id}\",\"occurred_at\":\"2026-11-27T10:00:00Z\",\"tenant_id\":\"{tenant}\",\"type\":\"device.lock\"}}",
        "x".repeat(pad)
    )
}

/// Everything one batcher deployment uses, unique to the test.
#[derive(Clone)]
pub struct BatcherSetup {
    pub events: String,
    pub integrations: String,
    pub first_deliveries: String,
    pub topology: UploadTopology,
    /// The retry tiers, as `--retry-tiers` takes them.
    pub retry_tiers: String,
    pub checkpoints: String,
    pub group: String,
    pub spill_dir: PathBuf,
    /// Bootstrap servers of the broker it reads and writes.
    pub brokers: String,
    /// `--future-tolerance`, for tests whose records are stamped ahead of the clock on
    /// purpose; unset, the batcher's default.
    pub future_tolerance: Option<String>,
}

impl BatcherSetup {
    /// A deployment reading `events`, with integrations from `integrations`.
    pub fn new(events: &EventsTopic, integrations: &IntegrationsTopic) -> Self {
        Self::for_topics(
            &events.name,
            &integrations.name,
            &crate::unique("activity.first-deliveries"),
        )
    }

    /// A deployment on topics made elsewhere (by an ingest service, say).
    pub fn for_topics(events: &str, integrations: &str, first_deliveries: &str) -> Self {
        let uploads = crate::unique("uploads");
        Self {
            events: events.to_owned(),
            integrations: integrations.to_owned(),
            first_deliveries: first_deliveries.to_owned(),
            topology: UploadTopology::new(&uploads, &[Duration::from_secs(60)]),
            retry_tiers: "60s".into(),
            checkpoints: crate::unique("activity.checkpoints"),
            group: crate::unique("batcher"),
            spill_dir: std::env::temp_dir().join(crate::unique("batcher-spill")),
            brokers: crate::kafka::brokers(),
            future_tolerance: None,
        }
    }

    /// The same deployment taking record times up to `tolerance` ahead of the clock as they
    /// are: tests stamp records half an hour ahead so that windows close by the records' own
    /// (replayable) times, never by the clock.
    pub fn with_future_tolerance(mut self, tolerance: &str) -> Self {
        self.future_tolerance = Some(tolerance.to_owned());
        self
    }

    /// The same deployment on the broker at `brokers`.
    pub fn on_brokers(mut self, brokers: &str) -> Self {
        brokers.clone_into(&mut self.brokers);
        self
    }

    /// The same deployment with one retry tier of `delay`.
    pub fn with_retry_tier(self, delay: Duration) -> Self {
        self.with_retry_tiers(&[delay])
    }

    /// The same deployment with retry tiers of `delays`, in order.
    pub fn with_retry_tiers(mut self, delays: &[Duration]) -> Self {
        self.topology = UploadTopology::new(&self.topology.queue, delays);
        self.retry_tiers = delays
            .iter()
            .map(|delay| format!("{}ms", delay.as_millis()))
            .collect::<Vec<_>>()
            .join(",");
        self
    }

    /// The settings of this deployment with windows of `window` closing after `close_delay`,
    /// as flags for the service or for `batcher replay`.
    pub fn flags(&self, window: &str, close_delay: &str) -> Vec<String> {
        let mut flags: Vec<String> = [
            "--events-topic",
            &self.events,
            "--integrations-topic",
            &self.integrations,
            "--first-deliveries-topic",
            &self.first_deliveries,
            "--uploads-name",
            &self.topology.queue,
            "--retry-tiers",
            &self.retry_tiers,
            "--checkpoints-topic",
            &self.checkpoints,
            "--group",
            &self.group,
            "--spill-dir",
            &self.spill_dir.display().to_string(),
            "--window",
            window,
            "--close-delay",
            close_delay,
            "--kafka-brokers",
            &self.brokers,
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(tolerance) = &self.future_tolerance {
            flags.extend(["--future-tolerance".to_owned(), tolerance.clone()]);
        }
        flags
    }

    /// Starts a batcher process with windows of `window`, closing after `close_delay`,
    /// committing every 200 ms unless `extra` says otherwise, and `extra` flags.
    pub fn spawn(&self, window: &str, close_delay: &str, extra: &[&str]) -> ServiceProcess {
        let flags = self.flags(window, close_delay);
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        // A killed member holds its partitions until its session times out.
        args.extend_from_slice(&[
            "--kafka-property",
            "session.timeout.ms=6000",
            "--kafka-property",
            "heartbeat.interval.ms=1000",
        ]);
        if !extra.contains(&"--commit-interval") {
            args.extend_from_slice(&["--commit-interval", "200ms"]);
        }
        args.extend_from_slice(extra);
        ServiceProcess::spawn("batcher", &args)
    }
}

/// A job as the batcher published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedJob {
    pub job: UploadJob,
    pub body: Vec<u8>,
}

impl PublishedJob {
    /// The ids of the events in the object, in order.
    pub fn event_ids(&self) -> Vec<String> {
        let raw = decompress(self.job.codec, &self.body, self.job.uncompressed_bytes)
            .expect("a job body decompresses");
        raw.split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                let event: serde_json::Value = serde_json::from_slice(line).expect("an event line");
                event["id"].as_str().expect("an id").to_owned()
            })
            .collect()
    }
}

/// Takes every job waiting in `queue`.
pub async fn take_jobs(channel: &Channel, queue: &str) -> Vec<PublishedJob> {
    let mut jobs = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        jobs.push(PublishedJob {
            job: UploadJob::from_headers(&headers).expect("valid job headers"),
            body: message.delivery.data.clone(),
        });
    }
    jobs
}

/// Collects jobs from `queue` until the distinct objects hold `events` events in all.
pub async fn jobs_until_events(
    channel: &Channel,
    queue: &str,
    events: usize,
    deadline: Duration,
) -> BTreeMap<String, PublishedJob> {
    let mut by_key: BTreeMap<String, PublishedJob> = BTreeMap::new();
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        for job in take_jobs(channel, queue).await {
            if let Some(earlier) = by_key.get(&job.job.relative_key) {
                assert_eq!(
                    earlier.body, job.body,
                    "a key published twice with other bytes"
                );
            }
            by_key.insert(job.job.relative_key.clone(), job);
        }
        let total: usize = by_key.values().map(|j| j.event_ids().len()).sum();
        if total >= events {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {deadline:?} waiting for {events} events in published objects; {total} so far"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    by_key
}

/// The partitions of the events topic (of `partitions`) that `batcher` reads now.
pub async fn partitions_read(batcher: &ServiceProcess, partitions: i32) -> Vec<i32> {
    let Some(metrics) = batcher.try_metrics().await else {
        return Vec::new();
    };
    (0..partitions)
        .filter(|p| {
            crate::process::labelled_metric_value(
                &metrics,
                batcher::metrics::NEXT_OFFSET,
                &format!("partition=\"{p}\""),
            )
            .is_some()
        })
        .collect()
}
