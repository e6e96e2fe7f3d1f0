//! The services' Kafka writers replace a producer whose writes keep failing while a fresh one
//! reaches the cluster (librdkafka's producer can stay stuck after a broker pause, where a new
//! one is not), and keep it while the cluster is out of reach, where a new one would not help.
//! The stuck producer itself is produced by the frozen-broker fault scenario; here the failures
//! are reported directly, against a real broker.

use std::sync::Arc;
use std::time::Duration;

use common::kafka::KafkaArgs;
use common::producer::HealingProducer;

const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_producer_failing_while_the_cluster_answers_is_replaced_on_the_third_failure() {
    let kafka = KafkaArgs::new(integration_tests::kafka::brokers());
    let topic = integration_tests::kafka::new_topic("producer-healing", 1).await;
    let healing =
        HealingProducer::new(kafka.producer_config(QUEUE_TIMEOUT), "test").expect("producer");
    let first = healing.current();
    healing.settle(&first, false).await;
    healing.settle(&first, false).await;
    assert!(
        Arc::ptr_eq(&first, &healing.current()),
        "two failures in a row are not enough to replace the producer"
    );
    healing.settle(&first, false).await;
    assert!(
        !Arc::ptr_eq(&first, &healing.current()),
        "the third failure in a row, with the cluster answering, replaces the producer"
    );
    let position = healing
        .send(&topic, "tenant", Some(b"{}"), QUEUE_TIMEOUT)
        .await
        .expect("the replacement delivers");
    assert_eq!(position.offset, 0);
}

#[tokio::test]
async fn a_success_in_between_starts_the_failure_count_again() {
    let kafka = KafkaArgs::new(integration_tests::kafka::brokers());
    let healing =
        HealingProducer::new(kafka.producer_config(QUEUE_TIMEOUT), "test").expect("producer");
    let first = healing.current();
    for delivered in [false, false, true, false, false] {
        healing.settle(&first, delivered).await;
    }
    assert!(Arc::ptr_eq(&first, &healing.current()));
}

#[tokio::test]
async fn a_producer_is_kept_while_a_fresh_one_does_not_reach_the_cluster_either() {
    // Nothing listens there.
    let port = integration_tests::services::free_port();
    let kafka = KafkaArgs::new(format!("127.0.0.1:{port}"));
    let healing =
        HealingProducer::new(kafka.producer_config(QUEUE_TIMEOUT), "test").expect("producer");
    let first = healing.current();
    for _ in 0..6 {
        healing.settle(&first, false).await;
    }
    assert!(
        Arc::ptr_eq(&first, &healing.current()),
        "a fresh producer that cannot reach the cluster does not replace the current one"
    );
}
