//! A Kafka producer that replaces itself when it stops delivering while the cluster answers.
//!
//! librdkafka's producer can stop delivering for good where a new one would not: after a fatal
//! idempotence error, or when a broker comes back from a pause and answers a produce request
//! with "not leader, leader unknown" (the partition then stays routed to no broker, whatever
//! later metadata says: librdkafka 2.12, confluentinc/librdkafka#5430). Each write's outcome
//! is reported here; after a few failures in a row, a fresh producer is made and kept only if it
//! reaches the cluster. Callers have already answered the failed writes as failures, so nothing
//! acknowledged depends on the producer given up.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::counter;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureRecord;

use crate::async_producer::AsyncProducer;

/// Counts producers replaced, by `client` (which writer) and `reason`.
pub const PRODUCER_REPLACEMENTS: &str = "activity_kafka_producer_replacements_total";

/// Failed writes in a row after which a fresh producer is tried (and again after as many more).
const PROBE_EVERY_FAILURES: u32 = 3;
/// How long the fresh producer may take to fetch the topic's metadata.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// A producer, replaced when it keeps failing while a new one would not.
pub struct HealingProducer {
    current: RwLock<Arc<AsyncProducer>>,
    consecutive_failures: AtomicU32,
    probing: AtomicBool,
    config: ClientConfig,
    /// Names this writer in logs and the replacement metric.
    client: &'static str,
}

impl HealingProducer {
    /// `config` must already carry the durability settings (`KafkaArgs::producer_config`).
    pub fn new(config: ClientConfig, client: &'static str) -> Result<Self, KafkaError> {
        Ok(Self {
            current: RwLock::new(Arc::new(AsyncProducer::new(&config)?)),
            consecutive_failures: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            config,
            client,
        })
    }

    /// The producer to write with now; report how the write went to `settle`.
    pub fn current(&self) -> Arc<AsyncProducer> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Writes one record (a tombstone without `payload`) to `topic` and waits for its
    /// acknowledgement, waiting at most `queue_timeout` for room in the local queue.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        queue_timeout: Duration,
    ) -> Result<Position, KafkaError> {
        self.send_with_headers(topic, key, payload, None, queue_timeout)
            .await
    }

    /// [`Self::send`] with record headers.
    pub async fn send_with_headers(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        queue_timeout: Duration,
    ) -> Result<Position, KafkaError> {
        let producer = self.current();
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        let result = producer.send(record, queue_timeout).await;
        self.settle(&producer, result.is_ok()).await;
        result
    }

    /// Takes the outcome of a write made with `producer`: a success clears the failure count;
    /// a fatal error, or every few failures in a row, leads to a replacement.
    pub async fn settle(&self, producer: &Arc<AsyncProducer>, delivered: bool) {
        if delivered {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let reason = if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::error!(client = self.client, ?code, %reason, "the Kafka producer hit a fatal error");
            "fatal"
        } else if failures.is_multiple_of(PROBE_EVERY_FAILURES) {
            "failing"
        } else {
            return;
        };
        if self.probing.swap(true, Ordering::AcqRel) {
            return; // another write is already trying a fresh producer
        }
        self.replace_if_fresh_reaches(producer, failures, reason)
            .await;
        self.probing.store(false, Ordering::Release);
    }

    async fn replace_if_fresh_reaches(
        &self,
        failed: &Arc<AsyncProducer>,
        failures: u32,
        reason: &'static str,
    ) {
        let fresh = match AsyncProducer::new(&self.config) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(client = self.client, %error, "cannot create a Kafka producer to replace a failing one");
                return;
            }
        };
        let fresh = Arc::new(fresh);
        if let Err(error) = reachable(fresh.clone(), None).await {
            tracing::warn!(
                client = self.client,
                failures,
                %error,
                "writes keep failing and a fresh Kafka producer does not reach the cluster either; keeping the current one"
            );
            return;
        }
        let replaced = {
            let mut slot = self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Not when it was already replaced since this write began. The producer let go
            // fails what it still holds when its delivery thread ends.
            let current = Arc::ptr_eq(&slot, failed);
            if current {
                *slot = fresh;
            }
            current
        };
        if replaced {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            counter!(PRODUCER_REPLACEMENTS, "client" => self.client, "reason" => reason)
                .increment(1);
            tracing::warn!(
                client = self.client,
                failures,
                reason,
                "replaced the Kafka producer: its writes kept failing while a fresh one reaches the cluster"
            );
        }
    }

    /// Whether a broker answers with metadata for `topic`, without a topic error.
    pub async fn check_reachable(&self, topic: &str) -> Result<(), String> {
        reachable(self.current(), Some(topic)).await
    }

    /// Waits up to `timeout` for queued records to be acknowledged; used on shutdown.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.current();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }
}

/// Whether `producer` gets the cluster's metadata with a broker in it, and, for `topic`, the
/// topic's without an error.
async fn reachable(producer: Arc<AsyncProducer>, topic: Option<&str>) -> Result<(), String> {
    let name = topic.map(str::to_owned);
    let answer = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(name.as_deref(), PROBE_TIMEOUT)
            .map(|metadata| {
                let topic_error = metadata.topics().iter().find_map(|t| {
                    t.error()
                        .map(|error| format!("topic {}: {error:?}", t.name()))
                });
                (metadata.brokers().len(), topic_error)
            })
    })
    .await
    .map_err(|e| format!("the metadata request panicked: {e}"))?;
    match answer {
        Err(error) => Err(format!("Kafka unreachable: {error}")),
        Ok((0, _)) => Err("Kafka answered with no brokers".to_owned()),
        Ok((_, Some(topic_error))) if topic.is_some() => Err(topic_error),
        Ok(_) => Ok(()),
    }
}
