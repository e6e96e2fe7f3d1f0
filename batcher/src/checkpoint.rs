//! Checkpoints on a compacted Kafka topic, one record per (group, events topic, partition),
//! written before the offset commit they go with (DESIGN §3). A topic of its own rather than
//! the offset commit's metadata: a checkpoint is written, and readable by the next owner,
//! before the commit that goes with it, and any Kafka-protocol broker keeps it.
//!
//! The topic is small (one live key per partition); it is read from its start whenever
//! partitions are assigned, so a new owner sees the checkpoint its predecessor wrote just
//! before letting go.

use std::collections::HashMap;
use std::time::Duration;

use common::kafka::{KafkaArgs, TopicSpec};
use common::producer::HealingProducer;
use common::read_to_end::{ReadError, read_to_end};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

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
        source: ReadError,
    },
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
    producer: HealingProducer,
}

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
            producer: HealingProducer::new(
                kafka.producer_config(WRITE_TIMEOUT),
                "batcher-checkpoints",
            )?,
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
            .send(&self.topic, &key, Some(&value), WRITE_TIMEOUT)
            .await
            .map(drop)
            .map_err(|source| CheckpointError::Write { partition, source })
    }

    /// The latest checkpoint of every partition, read from the topic's start to its end.
    /// Blocking: call it off the async runtime (the rebalance callback runs on the consumer's
    /// own thread). An unreadable value is logged and treated as no checkpoint: the partition
    /// is then rebuilt from its committed offset, which can repeat events but loses none.
    pub fn read_latest(
        &self,
        timeout: Duration,
    ) -> Result<HashMap<i32, Checkpoint>, CheckpointError> {
        let mut latest = HashMap::new();
        read_to_end(
            &self.kafka,
            "activity-batcher-checkpoint-reader",
            &self.topic,
            timeout,
            |message| {
                let Some(partition) = message
                    .key()
                    .and_then(|key| key.strip_prefix(self.key_prefix.as_bytes()))
                    .and_then(|rest| std::str::from_utf8(rest).ok())
                    .and_then(|rest| rest.parse::<i32>().ok())
                else {
                    return;
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
            },
        )
        .map_err(|source| CheckpointError::Read {
            topic: self.topic.clone(),
            source,
        })?;
        Ok(latest)
    }
}
