//! The uploader as a separate process: SIGKILLed in the middle of an upload, its unacknowledged job
//! is redelivered to the next process and the object exists exactly once.

use std::time::Duration;

use integration_tests::fault_proxy::{FaultProxy, Faults};
use integration_tests::fixtures::{
    IntegrationsTopic, aws_config, confirm_channel, delete_topology, enqueue_job, moto_endpoint,
    new_bucket, object_count, payload, s3_client, upload_job, wait_for_object,
};
use integration_tests::plan::{Plan, Shape};
use integration_tests::process::metric_value;
use integration_tests::wait_for;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

#[tokio::test]
async fn an_uploader_killed_mid_upload_hands_the_job_to_the_next_and_the_object_exists_once() {
    let config = aws_config(&moto_endpoint()).await;
    let s3 = s3_client(&config);
    let bucket = new_bucket(&s3).await;
    // Every STS and S3 answer takes 3 s, so the upload is surely in progress when the kill comes.
    let proxy = FaultProxy::start(&moto_endpoint()).await;
    proxy.set(Faults {
        delay: Duration::from_secs(3),
        ..Faults::default()
    });

    let topic = IntegrationsTopic::create().await;
    topic.connect("acme", &bucket).await;

    let plan = Plan::new(&proxy.url(), Shape::single()).with_integrations(&topic.name);
    let topology = plan.setup.topology.clone();
    let (_connection, channel) = confirm_channel("uploader-process-test").await;
    topology.declare(&channel).await.expect("declare");

    let first = plan.spawn_uploader();
    first.ready().await;
    let job = upload_job("acme", 51, &payload("acme"));
    enqueue_job(&channel, &topology, &job, &payload(job.tenant_id.as_str())).await;

    // Taken by the uploader: no longer ready in the queue, not yet acknowledged.
    wait_for(
        "the uploader to take the job",
        Duration::from_secs(30),
        || async {
            let queue = channel
                .queue_declare(
                    topology.queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .ok()?;
            (queue.message_count() == 0).then_some(())
        },
    )
    .await;
    drop(first); // SIGKILL
    let key = format!("audit/{}", job.relative_key);
    assert!(
        s3.head_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .is_err(),
        "the object must not exist yet: the kill came mid-upload"
    );

    proxy.set(Faults::default());
    let second = plan.spawn_uploader();
    second.ready().await;
    wait_for_object(&s3, &bucket, &key, Duration::from_secs(60)).await;
    assert_eq!(
        object_count(&s3, &bucket).await,
        Some(1),
        "the object exists once"
    );
    drop(second);
    delete_topology(&channel, &topology).await;
}

#[tokio::test]
async fn a_thousand_uploads_for_one_tenant_assume_its_role_once() {
    const JOBS: i64 = 1_000;
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let bucket = new_bucket(&s3).await;
    let topic = IntegrationsTopic::create().await;
    topic.connect("acme", &bucket).await;
    let plan = Plan::new(&moto_endpoint(), Shape::single()).with_integrations(&topic.name);
    let topology = plan.setup.topology.clone();
    let uploader = plan.spawn_uploader_with(&["--concurrency", "16"]);
    uploader.ready().await;

    let (_connection, channel) = confirm_channel("assume-role-test").await;
    let body = payload("acme");
    for n in 0..JOBS {
        let job = upload_job("acme", n * 2, &body);
        enqueue_job(&channel, &topology, &job, &body).await;
    }
    let stored = wait_for("a thousand uploads", Duration::from_secs(180), || async {
        let metrics = uploader.metrics().await;
        let stored = metric_value(&metrics, "activity_uploader_uploads_total")?;
        (stored >= JOBS as f64).then_some(metrics)
    })
    .await;
    assert_eq!(
        metric_value(&stored, "activity_uploader_assume_role_calls_total"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&stored, "activity_uploader_assume_role_cache_hits_total"),
        Some((JOBS - 1) as f64)
    );
    assert_eq!(
        object_count(&s3, &bucket).await,
        Some(i32::try_from(JOBS).expect("count"))
    );
    drop(uploader);
    delete_topology(&channel, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploader_stopped_by_sigterm_under_load_finishes_its_uploads_and_nothing_is_stored_twice()
 {
    let config = aws_config(&moto_endpoint()).await;
    let s3 = s3_client(&config);
    let bucket = new_bucket(&s3).await;
    // Every answer takes 300 ms, so uploads are in flight whenever SIGTERM comes.
    let proxy = FaultProxy::start(&moto_endpoint()).await;
    proxy.set(Faults {
        delay: Duration::from_millis(300),
        ..Faults::default()
    });
    let topic = IntegrationsTopic::create().await;
    topic.connect("acme", &bucket).await;
    let plan = Plan::new(&proxy.url(), Shape::single()).with_integrations(&topic.name);
    let topology = plan.setup.topology.clone();
    let deliveries = &plan.topics.deliveries;
    let (_connection, channel) = confirm_channel("uploader-sigterm-test").await;
    topology.declare(&channel).await.expect("declare");
    let flags = ["--concurrency", "4"];

    const JOBS: i64 = 40;
    let body = payload("acme");
    for n in 0..JOBS {
        let job = upload_job("acme", n * 10, &body);
        enqueue_job(&channel, &topology, &job, &body).await;
    }
    let mut first = plan.spawn_uploader_with(&flags);
    first.ready().await;
    wait_for("some objects stored", Duration::from_secs(60), || async {
        object_count(&s3, &bucket).await.filter(|n| *n >= 8)
    })
    .await;
    assert_eq!(
        first.terminate(Duration::from_secs(30)).await,
        Some(0),
        "a clean exit"
    );
    let stored_by_first = object_count(&s3, &bucket).await.unwrap_or(0);
    assert!(
        i64::from(stored_by_first) < JOBS,
        "SIGTERM came while jobs were still queued ({stored_by_first} stored)"
    );

    let mut second = plan.spawn_uploader_with(&flags);
    wait_for("every object stored", Duration::from_secs(90), || async {
        object_count(&s3, &bucket)
            .await
            .filter(|n| i64::from(*n) == JOBS)
    })
    .await;
    assert_eq!(second.terminate(Duration::from_secs(30)).await, Some(0));

    // Every job was stored exactly once: the first process finished what it had taken before
    // acking and exiting, so the second found nothing of it already there.
    let records = integration_tests::kafka::read_until(
        &integration_tests::kafka::brokers(),
        deliveries,
        Duration::from_secs(30),
        |records| records.len() >= usize::try_from(JOBS).unwrap_or(0),
    )
    .await;
    let mut stored = std::collections::BTreeMap::<String, usize>::new();
    for record in &records {
        let delivery: common::delivery::DeliveryRecord =
            serde_json::from_str(&record.value).expect("a delivery record");
        assert_eq!(
            delivery.outcome,
            common::delivery::Outcome::Stored,
            "{}",
            delivery.relative_key
        );
        *stored.entry(delivery.relative_key).or_default() += 1;
    }
    assert_eq!(stored.len(), usize::try_from(JOBS).unwrap_or(0));
    assert!(stored.values().all(|n| *n == 1), "{stored:?}");
    delete_topology(&channel, &topology).await;
}
