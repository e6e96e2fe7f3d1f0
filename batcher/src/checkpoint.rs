//! Checkpoints on a compacted Kafka topic, one record per (group, events topic, partition),
//! written before the offset commit they go with (DESIGN §3: Kafka's offset-commit metadata
//! would be the natural place, but the test broker returns it empty).
//!
//! The topic is small (one live key per partition); it is read from its start whenever
//! partitions are assigned, so a new owner sees the checkpoint its predecessor wrote just
//! before letting go.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::kafka::{KafkaArgs, TopicSpec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::core::Checkpoint;

/// The checkpoints topic as the batcher creates it: compacted, one partition, segments rolled
/// hourly so compaction keeps it small.
pub fn topic_spec(name: &str, replication: i32) -> TopicSpec<'_> {
    TopicSpec {
        name,
        partitions: 1,
        replication,
        config: vec![("cleanup.policy", "compact"), ("segment.ms", "3600000")],
    }
}

/// Why checkpoints could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the checkpoints topic {topic}: {source}")]
    Read {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("reading the checkpoints topic {topic} took longer than {timeout:?}")]
    ReadTimedOut { topic: String, timeout: Duration },
    #[error("cannot write the checkpoint of partition {partition}: {source}")]
    Write {
        partition: i32,
        #[source]
        source: KafkaError,
    },
}

/// Reads and writes one consumer group's checkpoints of one events topic.
pub struct CheckpointStore {
    kafka: KafkaArgs,
    topic: String,
    key_prefix: String,
    producer: FutureProducer,
}

/// After the end offset, reading stops once nothing more arrives for this long.
const TRAILING_QUIET: Duration = Duration::from_millis(300);

/// How long writing a checkpoint may take before the commit is given up (and retried later).
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

impl CheckpointStore {
    pub fn new(
        kafka: &KafkaArgs,
        topic: &str,
        group: &str,
        events_topic: &str,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            kafka: kafka.clone(),
            topic: topic.to_owned(),
            key_prefix: format!("{group}/{events_topic}/"),
            producer: kafka.producer_config(WRITE_TIMEOUT).create()?,
        })
    }

    /// Writes `checkpoint` for `partition` and waits until Kafka has it.
    pub async fn write(
        &self,
        partition: i32,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError> {
        let key = format!("{}{partition}", self.key_prefix);
        // Serializing a struct of integers cannot fail.
        let value = serde_json::to_vec(checkpoint).unwrap_or_default();
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&value),
                WRITE_TIMEOUT,
            )
            .await
            .map(drop)
            .map_err(|(source, _)| CheckpointError::Write { partition, source })
    }

    /// The latest checkpoint of every partition, read from the topic's start to its end.
    /// Blocking: call it off the async runtime (the rebalance callback runs on the consumer's
    /// own thread). An unreadable value is logged and treated as no checkpoint: the partition
    /// is then rebuilt from its committed offset, which can repeat events but loses none.
    pub fn read_latest(
        &self,
        timeout: Duration,
    ) -> Result<HashMap<i32, Checkpoint>, CheckpointError> {
        let read_error = |source| CheckpointError::Read {
            topic: self.topic.clone(),
            source,
        };
        let consumer: BaseConsumer = self
            .kafka
            .client_config(&[
                ("group.id", "activity-batcher-checkpoint-reader"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ])
            .create()
            .map_err(read_error)?;
        let deadline = Instant::now() + timeout;
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, 0, timeout)
            .map_err(read_error)?;
        let mut latest = HashMap::new();
        if high <= low {
            return Ok(latest);
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.topic, 0, Offset::Beginning)
            .map_err(read_error)?;
        consumer.assign(&assignment).map_err(read_error)?;
        let mut next = low;
        // Read to the end offset, then on until the partition stays quiet for a moment: the
        // test broker reports the end of a multi-record batch as its first offset + 1, so the
        // end offset alone could miss the newest checkpoints.
        let mut quiet_since: Option<Instant> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CheckpointError::ReadTimedOut {
                    topic: self.topic.clone(),
                    timeout,
                });
            }
            let Some(message) = consumer.poll(remaining.min(Duration::from_millis(100))) else {
                if next >= high {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= TRAILING_QUIET {
                        break;
                    }
                }
                continue;
            };
            quiet_since = None;
            let message = message.map_err(read_error)?;
            next = message.offset() + 1;
            let Some(partition) = message
                .key()
                .and_then(|key| key.strip_prefix(self.key_prefix.as_bytes()))
                .and_then(|rest| std::str::from_utf8(rest).ok())
                .and_then(|rest| rest.parse::<i32>().ok())
            else {
                continue;
            };
            match message.payload().map(serde_json::from_slice::<Checkpoint>) {
                Some(Ok(checkpoint)) => {
                    latest.insert(partition, checkpoint);
                }
                None => {
                    latest.remove(&partition);
                }
                Some(Err(error)) => {
                    tracing::error!(partition, offset = message.offset(), %error, "unreadable checkpoint; the partition will be rebuilt from its committed offset");
                    latest.remove(&partition);
                }
            }
        }
        Ok(latest)
    }
}
