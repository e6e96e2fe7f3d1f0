//! The uploader as a separate process: SIGKILLed in the middle of an upload, its unacknowledged job
//! is redelivered to the next process and the object exists exactly once.

use std::time::Duration;

use common::topology::UploadTopology;
use integration_tests::fault_proxy::{FaultProxy, Faults};
use integration_tests::fixtures::{
    IntegrationsTopic, aws_config, confirm_channel, delete_topology, enqueue_job, moto_endpoint,
    new_bucket, object_count, s3_client, upload_job, wait_for_object,
};
use integration_tests::process::spawn_uploader;
use integration_tests::{unique, wait_for};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

const BODY: &[u8] = b"{\"id\":\"k1\"}\n{\"id\":\"k2\"}\n";

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

    let first = spawn_uploader(&topic.name, &uploads, &proxy.url(), &[]);
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
    let second = spawn_uploader(&topic.name, &uploads, &proxy.url(), &[]);
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
