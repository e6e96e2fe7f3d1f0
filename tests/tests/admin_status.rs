//! An integration's life after it is saved, through the admin API with a real uploader process
//! on Apache Kafka, RabbitMQ and moto: its status follows deliveries and failures, a disabled
//! one parks jobs until enabled, a deleted one is gone and its jobs are discarded.

use std::time::Duration;

use common::job::UploadJob;
use common::topology::UploadTopology;
use integration_tests::admin::AdminIngest;
use integration_tests::fixtures::{
    aws_config, confirm_channel, delete_topology, deny_on_objects, enqueue_job, moto_endpoint,
    new_bucket, object_count, payload, s3_client, upload_job, wait_for_object,
};
use integration_tests::plan::{Plan, Shape};
use integration_tests::process::{ServiceProcess, labelled_metric_value, metric_value};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Tenant `acme` connected through the admin API to a new bucket, and an uploader on the same
/// topics and queue: what each test here starts from.
struct Connected {
    admin: AdminIngest,
    uploader: ServiceProcess,
    topology: UploadTopology,
    s3: aws_sdk_s3::Client,
    bucket: String,
    /// The settings `acme` was connected with.
    settings: Value,
    channel: lapin::Channel,
    _connection: lapin::Connection,
    /// Integration changes saved so far, which the uploader must read before a job relies on
    /// them.
    changes: u32,
}

impl Connected {
    async fn start() -> Self {
        let moto = moto_endpoint();
        let plan = Plan::new(&moto, Shape::single());
        let admin = plan.start_ingest().await;
        let uploader = plan.spawn_uploader();
        let s3 = s3_client(&aws_config(&moto).await);
        let bucket = new_bucket(&s3).await;
        uploader.ready().await;
        let (connection, channel) = confirm_channel("admin-status-test").await;
        let settings = admin.provisioned_settings("acme", &bucket).await;
        let mut connected = Self {
            admin,
            uploader,
            topology: plan.setup.topology.clone(),
            s3,
            bucket,
            settings: settings.clone(),
            channel,
            _connection: connection,
            changes: 0,
        };
        let (status, answer) = connected.save(&settings).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        connected
    }

    /// PUTs `settings` for `acme` and waits until the uploader has read the change.
    async fn save(&mut self, settings: &Value) -> (StatusCode, Value) {
        let answer = self.admin.put("acme", settings).await;
        if answer.0.is_success() {
            self.uploader_read_change().await;
        }
        answer
    }

    /// Waits until the uploader has read every integration change saved: a job sent before it
    /// has read one would be handled by the integration as it was.
    async fn uploader_read_change(&mut self) {
        self.changes += 1;
        let changes = f64::from(self.changes);
        integration_tests::wait_for(
            "the uploader to read the integration change",
            Duration::from_secs(20),
            || async {
                let metrics = self.uploader.try_metrics().await?;
                metric_value(&metrics, "activity_integrations_records_read_total")
                    .filter(|read| *read >= changes)
            },
        )
        .await;
    }

    fn job(offset: i64) -> UploadJob {
        upload_job("acme", offset, &payload("acme"))
    }

    /// Where the job at `offset` lands in the bucket.
    fn key(offset: i64) -> String {
        format!("audit/{}", Self::job(offset).relative_key)
    }

    async fn enqueue(&self, offset: i64) {
        enqueue_job(
            &self.channel,
            &self.topology,
            &Self::job(offset),
            &payload("acme"),
        )
        .await;
    }

    /// Waits until the job at `offset` is in the bucket.
    async fn await_stored(&self, offset: i64) {
        let key = Self::key(offset);
        wait_for_object(&self.s3, &self.bucket, &key, Duration::from_secs(30)).await;
    }

    async fn stored(&self, offset: i64) -> bool {
        self.s3
            .head_object()
            .bucket(&self.bucket)
            .key(Self::key(offset))
            .send()
            .await
            .is_ok()
    }

    /// The integration's status, once `ready` holds for it.
    async fn status_when(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        integration_tests::wait_for(what, Duration::from_secs(30), || async {
            let (status, answer) = self.admin.get("acme").await;
            (status == StatusCode::OK && ready(&answer["status"])).then(|| answer["status"].clone())
        })
        .await
    }

    async fn stop(mut self) {
        self.uploader.terminate(Duration::from_secs(20)).await;
        delete_topology(&self.channel, &self.topology).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_the_last_delivery_and_the_days_counts() {
    let acme = Connected::start().await;
    let (_, fresh) = acme.admin.get("acme").await;
    assert_eq!(fresh["status"]["last_delivery"], Value::Null);
    assert_eq!(fresh["status"]["last_24h"]["objects_delivered"], json!(0));

    acme.enqueue(0).await;
    acme.await_stored(0).await;
    let status = acme
        .status_when("the delivery in the status", |s| {
            s["last_24h"]["objects_delivered"] == json!(1)
        })
        .await;
    assert_eq!(status["last_delivery"]["key"], json!(Connected::key(0)));
    assert_eq!(status["last_delivery"]["bucket"], json!(acme.bucket));
    assert_eq!(status["last_24h"]["events_delivered"], json!(2));
    assert_eq!(status["last_error"], Value::Null);
    acme.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_shows_in_the_status_with_its_class_and_code() {
    let acme = Connected::start().await;
    // The customer's policy starts denying writes after the connection test passed.
    deny_on_objects(&acme.s3, &acme.bucket, "s3:PutObject").await;
    acme.enqueue(10).await;
    let status = acme
        .status_when("the failure in the status", |s| {
            s["last_24h"]["objects_failed"] == json!(1)
        })
        .await;
    assert_eq!(status["last_error"]["code"], json!("AccessDenied"));
    assert_eq!(status["last_error"]["class"], json!("configuration"));
    assert_eq!(status["last_error"]["outcome"], json!("dead_lettered"));
    assert_eq!(status["last_24h"]["events_failed"], json!(2));
    assert_eq!(status["last_delivery"], Value::Null);
    acme.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_integration_parks_jobs_until_enabled_and_redriven() {
    let mut acme = Connected::start().await;
    // Disabling is saved without a connection test or a first delivery.
    let mut disabled = acme.settings.clone();
    disabled["enabled"] = json!(false);
    let (status, answer) = acme.save(&disabled).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["connection_test"], Value::Null);
    assert_eq!(answer["first_delivery_requested"], json!(false));

    acme.enqueue(20).await;
    let status = acme
        .status_when("the parked job in the status", |s| {
            s["last_24h"]["objects_failed"] == json!(1)
        })
        .await;
    assert_eq!(status["last_error"]["code"], json!("IntegrationDisabled"));
    assert!(!acme.stored(20).await, "nothing delivered while disabled");

    // Enabling runs the connection test again; a redrive then delivers the parked job.
    let settings = acme.settings.clone();
    let (status, answer) = acme.save(&settings).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["connection_test"]["steps"].is_array(), "{answer}");
    let redriven = uploader::dlq::redrive(
        &acme.channel,
        &acme.topology,
        Some(&"acme".parse().expect("tenant")),
        None,
    )
    .await
    .expect("redrive");
    assert_eq!(redriven.redriven.len(), 1);
    acme.await_stored(20).await;
    acme.status_when("the redriven delivery in the status", |s| {
        s["last_24h"]["objects_delivered"] == json!(1)
    })
    .await;
    acme.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_integration_is_gone_at_once_and_its_queued_jobs_are_discarded() {
    let mut acme = Connected::start().await;
    let (status, _) = acme.admin.delete("acme").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(acme.admin.get("acme").await.0, StatusCode::NOT_FOUND);
    assert_eq!(acme.admin.delete("acme").await.0, StatusCode::NOT_FOUND);
    acme.uploader_read_change().await;

    acme.enqueue(30).await;
    integration_tests::wait_for("the discarded job", Duration::from_secs(30), || async {
        let metrics = acme.uploader.try_metrics().await?;
        labelled_metric_value(
            &metrics,
            "activity_uploader_uploads_total",
            "outcome=\"discarded\"",
        )
        .filter(|n| *n >= 1.0)
    })
    .await;
    assert!(!acme.stored(30).await);
    assert_eq!(object_count(&acme.s3, &acme.bucket).await, Some(0));
    acme.stop().await;
}
