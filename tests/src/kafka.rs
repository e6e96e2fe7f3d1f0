//! Reading what the services wrote to Kafka.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Bootstrap servers of the test broker (`ACTIVITY_TEST_KAFKA_BROKERS`, default 127.0.0.1:9092).
pub fn brokers() -> String {
    std::env::var("ACTIVITY_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Creates a topic named `prefix` plus a unique suffix on the test broker (replication 1) and
/// returns its name.
pub async fn new_topic(prefix: &str, partitions: i32) -> String {
    let name = crate::unique(prefix);
    common::kafka::KafkaArgs::new(brokers())
        .ensure_topics(&[common::kafka::TopicSpec {
            name: &name,
            partitions,
            replication: 1,
            config: vec![],
        }])
        .await
        .unwrap_or_else(|error| panic!("creating topic {name}: {error}"));
    name
}

/// One record as a test sees it.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: String,
    pub timestamp_ms: i64,
}

/// Reads every partition of `topic` from the beginning until `done` holds for what was read, or
/// panics after `deadline`.
pub async fn read_until(
    brokers: &str,
    topic: &str,
    deadline: Duration,
    done: impl Fn(&[Record]) -> bool + Send + 'static,
) -> Vec<Record> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_blocking(&brokers, &topic, deadline, done))
        .await
        .expect("reader thread")
}

/// Reads every record `topic` holds now (up to the end offsets when called).
pub async fn read_all(brokers: &str, topic: &str, deadline: Duration) -> Vec<Record> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        common::read_to_end::read_to_end(
            &common::kafka::KafkaArgs::new(brokers),
            &crate::unique("test-reader"),
            &topic,
            deadline,
            |message| records.push(Record::from(message)),
        )
        .unwrap_or_else(|error| panic!("reading {topic} to its end: {error}"));
        records
    })
    .await
    .expect("reader thread")
}

impl From<&rdkafka::message::BorrowedMessage<'_>> for Record {
    fn from(message: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            value: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            timestamp_ms: message.timestamp().to_millis().unwrap_or(-1),
        }
    }
}

fn read_blocking(
    brokers: &str,
    topic: &str,
    deadline: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", crate::unique("test-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("test consumer");
    let give_up = Instant::now() + deadline;
    let partitions = loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("topic metadata");
        let count = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        if count > 0 {
            break count;
        }
        assert!(
            Instant::now() < give_up,
            "topic {topic} never showed partitions"
        );
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let partition = i32::try_from(partition).expect("partition fits i32");
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");

    let mut records = Vec::new();
    while !done(&records) {
        assert!(
            Instant::now() < give_up,
            "timed out after {deadline:?} reading {topic}; read so far: {records:#?}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consume");
            records.push(Record::from(&message));
        }
    }
    records
}
