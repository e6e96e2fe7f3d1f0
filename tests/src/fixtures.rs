//! Shared test fixtures: AWS and RabbitMQ clients for the local servers, customer buckets, and
//! upload jobs.

use aws_config::SdkConfig;
use clap::Parser;
use common::amqp::AmqpArgs;
use common::aws::AwsArgs;
use common::job::UploadJob;
use common::key::{Codec, ObjectKey};
use common::topology::UploadTopology;
use lapin::options::{ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Channel, Connection};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The region every test integration uses.
pub const REGION: &str = "us-east-1";

/// The S3/STS test server (`ACTIVITY_TEST_AWS_ENDPOINT`, default moto on 127.0.0.1:5000).
pub fn moto_endpoint() -> String {
    std::env::var("ACTIVITY_TEST_AWS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

/// AWS settings pointing at `endpoint`; the identity comes from the SDK's standard chain.
pub fn aws_args(endpoint: &str) -> AwsArgs {
    assert!(
        std::env::var_os("AWS_ACCESS_KEY_ID").is_some(),
        "give the SDK test credentials (scripts/test.sh exports AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    );
    AwsArgs {
        region: Some(REGION.into()),
        endpoint_url: Some(endpoint.into()),
    }
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
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("publisher confirms");
    (connection, channel)
}

/// A valid upload job for `body`, of the 2026-11-27 09:00 UTC window, created now.
pub fn upload_job(tenant: &str, first_offset: i64, body: &[u8]) -> UploadJob {
    let window_start_ms = 1_795_770_000_000;
    let key = ObjectKey {
        tenant_id: tenant.parse().expect("tenant"),
        window_start: OffsetDateTime::from_unix_timestamp(window_start_ms / 1000).expect("time"),
        partition: 0,
        first_offset,
        codec: Codec::None,
    };
    let now_ms =
        i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).expect("ms");
    UploadJob {
        tenant_id: key.tenant_id.clone(),
        relative_key: key.relative(),
        codec: Codec::None,
        event_count: 2,
        window_start_ms,
        window_end_ms: window_start_ms + 3_600_000,
        partition: 0,
        first_offset,
        last_offset: first_offset + 1,
        uncompressed_bytes: body.len() as u64,
        sha256_hex: Sha256::digest(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        created_at_ms: now_ms,
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
