//! The shipped alerts seen to fire on their faults, and to clear once the fault is lifted,
//! against the running pipeline (ingest, a batcher and an uploader on the real servers) scraped
//! by a real Prometheus evaluating the shipped rules on a compressed time scale (minutes read as
//! seconds): a bucket policy that denies writes fills the dead-letter queue and makes the tenant
//! stale (named, with its error, by `GET /v1/stale-tenants`); a stopped uploader
//! (SIGSTOP: it holds its jobs and answers nothing) is a service down and stalls deliveries; a
//! stopped batcher while events keep coming falls further and further behind. The check reads
//! Prometheus's own alerts API.

use std::time::Duration;

use integration_tests::fixtures::{
    aws_config, deny_on_objects, moto_endpoint, new_bucket, s3_client,
};
use integration_tests::pipeline::Pipeline;
use integration_tests::plan::Shape;
use integration_tests::process::signal;
use integration_tests::prometheus::Prometheus;
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

/// Long enough for a compressed `for` (at most 30 s) and the uploader's DLQ depth poll (15 s).
const FIRES_WITHIN: Duration = Duration::from_secs(120);

/// Posts `per_post` events for `tenant` every `every` until `stop`, so windows keep closing.
fn keep_posting(
    pipeline: &Pipeline,
    tenant: &'static str,
    (per_post, every): (usize, Duration),
    stop: CancellationToken,
) {
    let ingest = pipeline.admin.ingest.url("/v1/events");
    let token = integration_tests::services::TEST_TOKEN;
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut n = 0;
        while !stop.is_cancelled() {
            let body: String = (0..per_post)
                .map(|i| {
                    format!(
                        "{}\n",
                        serde_json::json!({"id": format!("alerts-{n}-{i}"), "tenant_id": tenant,
                            "type": "device.lock", "occurred_at": "2026-11-27T10:00:00Z"})
                    )
                })
                .collect();
            let _ = http
                .post(&ingest)
                .bearer_auth(token)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await;
            n += 1;
            tokio::time::sleep(every).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_on_their_faults_and_clear_once_lifted() {
    let moto = moto_endpoint();
    let shape = Shape::single().with_ingest_flags(&["--stale-after", "5s"]);
    let pipeline = Pipeline::start(&moto, shape).await;
    let address = |url: String| {
        url.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned()
    };
    let prometheus = Prometheus::start(&[
        (
            "activity-ingest",
            vec![address(pipeline.admin.ingest.url(""))],
        ),
        ("activity-batcher", vec![address(pipeline.batcher.url(""))]),
        (
            "activity-uploader",
            vec![address(pipeline.uploader.url(""))],
        ),
    ])
    .await;
    let s3 = s3_client(&aws_config(&moto).await);
    let bucket = new_bucket(&s3).await;
    let (status, answer) = pipeline.connect("acme", &bucket).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let stop = CancellationToken::new();
    keep_posting(
        &pipeline,
        "acme",
        (3, Duration::from_millis(500)),
        stop.clone(),
    );
    // Healthy first: objects land and no alert fires.
    integration_tests::wait_for("objects in the bucket", Duration::from_secs(60), || async {
        let count = integration_tests::fixtures::object_count(&s3, &bucket).await?;
        (count >= 2).then_some(())
    })
    .await;
    let firing = prometheus.firing().await.expect("the alerts API");
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy pipeline: {firing:?}"
    );

    // A bucket policy that denies writes: every job is dead-lettered as a configuration error.
    deny_on_objects(&s3, &bucket, "s3:PutObject").await;
    prometheus
        .until_firing("ActivityDeadLetterQueueGrowing", FIRES_WITHIN)
        .await;
    // The tenant is not getting its logs: the alert leads to its name and its error.
    prometheus
        .until_firing("ActivityTenantsStale", FIRES_WITHIN)
        .await;
    let (status, stale) = pipeline
        .admin
        .call(reqwest::Method::GET, "/v1/stale-tenants", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{stale}");
    assert_eq!(stale["tenants"][0]["tenant_id"], "acme", "{stale}");
    assert_eq!(
        stale["tenants"][0]["last_error"]["code"], "AccessDenied",
        "{stale}"
    );
    s3.delete_bucket_policy()
        .bucket(&bucket)
        .send()
        .await
        .expect("restore the policy");
    let (_connection, channel) =
        integration_tests::fixtures::confirm_channel("alerts-redrive").await;
    uploader::dlq::redrive(&channel, &pipeline.plan.setup.topology, None, None)
        .await
        .expect("redrive");
    prometheus
        .until_cleared("ActivityDeadLetterQueueGrowing", FIRES_WITHIN)
        .await;
    prometheus
        .until_cleared("ActivityTenantsStale", FIRES_WITHIN)
        .await;

    // The uploader stopped: Prometheus cannot scrape it, and nothing is uploaded while the
    // batcher goes on publishing.
    signal(pipeline.uploader.pid(), "-STOP");
    prometheus
        .until_firing("ActivityServiceDown", FIRES_WITHIN)
        .await;
    prometheus
        .until_firing("ActivityDeliveriesStalled", FIRES_WITHIN)
        .await;
    signal(pipeline.uploader.pid(), "-CONT");
    prometheus
        .until_cleared("ActivityServiceDown", FIRES_WITHIN)
        .await;
    prometheus
        .until_cleared("ActivityDeliveriesStalled", FIRES_WITHIN)
        .await;

    // The batcher stopped (it answers nothing) while events keep coming, 4,000 a second: its
    // last reported position stays, ingest's end offsets go on, and the lag grows past 10,000
    // records. Once it runs again it catches up and the alert clears.
    let burst = CancellationToken::new();
    keep_posting(
        &pipeline,
        "acme",
        (1_000, Duration::from_millis(250)),
        burst.clone(),
    );
    signal(pipeline.batcher.pid(), "-STOP");
    prometheus
        .until_firing("ActivityConsumerLagGrowing", FIRES_WITHIN)
        .await;
    burst.cancel();
    signal(pipeline.batcher.pid(), "-CONT");
    prometheus
        .until_cleared("ActivityConsumerLagGrowing", FIRES_WITHIN)
        .await;

    stop.cancel();
    pipeline.stop().await;
}
