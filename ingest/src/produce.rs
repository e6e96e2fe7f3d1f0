//! Writing accepted events to Kafka and waiting for every acknowledgement.

use std::time::{Duration, Instant};

use common::event::Event;
use common::producer::HealingProducer;
use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};

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

/// An idempotent `acks=all` producer for the events topic, replaced when it stops delivering
/// while the cluster answers (see `HealingProducer`).
pub struct EventWriter {
    producer: HealingProducer,
    topic: String,
    timeout: Duration,
}

impl EventWriter {
    /// `config` must already carry the durability settings (`KafkaArgs::producer_config`).
    pub fn new(config: ClientConfig, topic: &str, timeout: Duration) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: HealingProducer::new(config, "ingest-events")?,
            topic: topic.to_owned(),
            timeout,
        })
    }

    /// Writes every event with key = tenant id and record timestamp = `accepted_at_ms`, and
    /// returns only when Kafka has acknowledged all of them, or with the first failure.
    pub async fn write(&self, events: &[Event], accepted_at_ms: i64) -> Result<(), WriteError> {
        let producer = self.producer.current();
        let result = self.write_with(&producer, events, accepted_at_ms).await;
        self.producer.settle(&producer, result.is_ok()).await;
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

    /// Whether a broker answers with metadata for the events topic.
    pub async fn check_reachable(&self) -> Result<(), String> {
        self.producer.check_reachable(&self.topic).await
    }

    /// Waits up to `timeout` for queued records to be acknowledged; used on shutdown.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let started = Instant::now();
        let result = self.producer.flush(timeout).await;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "flushed the Kafka producer"
        );
        result
    }
}
