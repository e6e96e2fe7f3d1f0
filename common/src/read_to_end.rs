//! Reading a topic from its start to the end it had when reading began: how every reader of a
//! compacted topic (the integration registry, the batcher's checkpoints, the delivery status)
//! knows it has seen everything written before it started.
//!
//! A partition is read to its end once a record at or past the end offset seen at the start has
//! been read, or once the client reports that its fetches reached the broker's end offset
//! (`enable.partition.eof`): compaction may have removed the last offsets' records, so the
//! second signal is the one that always comes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{KafkaArgs, retry_until, topic_partitions};

/// The client setting a reader to the end needs on its consumer.
pub const PARTITION_EOF: (&str, &str) = ("enable.partition.eof", "true");

/// The context of a consumer with [`PARTITION_EOF`]: the client also reports each end reached
/// through its error callback, which by default logs it as an error; here it is the expected
/// signal, so only other errors are logged.
#[derive(Debug, Default, Clone, Copy)]
pub struct EndReachedContext;

impl ClientContext for EndReachedContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_reached = matches!(
            &error,
            KafkaError::Global(RDKafkaErrorCode::PartitionEOF) | KafkaError::PartitionEOF(_)
        );
        if !end_reached {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for EndReachedContext {}

/// Per partition, whether reading has reached the end it had when reading began.
#[derive(Debug, Default)]
pub struct EndOffsets {
    /// Partitions not read to their end yet, with that end.
    remaining: HashMap<i32, i64>,
}

impl EndOffsets {
    /// Partitions and their end offsets at the start; empty partitions are left out.
    pub fn new(ends: impl IntoIterator<Item = (i32, i64)>) -> Self {
        Self {
            remaining: ends.into_iter().collect(),
        }
    }

    /// A record at `offset` of `partition` was read.
    pub fn record(&mut self, partition: i32, offset: i64) {
        if self
            .remaining
            .get(&partition)
            .is_some_and(|end| offset + 1 >= *end)
        {
            self.remaining.remove(&partition);
        }
    }

    /// The client reports that its fetches of `partition` reached the broker's end.
    pub fn reached_end(&mut self, partition: i32) {
        self.remaining.remove(&partition);
    }

    /// Every partition has been read to its end.
    pub fn done(&self) -> bool {
        self.remaining.is_empty()
    }
}

/// Why a reader could not be pointed at a topic, or read it.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the topic does not exist")]
    NoTopic,
    #[error("reading took longer than {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// Assigns every partition of `topic` to `consumer` from its start, outside any consumer group,
/// and returns the end offsets to read up to. Blocking: call it off the async runtime's
/// threads. The consumer needs [`PARTITION_EOF`] (and then [`EndReachedContext`]).
pub fn assign_from_beginning<C: Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<EndOffsets, ReadError> {
    let give_up = Instant::now() + timeout;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions = topic_partitions(&metadata, topic);
    if partitions.is_empty() {
        return Err(ReadError::NoTopic);
    }
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in partitions {
        // A leader moving (a broker restarting) fails the request until the cluster settles.
        let (low, high) = retry_until(give_up, |remaining| {
            consumer.fetch_watermarks(topic, partition, remaining)
        })?;
        if high > low {
            ends.push((partition, high));
        }
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    Ok(EndOffsets::new(ends))
}

/// Reads every record `topic` holds now, from its start, passing each to `apply`, within
/// `timeout`. Blocking: call it off the async runtime's threads.
pub fn read_to_end(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    timeout: Duration,
    mut apply: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), ReadError> {
    let consumer: BaseConsumer<EndReachedContext> = kafka
        .client_config(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            PARTITION_EOF,
        ])
        .create_with_context(EndReachedContext)?;
    let give_up = Instant::now() + timeout;
    let mut ends = assign_from_beginning(&consumer, topic, timeout)?;
    while !ends.done() {
        let remaining = give_up.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadError::TimedOut(timeout));
        }
        match consumer.poll(remaining.min(Duration::from_millis(100))) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => ends.reached_end(partition),
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(message)) => {
                ends.record(message.partition(), message.offset());
                apply(&message);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::EndOffsets;

    #[test]
    fn done_once_every_partition_reached_its_end() {
        let mut ends = EndOffsets::new([(0, 2), (1, 1)]);
        ends.record(0, 0);
        ends.record(1, 0);
        assert!(!ends.done(), "partition 0 has one more record");
        ends.record(0, 1);
        assert!(ends.done());
    }

    #[test]
    fn the_client_reaching_the_end_counts_where_compaction_removed_the_last_records() {
        let mut ends = EndOffsets::new([(0, 10)]);
        ends.record(0, 7);
        assert!(!ends.done());
        ends.reached_end(0);
        assert!(ends.done());
    }

    #[test]
    fn an_empty_topic_is_read_at_once() {
        assert!(EndOffsets::new([]).done());
    }
}
