//! A batcher SIGKILLed and restarted at each point around a window close publishes exactly the
//! objects an uninterrupted batcher publishes over the same records: same keys, same bytes, no
//! event missing, none in two objects (DESIGN §3). RabbitMQ is made to withhold confirms for one
//! of the points, so this test has its own binary.
//!
//! Record timestamps are set half an hour ahead, so every window closes by the records' own
//! time (replayable), never by the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::clock::now_unix_ms;
use integration_tests::batching::{BatcherSetup, EventsTopic, PublishedJob, jobs_until_events};
use integration_tests::fixtures::{IntegrationsTopic, confirm_channel, delete_topology};
use integration_tests::process::{ServiceProcess, labelled_metric_value, metric_sum};
use integration_tests::services::rabbitmqctl;
use integration_tests::wait_for;

const WINDOW_MS: i64 = 10_000;
const WINDOW: &str = "10s";
const CLOSE_DELAY: &str = "2s";
/// Small objects, so a window is cut by size.
const MAX_OBJECT_BYTES: &str = "4096";
const PARTITIONS: usize = 2;

/// The records written so far, and the events that must be delivered.
struct Log {
    topic: EventsTopic,
    base: i64,
    written: [i64; PARTITIONS],
    delivered: BTreeSet<String>,
}

impl Log {
    /// A fresh events topic whose timestamps start half an hour ahead, and `tenants` connected
    /// long ago.
    async fn create(tenants: &[&str]) -> (IntegrationsTopic, Self) {
        let integrations = IntegrationsTopic::create().await;
        for tenant in tenants {
            integrations
                .connect(tenant, &format!("{tenant}-bucket"))
                .await;
        }
        let topic = EventsTopic::create(i32::try_from(PARTITIONS).expect("partitions")).await;
        let log = Self {
            topic,
            base: (now_unix_ms() + 30 * 60_000) / WINDOW_MS * WINDOW_MS,
            written: [0; PARTITIONS],
            delivered: BTreeSet::new(),
        };
        (integrations, log)
    }

    /// Writes event `id` of `tenant` at `base + at_ms` and returns its offset; tenant `nobody`
    /// has no integration and only moves time on.
    async fn write(
        &mut self,
        partition: usize,
        tenant: &str,
        id: &str,
        at_ms: i64,
        pad: usize,
    ) -> i64 {
        let partition_id = i32::try_from(partition).expect("partition");
        self.topic
            .send(partition_id, tenant, id, self.base + at_ms, pad)
            .await;
        self.written[partition] += 1;
        if tenant != "nobody" {
            self.delivered.insert(id.to_owned());
        }
        self.written[partition] - 1
    }
}

fn spawn(setup: &BatcherSetup, extra: &[&str]) -> ServiceProcess {
    let mut args = vec!["--max-object-bytes", MAX_OBJECT_BYTES];
    args.extend_from_slice(extra);
    setup.spawn(WINDOW, CLOSE_DELAY, &args)
}

/// Waits until `batcher` has read everything written.
async fn consumed(batcher: &ServiceProcess, log: &Log) {
    wait_for(
        "the batcher to read every record",
        Duration::from_secs(60),
        || async {
            let metrics = batcher.try_metrics().await?;
            let done = (0..PARTITIONS).all(|p| {
                labelled_metric_value(
                    &metrics,
                    "activity_batcher_next_offset",
                    &format!("partition=\"{p}\""),
                )
                .is_some_and(|next| next >= log.written[p] as f64)
            });
            done.then_some(())
        },
    )
    .await;
}

/// Waits until the checkpoint of `partition` commits at `offset` or later.
async fn committed(setup: &BatcherSetup, events: &str, partition: usize, offset: i64) {
    let key = format!("{}/{events}/{partition}", setup.group);
    integration_tests::kafka::read_until(
        &integration_tests::kafka::brokers(),
        &setup.checkpoints,
        Duration::from_secs(60),
        move |records| {
            records.iter().any(|r| {
                r.key == key
                    && serde_json::from_str::<serde_json::Value>(&r.value)
                        .ok()
                        .and_then(|v| v["commit_offset"].as_i64())
                        .is_some_and(|committed| committed >= offset)
            })
        },
    )
    .await;
}

/// Waits until every part `batcher` closed is confirmed.
async fn all_confirmed(batcher: &ServiceProcess) {
    wait_for(
        "every closed part confirmed",
        Duration::from_secs(60),
        || async {
            let metrics = batcher.try_metrics().await?;
            let closed = metric_sum(&metrics, "activity_batcher_parts_closed_total");
            let published = metric_sum(&metrics, "activity_batcher_published_parts_total");
            (closed > 0.0 && published >= closed).then_some(())
        },
    )
    .await;
}

/// Raises RabbitMQ's memory alarm, which blocks every publisher (no confirms), until dropped.
struct PublishersBlocked;

impl PublishersBlocked {
    fn new() -> Self {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.00001"]);
        Self
    }
}

impl Drop for PublishersBlocked {
    fn drop(&mut self) {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

fn event_owners(jobs: &BTreeMap<String, PublishedJob>) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for (key, job) in jobs {
        for id in job.event_ids() {
            if let Some(other) = owners.insert(id.clone(), key.clone()) {
                assert_eq!(&other, key, "event {id} is in two objects");
            }
        }
    }
    owners
}

/// The objects an uninterrupted batcher makes of the whole log: the reference every
/// interrupted run is compared with. Checks that they hold every event that must be delivered.
async fn uninterrupted_run(
    log: &Log,
    integrations: &IntegrationsTopic,
    channel: &lapin::Channel,
) -> BTreeMap<String, PublishedJob> {
    let uninterrupted = BatcherSetup::new(&log.topic, integrations).with_future_tolerance("1h");
    uninterrupted
        .topology
        .declare(channel)
        .await
        .expect("declare");
    let reference = spawn(&uninterrupted, &[]);
    let expected = jobs_until_events(
        channel,
        &uninterrupted.topology.queue,
        log.delivered.len(),
        Duration::from_secs(60),
    )
    .await;
    drop(reference);
    delete_topology(channel, &uninterrupted.topology).await;
    assert_eq!(
        event_owners(&expected)
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        log.delivered,
        "the uninterrupted run delivers every event"
    );
    expected
}

/// The interrupted run made the reference's objects: the same keys, each event in the same
/// object, the same bytes.
fn assert_same_objects(
    interrupted: &BTreeMap<String, PublishedJob>,
    expected: &BTreeMap<String, PublishedJob>,
) {
    assert_eq!(
        event_owners(interrupted),
        event_owners(expected),
        "every event in the same object"
    );
    assert_eq!(
        interrupted.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (key, job) in expected {
        assert_eq!(interrupted[key].body, job.body, "{key}: the same bytes");
    }
}

#[tokio::test]
async fn a_batcher_killed_anywhere_around_a_close_publishes_what_an_uninterrupted_one_does() {
    let (integrations, mut log) = Log::create(&["acme", "globex", "initech"]).await;
    let killed = BatcherSetup::new(&log.topic, &integrations).with_future_tolerance("1h");
    let (_connection, channel) = confirm_channel("batcher-restart-test").await;
    killed.topology.declare(&channel).await.expect("declare");

    // Mid-window: window 0 open on both partitions; a repeated id in one part.
    let batcher = spawn(&killed, &[]);
    batcher.ready().await;
    for n in 0..5 {
        log.write(0, "acme", &format!("a{n}"), 1_000 + n, 300).await;
    }
    for id in ["g1", "g2", "g2", "g3"] {
        log.write(0, "globex", id, 1_500, 10).await;
    }
    for n in 0..3 {
        log.write(1, "initech", &format!("i{n}"), 1_000 + n, 10)
            .await;
    }
    consumed(&batcher, &log).await;
    drop(batcher);

    // After size cuts, before window 0 closes.
    let batcher = spawn(&killed, &[]);
    for n in 5..20 {
        log.write(0, "acme", &format!("a{n}"), 3_000 + n, 300).await;
    }
    consumed(&batcher, &log).await;
    drop(batcher);

    // In the close delay: window 1 has begun, stragglers of window 0 still arrive.
    let batcher = spawn(&killed, &[]);
    let window_1_starts = log.write(0, "globex", "g10", WINDOW_MS + 1_000, 10).await;
    log.write(0, "acme", "a21", 9_000, 300).await;
    log.write(1, "initech", "i10", WINDOW_MS + 500, 10).await;
    log.write(1, "initech", "i11", 8_000, 10).await;
    consumed(&batcher, &log).await;
    drop(batcher);

    // Window 0 closes while RabbitMQ withholds confirms.
    let batcher = spawn(&killed, &[]);
    batcher.ready().await;
    {
        let _blocked = PublishersBlocked::new();
        log.write(0, "globex", "g11", WINDOW_MS + 3_000, 10).await;
        log.write(1, "initech", "i12", WINDOW_MS + 2_500, 10).await;
        consumed(&batcher, &log).await;
        drop(batcher);
    }

    // Window 0 closed, confirmed and committed: the commit point is window 1's first record,
    // and window 0's straggler a21 lies after it. Only the checkpoint says that window 0 is
    // closed and a21 is already in one of its objects.
    let batcher = spawn(&killed, &[]);
    consumed(&batcher, &log).await;
    all_confirmed(&batcher).await;
    let events_topic = log.topic.name.clone();
    committed(&killed, &events_topic, 0, window_1_starts).await;
    drop(batcher);

    // Window 1 closes and is confirmed, but no offset is committed.
    let batcher = spawn(&killed, &["--commit-interval", "1h"]);
    log.write(0, "acme", "a30", 2 * WINDOW_MS + 100, 300).await;
    log.write(0, "globex", "g20", 2 * WINDOW_MS + 3_000, 10)
        .await;
    log.write(1, "initech", "i20", 2 * WINDOW_MS + 3_000, 10)
        .await;
    consumed(&batcher, &log).await;
    all_confirmed(&batcher).await;
    drop(batcher);

    // Late parts of windows 0 and 1 open.
    let batcher = spawn(&killed, &[]);
    log.write(0, "acme", "a40", 5_000, 300).await;
    log.write(0, "globex", "g30", WINDOW_MS + 5_000, 10).await;
    log.write(1, "initech", "i30", WINDOW_MS + 7_000, 10).await;
    consumed(&batcher, &log).await;
    drop(batcher);

    // Time moves past window 3 everywhere; everything so far closes.
    let batcher = spawn(&killed, &[]);
    log.write(0, "nobody", "n0", 5 * WINDOW_MS, 10).await;
    log.write(1, "nobody", "n1", 5 * WINDOW_MS, 10).await;
    let events = log.delivered.len();
    let after_kills = jobs_until_events(
        &channel,
        &killed.topology.queue,
        events,
        Duration::from_secs(60),
    )
    .await;
    drop(batcher);

    let expected = uninterrupted_run(&log, &integrations, &channel).await;
    assert_same_objects(&after_kills, &expected);
    let cut = expected
        .values()
        .filter(|j| j.job.tenant_id.as_str() == "acme" && j.job.window_start_ms == log.base)
        .count();
    assert!(
        cut >= 3,
        "window 0 of acme was cut by size and has a late part: {cut} objects"
    );
    delete_topology(&channel, &killed.topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batcher_stopped_by_sigterm_while_reading_publishes_what_an_uninterrupted_one_does() {
    let (integrations, mut log) = Log::create(&["acme", "globex"]).await;
    let stopped = BatcherSetup::new(&log.topic, &integrations).with_future_tolerance("1h");
    let (_connection, channel) = confirm_channel("batcher-sigterm-test").await;
    stopped.topology.declare(&channel).await.expect("declare");

    // Each round writes a burst that spans a window close and stops the batcher with SIGTERM
    // while it is still reading it; the next round's batcher takes over from what was committed.
    let rounds: i64 = 4;
    for round in 0..rounds {
        let mut batcher = spawn(&stopped, &[]);
        batcher.ready().await;
        for n in 0..40 {
            let (partition, tenant) = if n % 2 == 0 {
                (0, "acme")
            } else {
                (1, "globex")
            };
            let at = round * WINDOW_MS + WINDOW_MS / 2 + n * (WINDOW_MS / 40);
            log.write(partition, tenant, &format!("r{round}-{n}"), at, 200)
                .await;
        }
        assert_eq!(
            batcher.terminate(Duration::from_secs(30)).await,
            Some(0),
            "round {round}: a clean exit"
        );
    }
    let batcher = spawn(&stopped, &[]);
    log.write(0, "nobody", "n0", (rounds + 3) * WINDOW_MS, 10)
        .await;
    log.write(1, "nobody", "n1", (rounds + 3) * WINDOW_MS, 10)
        .await;
    let events = log.delivered.len();
    let after_stops = jobs_until_events(
        &channel,
        &stopped.topology.queue,
        events,
        Duration::from_secs(60),
    )
    .await;
    drop(batcher);

    let expected = uninterrupted_run(&log, &integrations, &channel).await;
    assert_same_objects(&after_stops, &expected);
    delete_topology(&channel, &stopped.topology).await;
}

/// Runs the batcher with `extra` flags until it exits by itself (within 60 s); returns its exit
/// code and what it wrote to stderr.
fn run_to_exit(setup: &BatcherSetup, window: &str, extra: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(integration_tests::process::binary("batcher"))
        .args(["--listen", "127.0.0.1:0"])
        .args(setup.flags(window, CLOSE_DELAY))
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the batcher");
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() >= give_up {
            let _ = child.kill();
            panic!("the batcher did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    (status.code(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batcher_with_other_object_settings_than_its_checkpoints_refuses_to_start_unless_told() {
    let (integrations, mut log) = Log::create(&["acme"]).await;
    let setup = BatcherSetup::new(&log.topic, &integrations).with_future_tolerance("1h");
    let (_connection, channel) = confirm_channel("batcher-settings-test").await;
    setup.topology.declare(&channel).await.expect("declare");
    let mut first = spawn(&setup, &[]);
    first.ready().await;
    let offset = log.write(0, "acme", "a1", 1_000, 10).await;
    committed(&setup, &log.topic.name, 0, offset).await;
    assert_eq!(first.terminate(Duration::from_secs(30)).await, Some(0));

    let setup_for_exit = setup.clone();
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        run_to_exit(
            &setup_for_exit,
            "20s",
            &["--max-object-bytes", MAX_OBJECT_BYTES],
        )
    })
    .await
    .expect("run");
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("window (ACTIVITY_BATCHER_WINDOW, ms): 10000 → 20000"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-settings-change"), "{stderr}");

    let allowed = setup.spawn(
        "20s",
        CLOSE_DELAY,
        &[
            "--max-object-bytes",
            MAX_OBJECT_BYTES,
            "--allow-settings-change",
        ],
    );
    allowed.ready().await;
    drop(allowed);
    delete_topology(&channel, &setup.topology).await;
}
