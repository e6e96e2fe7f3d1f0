//! The events topic's answers to a replay's planning, from the broker.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::ReplayConsumer;
use super::plan::TopicIndex;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks through a replay's consumer, before it is assigned what to read.
pub struct BrokerIndex<'a> {
    pub consumer: &'a ReplayConsumer,
    pub topic: &'a str,
}

impl TopicIndex for BrokerIndex<'_> {
    fn partitions(&self) -> anyhow::Result<Vec<i32>> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(self.topic), REQUEST_TIMEOUT)
            .with_context(|| format!("cannot read the metadata of {}", self.topic))?;
        Ok(common::kafka::topic_partitions(&metadata, self.topic))
    }

    fn end_offset(&self, partition: i32) -> anyhow::Result<i64> {
        let (_, high) = self
            .consumer
            .fetch_watermarks(self.topic, partition, REQUEST_TIMEOUT)
            .with_context(|| format!("cannot read the end of {}/{partition}", self.topic))?;
        Ok(high)
    }

    /// The broker's answer from its time index.
    fn offset_for_time(&self, partition: i32, time_ms: i64) -> anyhow::Result<Option<i64>> {
        let mut query = TopicPartitionList::new();
        query.add_partition_offset(self.topic, partition, Offset::Offset(time_ms))?;
        let found = self
            .consumer
            .offsets_for_times(query, REQUEST_TIMEOUT)
            .with_context(|| {
                format!(
                    "cannot look up offsets by time in {}/{partition}",
                    self.topic
                )
            })?;
        Ok(found
            .find_partition(self.topic, partition)
            .and_then(|e| e.offset().to_raw())
            .filter(|offset| *offset >= 0))
    }

    /// Reads the record: the consumer is assigned it alone, then unassigned.
    fn timestamp_at(&self, partition: i32, offset: i64) -> anyhow::Result<i64> {
        let topic = self.topic;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        self.consumer.assign(&assignment)?;
        let give_up = Instant::now() + REQUEST_TIMEOUT;
        let timestamp = loop {
            anyhow::ensure!(
                Instant::now() < give_up,
                "could not read {topic}/{partition} at offset {offset}"
            );
            let Some(message) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message?;
            break message.timestamp().to_millis().with_context(|| {
                format!(
                    "the record at {partition}:{} has no timestamp",
                    message.offset()
                )
            })?;
        };
        self.consumer.unassign()?;
        Ok(timestamp)
    }
}
