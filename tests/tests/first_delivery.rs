//! A tenant connecting through the admin API gets the window before its connection's window and
//! everything after, and nothing older (DESIGN §1 step 5), through the three real services:
//! ingest (in-process, with the admin API), a batcher process and an uploader process, on
//! Apache Kafka, RabbitMQ and moto. Windows are 3 s long so the test sees five of them.

use std::time::Duration;

use common::clock::now_unix_ms;
use integration_tests::fixtures::{aws_config, moto_endpoint, new_bucket, s3_client};
use integration_tests::pipeline::{Pipeline, delivered};
use integration_tests::plan::Shape;
use reqwest::StatusCode;

const WINDOW_MS: i64 = 3_000;

/// Waits until the wall clock reaches `at_ms`: events are placed in windows by the time ingest
/// accepts them, so the test has to post them at the right moments.
async fn at(at_ms: i64) {
    let wait = u64::try_from(at_ms - now_unix_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_delivers_the_previous_window_and_everything_after_and_nothing_older() {
    let moto = moto_endpoint();
    let pipeline = Pipeline::start(
        &moto,
        Shape::single().with_windows(Duration::from_secs(3), Duration::from_secs(1)),
    )
    .await;
    let s3 = s3_client(&aws_config(&moto).await);
    let bucket = new_bucket(&s3).await;
    let post = |label: &'static str| pipeline.post("acme", label, 5);

    // Window A gets events that are too old, A+1 the previous window's, A+2 the connection.
    let a = (now_unix_ms() / WINDOW_MS + 1) * WINDOW_MS;
    at(a + 200).await;
    let too_old = post("too-old").await;
    at(a + WINDOW_MS + 200).await;
    let mut expected = post("previous-window").await;
    at(a + 2 * WINDOW_MS + 200).await;
    expected.extend(post("before-connecting").await);
    let (status, answer) = pipeline.connect("acme", &bucket).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    expected.extend(post("after-connecting").await);
    at(a + 3 * WINDOW_MS + 200).await;
    expected.extend(post("next-window").await);
    at(a + 4 * WINDOW_MS + 200).await;
    expected.extend(post("later-window").await);

    let ids = integration_tests::wait_for(
        "every event from the previous window on in the bucket",
        Duration::from_secs(60),
        || async {
            let ids = delivered(&s3, &bucket, "acme").await;
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
        &pipeline.batcher.metrics().await,
        "activity_batcher_first_deliveries_total",
        "outcome=\"delivered\"",
    );
    assert_eq!(first_deliveries, Some(1.0));
    pipeline.stop().await;
}
