//! Ingest throughput against the local broker, beside the raw librdkafka producer rate for the
//! same messages in the same run (BENCHMARKS.md explains the method).
//!
//!   cargo bench -p integration-tests --bench ingest_throughput
//!
//! Settings: ACTIVITY_BENCH_CLIENTS (8), ACTIVITY_BENCH_REQUESTS per client (25),
//! ACTIVITY_BENCH_EVENTS per request (1000), ACTIVITY_BENCH_RATE in requests per second across
//! all clients (unset: each client sends again as soon as it is answered),
//! ACTIVITY_TEST_KAFKA_BROKERS (127.0.0.1:9092).

use std::collections::VecDeque;

use std::time::{Duration, Instant};

use common::kafka::{KafkaArgs, TopicSpec};
use integration_tests::bench::{percentile, realistic_event, setting};
use integration_tests::services::TestIngest;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Events of 10 tenants, spread over the clients.
fn event(client: usize, request: usize, index: usize) -> String {
    let tenant = format!("tenant-{:02}", (client * 7 + index) % 10);
    realistic_event(&tenant, &format!("c{client}-r{request}-e{index}"))
}

#[tokio::main]
async fn main() {
    let clients = setting("ACTIVITY_BENCH_CLIENTS", 8);
    let requests = setting("ACTIVITY_BENCH_REQUESTS", 25);
    let events = setting("ACTIVITY_BENCH_EVENTS", 1000);
    // Pacing: each client sends on a fixed schedule, one request at a time as a producer flushing
    // its buffer does; a late answer delays its next send rather than piling requests up.
    let pace = std::env::var("ACTIVITY_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(|rate| Duration::from_secs_f64(clients as f64 / rate));
    let brokers = integration_tests::kafka::brokers();
    let total_events = clients * requests * events;

    let bodies: Vec<Vec<String>> = (0..clients)
        .map(|c| {
            (0..requests)
                .map(|r| (0..events).map(|i| event(c, r, i) + "\n").collect())
                .collect()
        })
        .collect();
    let body_bytes: usize = bodies.iter().flatten().map(String::len).sum();
    let mean_event = body_bytes / total_events;
    println!(
        "workload: {clients} clients x {requests} requests x {events} events of ~{mean_event} B ({total_events} events, {:.1} MB)",
        body_bytes as f64 / 1e6
    );

    let ingest =
        TestIngest::spawn_on(&brokers, &integration_tests::unique("bench.events"), &[]).await;
    // One request first, so connection set-up and topic metadata are not measured.
    let warmup = ingest
        .post_events("application/x-ndjson", bodies[0][0].clone())
        .send()
        .await
        .expect("warm-up");
    assert_eq!(warmup.status(), 202, "warm-up request refused");

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (client, client_bodies) in bodies.clone().into_iter().enumerate() {
        let http = reqwest::Client::new();
        let url = ingest.url("/v1/events");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(client_bodies.len());
            // Clients are staggered evenly over one interval, so paced load arrives spread out
            // rather than in bursts of all clients at once.
            let mut schedule = pace.map(|interval| {
                let offset = interval.mul_f64(client as f64 / clients as f64);
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks
            });
            for body in client_bodies {
                if let Some(ticks) = schedule.as_mut() {
                    ticks.tick().await;
                }
                let sent = Instant::now();
                let response = http
                    .post(&url)
                    .bearer_auth(integration_tests::services::TEST_TOKEN)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(
                    response.status(),
                    202,
                    "request refused during the benchmark"
                );
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let ingest_elapsed = started.elapsed();
    latencies.sort();
    let ingest_rate = total_events as f64 / ingest_elapsed.as_secs_f64();

    // The same messages through a bare producer with the same durability settings.
    let topic = integration_tests::unique("bench.raw");
    let args = KafkaArgs::new(brokers.clone());
    args.ensure_topics(&[TopicSpec {
        name: &topic,
        partitions: 3,
        replication: 1,
        config: vec![],
    }])
    .await
    .expect("raw topic");
    let producer: FutureProducer = args
        .producer_config(Duration::from_secs(30))
        .create()
        .expect("producer");
    let messages: Vec<(String, String)> = bodies
        .iter()
        .flatten()
        .flat_map(|body| {
            body.lines()
                .map(|line| {
                    let tenant = line
                        .split("\"tenant_id\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .unwrap_or("t")
                        .to_owned();
                    (tenant, line.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let started = Instant::now();
    let mut outstanding = VecDeque::new();
    for (key, value) in &messages {
        loop {
            match producer.send_result(FutureRecord::to(&topic).key(key).payload(value)) {
                Ok(delivery) => {
                    outstanding.push_back(delivery);
                    break;
                }
                Err(_queue_full) => {
                    let oldest = outstanding
                        .pop_front()
                        .expect("a queue full with nothing outstanding");
                    oldest.await.expect("delivery").expect("delivered");
                }
            }
        }
    }
    for delivery in outstanding {
        delivery.await.expect("delivery").expect("delivered");
    }
    let raw_elapsed = started.elapsed();
    let raw_rate = messages.len() as f64 / raw_elapsed.as_secs_f64();

    println!(
        "ingest:   {:>9.0} events/s  {:>6.1} MB/s  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  ({} requests in {:.2} s)",
        ingest_rate,
        body_bytes as f64 / 1e6 / ingest_elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).map_or(0.0, |d| d.as_secs_f64() * 1e3),
        percentile(&latencies, 0.99).map_or(0.0, |d| d.as_secs_f64() * 1e3),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        latencies.len(),
        ingest_elapsed.as_secs_f64()
    );
    println!(
        "producer: {:>9.0} msgs/s    {:>6.1} MB/s  ({} messages in {:.2} s)",
        raw_rate,
        body_bytes as f64 / 1e6 / raw_elapsed.as_secs_f64(),
        messages.len(),
        raw_elapsed.as_secs_f64()
    );
    println!(
        "ratio:    ingest / raw producer = {:.2}",
        ingest_rate / raw_rate
    );
}
