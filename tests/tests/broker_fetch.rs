//! What the batcher needs from the broker when it resumes a paused partition or rebuilds from a
//! committed offset: a fetch from an offset in the middle of a record batch returns the rest of
//! that batch, each record once. Apache Kafka answers with the whole batch and the client drops
//! the records before the offset. (Tansu 0.6.0, the broker these tests ran on before, answered
//! from the next batch on, and the batcher lost the rest of the batch.)

use std::time::Duration;

use common::kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const RECORDS: i64 = 1_000;

#[tokio::test]
async fn a_fetch_from_the_middle_of_a_batch_returns_the_rest_of_it_once() {
    let kafka = KafkaArgs::new(integration_tests::kafka::brokers());
    let topic = integration_tests::kafka::new_topic("broker-fetch", 1).await;
    // A long linger puts every record in one batch.
    let producer: FutureProducer = kafka
        .producer_config(Duration::from_secs(10))
        .set("linger.ms", "200")
        .create()
        .expect("producer");
    let sends = (0..RECORDS).map(|n| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            let payload = format!("m{n}");
            producer
                .send(
                    FutureRecord::to(&topic).key("k").payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce")
                .offset
        }
    });
    let offsets = futures_util::future::join_all(sends).await;
    assert_eq!(offsets, (0..RECORDS).collect::<Vec<_>>());

    let start = RECORDS / 2;
    let consumer: BaseConsumer = kafka
        .client_config(&[("group.id", "broker-fetch")])
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Offset(start))
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut read = Vec::new();
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    while read.len() < (RECORDS - start) as usize && std::time::Instant::now() < give_up {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("fetch");
            let payload = String::from_utf8_lossy(message.payload().unwrap_or_default());
            read.push((message.offset(), payload.into_owned()));
        }
    }
    let expected: Vec<(i64, String)> = (start..RECORDS).map(|n| (n, format!("m{n}"))).collect();
    assert_eq!(read, expected);
}
