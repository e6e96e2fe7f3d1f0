//! Services outlive a RabbitMQ restart: they report themselves unready while it is away, reconnect
//! on their own when it is back, and go on working; the batcher commits nothing past a part
//! RabbitMQ has not confirmed. Restarting the shared broker would break any
//! test running beside it, so these tests live in their own binary and take turns.

use std::time::Duration;

use common::clock::now_unix_ms;
use integration_tests::batching::{BatcherSetup, EventsTopic, jobs_until_events};
use integration_tests::fixtures::{
    IntegrationsTopic, aws_config, confirm_channel, delete_topology, enqueue_job, moto_endpoint,
    new_bucket, object_count, payload, s3_client, upload_job, wait_for_object,
};
use integration_tests::plan::{Plan, Shape};
use integration_tests::process::{ServiceProcess, labelled_metric_value, metric_value};
use integration_tests::services::rabbitmqctl;
use integration_tests::wait_for;

/// One test at a time restarts the broker.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _turn = TURN.lock().await;
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let bucket = new_bucket(&s3).await;
    let topic = IntegrationsTopic::create().await;
    topic.connect("acme", &bucket).await;
    let plan = Plan::new(&moto_endpoint(), Shape::single()).with_integrations(&topic.name);
    let topology = plan.setup.topology.clone();

    let uploader = plan.spawn_uploader();
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

/// The highest commit offset among the checkpoints written to `topic` so far.
async fn highest_commit(topic: &str) -> i64 {
    let records = integration_tests::kafka::read_all(
        &integration_tests::kafka::brokers(),
        topic,
        Duration::from_secs(30),
    )
    .await;
    records
        .iter()
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.value).ok())
        .filter_map(|v| v["commit_offset"].as_i64())
        .max()
        .unwrap_or(-1)
}

#[tokio::test]
async fn the_batcher_commits_nothing_past_unconfirmed_parts_while_rabbitmq_is_away() {
    let _turn = TURN.lock().await;
    let integrations = IntegrationsTopic::create().await;
    integrations.connect("acme", "acme-bucket").await;
    let events = EventsTopic::create(1).await;
    let setup = BatcherSetup::new(&events, &integrations).with_future_tolerance("1h");
    let (_connection, channel) = confirm_channel("restart-test").await;
    setup.topology.declare(&channel).await.expect("declare");
    let batcher = setup.spawn("10s", "2s", &[]);
    batcher.ready().await;

    let base = (now_unix_ms() + 30 * 60_000) / 10_000 * 10_000;
    for n in 0..5 {
        events
            .send(0, "acme", &format!("a{n}"), base + 1_000 + n, 50)
            .await;
    }
    let consumed = |next: f64| {
        let batcher = &batcher;
        async move {
            let metrics = batcher.try_metrics().await?;
            let read =
                labelled_metric_value(&metrics, "activity_batcher_next_offset", "partition=\"0\"");
            (read >= Some(next)).then_some(metrics)
        }
    };
    wait_for("window 0 read", Duration::from_secs(60), || consumed(5.0)).await;
    wait_for(
        "window 0 checkpointed at its start",
        Duration::from_secs(30),
        || async { (highest_commit(&setup.checkpoints).await == 0).then_some(()) },
    )
    .await;

    restart_rabbitmq(async || {
        readiness_becomes(&batcher, 503).await;
        // Closes window 0, whose part cannot be confirmed now; then window 1 goes on.
        events.send(0, "nobody", "closer", base + 12_500, 10).await;
        events.send(0, "acme", "a5", base + 13_000, 50).await;
        let metrics = wait_for(
            "the close and the next record read",
            Duration::from_secs(60),
            || consumed(7.0),
        )
        .await;
        assert!(
            metric_value(&metrics, "activity_batcher_parts_closed_total") >= Some(1.0),
            "window 0 closed"
        );
        assert_eq!(
            highest_commit(&setup.checkpoints).await,
            0,
            "nothing committed past the unconfirmed part of window 0"
        );
    })
    .await;

    let (_connection, channel) = confirm_channel("restart-test").await;
    let jobs = jobs_until_events(&channel, &setup.topology.queue, 5, Duration::from_secs(60)).await;
    let ids: Vec<String> = jobs.values().flat_map(|j| j.event_ids()).collect();
    assert_eq!(ids, ["a0", "a1", "a2", "a3", "a4"]);
    wait_for(
        "the commit to move past window 0",
        Duration::from_secs(30),
        || async { (highest_commit(&setup.checkpoints).await > 0).then_some(()) },
    )
    .await;
    drop(batcher);
    delete_topology(&channel, &setup.topology).await;
}
