//! The uploader's PutObject path against the local S3 endpoint, beside a bare aws-sdk-s3
//! PutObject loop on the same objects at the same concurrency, in the same run
//! (BENCHMARKS.md explains the method).
//!
//!   cargo bench -p integration-tests --bench upload_throughput
//!
//! Needs AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY set (any value for moto).
//! ACTIVITY_BENCH_UPLOAD_MB caps the megabytes sent per cell and side (default 64).

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::integration::Integration;
use common::key::Codec;
use integration_tests::fixtures::{
    REGION, aws_config, moto_endpoint, new_bucket, s3_client, upload_job,
};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use uploader::credentials::AssumedRoles;
use uploader::destination::{S3Writer, verify_body};

const SIZES: [(usize, &str); 3] = [
    (1024, "1 KiB"),
    (256 * 1024, "256 KiB"),
    (8 * 1024 * 1024, "8 MiB"),
];
const CONCURRENCY: [usize; 3] = [1, 16, 64];

fn integration(bucket: &str) -> Integration {
    let now = OffsetDateTime::now_utc();
    Integration {
        tenant_id: "bench".parse().expect("tenant"),
        enabled: true,
        aws_account_id: "123456789012".into(),
        bucket: bucket.into(),
        prefix: "bench".into(),
        role_arn: "arn:aws:iam::123456789012:role/Writer".into(),
        external_id: "ext-0123456789".into(),
        region: REGION.into(),
        compression: Codec::None,
        connected_at: now,
        updated_at: now,
    }
}

/// Runs `count` uploads with at most `concurrency` at once; returns the elapsed time.
async fn run<F, Fut>(count: usize, concurrency: usize, upload: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for index in 0..count {
        let slot = slots.clone().acquire_owned().await.expect("semaphore");
        let work = upload(index);
        tasks.push(tokio::spawn(async move {
            work.await;
            drop(slot);
        }));
    }
    for task in tasks {
        task.await.expect("upload task");
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let cap_mb: usize = std::env::var("ACTIVITY_BENCH_UPLOAD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let config = aws_config(&moto_endpoint()).await;
    let s3 = s3_client(&config);
    let roles = Arc::new(AssumedRoles::new(config.clone()));
    let writer = Arc::new(S3Writer::new(config.clone()));
    println!(
        "| size | concurrency | objects | uploader obj/s | uploader MB/s | bare PutObject obj/s | bare MB/s | ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut offset = 0_i64;
    for (size, label) in SIZES {
        let body = Arc::new(events_of_size(size));
        for concurrency in CONCURRENCY {
            let count = (cap_mb * 1024 * 1024 / size).clamp(concurrency.max(8), 400);
            // Fresh buckets per cell, so neither side writes over the other's keys.
            let ours_bucket = new_bucket(&s3).await;
            let bare_bucket = new_bucket(&s3).await;
            let integration = Arc::new(integration(&ours_bucket));
            // The jobs arrive made (the batcher made them): made before timing, so their
            // SHA-256 and event count are not charged to the uploader.
            let jobs: Arc<Vec<_>> = Arc::new(
                (0..count)
                    .map(|index| upload_job("bench", offset + index as i64 * 2, &body))
                    .collect(),
            );
            offset += count as i64 * 2;

            let ours = run(count, concurrency, |index| {
                let (roles, writer, integration, body, jobs) = (
                    roles.clone(),
                    writer.clone(),
                    integration.clone(),
                    body.clone(),
                    jobs.clone(),
                );
                async move {
                    let job = &jobs[index];
                    let sha = verify_body(job, &body).expect("body");
                    let credentials = roles.credentials(&integration).await.expect("credentials");
                    writer
                        .put(&integration, credentials, job, body.to_vec(), sha)
                        .await
                        .expect("put");
                }
            })
            .await;
            let bare = run(count, concurrency, |index| {
                let (s3, bucket, body) = (s3.clone(), bare_bucket.clone(), body.clone());
                async move {
                    s3.put_object()
                        .bucket(&bucket)
                        .key(format!("bare/{index}"))
                        .body(aws_sdk_s3::primitives::ByteStream::from(body.to_vec()))
                        .send()
                        .await
                        .expect("bare put");
                }
            })
            .await;
            let mb = (count * size) as f64 / 1e6;
            let (ours_rate, bare_rate) = (
                count as f64 / ours.as_secs_f64(),
                count as f64 / bare.as_secs_f64(),
            );
            println!(
                "| {label} | {concurrency} | {count} | {ours_rate:.1} | {:.1} | {bare_rate:.1} | {:.1} | {:.2} |",
                mb / ours.as_secs_f64(),
                mb / bare.as_secs_f64(),
                ours_rate / bare_rate
            );
            for bucket in [&ours_bucket, &bare_bucket] {
                // moto keeps objects in memory; empty the buckets so the next cell starts light.
                let listed = s3
                    .list_objects_v2()
                    .bucket(bucket)
                    .send()
                    .await
                    .expect("list");
                for object in listed.contents() {
                    if let Some(key) = object.key() {
                        let _ = s3.delete_object().bucket(bucket).key(key).send().await;
                    }
                }
            }
        }
    }
    println!("AssumeRole calls: {}", roles.calls());
}

/// NDJSON events of the bench tenant, about `size` bytes in all.
fn events_of_size(size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size + 256);
    let mut n = 0;
    while body.len() < size {
        n += 1;
        body.extend_from_slice(
            format!(
                "{{\"id\":\"e{n}\",\"tenant_id\":\"bench\",\"type\":\"device.lock\",\"occurred_at\":\"2026-11-27T09:00:00Z\",\"actor\":{{\"id\":\"u-{n}\"}}}}\n"
            )
            .as_bytes(),
        );
    }
    body
}
