//! Services outlive a RabbitMQ restart: they report themselves unready while it is away, reconnect
//! on their own when it is back, and go on working. Restarting the shared broker would break any
//! test running beside it, so these tests live in their own binary and take turns.

use std::time::Duration;

use common::topology::UploadTopology;
use integration_tests::fixtures::{
    IntegrationsTopic, aws_config, confirm_channel, delete_topology, enqueue_job, moto_endpoint,
    new_bucket, object_count, payload, s3_client, upload_job, wait_for_object,
};
use integration_tests::process::{ServiceProcess, metric_value, spawn_uploader};
use integration_tests::{unique, wait_for};

/// Stops the RabbitMQ application, runs `while_down` and starts it again, waiting until it serves.
async fn restart_rabbitmq(while_down: impl AsyncFnOnce()) {
    rabbitmqctl(&["stop_app"]);
    let restarted = StartOnDrop;
    while_down().await;
    drop(restarted);
}

/// Starts RabbitMQ again even when the test fails while it is down, so later tests find it.
struct StartOnDrop;

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run rabbitmqctl (the tests restart the local RabbitMQ)");
    assert!(status.success(), "rabbitmqctl {args:?} failed: {status}");
}

async fn readiness_becomes(service: &ServiceProcess, status: u16) {
    wait_for(
        &format!("/readyz to answer {status}"),
        Duration::from_secs(60),
        || async { (service.readiness().await? == status).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn the_uploader_reconnects_after_rabbitmq_restarts_and_goes_on_uploading() {
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let bucket = new_bucket(&s3).await;
    let topic = IntegrationsTopic::create().await;
    topic.connect("acme", &bucket).await;
    let uploads = unique("uploads");
    let topology = UploadTopology::new(&uploads, &[Duration::from_secs(1)]);

    let uploader = spawn_uploader(&topic.name, &uploads, &moto_endpoint(), &[]);
    uploader.ready().await;
    let (_connection, channel) = confirm_channel("restart-test").await;
    let before = upload_job("acme", 10, &payload("acme"));
    enqueue_job(
        &channel,
        &topology,
        &before,
        &payload(before.tenant_id.as_str()),
    )
    .await;
    let before_key = format!("audit/{}", before.relative_key);
    wait_for_object(&s3, &bucket, &before_key, Duration::from_secs(60)).await;

    restart_rabbitmq(async || readiness_becomes(&uploader, 503).await).await;
    readiness_becomes(&uploader, 200).await;

    let (_connection, channel) = confirm_channel("restart-test").await;
    let after = upload_job("acme", 20, &payload("acme"));
    enqueue_job(
        &channel,
        &topology,
        &after,
        &payload(after.tenant_id.as_str()),
    )
    .await;
    let after_key = format!("audit/{}", after.relative_key);
    wait_for_object(&s3, &bucket, &after_key, Duration::from_secs(60)).await;
    assert_eq!(object_count(&s3, &bucket).await, Some(2));
    let reconnects = metric_value(
        &uploader.metrics().await,
        "activity_uploader_amqp_reconnects_total",
    );
    assert!(
        reconnects >= Some(1.0),
        "the reconnection is counted: {reconnects:?}"
    );
    drop(uploader);
    delete_topology(&channel, &topology).await;
}
