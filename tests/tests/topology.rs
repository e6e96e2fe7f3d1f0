//! The upload queues on a real RabbitMQ: declared idempotently, a retry tier returns a job to the
//! main queue after its delay, and the dead-letter queue keeps what is sent to it.

use std::time::{Duration, Instant};

use common::amqp::publish_confirmed;
use common::topology::{DEAD_ROUTING_KEY, UploadTopology};
use integration_tests::fixtures::{confirm_channel, delete_topology};
use integration_tests::{unique, wait_for};
use lapin::Channel;
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable};

async fn publish(channel: &Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
    publish_confirmed(channel, exchange, routing_key, body, headers, None)
        .await
        .expect("routed and confirmed");
}

async fn get(channel: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
}

#[tokio::test]
async fn declaring_twice_is_harmless_and_conflicting_settings_are_named() {
    let (_connection, channel) = confirm_channel("topology-test").await;
    let name = unique("uploads");
    let topology = UploadTopology::new(&name, &[Duration::from_secs(10), Duration::from_secs(60)]);
    topology.declare(&channel).await.expect("first declaration");
    topology
        .declare(&channel)
        .await
        .expect("second declaration");

    let (_other, conflicting_channel) = confirm_channel("topology-test").await;
    let conflicting = UploadTopology::new(&name, &[Duration::from_secs(5)]);
    let error = conflicting
        .declare(&conflicting_channel)
        .await
        .expect_err("a different delay must be refused");
    let message = error.to_string();
    assert!(
        message.contains(&format!("queue {name}.retry.1")),
        "{message}"
    );
    assert!(message.contains("ACTIVITY_UPLOADS_NAME"), "{message}");
    delete_topology(&channel, &topology).await;
}

#[tokio::test]
async fn a_job_in_a_retry_tier_returns_to_the_main_queue_after_its_delay() {
    let (_connection, channel) = confirm_channel("topology-test").await;
    let topology = UploadTopology::new(
        &unique("uploads"),
        &[Duration::from_millis(300), Duration::from_secs(60)],
    );
    topology.declare(&channel).await.expect("declare");

    let tier = &topology.retry_queues[0];
    let sent = Instant::now();
    publish(
        &channel,
        &topology.retry_exchange,
        &tier.routing_key,
        b"payload",
    )
    .await;

    let message = wait_for("the job to come back", Duration::from_secs(20), || async {
        get(&channel, &topology.queue).await
    })
    .await;
    assert!(
        sent.elapsed() >= tier.delay,
        "came back after {:?}, before its delay",
        sent.elapsed()
    );
    assert_eq!(message.delivery.data, b"payload");
    let headers = message
        .delivery
        .properties
        .headers()
        .clone()
        .expect("headers kept");
    assert_eq!(
        headers.inner().get("tenant"),
        Some(&AMQPValue::LongString("acme".into()))
    );
    assert!(
        headers.inner().contains_key("x-death"),
        "RabbitMQ records the dead-lettering"
    );
    delete_topology(&channel, &topology).await;
}

#[tokio::test]
async fn the_dead_letter_queue_keeps_what_is_sent_to_it() {
    let (_connection, channel) = confirm_channel("topology-test").await;
    let topology = UploadTopology::new(&unique("uploads"), &[Duration::from_secs(10)]);
    topology.declare(&channel).await.expect("declare");
    publish(
        &channel,
        &topology.dead_letter_exchange,
        DEAD_ROUTING_KEY,
        b"dead job",
    )
    .await;
    let message = get(&channel, &topology.dead_letter_queue)
        .await
        .expect("in the DLQ");
    assert_eq!(message.delivery.data, b"dead job");
    delete_topology(&channel, &topology).await;
}
