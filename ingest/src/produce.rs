//! Writing accepted events to Kafka and waiting for every acknowledgement.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::event::Event;
use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

/// Why a batch of events was not fully acknowledged. Events of the batch may still have been
/// written: the client is told to retry, and the event `id` lets downstream drop the copies.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("Kafka did not take the events: {0}")]
    Enqueue(#[source] KafkaError),
    #[error("Kafka did not acknowledge the events: {0}")]
    Delivery(#[source] KafkaError),
    #[error("Kafka did not acknowledge the events within {0:?}")]
    TimedOut(Duration),
}

/// Failed writes in a row, while a broker answers, after which the producer is replaced.
const REPLACE_AFTER_FAILURES: u32 = 3;

/// An idempotent `acks=all` producer for the events topic.
///
/// An idempotent producer can get stuck where a new one would not: librdkafka raises a fatal
/// error, or, when a broker has lost the producer's state (seen with an in-memory broker after a
/// restart), it answers `UNKNOWN_PRODUCER_ID` to every epoch librdkafka bumps to, forever. The
/// writer replaces the producer in both cases, so ingest recovers without a restart. Requests
/// that shared the old producer have already been answered 503, so nothing acknowledged is lost.
pub struct EventWriter {
    producer: RwLock<Arc<FutureProducer>>,
    consecutive_failures: AtomicU32,
    config: ClientConfig,
    topic: String,
    timeout: Duration,
}

impl EventWriter {
    /// `config` must already carry the durability settings (`KafkaArgs::producer_config`).
    pub fn new(config: ClientConfig, topic: String, timeout: Duration) -> Result<Self, KafkaError> {
        let producer = Arc::new(config.create()?);
        Ok(Self {
            producer: RwLock::new(producer),
            consecutive_failures: AtomicU32::new(0),
            config,
            topic,
            timeout,
        })
    }

    fn current(&self) -> Arc<FutureProducer> {
        self.producer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Writes every event with key = tenant id and record timestamp = `accepted_at_ms`, and
    /// returns only when Kafka has acknowledged all of them, or with the first failure.
    pub async fn write(&self, events: &[Event], accepted_at_ms: i64) -> Result<(), WriteError> {
        let producer = self.current();
        let result = self.write_with(&producer, events, accepted_at_ms).await;
        if result.is_ok() {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return result;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some((code, reason)) = producer.client().fatal_error() {
            self.replace(&producer, &format!("fatal error {code:?}: {reason}"));
        } else if failures >= REPLACE_AFTER_FAILURES && self.check_reachable().await.is_ok() {
            self.replace(
                &producer,
                &format!("{failures} writes failed in a row while the cluster answers"),
            );
        }
        result
    }

    async fn write_with(
        &self,
        producer: &FutureProducer,
        events: &[Event],
        accepted_at_ms: i64,
    ) -> Result<(), WriteError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut deliveries = Vec::with_capacity(events.len());
        for event in events {
            let record = FutureRecord::to(&self.topic)
                .key(event.tenant_id().as_str())
                .payload(event.canonical_json())
                .timestamp(accepted_at_ms);
            let delivery = producer
                .send_result(record)
                .map_err(|(error, _)| WriteError::Enqueue(error))?;
            deliveries.push(delivery);
        }
        let outcomes = tokio::time::timeout_at(deadline, join_all(deliveries))
            .await
            .map_err(|_| WriteError::TimedOut(self.timeout))?;
        for outcome in outcomes {
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(WriteError::Delivery(error)),
                Err(_canceled) => return Err(WriteError::Delivery(KafkaError::Canceled)),
            }
        }
        Ok(())
    }

    fn replace(&self, failed: &Arc<FutureProducer>, why: &str) {
        let mut slot = self
            .producer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !Arc::ptr_eq(&slot, failed) {
            return; // another request already replaced it
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(reason = why, "replaced the Kafka producer");
                *slot = Arc::new(fresh);
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::error!(%error, reason = why, "cannot replace the Kafka producer")
            }
        }
    }

    /// Whether a broker answers with metadata for the events topic.
    pub async fn check_reachable(&self) -> Result<(), String> {
        let producer = self.current();
        let topic = self.topic.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|metadata| metadata.topics().first().and_then(|t| t.error()))
        })
        .await
        .map_err(|e| format!("readiness check panicked: {e}"))?;
        match metadata {
            Ok(None) => Ok(()),
            Ok(Some(error)) => Err(format!("topic {}: {error:?}", self.topic)),
            Err(error) => Err(format!("Kafka unreachable: {error}")),
        }
    }

    /// Waits up to `timeout` for queued records to be acknowledged; used on shutdown.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.current();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .unwrap_or(Err(KafkaError::Canceled));
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "flushed the Kafka producer"
        );
        result
    }
}
