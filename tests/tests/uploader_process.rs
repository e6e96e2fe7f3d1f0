//! The uploader as a separate process: SIGKILLed in the middle of an upload, its unacknowledged job
//! is redelivered to the next process and the object exists exactly once.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::topology::UploadTopology;
use integration_tests::fault_proxy::{FaultProxy, Faults};
use integration_tests::fixtures::{
    IntegrationsTopic, aws_config, confirm_channel, delete_topology, enqueue_job, moto_endpoint,
    new_bucket, object_count, s3_client, upload_job, wait_for_object,
};
use integration_tests::services::free_port;
use integration_tests::{unique, wait_for};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

const BODY: &[u8] = b"{\"id\":\"k1\"}\n{\"id\":\"k2\"}\n";

/// The uploader binary cargo built beside this test.
fn uploader_binary() -> PathBuf {
    let deps = std::env::current_exe().expect("test binary path");
    let binary = deps
        .parent()
        .and_then(|d| d.parent())
        .map(|debug| debug.join("uploader"))
        .expect("target directory");
    assert!(
        binary.exists(),
        "{} is not built (cargo test --workspace builds it)",
        binary.display()
    );
    binary
}

struct UploaderProcess {
    child: Child,
    ready_url: String,
}

impl UploaderProcess {
    fn spawn(topic: &str, uploads: &str, aws_endpoint: &str) -> Self {
        let port = free_port();
        let child = Command::new(uploader_binary())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--integrations-topic",
                topic,
                "--uploads-name",
                uploads,
                "--retry-tiers",
                "1s",
            ])
            .args([
                "--aws-endpoint-url",
                aws_endpoint,
                "--aws-region",
                "us-east-1",
            ])
            .args(["--kafka-brokers", &integration_tests::kafka::brokers()])
            .env("ACTIVITY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the uploader");
        Self {
            child,
            ready_url: format!("http://127.0.0.1:{port}/readyz"),
        }
    }

    async fn ready(&self) {
        let url = self.ready_url.clone();
        wait_for(
            "the uploader to be ready",
            Duration::from_secs(60),
            || async { (reqwest::get(&url).await.ok()?.status() == 200).then_some(()) },
        )
        .await;
    }
}

impl Drop for UploaderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

    let uploads = unique("uploads");
    let topology = UploadTopology::new(&uploads, &[Duration::from_secs(1)]);
    let (_connection, channel) = confirm_channel("uploader-process-test").await;
    topology.declare(&channel).await.expect("declare");

    let first = UploaderProcess::spawn(&topic.name, &uploads, &proxy.url());
    first.ready().await;
    let job = upload_job("acme", 51, BODY);
    enqueue_job(&channel, &topology, &job, BODY).await;

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
    let second = UploaderProcess::spawn(&topic.name, &uploads, &proxy.url());
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
