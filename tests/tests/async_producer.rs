//! The services' Kafka producer (`common::async_producer`): every write is answered, with its
//! place in the topic or the error, including the writes still queued when it is let go.

use std::time::Duration;

use common::async_producer::{AsyncProducer, Writes};
use common::kafka::KafkaArgs;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;

const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

fn record<'a>(topic: &'a str, payload: &'a str) -> FutureRecord<'a, str, str> {
    FutureRecord::to(topic).key("acme").payload(payload)
}

#[tokio::test]
async fn writes_are_acknowledged_with_their_place_in_the_topic() {
    let topic = integration_tests::kafka::new_topic("async-producer", 1).await;
    let kafka = KafkaArgs::new(integration_tests::kafka::brokers());
    let producer = AsyncProducer::new(&kafka.producer_config(QUEUE_TIMEOUT)).expect("producer");
    let writes = Writes::default();
    for payload in ["a", "b", "c"] {
        producer
            .enqueue(&writes, record(&topic, payload))
            .expect("queued");
    }
    let positions = writes.acknowledged().await.expect("acknowledged");
    assert!(positions.iter().all(|position| position.partition == 0));
    let mut offsets: Vec<i64> = positions.iter().map(|position| position.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 1, 2]);
    let position = producer
        .send(record(&topic, "d"), QUEUE_TIMEOUT)
        .await
        .expect("acknowledged");
    assert_eq!(position.offset, 3);
}

#[tokio::test]
async fn a_write_to_a_partition_the_topic_lacks_fails_with_the_reason() {
    let topic = integration_tests::kafka::new_topic("async-producer", 1).await;
    let kafka = KafkaArgs::new(integration_tests::kafka::brokers());
    let producer = AsyncProducer::new(&kafka.producer_config(QUEUE_TIMEOUT)).expect("producer");
    let error = producer
        .send(record(&topic, "x").partition(5), QUEUE_TIMEOUT)
        .await
        .expect_err("no partition 5");
    assert!(
        error.to_string().contains("Unknown partition"),
        "unexpected error: {error}"
    );
}

#[tokio::test]
async fn writes_still_queued_when_the_producer_is_let_go_are_answered_as_failed() {
    // Nothing listens there, so the write stays queued.
    let port = integration_tests::services::free_port();
    let kafka = KafkaArgs::new(format!("127.0.0.1:{port}"));
    let producer =
        AsyncProducer::new(&kafka.producer_config(Duration::from_secs(300))).expect("producer");
    let writes = Writes::default();
    producer
        .enqueue(&writes, record("nowhere", "x"))
        .expect("queued locally");
    drop(producer);
    // Within the delivery thread's poll span (10 s), long before the 300 s message timeout.
    let outcome = tokio::time::timeout(Duration::from_secs(30), writes.acknowledged())
        .await
        .expect("answered within 30 s");
    assert!(
        matches!(
            outcome,
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue))
        ),
        "{outcome:?}"
    );
}
