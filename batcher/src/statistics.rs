//! What the batcher reads of librdkafka's statistics: each events partition's end offset and
//! the broker it is fetched from, for the lag gauges, idle closes and the stuck-fetch watchdog.
//!
//! Only these fields are deserialized; serde skips the rest (brokers, request counters,
//! latency histograms, some forty counters a partition). rdkafka's whole `Statistics` allocated
//! a map or a string for each of them every interval, most of what the consumer thread spent
//! when idle.

use std::collections::HashMap;

#[derive(Debug, serde::Deserialize)]
pub struct FetchStatistics {
    topics: HashMap<String, TopicFetch>,
}

#[derive(Debug, serde::Deserialize)]
struct TopicFetch {
    partitions: HashMap<i32, PartitionFetch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct PartitionFetch {
    /// The partition's end offset as of the client's last fetch (negative: not known yet).
    hi_offset: i64,
    /// The broker it is fetched from (negative: none).
    pub broker: i32,
}

impl PartitionFetch {
    pub fn end_offset(&self) -> Option<i64> {
        (self.hi_offset >= 0).then_some(self.hi_offset)
    }
}

impl FetchStatistics {
    /// The partitions of `topic`, without librdkafka's internal entry for unassigned ones (-1).
    pub fn partitions_of(mut self, topic: &str) -> impl Iterator<Item = (i32, PartitionFetch)> {
        self.topics
            .remove(topic)
            .into_iter()
            .flat_map(|topic| topic.partitions)
            .filter(|(partition, _)| *partition >= 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An excerpt of librdkafka's statistics, with fields of each level the batcher ignores.
    const STATISTICS: &str = r#"{
        "name": "rdkafka#consumer-1", "type": "consumer", "ts": 1, "msg_cnt": 0,
        "brokers": {"127.0.0.1:9092/1": {"name": "127.0.0.1:9092/1", "nodeid": 1,
            "rtt": {"min": 1, "max": 9, "avg": 3, "p99": 9, "cnt": 12},
            "req": {"Fetch": 30, "Heartbeat": 4}}},
        "topics": {
            "activity.events": {"topic": "activity.events", "age": 5, "partitions": {
                "0": {"partition": 0, "broker": 1, "leader": 1, "hi_offset": 120, "lo_offset": 0,
                      "fetch_state": "active", "consumer_lag": 3},
                "1": {"partition": 1, "broker": -1, "leader": -1, "hi_offset": -1001},
                "-1": {"partition": -1, "broker": -1, "leader": -1, "hi_offset": -1001}}},
            "activity.integrations": {"topic": "activity.integrations", "partitions": {
                "0": {"partition": 0, "broker": 1, "leader": 1, "hi_offset": 7}}}},
        "cgrp": {"state": "up", "rebalance_cnt": 1}
    }"#;

    #[test]
    fn reads_each_partitions_end_offset_and_broker_of_one_topic() {
        let statistics: FetchStatistics = serde_json::from_str(STATISTICS).expect("statistics");
        let mut partitions: Vec<_> = statistics
            .partitions_of("activity.events")
            .map(|(partition, fetch)| (partition, fetch.end_offset(), fetch.broker))
            .collect();
        partitions.sort_unstable();
        assert_eq!(partitions, [(0, Some(120), 1), (1, None, -1)]);
    }

    #[test]
    fn a_topic_not_in_the_statistics_has_no_partitions() {
        let statistics: FetchStatistics = serde_json::from_str(STATISTICS).expect("statistics");
        assert_eq!(statistics.partitions_of("other").count(), 0);
    }
}
