//! The batcher's consume→publish rate against the raw librdkafka consume rate of the same
//! records from the same broker, in the same run (BENCHMARKS.md explains the method).
//!
//!   cargo bench -p integration-tests --bench batcher_throughput
//!
//! Needs the local services (scripts/local-services.sh start). ACTIVITY_BENCH_EVENTS sets the
//! number of events (default 300,000).

use std::time::{Duration, Instant};

use clap::Parser;
use common::clock::now_unix_ms;
use common::shutdown::Supervisor;
use futures_util::future::join_all;
use integration_tests::batching::{BatcherSetup, EventsTopic, event_json};
use integration_tests::fixtures::{IntegrationsTopic, confirm_channel, delete_topology};
use integration_tests::process::{metric_sum, metric_value};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
const TENANTS: usize = 100;

/// Reads every record of `topic` once with a bare consumer; returns the time from its first
/// record to its last (as for the batcher, whose group join is not counted either).
fn raw_consume(topic: &str, expected: usize) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", integration_tests::kafka::brokers())
        .set("group.id", integration_tests::unique("bench-raw"))
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let waiting = Instant::now();
    let mut started = None;
    let mut read = 0;
    while read < expected {
        match consumer.poll(Duration::from_millis(500)) {
            Some(message) => {
                message.expect("consume");
                started.get_or_insert_with(Instant::now);
                read += 1;
            }
            None => assert!(
                waiting.elapsed() < Duration::from_secs(120),
                "the raw consumer read only {read} of {expected} records"
            ),
        }
    }
    started.map_or(Duration::ZERO, |s| s.elapsed())
}

#[tokio::main]
async fn main() {
    let events: usize = std::env::var("ACTIVITY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let integrations = IntegrationsTopic::create().await;
    for t in 0..TENANTS {
        integrations
            .connect(&format!("tenant{t}"), "bench-bucket")
            .await;
    }
    let topic = EventsTopic::create(PARTITIONS).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", integration_tests::kafka::brokers())
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    // Ten windows of 10 s, half an hour ahead (closed by the records, not the clock), then one
    // record per partition that closes them all.
    let base = (now_unix_ms() + 30 * 60_000) / 10_000 * 10_000;
    let produced = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(20_000) {
        let sends = chunk.iter().map(|n| {
            let tenant = format!("tenant{}", n % TENANTS);
            let value = event_json(&tenant, &format!("e{n}"), 300);
            let partition = i32::try_from(n % TENANTS).expect("small") % PARTITIONS;
            let at = base + i64::try_from(n * 100_000 / events).expect("time");
            let producer = producer.clone();
            let name = topic.name.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(&name)
                            .partition(partition)
                            .key(&tenant)
                            .payload(&value)
                            .timestamp(at),
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("produce");
            }
        });
        join_all(sends).await;
    }
    for partition in 0..PARTITIONS {
        topic
            .send(partition, "nobody", "closer", base + 120_000, 10)
            .await;
    }
    let total = events + usize::try_from(PARTITIONS).expect("small");
    eprintln!(
        "produced {events} events in {:.1} s",
        produced.elapsed().as_secs_f64()
    );

    let raw = {
        let name = topic.name.clone();
        tokio::task::spawn_blocking(move || raw_consume(&name, total))
            .await
            .expect("raw consumer")
    };

    let setup = BatcherSetup::new(&topic, &integrations);
    let (_connection, channel) = confirm_channel("batcher-bench").await;
    setup.topology.declare(&channel).await.expect("declare");
    let mut args = vec![
        "batcher".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(setup.flags("10s", "2s"));
    let config = batcher::config::BatcherConfig::try_parse_from(args).expect("batcher settings");
    let supervisor = Supervisor::new();
    let address = batcher::start(config, &supervisor)
        .await
        .expect("batcher starts");
    let url = format!("http://{address}/metrics");
    let mut first_record = None;
    let done = loop {
        let metrics = reqwest::get(&url)
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        let records = metric_value(&metrics, "activity_batcher_records_total").unwrap_or(0.0);
        if records > 0.0 && first_record.is_none() {
            first_record = Some(Instant::now());
        }
        let closed = metric_sum(&metrics, "activity_batcher_parts_closed_total");
        let published = metric_sum(&metrics, "activity_batcher_published_parts_total");
        if records >= total as f64 && closed > 0.0 && published >= closed {
            break (Instant::now(), closed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let batched = done.0 - first_record.expect("records were read");
    supervisor.cancel();
    supervisor
        .run_until_stopped(Duration::from_secs(30))
        .await
        .expect("the batcher stops");
    delete_topology(&channel, &setup.topology).await;

    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!("| path | records | seconds | records/s |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| raw librdkafka consume | {total} | {:.2} | {:.0} |",
        raw.as_secs_f64(),
        rate(raw)
    );
    println!(
        "| batcher consume → {} parts published and confirmed | {total} | {:.2} | {:.0} |",
        done.1,
        batched.as_secs_f64(),
        rate(batched)
    );
    println!(
        "ratio batcher / raw: {:.2}",
        raw.as_secs_f64() / batched.as_secs_f64()
    );
}
