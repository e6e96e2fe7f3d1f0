//! The upload queues on a real RabbitMQ: declared idempotently, a retry tier returns a job to the
//! main queue after its delay, the dead-letter queue keeps what is sent to it, listing it spends
//! nothing, and a job returned too often is dead-lettered rather than dropped.

use std::time::{Duration, Instant};

use common::amqp::publish_confirmed;
use common::topology::{
    DEAD_ROUTING_KEY, UPLOAD_DELIVERY_LIMIT, UPLOAD_ROUTING_KEY, UploadTopology,
};
use integration_tests::fixtures::{confirm_channel, delete_topology};
use integration_tests::{unique, wait_for};
use lapin::Channel;
use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use uploader::failure::header as failure_header;

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

/// Returns a message to its queue unsettled, as a consumer that dies holding it does: RabbitMQ
/// counts it as a failed delivery.
async fn return_to_queue(message: lapin::message::BasicGetMessage) {
    message
        .delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .expect("nack");
}

/// Publishes a dead-lettered job `key` of `acme` with the uploader's failure headers.
async fn publish_dead(channel: &Channel, topology: &UploadTopology, key: &str) {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("tenant", "acme"),
        (failure_header::CLASS, "configuration"),
        (failure_header::CODE, "AccessDenied"),
        (failure_header::MESSAGE, "denied"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    publish_confirmed(
        channel,
        &topology.dead_letter_exchange,
        DEAD_ROUTING_KEY,
        key.as_bytes(),
        headers,
        Some(key.into()),
    )
    .await
    .expect("routed and confirmed");
}

#[tokio::test]
async fn listing_the_dead_letter_queue_a_hundred_times_spends_no_delivery_and_keeps_the_order() {
    let (_connection, channel) = confirm_channel("topology-test").await;
    let topology = UploadTopology::new(&unique("uploads"), &[Duration::from_secs(10)]);
    topology.declare(&channel).await.expect("declare");
    let keys = ["k1", "k2", "k3"];
    for key in keys {
        publish_dead(&channel, &topology, key).await;
    }

    for _ in 0..100 {
        let listed = uploader::dlq::list(&channel, &topology, None)
            .await
            .expect("list");
        let listed: Vec<_> = listed.iter().map(|job| job.key.as_str()).collect();
        assert_eq!(listed, keys);
    }
    // A message returned to a quorum queue carries its count of failed deliveries; RabbitMQ 4
    // drops it past the queue's limit.
    let first = channel
        .basic_get(
            topology.dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .expect("basic.get")
        .expect("a job");
    let delivery_count = first
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| match headers.inner().get("x-delivery-count") {
            Some(AMQPValue::LongLongInt(count)) => Some(*count),
            Some(AMQPValue::LongInt(count)) => Some(i64::from(*count)),
            _ => None,
        })
        .unwrap_or(0);
    assert_eq!(delivery_count, 0, "listing counted deliveries");
    assert!(!first.delivery.redelivered, "listing returned the job");
    return_to_queue(first).await;

    let summary = uploader::dlq::redrive(&channel, &topology, None, None)
        .await
        .expect("redrive");
    assert_eq!(summary.redriven.len(), 3);
    let mut redriven = Vec::new();
    while let Some(message) = get(&channel, &topology.queue).await {
        redriven.push(String::from_utf8(message.delivery.data).expect("utf-8"));
    }
    redriven.sort();
    assert_eq!(redriven, keys);
    delete_topology(&channel, &topology).await;
}

#[tokio::test]
async fn a_job_returned_past_the_delivery_limit_goes_to_the_dead_letter_queue_not_away() {
    let (_connection, channel) = confirm_channel("topology-test").await;
    let topology = UploadTopology::new(&unique("uploads"), &[Duration::from_secs(10)]);
    topology.declare(&channel).await.expect("declare");
    publish(&channel, &topology.exchange, UPLOAD_ROUTING_KEY, b"job").await;

    // Each return is what an uploader dying with the job unacknowledged does to it.
    let mut returns = 0;
    while let Some(message) = channel
        .basic_get(
            topology.queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .expect("basic.get")
    {
        returns += 1;
        assert!(returns <= UPLOAD_DELIVERY_LIMIT + 1, "never dead-lettered");
        return_to_queue(message).await;
    }
    let dead = wait_for("the job in the DLQ", Duration::from_secs(20), || async {
        let jobs = uploader::dlq::list(&channel, &topology, None)
            .await
            .expect("list");
        jobs.into_iter().next()
    })
    .await;
    assert_eq!(
        (
            dead.tenant.as_str(),
            dead.class.as_str(),
            dead.code.as_str()
        ),
        ("acme", "broker", "delivery_limit"),
        "{dead:?}"
    );
    assert!(returns >= UPLOAD_DELIVERY_LIMIT, "after {returns} returns");
    delete_topology(&channel, &topology).await;
}
