//! Shared test fixtures: AWS and RabbitMQ clients for the local servers, customer buckets, and
//! upload jobs.

use aws_config::SdkConfig;
use clap::Parser;
use common::amqp::AmqpArgs;
use common::amqp::publish_confirmed;
use common::aws::AwsArgs;
use common::clock::now_unix_ms;
use common::job::{JobKind, UploadJob};
use common::kafka::KafkaArgs;
use common::key::{Codec, ObjectKey};
use common::registry::topic_spec;
use common::shutdown::Supervisor;
use common::topology::{UPLOAD_ROUTING_KEY, UploadTopology};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Channel, Connection};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sha2::{Digest, Sha256};
use std::time::Duration;
use time::OffsetDateTime;

/// The region every test integration uses.
pub const REGION: &str = "us-east-1";

/// The S3/STS test server (`ACTIVITY_TEST_AWS_ENDPOINT`, default moto on 127.0.0.1:5000).
pub fn moto_endpoint() -> String {
    std::env::var("ACTIVITY_TEST_AWS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

/// The local S3/STS server's TLS port (`ACTIVITY_TEST_AWS_TLS_ENDPOINT`), whose certificate the
/// local CA signed (see [`crate::tls::ca_file`]).
pub fn moto_tls_endpoint() -> String {
    std::env::var("ACTIVITY_TEST_AWS_TLS_ENDPOINT")
        .unwrap_or_else(|_| "https://localhost:5443".into())
}

/// The flags that point a service at the S3/STS server at `endpoint`, trusting the local CA
/// when it is served over TLS.
pub fn aws_endpoint_flags(endpoint: &str) -> Vec<String> {
    let mut flags = vec!["--aws-endpoint-url".to_owned(), endpoint.to_owned()];
    if endpoint.starts_with("https://") {
        flags.push("--aws-ca-file".to_owned());
        flags.push(crate::tls::ca_file().to_string_lossy().into_owned());
    }
    flags
}

/// AWS settings pointing at `endpoint`; the identity comes from the SDK's standard chain.
pub fn aws_args(endpoint: &str) -> AwsArgs {
    assert!(
        std::env::var_os("AWS_ACCESS_KEY_ID").is_some(),
        "give the SDK test credentials (scripts/test.sh exports AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    );
    let flags = aws_endpoint_flags(endpoint);
    let args = ["test", "--aws-region", REGION]
        .into_iter()
        .chain(flags.iter().map(String::as_str));
    AwsOnly::try_parse_from(args).expect("aws arguments").aws
}

#[derive(clap::Parser)]
struct AwsOnly {
    #[command(flatten)]
    aws: AwsArgs,
}

pub async fn aws_config(endpoint: &str) -> SdkConfig {
    aws_args(endpoint).sdk_config().await
}

/// An S3 client acting as the customer (path-style, as S3-compatible servers need).
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(true)
            .build(),
    )
}

/// A fresh bucket.
pub async fn new_bucket(s3: &aws_sdk_s3::Client) -> String {
    let bucket = crate::unique("b");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create a customer bucket");
    bucket
}

/// Adds a bucket policy denying `action` on the bucket's objects to everyone.
pub async fn deny_on_objects(s3: &aws_sdk_s3::Client, bucket: &str, action: &str) {
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Deny", "Principal": "*", "Action": action,
            "Resource": format!("arn:aws:s3:::{bucket}/*")
        }]
    });
    s3.put_bucket_policy()
        .bucket(bucket)
        .policy(policy.to_string())
        .send()
        .await
        .expect("put the bucket policy");
}

#[derive(Parser)]
struct AmqpOnly {
    #[command(flatten)]
    amqp: AmqpArgs,
}

/// RabbitMQ settings as the services parse them, with `extra` flags.
pub fn amqp_args(extra: &[&str]) -> AmqpArgs {
    let mut argv = vec!["test"];
    argv.extend_from_slice(extra);
    AmqpOnly::try_parse_from(argv).expect("amqp arguments").amqp
}

/// A connection to the local RabbitMQ and a channel in confirm mode.
pub async fn confirm_channel(name: &str) -> (Connection, Channel) {
    let connection = amqp_args(&[])
        .connect(name)
        .await
        .expect("connect to RabbitMQ");
    let channel = common::amqp::confirm_channel(&connection)
        .await
        .expect("a channel with publisher confirms");
    (connection, channel)
}

/// The NDJSON of two events of `tenant`, as the batcher writes it.
pub fn payload(tenant: &str) -> Vec<u8> {
    format!(
        "{{\"id\":\"e1\",\"tenant_id\":\"{tenant}\",\"type\":\"device.lock\"}}\n\
         {{\"id\":\"e2\",\"tenant_id\":\"{tenant}\",\"type\":\"user.invite\"}}\n"
    )
    .into_bytes()
}

/// A valid upload job for the NDJSON `body` (uncompressed), of the 2026-11-27 09:00 UTC window,
/// created now.
pub fn upload_job(tenant: &str, first_offset: i64, body: &[u8]) -> UploadJob {
    let window_start_ms = 1_795_770_000_000;
    let key = ObjectKey {
        tenant_id: tenant.parse().expect("tenant"),
        window_start: OffsetDateTime::from_unix_timestamp(window_start_ms / 1000).expect("time"),
        partition: 0,
        first_offset,
        codec: Codec::None,
    };
    UploadJob {
        kind: JobKind::Log,
        tenant_id: key.tenant_id.clone(),
        relative_key: key.relative(),
        codec: Codec::None,
        event_count: body.iter().filter(|b| **b == b'\n').count() as u64,
        window_start_ms,
        window_end_ms: window_start_ms + 3_600_000,
        partition: 0,
        first_offset,
        last_offset: first_offset + 1,
        uncompressed_bytes: body.len() as u64,
        sha256_hex: hex::encode(Sha256::digest(body)),
        created_at_ms: now_unix_ms(),
        attempt: 0,
    }
}

/// Removes a test's upload queues and exchanges, so test runs leave no quorum queues behind.
pub async fn delete_topology(channel: &Channel, topology: &UploadTopology) {
    let queues = [&topology.queue, &topology.dead_letter_queue]
        .into_iter()
        .chain(topology.retry_queues.iter().map(|t| &t.queue));
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [
        &topology.exchange,
        &topology.retry_exchange,
        &topology.dead_letter_exchange,
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Publishes `job` with `body` to the upload exchange, as the batcher does.
pub async fn enqueue_job(
    channel: &Channel,
    topology: &UploadTopology,
    job: &UploadJob,
    body: &[u8],
) {
    publish_confirmed(
        channel,
        &topology.exchange,
        UPLOAD_ROUTING_KEY,
        body,
        job.to_headers(),
        Some(job.relative_key.as_str().into()),
    )
    .await
    .expect("enqueue the job");
}

/// Waits up to `deadline` until the object `key` exists in `bucket`.
pub async fn wait_for_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, deadline: Duration) {
    crate::wait_for(&format!("object {key}"), deadline, || async {
        s3.head_object().bucket(bucket).key(key).send().await.ok()
    })
    .await;
}

/// How many objects `bucket` holds.
pub async fn object_count(s3: &aws_sdk_s3::Client, bucket: &str) -> Option<i32> {
    s3.list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list the bucket")
        .key_count()
}

/// Stops a test's services, removes its queues, and checks that everything stopped cleanly.
pub async fn finish(supervisor: Supervisor, channel: &Channel, topology: &UploadTopology) {
    supervisor.cancel();
    delete_topology(channel, topology).await;
    supervisor
        .run_until_stopped(Duration::from_secs(20))
        .await
        .expect("stops cleanly");
}

/// The integration JSON the tests write: `tenant` delivering to `bucket` under `audit/`,
/// connected long ago, so live batching delivers every window the tests write.
pub fn integration_json(tenant: &str, bucket: &str) -> String {
    integration_value(tenant, bucket).to_string()
}

/// [`integration_json`] as a value, for tests that change a field.
pub fn integration_value(tenant: &str, bucket: &str) -> serde_json::Value {
    serde_json::json!({
        "tenant_id": tenant, "enabled": true, "aws_account_id": "123456789012", "bucket": bucket,
        "prefix": "audit", "role_arn": "arn:aws:iam::123456789012:role/Writer",
        "external_id": "ext-0123456789", "region": REGION, "compression": "none",
        "connected_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
    })
}

/// A fresh compacted integrations topic and a producer writing to it.
pub struct IntegrationsTopic {
    pub kafka: KafkaArgs,
    pub name: String,
    producer: FutureProducer,
}

impl IntegrationsTopic {
    pub async fn create() -> Self {
        let kafka = KafkaArgs::new(crate::kafka::brokers());
        let name = crate::unique("activity.integrations");
        kafka
            .ensure_topics(&[topic_spec(&name, 1)])
            .await
            .expect("integrations topic");
        let producer = kafka
            .producer_config(Duration::from_secs(10))
            .create()
            .expect("producer");
        Self {
            kafka,
            name,
            producer,
        }
    }

    /// Writes a record as-is: a value, or a tombstone for `None`.
    pub async fn write(&self, tenant: &str, value: Option<&str>) {
        let record = FutureRecord::<str, str>::to(&self.name).key(tenant);
        let record = match value {
            Some(value) => record.payload(value),
            None => record,
        };
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("write an integration record");
    }

    /// Connects `tenant` to `bucket` (see [`integration_json`]).
    pub async fn connect(&self, tenant: &str, bucket: &str) {
        self.write(tenant, Some(&integration_json(tenant, bucket)))
            .await;
    }
}
