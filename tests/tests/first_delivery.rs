//! A tenant connecting through the admin API gets the window before its connection's window and
//! everything after, and nothing older (DESIGN §1 step 5), through the three real services:
//! ingest (in-process, with the admin API), a batcher process and an uploader process, on
//! Tansu, RabbitMQ and moto. Windows are 3 s long so the test sees five of them.

use std::collections::HashMap;
use std::time::Duration;

use common::clock::now_unix_ms;
use common::codec::decompress;
use common::key::Codec;
use integration_tests::admin::{AdminIngest, AdminTopics, settings};
use integration_tests::batching::BatcherSetup;
use integration_tests::fixtures::{
    aws_config, confirm_channel, delete_topology, moto_endpoint, new_bucket, s3_client,
};
use integration_tests::process::ServiceProcess;
use reqwest::StatusCode;
use serde_json::json;

const WINDOW_MS: i64 = 3_000;

/// Waits until the wall clock reaches `at_ms`: events are placed in windows by the time ingest
/// accepts them, so the test has to post them at the right moments.
async fn at(at_ms: i64) {
    let wait = u64::try_from(at_ms - now_unix_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

async fn post(admin: &AdminIngest, label: &str, count: usize) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|n| format!("{label}-{n}")).collect();
    let body: String = ids
        .iter()
        .map(|id| {
            format!(
                "{}\n",
                json!({"id": id, "tenant_id": "acme", "type": "device.lock",
                       "occurred_at": "2026-11-27T10:00:00Z", "actor": {"id": "admin-1"}})
            )
        })
        .collect();
    let response = admin
        .ingest
        .post_events("application/x-ndjson", body)
        .send()
        .await
        .expect("post events");
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{label}");
    ids
}

/// Every event id in the tenant's objects, with how often it occurs.
async fn delivered(s3: &aws_sdk_s3::Client, bucket: &str) -> HashMap<String, usize> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list the bucket");
    let mut ids = HashMap::new();
    for object in listed.contents() {
        let key = object.key().expect("key");
        assert!(key.starts_with("audit/acme/"), "{key}");
        assert!(key.ends_with(".jsonl.zst"), "{key}");
        let body = s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("get the object")
            .body
            .collect()
            .await
            .expect("read the object")
            .into_bytes();
        let raw = decompress(Codec::Zstd, &body, 1 << 24).expect("a zstd object");
        for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let event: serde_json::Value = serde_json::from_slice(line).expect("an event per line");
            assert_eq!(event["tenant_id"], json!("acme"));
            *ids.entry(event["id"].as_str().expect("id").to_owned())
                .or_default() += 1;
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_delivers_the_previous_window_and_everything_after_and_nothing_older() {
    let moto = moto_endpoint();
    let topics = AdminTopics::unique();
    let admin = AdminIngest::spawn(&moto, topics.clone(), &[]).await;
    let s3 = s3_client(&aws_config(&moto).await);
    let bucket = new_bucket(&s3).await;
    let setup = BatcherSetup::for_topics(
        &admin.ingest.topic,
        &topics.integrations,
        &topics.first_deliveries,
    );
    let mut batcher = setup.spawn("3s", "1s", &[]);
    batcher.ready().await;
    let brokers = integration_tests::kafka::brokers();
    let mut uploader = ServiceProcess::spawn(
        "uploader",
        &[
            "--integrations-topic",
            &topics.integrations,
            "--deliveries-topic",
            &topics.deliveries,
            "--uploads-name",
            &setup.topology.queue,
            "--retry-tiers",
            "60s",
            "--aws-endpoint-url",
            &moto,
            "--aws-region",
            "us-east-1",
            "--kafka-brokers",
            &brokers,
        ],
    );
    uploader.ready().await;

    // Window A gets events that are too old, A+1 the previous window's, A+2 the connection.
    let a = (now_unix_ms() / WINDOW_MS + 1) * WINDOW_MS;
    at(a + 200).await;
    let too_old = post(&admin, "too-old", 5).await;
    at(a + WINDOW_MS + 200).await;
    let mut expected = post(&admin, "previous-window", 5).await;
    at(a + 2 * WINDOW_MS + 200).await;
    expected.extend(post(&admin, "before-connecting", 5).await);
    let mut connect = settings(&bucket);
    connect["compression"] = json!("zstd");
    let (status, answer) = admin.put("acme", &connect).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    expected.extend(post(&admin, "after-connecting", 5).await);
    at(a + 3 * WINDOW_MS + 200).await;
    expected.extend(post(&admin, "next-window", 5).await);
    at(a + 4 * WINDOW_MS + 200).await;
    expected.extend(post(&admin, "later-window", 5).await);

    let ids = integration_tests::wait_for(
        "every event from the previous window on in the bucket",
        Duration::from_secs(60),
        || async {
            let ids = delivered(&s3, &bucket).await;
            expected
                .iter()
                .all(|id| ids.contains_key(id))
                .then_some(ids)
        },
    )
    .await;
    for id in &too_old {
        assert!(
            !ids.contains_key(id),
            "{id} is older than the previous window"
        );
    }
    let repeated: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "delivered more than once: {repeated:?}"
    );
    assert_eq!(ids.len(), expected.len());
    let first_deliveries = integration_tests::process::labelled_metric_value(
        &batcher.metrics().await,
        "activity_batcher_first_deliveries_total",
        "outcome=\"delivered\"",
    );
    assert_eq!(first_deliveries, Some(1.0));

    batcher.terminate(Duration::from_secs(20)).await;
    uploader.terminate(Duration::from_secs(20)).await;
    let (_connection, channel) = confirm_channel("first-delivery-cleanup").await;
    delete_topology(&channel, &setup.topology).await;
}
