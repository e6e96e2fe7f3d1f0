//! Graceful shutdown: a request already being received when shutdown begins is answered
//! truthfully and its events are written; new connections are refused. In its own test binary,
//! because it reads the process-wide in-flight gauge.

use std::time::Duration;

use bytes::Bytes;
use integration_tests::kafka::read_until;
use integration_tests::services::{TEST_TOKEN, TestIngest};
use integration_tests::wait_for;

fn inflight_bytes(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("activity_ingest_inflight_bytes "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered_truthfully_and_new_ones_are_refused() {
    let ingest = TestIngest::spawn(&[]).await;
    let events: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "{{\"id\":\"drain-{i}\",\"tenant_id\":\"acme\",\"type\":\"user.invite\",\"occurred_at\":\"2026-11-27T10:00:00Z\"}}\n"
            )
        })
        .collect();
    let body: String = events.concat();
    let (first_half, second_half) = body.split_at(body.len() / 2);

    // Stream the body in two parts, so the request is provably in flight when shutdown begins.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(2);
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), receiver))
    });
    let request = reqwest::Client::new()
        .post(ingest.url("/v1/events"))
        .bearer_auth(TEST_TOKEN)
        .header("content-type", "application/x-ndjson")
        .header("content-length", body.len())
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let in_flight = tokio::spawn(request);
    sender
        .send(Bytes::from(first_half.to_owned()))
        .await
        .expect("first half");

    let metrics_url = ingest.url("/metrics");
    wait_for(
        "the request to be admitted",
        Duration::from_secs(10),
        || async {
            let metrics = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
            (inflight_bytes(&metrics) > 0.0).then_some(())
        },
    )
    .await;

    ingest.shut_down();
    wait_for(
        "new connections to be refused",
        Duration::from_secs(10),
        || async {
            reqwest::get(ingest.url("/healthz"))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;

    sender
        .send(Bytes::from(second_half.to_owned()))
        .await
        .expect("second half");
    drop(sender);
    let response = in_flight
        .await
        .expect("request task")
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 202);
    assert_eq!(response.text().await.expect("body"), r#"{"accepted":200}"#);
    ingest
        .stopped(Duration::from_secs(30))
        .await
        .expect("ingest stops cleanly");

    let records = read_until(
        &ingest.brokers,
        &ingest.topic,
        Duration::from_secs(30),
        |r| r.len() >= 200,
    )
    .await;
    assert_eq!(records.len(), 200);
}
