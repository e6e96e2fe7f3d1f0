//! Checkpoints on a compacted Kafka topic, one record per (group, events topic, partition),
//! written before the offset commit they go with (DESIGN §3). A topic of its own rather than
//! the offset commit's metadata: a checkpoint is written, and readable by the next owner,
//! before the commit that goes with it, and any Kafka-protocol broker keeps it.
//!
//! The topic is small (one live key per partition); it is read from its start whenever
//! partitions are assigned, so a new owner sees the checkpoint its predecessor wrote just
//! before letting go.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::kafka::{KafkaArgs, TopicSpec};
use common::producer::HealingProducer;
use common::read_to_end::{ReadError, read_to_end};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use crate::core::{Checkpoint, WindowSettings};

/// The settings that decide how records become objects. A batcher that rebuilds from a
/// checkpoint with other ones would cut other objects under the same keys, so every checkpoint
/// records the ones it was written with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectShape {
    pub window_ms: i64,
    pub close_delay_ms: i64,
    pub max_object_bytes: u64,
    pub max_body_bytes: u64,
    pub frame_bytes: usize,
    pub zstd_level: i32,
}

impl ObjectShape {
    pub fn of(settings: &WindowSettings) -> Self {
        Self {
            window_ms: settings.length_ms,
            close_delay_ms: settings.close_delay_ms,
            max_object_bytes: settings.max_object_bytes,
            max_body_bytes: settings.max_body_bytes,
            frame_bytes: settings.part.frame_bytes,
            zstd_level: settings.part.zstd_level,
        }
    }

    /// Each setting that differs, as `name: recorded → given`.
    pub fn differences(&self, given: &Self) -> Vec<String> {
        let mut differences = Vec::new();
        let mut compare = |name: &str, recorded: String, now: String| {
            if recorded != now {
                differences.push(format!("{name}: {recorded} → {now}"));
            }
        };
        compare(
            "window (ACTIVITY_BATCHER_WINDOW, ms)",
            self.window_ms.to_string(),
            given.window_ms.to_string(),
        );
        compare(
            "close delay (ACTIVITY_BATCHER_CLOSE_DELAY, ms)",
            self.close_delay_ms.to_string(),
            given.close_delay_ms.to_string(),
        );
        compare(
            "ACTIVITY_BATCHER_MAX_OBJECT_BYTES",
            self.max_object_bytes.to_string(),
            given.max_object_bytes.to_string(),
        );
        compare(
            "part body limit (ACTIVITY_BATCHER_MAX_MESSAGE_BYTES less 64 KiB)",
            self.max_body_bytes.to_string(),
            given.max_body_bytes.to_string(),
        );
        compare(
            "ACTIVITY_BATCHER_FRAME_BYTES",
            self.frame_bytes.to_string(),
            given.frame_bytes.to_string(),
        );
        compare(
            "ACTIVITY_BATCHER_ZSTD_LEVEL",
            self.zstd_level.to_string(),
            given.zstd_level.to_string(),
        );
        differences
    }
}

/// A checkpoint as stored: its fields, and the object shape it was written with (absent in
/// checkpoints written before shapes were recorded).
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    #[serde(flatten)]
    checkpoint: Checkpoint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shape: Option<ObjectShape>,
}

/// Checkpoints of the group were written with other object settings than these.
#[derive(Debug, thiserror::Error)]
#[error(
    "the checkpoints of partitions {partitions:?} were written with other object settings than this batcher's, so rebuilding from them would cut other objects under the keys already delivered: {}. Start it with the recorded settings; to change them on purpose, stop every batcher of the group and start them with --allow-settings-change (objects rebuilt from before the change may then differ from the ones delivered, and are stored beside them as diverged)",
    differences.join("; ")
)]
pub struct ShapeMismatch {
    pub partitions: Vec<i32>,
    pub differences: Vec<String>,
}

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
    #[error("cannot encode the checkpoint of partition {partition}: {reason}")]
    Encode { partition: i32, reason: String },
    #[error("cannot write the checkpoint of partition {partition}: {source}")]
    Write {
        partition: i32,
        #[source]
        source: KafkaError,
    },
}

/// How long writing a checkpoint may take before the commit is given up (and retried later).
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// The batcher's one Kafka producer, for its checkpoints, its clock records and the digest
/// builder's records alike. Every librdkafka client keeps threads that wake each second, so
/// one producer shared is what keeps an idle batcher quiet; its records go to different
/// partitions, which librdkafka queues and retries apart.
pub fn writer(kafka: &KafkaArgs) -> Result<Arc<HealingProducer>, KafkaError> {
    HealingProducer::new(kafka.producer_config(WRITE_TIMEOUT), "batcher-writer").map(Arc::new)
}

/// One value per partition of a topic a consumer group reads, on the compacted checkpoint topic
/// under keys `{group}/{topic}/{partition}`: where the batchers' checkpoints and the digest
/// builders' are kept.
pub struct PartitionRecords {
    kafka: KafkaArgs,
    topic: String,
    key_prefix: String,
    producer: Arc<HealingProducer>,
}

impl PartitionRecords {
    /// Writes with `producer` (see [`writer`]).
    pub fn new(
        kafka: &KafkaArgs,
        topic: &str,
        group: &str,
        read_topic: &str,
        producer: Arc<HealingProducer>,
    ) -> Self {
        Self {
            kafka: kafka.clone(),
            topic: topic.to_owned(),
            key_prefix: format!("{group}/{read_topic}/"),
            producer,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes `value` as `partition`'s latest and waits until Kafka has it.
    pub async fn write<T: serde::Serialize>(
        &self,
        partition: i32,
        value: &T,
    ) -> Result<(), CheckpointError> {
        let key = format!("{}{partition}", self.key_prefix);
        let value = serde_json::to_vec(value).map_err(|error| CheckpointError::Encode {
            partition,
            reason: error.to_string(),
        })?;
        self.producer
            .send(&self.topic, &key, Some(&value), WRITE_TIMEOUT)
            .await
            .map(drop)
            .map_err(|source| CheckpointError::Write { partition, source })
    }

    /// The latest value of every partition (see [`latest_by_partition`]). Blocking.
    pub fn read_latest<T: serde::de::DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<HashMap<i32, T>, CheckpointError> {
        latest_by_partition(&self.kafka, &self.topic, &self.key_prefix, timeout).map_err(|source| {
            CheckpointError::Read {
                topic: self.topic.clone(),
                source,
            }
        })
    }
}

/// Reads and writes one consumer group's checkpoints of one events topic.
pub struct CheckpointStore {
    records: PartitionRecords,
    /// The shape this batcher cuts objects with, recorded in every checkpoint it writes.
    shape: ObjectShape,
}

impl CheckpointStore {
    /// Writes with `producer` (see [`writer`]).
    pub fn new(
        kafka: &KafkaArgs,
        topic: &str,
        group: &str,
        events_topic: &str,
        settings: &WindowSettings,
        producer: Arc<HealingProducer>,
    ) -> Self {
        Self {
            shape: ObjectShape::of(settings),
            records: PartitionRecords::new(kafka, topic, group, events_topic, producer),
        }
    }

    /// Writes `checkpoint` for `partition` and waits until Kafka has it.
    pub async fn write(
        &self,
        partition: i32,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError> {
        let stored = Stored {
            checkpoint: checkpoint.clone(),
            shape: Some(self.shape.clone()),
        };
        self.records.write(partition, &stored).await
    }

    /// The latest checkpoint of every partition, read from the topic's start to its end.
    /// Blocking: call it off the async runtime (the rebalance callback runs on the consumer's
    /// own thread). An unreadable value is logged and treated as no checkpoint: the partition
    /// is then rebuilt from its committed offset, which can repeat events but loses none.
    pub fn read_latest(
        &self,
        timeout: Duration,
    ) -> Result<HashMap<i32, Checkpoint>, CheckpointError> {
        Ok(self
            .read_stored(timeout)?
            .into_iter()
            .map(|(partition, stored)| (partition, stored.checkpoint))
            .collect())
    }

    /// Checks that the latest checkpoint of every partition was written with this batcher's
    /// object shape (one written before shapes were recorded passes): `Ok(Some(_))` names the
    /// partitions that were not. Blocking, as [`Self::read_latest`].
    pub fn check_shape(&self, timeout: Duration) -> Result<Option<ShapeMismatch>, CheckpointError> {
        let mut mismatch = ShapeMismatch {
            partitions: Vec::new(),
            differences: Vec::new(),
        };
        let mut stored: Vec<_> = self.read_stored(timeout)?.into_iter().collect();
        stored.sort_by_key(|(partition, _)| *partition);
        for (partition, stored) in stored {
            let Some(recorded) = stored.shape else {
                continue;
            };
            let differences = recorded.differences(&self.shape);
            if !differences.is_empty() {
                mismatch.partitions.push(partition);
                if mismatch.differences.is_empty() {
                    mismatch.differences = differences;
                }
            }
        }
        Ok((!mismatch.partitions.is_empty()).then_some(mismatch))
    }

    fn read_stored(&self, timeout: Duration) -> Result<HashMap<i32, Stored>, CheckpointError> {
        self.records.read_latest(timeout)
    }
}

/// The latest value of each `{key_prefix}{partition}` key of a compacted checkpoint topic, read
/// from its start to its end. Blocking. An unreadable value is logged and counts as none, as a
/// tombstone does: the partition is then rebuilt from further back, which repeats work but
/// loses nothing.
fn latest_by_partition<T: serde::de::DeserializeOwned>(
    kafka: &KafkaArgs,
    topic: &str,
    key_prefix: &str,
    timeout: Duration,
) -> Result<HashMap<i32, T>, ReadError> {
    let mut latest = HashMap::new();
    read_to_end(
        kafka,
        "activity-batcher-checkpoint-reader",
        topic,
        timeout,
        |message| {
            let Some(partition) = message
                .key()
                .and_then(|key| key.strip_prefix(key_prefix.as_bytes()))
                .and_then(|rest| std::str::from_utf8(rest).ok())
                .and_then(|rest| rest.parse::<i32>().ok())
            else {
                return;
            };
            match message.payload().map(serde_json::from_slice::<T>) {
                Some(Ok(value)) => {
                    latest.insert(partition, value);
                }
                None => {
                    latest.remove(&partition);
                }
                Some(Err(error)) => {
                    tracing::error!(key_prefix, partition, offset = message.offset(), %error, "unreadable checkpoint; the partition will be rebuilt from further back");
                    latest.remove(&partition);
                }
            }
        },
    )?;
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::PartSettings;

    fn settings(length_ms: i64) -> WindowSettings {
        WindowSettings {
            length_ms,
            close_delay_ms: 120_000,
            future_tolerance_ms: 60_000,
            max_object_bytes: 32 << 20,
            max_body_bytes: (16 << 20) - (64 << 10),
            part: PartSettings {
                frame_bytes: 64 << 10,
                zstd_level: 3,
            },
        }
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            commit_offset: 10,
            resume_offset: 12,
            stream_time_ms: Some(5),
            closed_until_ms: Some(0),
            closed_until_at_commit_ms: None,
            closes: vec![],
        }
    }

    #[test]
    fn a_stored_checkpoint_carries_its_shape_and_older_or_newer_records_still_read() {
        let stored = Stored {
            checkpoint: checkpoint(),
            shape: Some(ObjectShape::of(&settings(3_600_000))),
        };
        let json = serde_json::to_value(&stored).expect("serialize");
        assert_eq!(
            json["commit_offset"], 10,
            "the checkpoint's fields stay at the top"
        );
        assert_eq!(json["shape"]["window_ms"], 3_600_000);

        // Written before shapes were recorded.
        let mut old = json.clone();
        old.as_object_mut().expect("object").remove("shape");
        let read: Stored = serde_json::from_value(old).expect("an old checkpoint");
        assert_eq!((read.checkpoint, read.shape), (checkpoint(), None));

        // Written by a newer version with a field this one does not know.
        let mut newer = json;
        newer["shape"]["future_setting"] = 1.into();
        newer["another"] = "x".into();
        let read: Stored = serde_json::from_value(newer).expect("a newer checkpoint");
        assert_eq!(read.checkpoint, checkpoint());
    }

    #[test]
    fn differences_name_each_changed_setting_with_both_values() {
        let hourly = ObjectShape::of(&settings(3_600_000));
        assert!(hourly.differences(&hourly).is_empty());
        let mut other = ObjectShape::of(&settings(60_000));
        other.zstd_level = 9;
        assert_eq!(
            hourly.differences(&other),
            [
                "window (ACTIVITY_BATCHER_WINDOW, ms): 3600000 → 60000",
                "ACTIVITY_BATCHER_ZSTD_LEVEL: 3 → 9"
            ]
        );
    }
}
