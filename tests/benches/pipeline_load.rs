//! The whole pipeline under rising load (BENCHMARKS.md, "Pipeline under load"): ingest, a
//! batcher and uploaders as release processes on the local servers, many tenants connected
//! through the integrations topic, and ingest driven at rising event rates, one step per rate.
//!
//!   scripts/local-services.sh start
//!   cargo build --release --workspace --bins
//!   cargo bench -p integration-tests --bench pipeline_load
//!
//! Per step it reports the events/s ingest acknowledged against the rate asked for, request
//! latency, the delivery lag of every object (window end → object stored, from the uploaders'
//! delivery records), and per process the CPU seconds per 1,000 events and the peak RSS.
//!
//! With ACTIVITY_BENCH_BURST=N it instead measures each process idle for ACTIVITY_BENCH_IDLE
//! (20s), then posts N events as fast as ingest takes them and waits until all are delivered, and
//! reports each process's CPU per event net of what it burns idle over the same time.
//!
//! Settings: ACTIVITY_BENCH_TENANTS (10), ACTIVITY_BENCH_RATES in events/s, comma-separated
//! (1000,4000,16000), ACTIVITY_BENCH_STEP seconds per rate (30), ACTIVITY_BENCH_WINDOW (10s),
//! ACTIVITY_BENCH_CLOSE_DELAY (2s), ACTIVITY_BENCH_BATCH events per request (200),
//! ACTIVITY_BENCH_BUCKETS the tenants share (10), ACTIVITY_BENCH_UPLOADERS (2),
//! ACTIVITY_BENCH_PARTITIONS of the events topic (3).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::delivery::{DeliveryRecord, Outcome};
use common::kafka::KafkaArgs;
use common::registry::RECORDS_READ;
use integration_tests::bench::{percentile, realistic_event, setting};
use integration_tests::e2e::Deployment;
use integration_tests::fixtures::{aws_config, integration_value, moto_endpoint, s3_client};
use integration_tests::plan::Shape;
use integration_tests::process::{ServiceProcess, metric_value};
use integration_tests::services::TEST_TOKEN;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Semaphore;

/// Requests in flight at once; the generator waits for a free slot, so a slow ingest lowers
/// the rate achieved instead of piling requests up.
const IN_FLIGHT: usize = 32;

struct Settings {
    tenants: usize,
    rates: Vec<u64>,
    step: Duration,
    window: Duration,
    close_delay: Duration,
    batch: usize,
    buckets: usize,
    uploaders: usize,
    partitions: i32,
    /// Events of the burst, instead of rate steps.
    burst: Option<u64>,
    /// How long each process is measured idle before the burst.
    idle: Duration,
}

fn duration_setting(name: &str, default: &str) -> Duration {
    let value = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    humantime::parse_duration(&value)
        .unwrap_or_else(|e| panic!("{name}={value:?} is not a duration: {e}"))
}

impl Settings {
    fn from_env() -> Self {
        let rates =
            std::env::var("ACTIVITY_BENCH_RATES").unwrap_or_else(|_| "1000,4000,16000".into());
        Self {
            tenants: setting("ACTIVITY_BENCH_TENANTS", 10),
            rates: rates
                .split(',')
                .map(|r| {
                    r.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("ACTIVITY_BENCH_RATES: {r:?} is not events/s"))
                })
                .collect(),
            step: Duration::from_secs(setting("ACTIVITY_BENCH_STEP", 30)),
            window: duration_setting("ACTIVITY_BENCH_WINDOW", "10s"),
            close_delay: duration_setting("ACTIVITY_BENCH_CLOSE_DELAY", "2s"),
            batch: setting("ACTIVITY_BENCH_BATCH", 200),
            buckets: setting("ACTIVITY_BENCH_BUCKETS", 10),
            uploaders: setting("ACTIVITY_BENCH_UPLOADERS", 2),
            partitions: setting("ACTIVITY_BENCH_PARTITIONS", 3),
            burst: std::env::var("ACTIVITY_BENCH_BURST").ok().map(|n| {
                n.parse()
                    .unwrap_or_else(|_| panic!("ACTIVITY_BENCH_BURST: {n:?} is not a number"))
            }),
            idle: duration_setting("ACTIVITY_BENCH_IDLE", "20s"),
        }
    }
}

fn tenant(n: usize) -> String {
    format!("tenant-{n:05}")
}

/// An NDJSON request body of one realistic event per (tenant, id).
fn ndjson(events: impl Iterator<Item = (String, String)>) -> String {
    events
        .map(|(tenant, id)| realistic_event(&tenant, &id) + "\n")
        .collect()
}

/// Posts `body` to ingest's events endpoint at `url`.
async fn post_events(
    http: &reqwest::Client,
    url: &str,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    http.post(url)
        .bearer_auth(TEST_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
}

/// Connects every tenant by writing its integration straight to the integrations topic, as a
/// migration of existing customers would: each with a role of its own (so the uploaders assume
/// one role per tenant), connected long ago (so live batching takes all of its events).
async fn connect_tenants(deployment: &Deployment, settings: &Settings, buckets: &[String]) {
    let producer: FutureProducer = KafkaArgs::new(deployment.plan.shape.brokers.clone())
        .producer_config(Duration::from_secs(30))
        .create()
        .expect("integrations producer");
    let topic = &deployment.plan.topics.integrations;
    for chunk in (0..settings.tenants).collect::<Vec<_>>().chunks(1_000) {
        let records: Vec<(String, String)> = chunk
            .iter()
            .map(|&n| {
                let name = tenant(n);
                let mut integration = integration_value(&name, &buckets[n % buckets.len()]);
                integration["role_arn"] =
                    format!("arn:aws:iam::123456789012:role/ActivityLogWriter-{n}").into();
                integration["external_id"] = format!("external-id-{n:05}").into();
                integration["compression"] = "zstd".into();
                (name, integration.to_string())
            })
            .collect();
        let sends = records.iter().map(|(key, value)| {
            producer.send(
                FutureRecord::to(topic).key(key).payload(value),
                Duration::from_secs(30),
            )
        });
        for sent in futures_util::future::join_all(sends).await {
            sent.expect("write an integration");
        }
    }
    // Every service that reads integrations must hold them all before the first event.
    let readers: Vec<&ServiceProcess> = deployment
        .batchers
        .iter()
        .chain(&deployment.uploaders)
        .collect();
    integration_tests::wait_for(
        "every service to read every integration",
        Duration::from_secs(300),
        || async {
            for reader in &readers {
                let read = metric_value(&reader.metrics().await, RECORDS_READ).unwrap_or(0.0);
                if read < settings.tenants as f64 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// An object the uploaders stored, as its delivery record tells.
#[derive(Debug, Clone, Copy)]
struct Stored {
    events: u64,
    lag_ms: i64,
}

/// Follows the deliveries topic on a thread of its own: keeps every stored object, and counts
/// every other outcome by its error code.
struct DeliveryFollower {
    stored: Arc<Mutex<Vec<Stored>>>,
    others: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeliveryFollower {
    fn start(brokers: &str, topic: &str) -> Self {
        let consumer: BaseConsumer = KafkaArgs::new(brokers.to_owned())
            .client_config(&[("group.id", "pipeline-load-bench")])
            .create()
            .expect("deliveries consumer");
        common::read_to_end::assign_from_beginning(&consumer, topic, Duration::from_secs(10))
            .expect("the deliveries topic");
        let stored: Arc<Mutex<Vec<Stored>>> = Arc::default();
        let others: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let thread = std::thread::spawn({
            let (stored, others, stop) = (stored.clone(), others.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let message = message.expect("read a delivery record");
                    let record: DeliveryRecord =
                        serde_json::from_slice(message.payload().unwrap_or_default())
                            .expect("a delivery record");
                    if record.outcome == Outcome::Stored {
                        stored.lock().expect("stored objects").push(Stored {
                            events: record.event_count,
                            lag_ms: record.at_ms - record.window_end_ms,
                        });
                    } else {
                        let code = record.error_code.as_deref().unwrap_or("-");
                        *others
                            .lock()
                            .expect("other outcomes")
                            .entry(format!("{} ({code})", record.outcome.as_str()))
                            .or_default() += 1;
                    }
                }
            }
        });
        Self {
            stored,
            others,
            stop,
            thread: Some(thread),
        }
    }

    /// Outcomes other than stored so far, e.g. `retried (SlowDown): 3`.
    fn other_outcomes(&self) -> String {
        let others = self.others.lock().expect("other outcomes");
        if others.is_empty() {
            return "none".into();
        }
        others
            .iter()
            .map(|(outcome, n)| format!("{outcome}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Objects stored so far, and the events in them.
    fn totals(&self) -> (usize, u64) {
        let stored = self.stored.lock().expect("stored objects");
        (stored.len(), stored.iter().map(|s| s.events).sum())
    }

    /// Objects stored after the first `from`.
    fn since(&self, from: usize) -> Vec<Stored> {
        self.stored.lock().expect("stored objects")[from..].to_vec()
    }

    /// Waits until the objects stored hold `events` events; gives up once `settle` has passed
    /// and nothing new was stored for `quiet`, or at `deadline`. Returns how many events are
    /// still missing.
    async fn wait_for_events(&self, events: u64, settle: Duration, deadline: Duration) -> u64 {
        let started = Instant::now();
        let quiet = Duration::from_secs(60);
        let (mut seen, mut last_progress) = (0, Instant::now());
        loop {
            let delivered = self.totals().1;
            if delivered >= events {
                return 0;
            }
            if delivered != seen {
                (seen, last_progress) = (delivered, Instant::now());
            }
            let stalled = started.elapsed() >= settle && last_progress.elapsed() >= quiet;
            if stalled || started.elapsed() >= deadline {
                return events - delivered;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for DeliveryFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What one step of load got from ingest.
#[derive(Default)]
struct Load {
    acknowledged: u64,
    refused: u64,
    latencies: Vec<Duration>,
}

/// How requests are sent.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// At this many events/s for this long.
    Rate(u64, Duration),
    /// This many events, as fast as ingest answers (`IN_FLIGHT` requests at a time).
    Burst(u64),
}

/// Posts `batch`-event requests to ingest at `pace`, each event for a tenant drawn at random;
/// request ids carry `step` so every event id is unique.
async fn drive(url: &str, settings: &Settings, pace: Pace, step: usize, rng: &mut StdRng) -> Load {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut ticker = match pace {
        Pace::Rate(rate, _) => {
            let period = Duration::from_secs_f64(settings.batch as f64 / rate as f64);
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Some(ticker)
        }
        Pace::Burst(_) => None,
    };
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let load = Arc::new(Mutex::new(Load::default()));
    let started = Instant::now();
    let more = |requests: usize| match pace {
        Pace::Rate(_, duration) => started.elapsed() < duration,
        Pace::Burst(events) => ((requests * settings.batch) as u64) < events,
    };
    let mut request = 0_usize;
    while more(request) {
        if let Some(ticker) = &mut ticker {
            ticker.tick().await;
        }
        let slot = slots.clone().acquire_owned().await.expect("slots");
        let body = ndjson((0..settings.batch).map(|i| {
            (
                tenant(rng.random_range(0..settings.tenants)),
                format!("s{step}-r{request}-e{i}"),
            )
        }));
        request += 1;
        let (http, url, load) = (http.clone(), url.to_owned(), load.clone());
        let events = settings.batch as u64;
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = post_events(&http, &url, body).await;
            let latency = started.elapsed();
            let mut load = load.lock().expect("load");
            if answer.is_ok_and(|a| a.status() == reqwest::StatusCode::ACCEPTED) {
                load.acknowledged += events;
                load.latencies.push(latency);
            } else {
                load.refused += events;
            }
            drop(slot);
        });
    }
    // Every request sent is answered before the step ends.
    let _all = slots.acquire_many(IN_FLIGHT as u32).await.expect("slots");
    std::mem::take(&mut *load.lock().expect("load"))
}

/// CPU seconds and peak RSS of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_seconds: f64,
    peak_rss_kib: u64,
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn usage(pid: u32, ticks: f64) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces; utime and
    // stime are fields 14 and 15 of the whole line.
    let fields: Vec<&str> = stat
        .rfind(')')
        .map(|end| stat[end + 1..].split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> f64 {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Usage {
        cpu_seconds: (field(14) + field(15)) / ticks,
        peak_rss_kib,
    }
}

/// The processes measured: the three services, the local servers they use, and this bench.
fn measured(deployment: &Deployment) -> Vec<(&'static str, Vec<u32>)> {
    let state = std::env::var("ACTIVITY_SERVICES_STATE")
        .unwrap_or_else(|_| "/var/lib/activity-logs".into());
    let pid_file = |name: &str| -> Vec<u32> {
        std::fs::read_to_string(format!("{state}/{name}.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .into_iter()
            .collect()
    };
    let rabbitmq: Vec<u32> = std::process::Command::new("pgrep")
        .args(["-x", "beam.smp"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    vec![
        ("ingest", vec![deployment.ingest.pid()]),
        (
            "batcher",
            deployment
                .batchers
                .iter()
                .map(ServiceProcess::pid)
                .collect(),
        ),
        (
            "uploaders",
            deployment
                .uploaders
                .iter()
                .map(ServiceProcess::pid)
                .collect(),
        ),
        ("broker (Kafka)", pid_file("kafka")),
        ("S3/STS (moto)", pid_file("moto")),
        ("RabbitMQ", rabbitmq),
        ("load generator", vec![std::process::id()]),
    ]
}

/// Per measured process: CPU seconds summed over its processes, and the largest peak RSS.
fn snapshot(processes: &[(&'static str, Vec<u32>)], ticks: f64) -> Vec<Usage> {
    processes
        .iter()
        .map(|(_, pids)| {
            pids.iter()
                .map(|&pid| usage(pid, ticks))
                .fold(Usage::default(), |sum, u| Usage {
                    cpu_seconds: sum.cpu_seconds + u.cpu_seconds,
                    peak_rss_kib: sum.peak_rss_kib.max(u.peak_rss_kib),
                })
        })
        .collect()
}

fn seconds(ms: Option<i64>) -> String {
    ms.map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
}

fn millis(latency: Option<Duration>) -> String {
    latency.map_or("-".into(), |l| {
        format!("{:.0} ms", l.as_secs_f64() * 1000.0)
    })
}

#[tokio::main]
async fn main() {
    let settings = Settings::from_env();
    let ticks = clock_ticks();
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let mut buckets = Vec::new();
    for _ in 0..settings.buckets.min(settings.tenants) {
        buckets.push(integration_tests::fixtures::new_bucket(&s3).await);
    }
    let mut shape = Shape::new(1, settings.uploaders);
    shape.window = settings.window;
    shape.close_delay = settings.close_delay;
    shape.partitions = settings.partitions;
    let deployment = Deployment::launch(&moto_endpoint(), shape).await;
    let started = Instant::now();
    connect_tenants(&deployment, &settings, &buckets).await;
    println!(
        "{} tenants connected in {:.1} s ({} buckets, {} uploader(s), window {:?}, close delay {:?}, {} events per request)",
        settings.tenants,
        started.elapsed().as_secs_f64(),
        buckets.len(),
        settings.uploaders,
        settings.window,
        settings.close_delay,
        settings.batch
    );
    let follower = DeliveryFollower::start(
        &deployment.plan.shape.brokers,
        &deployment.plan.topics.deliveries,
    );
    let processes = measured(&deployment);
    let url = deployment.ingest.url("/v1/events");
    let mut rng = StdRng::seed_from_u64(27);
    // A step's last window closes within `settle`; its uploads get until the deadline, unless
    // nothing is stored for a minute (what is still missing then stays missing).
    let settle = settings.window + settings.close_delay;
    let drain_deadline = settle + Duration::from_secs(300);

    // Warm-up, not measured: every tenant's first object, so every role is assumed once.
    let warm_up = Instant::now();
    let mut acknowledged = 0_u64;
    let http = reqwest::Client::new();
    for chunk in (0..settings.tenants)
        .collect::<Vec<_>>()
        .chunks(settings.batch)
    {
        let body = ndjson(chunk.iter().map(|&n| (tenant(n), format!("warm-up-{n}"))));
        let answer = post_events(&http, &url, body)
            .await
            .expect("a warm-up request");
        assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED, "warm-up");
        acknowledged += chunk.len() as u64;
    }
    let missing = follower
        .wait_for_events(acknowledged, settle, drain_deadline)
        .await;
    assert_eq!(missing, 0, "warm-up events not delivered");
    let assume_role_calls: f64 =
        futures_util::future::join_all(deployment.uploaders.iter().map(|u| u.metrics()))
            .await
            .iter()
            .filter_map(|m| metric_value(m, uploader::metrics::ASSUME_ROLE_CALLS))
            .sum();
    println!(
        "warm-up: one event per tenant delivered in {:.1} s ({assume_role_calls} AssumeRole calls; outcomes other than stored: {})",
        warm_up.elapsed().as_secs_f64(),
        follower.other_outcomes()
    );
    println!(
        "series exported with every tenant delivered to: {}\n",
        series_counts(&deployment).await
    );

    if let Some(events) = settings.burst {
        // Idle first: what each process burns with nothing flowing, subtracted from the burst
        // over the burst's whole time (sending, closing the last windows, delivering).
        let before_idle = snapshot(&processes, ticks);
        tokio::time::sleep(settings.idle).await;
        let idle_per_second: Vec<f64> = before_idle
            .iter()
            .zip(&snapshot(&processes, ticks))
            .map(|(b, a)| (a.cpu_seconds - b.cpu_seconds) / settings.idle.as_secs_f64())
            .collect();
        let before = snapshot(&processes, ticks);
        let started = Instant::now();
        let load = drive(&url, &settings, Pace::Burst(events), 0, &mut rng).await;
        let sending = started.elapsed();
        acknowledged += load.acknowledged;
        let missing = follower
            .wait_for_events(acknowledged, settle, drain_deadline)
            .await;
        let elapsed = started.elapsed();
        let after = snapshot(&processes, ticks);
        println!(
            "burst: {} events acknowledged in {:.1} s ({:.0} events/s, {} refused), all delivered after {:.1} s{}",
            load.acknowledged,
            sending.as_secs_f64(),
            load.acknowledged as f64 / sending.as_secs_f64(),
            load.refused,
            elapsed.as_secs_f64(),
            if missing == 0 {
                String::new()
            } else {
                format!(", **{missing} events short**")
            }
        );
        println!(
            "\n| process | CPU s per 1,000 events, net of idle | µs per event | idle CPU ms per s | CPU s in the burst | peak RSS MiB |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        let thousands = load.acknowledged as f64 / 1000.0;
        for (((name, _), idle), (b, a)) in processes
            .iter()
            .zip(&idle_per_second)
            .zip(before.iter().zip(&after))
        {
            let spent = a.cpu_seconds - b.cpu_seconds;
            let net = (spent - idle * elapsed.as_secs_f64()).max(0.0) / thousands;
            println!(
                "| {name} | {net:.4} | {:.2} | {:.1} | {spent:.2} | {:.0} |",
                net * 1000.0,
                idle * 1000.0,
                a.peak_rss_kib as f64 / 1024.0
            );
        }
        println!(
            "\nseries exported at the end: {}",
            series_counts(&deployment).await
        );
        drop(follower);
        deployment.stop().await;
        return;
    }

    let mut rows = Vec::new();
    let mut resources = Vec::new();
    let mut short = 0_u64;
    for (step, &rate) in settings.rates.iter().enumerate() {
        let (objects_before, _) = follower.totals();
        let before = snapshot(&processes, ticks);
        let step_started = Instant::now();
        let mut load = drive(
            &url,
            &settings,
            Pace::Rate(rate, settings.step),
            step,
            &mut rng,
        )
        .await;
        let sending = step_started.elapsed();
        acknowledged += load.acknowledged;
        // Events missing after an earlier step are not waited for again.
        let missing = follower
            .wait_for_events(acknowledged - short, settle, drain_deadline)
            .await;
        short += missing;
        let after = snapshot(&processes, ticks);
        let mut lags: Vec<i64> = follower
            .since(objects_before)
            .iter()
            .map(|s| s.lag_ms)
            .collect();
        lags.sort_unstable();
        load.latencies.sort_unstable();
        let achieved = load.acknowledged as f64 / sending.as_secs_f64();
        rows.push(format!(
            "| {} | {rate} | {achieved:.0} | {} | {} | {} | {} | {} | {} | {} |",
            settings.tenants,
            load.refused,
            millis(percentile(&load.latencies, 0.5)),
            millis(percentile(&load.latencies, 0.99)),
            lags.len(),
            seconds(percentile(&lags, 0.5)),
            seconds(percentile(&lags, 0.99)),
            if missing == 0 {
                "yes".to_owned()
            } else {
                format!("**{missing} events short**")
            },
        ));
        let thousands = load.acknowledged as f64 / 1000.0;
        let cpu: Vec<String> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| format!("{:.4}", (a.cpu_seconds - b.cpu_seconds) / thousands))
            .collect();
        let rss: Vec<String> = after
            .iter()
            .map(|a| format!("{:.0}", a.peak_rss_kib as f64 / 1024.0))
            .collect();
        resources.push(format!(
            "| {} | {rate} | {} | {} |",
            settings.tenants,
            cpu.join(" | "),
            rss.join(" | ")
        ));
        println!(
            "{}\n  outcomes other than stored so far: {}",
            rows.last().expect("a row"),
            follower.other_outcomes()
        );
    }

    println!(
        "\n| tenants | asked events/s | acknowledged events/s | refused | request p50 | request p99 | objects | lag p50 | lag p99 | delivered |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for row in &rows {
        println!("{row}");
    }
    let names: Vec<&str> = processes.iter().map(|(name, _)| *name).collect();
    println!(
        "\nCPU seconds per 1,000 events, then peak RSS in MiB, per process:\n\n| tenants | asked events/s | {} | {} |",
        names.join(" | "),
        names
            .iter()
            .map(|n| format!("{n} MiB"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("| ---: | ---: |{}", " ---: |".repeat(names.len() * 2));
    for row in &resources {
        println!("{row}");
    }
    println!(
        "\nseries exported at the end: {}",
        series_counts(&deployment).await
    );
    drop(follower);
    deployment.stop().await;
}

/// The number of series each service's `/metrics` exposes (every sample line, histogram buckets
/// included): what Prometheus stores per scrape. No metric carries a tenant label, so this must
/// not grow with the tenants connected.
async fn series_counts(deployment: &Deployment) -> String {
    let services = std::iter::once(("ingest", &deployment.ingest))
        .chain(deployment.batchers.iter().map(|b| ("batcher", b)))
        .chain(deployment.uploaders.iter().map(|u| ("uploader", u)));
    let mut counts = Vec::new();
    for (name, service) in services {
        let exposed = service.metrics().await;
        let series = exposed
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .count();
        counts.push(format!("{name} {series}"));
    }
    counts.join(", ")
}
