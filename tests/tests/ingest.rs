//! Ingest against a real Kafka-protocol broker: what is acknowledged is in Kafka exactly as the
//! contract says, and what is refused leaves nothing behind.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration_tests::kafka::{Record, read_until};
use integration_tests::kafka_cluster::KafkaCluster;
use integration_tests::services::{TEST_TOKEN, TestIngest};
use integration_tests::{unique, wait_for};
use serde_json::Value;

const NDJSON: &str = "application/x-ndjson";
const READ_DEADLINE: Duration = Duration::from_secs(30);

fn event(tenant: &str, id: &str) -> Value {
    serde_json::json!({
        "id": id,
        "tenant_id": tenant,
        "type": "device.lock",
        "occurred_at": "2026-11-27T10:00:00Z",
        "actor": {"type": "admin", "email": "ops@example.com"},
    })
}

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

fn ids(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.value).expect("record is JSON")["id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect()
}

async fn read_ids(ingest: &TestIngest, count: usize) -> Vec<Record> {
    read_until(&ingest.brokers, &ingest.topic, READ_DEADLINE, move |r| {
        r.len() >= count
    })
    .await
}

#[tokio::test]
async fn accepted_events_are_in_kafka_keyed_by_tenant_stamped_at_acceptance_in_canonical_form() {
    let ingest = TestIngest::spawn(&[]).await;
    // One event with odd spacing and key order, an unknown nested field and numbers that must
    // survive verbatim, followed by two ordinary ones.
    let body = String::from(
        "{ \"type\": \"device.lock\",  \"tenant_id\": \"acme\", \"id\": \"e1\", \
         \"occurred_at\": \"2026-11-27T10:00:00.5+01:00\", \"details\": {\"z\": 1.50, \"a\": [true, null]}, \
         \"x-custom\": 12345678901234567890123}\n",
    ) + &ndjson(&[event("globex", "e2"), event("acme", "e3")]);
    let before = now_ms();
    let response = ingest
        .post_events(NDJSON, body)
        .send()
        .await
        .expect("request");
    let after = now_ms();
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        serde_json::json!({"accepted": 3})
    );

    let records = read_ids(&ingest, 3).await;
    let mut by_id: Vec<_> = records.iter().zip(ids(&records)).collect();
    by_id.sort_by(|a, b| a.1.cmp(&b.1));
    let (first, _) = by_id[0];
    assert_eq!(first.key, "acme");
    assert_eq!(
        first.value,
        r#"{"details":{"a":[true,null],"z":1.50},"id":"e1","occurred_at":"2026-11-27T10:00:00.5+01:00","tenant_id":"acme","type":"device.lock","x-custom":12345678901234567890123}"#
    );
    assert_eq!(by_id[1].0.key, "globex");
    assert_eq!(by_id[2].0.key, "acme");
    assert_eq!(
        by_id[0].0.partition, by_id[2].0.partition,
        "a tenant's events share a partition"
    );
    for (record, _) in &by_id {
        assert!(
            (before..=after).contains(&record.timestamp_ms),
            "timestamp {} not within the request ({before}..={after})",
            record.timestamp_ms
        );
        assert!(!record.value.contains('\n'));
    }
}

#[tokio::test]
async fn json_arrays_gzip_bodies_and_crlf_lines_with_blanks_are_all_accepted() {
    let ingest = TestIngest::spawn(&[]).await;
    let array =
        serde_json::to_string(&[event("acme", "array-1"), event("acme", "array-2")]).expect("json");
    let response = ingest
        .post_events("application/json", array.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 202);

    let gz = ingest
        .post_events(
            NDJSON,
            gzip(ndjson(&[event("acme", "gzip-ndjson")]).as_bytes()),
        )
        .header("content-encoding", "gzip")
        .send()
        .await
        .expect("request");
    assert_eq!(gz.status(), 202);

    let gz_array = serde_json::to_string(&[event("acme", "gzip-array")]).expect("json");
    let gz = ingest
        .post_events("application/json; charset=utf-8", gzip(gz_array.as_bytes()))
        .header("content-encoding", "gzip")
        .send()
        .await
        .expect("request");
    assert_eq!(gz.status(), 202);

    let crlf = format!(
        "\r\n{}\r\n\r\n  \r\n{}\r\n",
        event("acme", "crlf-1"),
        event("acme", "crlf-2")
    );
    let response = ingest
        .post_events(NDJSON, crlf)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.expect("json")["accepted"], 2);

    let records = read_ids(&ingest, 6).await;
    let mut found = ids(&records);
    found.sort();
    assert_eq!(
        found,
        [
            "array-1",
            "array-2",
            "crlf-1",
            "crlf-2",
            "gzip-array",
            "gzip-ndjson"
        ]
    );
}

struct BadRequest {
    name: &'static str,
    content_type: &'static str,
    token: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// Text the answer must contain (its message or a problem's).
    says: &'static str,
}

fn bad(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    says: &'static str,
) -> BadRequest {
    BadRequest {
        name,
        content_type: NDJSON,
        token: Some(TEST_TOKEN),
        body: body.into(),
        status,
        says,
    }
}

fn with_field(field: &str, value: Value) -> String {
    let mut event = event("acme", "bad");
    event[field] = value;
    ndjson(&[event])
}

fn without_field(field: &str) -> String {
    let mut event = event("acme", "bad");
    event.as_object_mut().expect("object").remove(field);
    ndjson(&[event])
}

#[tokio::test]
async fn every_bad_request_is_refused_with_its_reason_and_leaves_nothing_in_kafka() {
    let ingest = TestIngest::spawn(&[
        "--max-event-bytes",
        "2048",
        "--max-body-bytes",
        "65536",
        "--max-events",
        "50",
    ])
    .await;
    let good = ndjson(&[event("acme", "good-1")]);
    let mut cases = vec![
        bad(
            "invalid JSON",
            format!("{good}{{\"id\": \n"),
            400,
            "not valid JSON",
        ),
        bad(
            "a line that is not an object",
            format!("{good}[1,2]\n"),
            400,
            "must be a JSON object, not an array",
        ),
        bad(
            "an ill-typed id",
            with_field("id", Value::from(7)),
            400,
            "`id` must be a string, not a number",
        ),
        bad(
            "an empty id",
            with_field("id", Value::from("")),
            400,
            "`id` must not be empty",
        ),
        bad(
            "an ill-typed tenant",
            with_field("tenant_id", Value::Null),
            400,
            "`tenant_id` must be a string, not null",
        ),
        bad(
            "an ill-typed type",
            with_field("type", Value::from(true)),
            400,
            "`type` must be a string, not a boolean",
        ),
        bad(
            "an ill-typed time",
            with_field("occurred_at", Value::from(1)),
            400,
            "`occurred_at` must be a string",
        ),
        bad(
            "tenant ../x",
            with_field("tenant_id", Value::from("../x")),
            400,
            "must start with a letter or digit",
        ),
        bad(
            "an empty tenant",
            with_field("tenant_id", Value::from("")),
            400,
            "`tenant_id` must not be empty",
        ),
        bad(
            "a 64-char tenant",
            with_field("tenant_id", Value::from("t".repeat(64))),
            400,
            "64 characters long",
        ),
        bad(
            "a tenant with a space",
            with_field("tenant_id", Value::from("acme corp")),
            400,
            "has ' ' at position 5",
        ),
        bad(
            "a bad occurred_at",
            with_field("occurred_at", Value::from("27/11/2026")),
            400,
            "`occurred_at` is not an RFC 3339 timestamp",
        ),
        bad(
            "an oversize event",
            with_field("pad", Value::from("x".repeat(4000))),
            413,
            "at most 2048 are allowed",
        ),
        bad(
            "an oversize body",
            format!("{good}{}", " ".repeat(70_000)),
            413,
            "larger than 65536 bytes",
        ),
        bad(
            "too many events",
            ndjson(
                &(0..51)
                    .map(|i| event("acme", &i.to_string()))
                    .collect::<Vec<_>>(),
            ),
            413,
            "holds 51 events; at most 50",
        ),
        BadRequest {
            content_type: "application/json",
            ..bad(
                "a JSON body that is no array",
                good.clone(),
                400,
                "must be a JSON array",
            )
        },
        bad("a corrupt gzip body", good.clone(), 400, "gzip"),
        BadRequest {
            content_type: "text/plain",
            ..bad(
                "a wrong content type",
                good.clone(),
                415,
                "unsupported content type \"text/plain\"",
            )
        },
        BadRequest {
            token: None,
            ..bad(
                "a missing token",
                good.clone(),
                401,
                "Authorization: Bearer",
            )
        },
        BadRequest {
            token: Some("wrong-token-0123456789"),
            ..bad("a wrong token", good.clone(), 401, "not valid")
        },
    ];
    for field in ["id", "tenant_id", "type", "occurred_at"] {
        cases.push(BadRequest {
            body: without_field(field).into_bytes(),
            ..bad("a missing field", "", 400, "is required")
        });
    }

    for case in cases {
        let mut request = reqwest::Client::new()
            .post(ingest.url("/v1/events"))
            .header("content-type", case.content_type)
            .body(case.body.clone());
        if let Some(token) = case.token {
            request = request.bearer_auth(token);
        }
        if case.name == "a corrupt gzip body" {
            request = request.header("content-encoding", "gzip");
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let answer: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: answer is not JSON: {e}", case.name));
        assert_eq!(status, case.status, "{}: {answer}", case.name);
        assert!(
            retry_after.is_none(),
            "{}: a client error must not invite a retry",
            case.name
        );
        let said = std::iter::once(&answer["message"])
            .chain(
                answer["problems"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| &p["message"]),
            )
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" | ");
        assert!(
            said.contains(case.says),
            "{}: {answer} does not say {:?}",
            case.name,
            case.says
        );
        if status == 400 && answer["error"] == "invalid_events" {
            let problem = &answer["problems"][0];
            assert!(
                problem["line"].as_u64().is_some(),
                "{}: {answer} names no line",
                case.name
            );
        }
    }

    // All-or-nothing: one bad line refuses the good ones around it.
    let mixed = format!("{good}{}{good}", without_field("type"));
    let response = ingest
        .post_events(NDJSON, mixed)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["problems"][0]["line"], 2);
    assert_eq!(answer["problems"][0]["field"], "type");

    // A sentinel request written after all the refused ones: once it is read, anything a refused
    // request had written would have been read before it.
    let response = ingest
        .post_events(NDJSON, ndjson(&[event("acme", "sentinel")]))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 202);
    let records = read_until(&ingest.brokers, &ingest.topic, READ_DEADLINE, |r| {
        r.iter().any(|r| r.value.contains("\"sentinel\""))
    })
    .await;
    assert_eq!(
        ids(&records),
        ["sentinel"],
        "refused requests left records behind"
    );
}

#[tokio::test]
async fn a_noisy_tenant_is_rate_limited_while_others_keep_going() {
    let ingest = TestIngest::spawn(&["--tenant-rate", "1", "--tenant-burst", "5"]).await;
    let five = |tenant: &str| {
        ndjson(
            &(0..5)
                .map(|i| event(tenant, &format!("{tenant}-{i}")))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        ingest
            .post_events(NDJSON, five("noisy"))
            .send()
            .await
            .expect("request")
            .status(),
        202
    );

    let refused = ingest
        .post_events(NDJSON, five("noisy"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=5).contains(&wait), "Retry-After {wait}");
    assert!(
        refused
            .text()
            .await
            .expect("body")
            .contains("tenant noisy is over its rate limit")
    );

    assert_eq!(
        ingest
            .post_events(NDJSON, five("quiet"))
            .send()
            .await
            .expect("request")
            .status(),
        202
    );
    let too_big = ndjson(
        &(0..6)
            .map(|i| event("other", &i.to_string()))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        ingest
            .post_events(NDJSON, too_big)
            .send()
            .await
            .expect("request")
            .status(),
        413
    );
}

#[tokio::test]
async fn with_the_broker_down_requests_get_503_in_time_and_succeed_again_once_it_is_back() {
    let mut broker = KafkaCluster::start(1);
    let topic = unique("activity.events");
    broker.create_topic(&topic, 1).await;
    let ingest = TestIngest::spawn_on(
        &broker.brokers(),
        &topic,
        &["--produce-timeout", "3s", "--retry-after", "2s"],
    )
    .await;
    let post = |id: &str| {
        ingest
            .post_events(NDJSON, ndjson(&[event("acme", id)]))
            .send()
    };
    assert_eq!(post("before").await.expect("request").status(), 202);

    broker.kill(0);
    let started = std::time::Instant::now();
    let refused = post("while-down").await.expect("request");
    let waited = started.elapsed();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "2");
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}, past the 3 s deadline"
    );
    let answer: Value = refused.json().await.expect("json");
    assert_eq!(answer["error"], "unavailable");
    assert!(
        answer["message"]
            .as_str()
            .expect("message")
            .contains("retry the whole request")
    );
    let ready = ingest.get("/readyz").send().await.expect("request");
    assert_eq!(ready.status(), 503, "not ready while the broker is down");

    broker.restart(0);
    wait_for(
        "ingest to accept again",
        Duration::from_secs(60),
        || async {
            let response = post("after").await.ok()?;
            (response.status() == 202).then_some(())
        },
    )
    .await;
    let records = read_until(&broker.brokers(), &topic, READ_DEADLINE, |r| {
        r.iter().any(|r| r.value.contains("\"after\""))
    })
    .await;
    // The broker kept what it acknowledged before it died.
    let read = ids(&records);
    assert!(read.contains(&"before".to_owned()), "{records:?}");
    assert_eq!(
        ingest
            .get("/readyz")
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let ingest = TestIngest::spawn(&[]).await;
    assert_eq!(
        ingest
            .get("/healthz")
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
    assert_eq!(
        ingest
            .get("/readyz")
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
    let response = ingest
        .post_events(NDJSON, ndjson(&[event("acme", "m1")]))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 202);
    let metrics = ingest
        .get("/metrics")
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("text");
    for name in [
        "activity_ingest_requests_total{status=\"202\"}",
        "activity_ingest_events_accepted_total",
        "activity_ingest_produce_latency_seconds_bucket",
        "activity_ingest_request_body_bytes_bucket",
        "activity_ingest_inflight_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

/// The shared client settings the services flatten into their own command lines.
#[derive(clap::Parser)]
struct SharedSettings {
    #[command(flatten)]
    amqp: common::amqp::AmqpArgs,
    #[command(flatten)]
    aws: common::aws::AwsArgs,
    #[command(flatten)]
    uploads: common::topology::UploadQueueArgs,
}

#[test]
fn every_setting_in_help_is_documented_in_the_readme() {
    use clap::CommandFactory;
    let readme =
        std::fs::read_to_string(integration_tests::repo_root().join("README.md")).expect("README");
    let commands = [
        ingest::config::IngestConfig::command(),
        uploader::config::UploaderConfig::command(),
        batcher::config::BatcherConfig::command(),
        SharedSettings::command(),
    ];
    let missing: Vec<String> = commands
        .iter()
        .flat_map(|command| command.get_arguments())
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .filter(|env| !readme.contains(&format!("`{env}`")))
        .collect();
    assert!(missing.is_empty(), "README does not document {missing:?}");
}

#[tokio::test]
async fn a_body_trickling_in_slower_than_the_body_timeout_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ingest = TestIngest::spawn(&["--body-timeout", "1s"]).await;
    let mut stream = tokio::net::TcpStream::connect(ingest.address)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: ingest\r\nauthorization: Bearer {}\r\ncontent-type: application/x-ndjson\r\ncontent-length: 1000\r\n\r\n{{\"id\":",
        TEST_TOKEN
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    // The rest of the body never comes; the answer must, without the client closing.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "no answer within 20 s: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
}

/// A request for `/v1/events` with one event, written raw on `stream`, and whatever comes back
/// until the server closes the connection or `deadline` passes.
async fn raw_request(stream: &mut tokio::net::TcpStream, deadline: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"id":"c1","tenant_id":"acme","type":"user.login","occurred_at":"2026-11-30T10:00:00Z"}"#;
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: ingest\r\nconnection: close\r\nauthorization: Bearer {TEST_TOKEN}\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(deadline, stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn connections_past_the_limit_wait_for_one_to_close_and_silent_ones_are_closed() {
    use tokio::io::AsyncReadExt;
    let ingest = TestIngest::spawn(&["--max-connections", "2"]).await;
    let connect = || tokio::net::TcpStream::connect(ingest.address);
    let mut silent = vec![
        connect().await.expect("connect"),
        connect().await.expect("connect"),
    ];
    // Both slots are held by connections that send nothing: a third client is not served.
    let mut third = connect().await.expect("the kernel queues the connection");
    assert_eq!(
        raw_request(&mut third, Duration::from_secs(2)).await,
        None,
        "served past the connection limit"
    );
    drop(silent.pop());
    let mut fourth = connect().await.expect("connect");
    let answer = raw_request(&mut fourth, Duration::from_secs(20))
        .await
        .expect("served once a slot was free");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");

    // A connection that stays silent is closed after the idle timeout.
    let short = TestIngest::spawn(&[
        "--idle-timeout",
        "2s",
        "--body-timeout",
        "1s",
        "--produce-timeout",
        "1s",
    ])
    .await;
    let mut idle = tokio::net::TcpStream::connect(short.address)
        .await
        .expect("connect");
    let mut buffer = [0_u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut buffer))
        .await
        .expect("closed within 20 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the server closed the silent connection: {read:?}"
    );
}
