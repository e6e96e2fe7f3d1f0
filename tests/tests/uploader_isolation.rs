//! One tenant's hung bucket does not hold up another tenant: the healthy tenant's uploads are
//! measured alone and beside a tenant whose bucket never answers in time.

use std::time::{Duration, Instant};

use common::topology::UploadTopology;
use integration_tests::fault_proxy::{FaultProxy, Faults};
use integration_tests::fixtures::{
    IntegrationsTopic, aws_config, confirm_channel, delete_topology, enqueue_job, moto_endpoint,
    new_bucket, object_count, payload, s3_client, upload_job,
};
use integration_tests::plan::{Plan, Shape};
use integration_tests::process::metric_value;
use integration_tests::wait_for;

const JOBS: i64 = 16;
/// A hung bucket's attempt ends after this; without a per-tenant share every upload slot would
/// wait this long behind the hung tenant's jobs.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Enqueues `JOBS` jobs for `tenant`, first offsets from `first`.
async fn enqueue(channel: &lapin::Channel, topology: &UploadTopology, tenant: &str, first: i64) {
    for n in 0..JOBS {
        let body = payload(tenant);
        let job = upload_job(tenant, first + n * 10, &body);
        enqueue_job(channel, topology, &job, &body).await;
    }
}

#[tokio::test]
async fn a_hung_bucket_does_not_delay_another_tenants_uploads() {
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let healthy = new_bucket(&s3).await;
    let hung = new_bucket(&s3).await;
    let proxy = FaultProxy::start(&moto_endpoint()).await;
    proxy.set(Faults {
        delay: ATTEMPT_TIMEOUT * 6,
        delayed_bucket: Some(hung.clone()),
        ..Faults::default()
    });
    let topic = IntegrationsTopic::create().await;
    topic.connect("healthy", &healthy).await;
    topic.connect("hung", &hung).await;
    let plan = Plan::new(&proxy.url(), Shape::single()).with_integrations(&topic.name);
    let topology = plan.setup.topology.clone();

    let timeout = format!("{}s", ATTEMPT_TIMEOUT.as_secs());
    let uploader = plan.spawn_uploader_with(&[
        "--concurrency",
        "8",
        "--tenant-concurrency",
        "2",
        "--aws-attempt-timeout",
        &timeout,
    ]);
    uploader.ready().await;
    let (_connection, channel) = confirm_channel("isolation-test").await;
    let delivered = |count: i64| {
        let (s3, healthy) = (&s3, &healthy);
        async move {
            let stored = i64::from(object_count(s3, healthy).await.unwrap_or(0));
            (stored >= count).then_some(())
        }
    };

    // One upload first, so both measured rounds see a tenant whose bucket has shown itself fast.
    let warm_up = upload_job("healthy", 1, &payload("healthy"));
    enqueue_job(
        &channel,
        &topology,
        &warm_up,
        &payload(warm_up.tenant_id.as_str()),
    )
    .await;
    wait_for("the warm-up upload", Duration::from_secs(60), || async {
        let handled = metric_value(&uploader.metrics().await, "activity_uploader_uploads_total");
        (handled >= Some(1.0)).then_some(())
    })
    .await;

    let started = Instant::now();
    enqueue(&channel, &topology, "healthy", 1_000).await;
    wait_for("the healthy tenant alone", Duration::from_secs(60), || {
        delivered(1 + JOBS)
    })
    .await;
    let alone = started.elapsed();

    enqueue(&channel, &topology, "hung", 1_000).await;
    let started = Instant::now();
    enqueue(&channel, &topology, "healthy", 5_000).await;
    wait_for(
        "the healthy tenant beside the hung one",
        Duration::from_secs(60),
        || delivered(1 + 2 * JOBS),
    )
    .await;
    let beside_hung = started.elapsed();
    eprintln!(
        "{JOBS} uploads of the healthy tenant: {} ms alone, {} ms behind {JOBS} jobs of a hung bucket",
        alone.as_millis(),
        beside_hung.as_millis()
    );
    assert!(
        beside_hung < ATTEMPT_TIMEOUT,
        "the healthy tenant waited {beside_hung:?}, as long as a hung attempt"
    );
    assert_eq!(
        object_count(&s3, &hung).await,
        Some(0),
        "nothing reached the hung bucket"
    );
    let deferred = metric_value(
        &uploader.metrics().await,
        "activity_uploader_deferred_total",
    );
    assert!(
        deferred >= Some(1.0),
        "the hung tenant's jobs beyond its share waited in the retry tier: {deferred:?}"
    );
    drop(uploader);
    delete_topology(&channel, &topology).await;
}
