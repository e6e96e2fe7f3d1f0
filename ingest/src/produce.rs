//! Writing accepted events to Kafka and waiting for every acknowledgement.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::async_producer::{AsyncProducer, Writes};
use common::event::Event;
use common::producer::HealingProducer;
use metrics::gauge;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;

use crate::metrics::EVENTS_END_OFFSET;

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
    end_offsets: EndOffsets,
}

impl EventWriter {
    /// `config` must already carry the durability settings (`KafkaArgs::producer_config`).
    pub fn new(config: ClientConfig, topic: &str, timeout: Duration) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: HealingProducer::new(config, "ingest-events")?,
            topic: topic.to_owned(),
            timeout,
            end_offsets: EndOffsets::default(),
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
        producer: &AsyncProducer,
        events: &[Event],
        accepted_at_ms: i64,
    ) -> Result<(), WriteError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let writes = Writes::default();
        for event in events {
            let record = FutureRecord::to(&self.topic)
                .key(event.tenant_id().as_str())
                .payload(event.canonical_json())
                .timestamp(accepted_at_ms);
            producer
                .enqueue(&writes, record)
                .map_err(WriteError::Enqueue)?;
        }
        let positions = tokio::time::timeout_at(deadline, writes.acknowledged())
            .await
            .map_err(|_| WriteError::TimedOut(self.timeout))?
            .map_err(WriteError::Delivery)?;
        let mut ends = BatchEnds::default();
        for position in positions {
            ends.acknowledged(position.partition, position.offset);
        }
        self.end_offsets.advance(&ends);
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

/// The offset after the last record acknowledged in each partition a batch went to (a batch
/// touches a few partitions: a list beats a map).
#[derive(Debug, Default)]
struct BatchEnds(Vec<(i32, i64)>);

impl BatchEnds {
    fn acknowledged(&mut self, partition: i32, offset: i64) {
        match self.0.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, end)) => *end = (*end).max(offset + 1),
            None => self.0.push((partition, offset + 1)),
        }
    }
}

/// The furthest end offset acknowledged per partition so far, exported as
/// [`EVENTS_END_OFFSET`]; batches acknowledged out of order never move it back.
#[derive(Debug, Default)]
struct EndOffsets(Mutex<HashMap<i32, i64>>);

impl EndOffsets {
    fn advance(&self, batch: &BatchEnds) {
        let mut furthest = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for &(partition, end) in &batch.0 {
            let known = furthest.entry(partition).or_insert(end);
            if end >= *known {
                *known = end;
                gauge!(EVENTS_END_OFFSET, "partition" => partition.to_string()).set(end as f64);
            }
        }
    }

    #[cfg(test)]
    fn get(&self, partition: i32) -> Option<i64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_offsets_follow_the_furthest_acknowledgement_and_never_move_back() {
        let ends = EndOffsets::default();
        let mut first = BatchEnds::default();
        first.acknowledged(0, 41);
        first.acknowledged(0, 40);
        first.acknowledged(3, 7);
        ends.advance(&first);
        assert_eq!((ends.get(0), ends.get(3)), (Some(42), Some(8)));
        // An older batch whose acknowledgement came last.
        let mut older = BatchEnds::default();
        older.acknowledged(0, 12);
        ends.advance(&older);
        assert_eq!(ends.get(0), Some(42));
        assert_eq!(ends.get(1), None);
    }
}
