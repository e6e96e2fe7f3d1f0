//! The batcher as a process on the real broker and RabbitMQ: closed windows become upload jobs
//! holding every delivered event once, under the key layout of DESIGN §2; replay rebuilds the
//! live objects; two batchers share the partitions and hand them over; parts fit RabbitMQ's
//! messages; a record stamped far ahead and a crash after a clock close change no object.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::clock::now_unix_ms;
use common::key::Codec;
use integration_tests::batching::{
    BatcherSetup, EventsTopic, PublishedJob, jobs_until_events, partitions_read, take_jobs,
};
use integration_tests::fixtures::{
    IntegrationsTopic, confirm_channel, delete_topology, integration_json,
};
use integration_tests::process::ServiceProcess;
use integration_tests::wait_for;

#[tokio::test]
async fn closed_windows_become_jobs_with_every_delivered_event_once() {
    let events = EventsTopic::create(2).await;
    let integrations = IntegrationsTopic::create().await;
    integrations.connect("acme", "acme-bucket").await;
    let zstd = integration_json("globex", "globex-bucket").replace("\"none\"", "\"zstd\"");
    integrations.write("globex", Some(&zstd)).await;
    let setup = BatcherSetup::new(&events, &integrations);
    let (_connection, channel) = confirm_channel("batcher-test").await;
    setup.topology.declare(&channel).await.expect("declare");

    let batcher = setup.spawn("2s", "500ms", &[]);
    batcher.ready().await;
    let now = now_unix_ms();
    for n in 0..20 {
        events.send(0, "acme", &format!("a{n}"), now + n, 10).await;
        events
            .send(1, "globex", &format!("g{n}"), now + n, 10)
            .await;
        events
            .send(0, "nobody", &format!("x{n}"), now + n, 10)
            .await;
    }
    // Idle partitions close by the clock once the window's end plus the delay has passed.
    let jobs =
        jobs_until_events(&channel, &setup.topology.queue, 40, Duration::from_secs(60)).await;

    let mut seen = BTreeSet::new();
    for published in jobs.values() {
        let job = &published.job;
        let ids = published.event_ids();
        assert_eq!(ids.len() as u64, job.event_count);
        for id in &ids {
            assert!(seen.insert(id.clone()), "event {id} is in two objects");
        }
        let (tenant, partition, codec) = match job.tenant_id.as_str() {
            "acme" => ("acme", 0, Codec::None),
            "globex" => ("globex", 1, Codec::Zstd),
            other => panic!("a job for {other}, who has no integration"),
        };
        assert_eq!(job.partition, partition);
        assert_eq!(job.codec, codec);
        assert!(
            job.relative_key.starts_with(&format!("{tenant}/2026/"))
                && job.relative_key.ends_with(&format!(
                    "_{partition}-{}.{}",
                    job.first_offset,
                    codec.extension()
                )),
            "{}",
            job.relative_key
        );
        assert_eq!(job.window_end_ms - job.window_start_ms, 2_000);
        assert_eq!(job.window_start_ms % 2_000, 0, "windows align to the epoch");
    }
    assert_eq!(seen.len(), 40);
    assert!(take_jobs(&channel, &setup.topology.queue).await.is_empty());
    drop(batcher);
    delete_topology(&channel, &setup.topology).await;
}

/// Writes windows 0 to 2 for two tenants on two partitions (timestamps half an hour ahead, so
/// only records close windows), and records of a tenant without integration that close them.
async fn three_windows(events: &EventsTopic, base: i64) -> usize {
    let mut written = 0;
    for window in 0..3 {
        for n in 0..6 {
            let at = base + window * 10_000 + 1_000 + n * 500;
            events
                .send(0, "acme", &format!("a{window}-{n}"), at, 200)
                .await;
            events
                .send(1, "globex", &format!("g{window}-{n}"), at, 50)
                .await;
            written += 2;
        }
    }
    for partition in 0..2 {
        events
            .send(partition, "nobody", "closer", base + 50_000, 10)
            .await;
    }
    written
}

/// Runs `batcher replay` for `setup` with `range` flags and returns what it printed.
fn replay(setup: &BatcherSetup, range: &[&str]) -> String {
    // The service's settings (the same ACTIVITY_* variables) come before the command.
    let output = std::process::Command::new(integration_tests::process::binary("batcher"))
        .args(setup.flags("10s", "2s"))
        .arg("replay")
        .args(range)
        .env("ACTIVITY_LOG", "warn")
        .output()
        .expect("run batcher replay");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "replay failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn replay_rebuilds_the_live_objects_of_its_range_and_twice_is_the_same() {
    let events = EventsTopic::create(2).await;
    let integrations = IntegrationsTopic::create().await;
    integrations.connect("acme", "acme-bucket").await;
    integrations.connect("globex", "globex-bucket").await;
    let base = (now_unix_ms() + 30 * 60_000) / 10_000 * 10_000;
    let written = three_windows(&events, base).await;
    let live = BatcherSetup::new(&events, &integrations).with_future_tolerance("1h");
    let (_connection, channel) = confirm_channel("batcher-replay-test").await;
    live.topology.declare(&channel).await.expect("declare");
    let batcher = live.spawn("10s", "2s", &[]);
    let live_jobs = jobs_until_events(
        &channel,
        &live.topology.queue,
        written,
        Duration::from_secs(60),
    )
    .await;
    drop(batcher);

    let replays = BatcherSetup::new(&events, &integrations).with_future_tolerance("1h");
    replays.topology.declare(&channel).await.expect("declare");
    // From inside window 1 to the end of window 2: windows 1 and 2, whole.
    let range = [
        "--from",
        &common::clock::rfc3339_ms(base + 14_000),
        "--to",
        &common::clock::rfc3339_ms(base + 30_000),
    ];
    let printed = replay(&replays, &range);
    assert!(
        printed.contains("partition 0: offsets 6 to"),
        "the plan is printed: {printed}"
    );
    assert!(
        printed.contains("object(s) enqueued and confirmed"),
        "{printed}"
    );
    let first = take_jobs(&channel, &replays.topology.queue).await;
    let expected: Vec<_> = live_jobs
        .values()
        .filter(|j| j.job.window_start_ms >= base + 10_000)
        .collect();
    assert_eq!(first.len(), expected.len(), "{printed}");
    for job in &first {
        let live = &live_jobs[&job.job.relative_key];
        assert_eq!(
            job.body, live.body,
            "{}: the live bytes",
            job.job.relative_key
        );
        assert_eq!(job.job.first_offset, live.job.first_offset);
    }
    replay(&replays, &range);
    let second = take_jobs(&channel, &replays.topology.queue).await;
    let keys = |jobs: &[integration_tests::batching::PublishedJob]| {
        jobs.iter()
            .map(|j| (j.job.relative_key.clone(), j.body.clone()))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        keys(&first),
        keys(&second),
        "a second replay publishes the same jobs"
    );

    let mut only_acme = range.to_vec();
    only_acme.extend(["--tenant", "acme"]);
    replay(&replays, &only_acme);
    let acme = take_jobs(&channel, &replays.topology.queue).await;
    assert!(!acme.is_empty());
    assert!(acme.iter().all(|j| j.job.tenant_id.as_str() == "acme"));
    assert_eq!(
        keys(&acme),
        keys(&first)
            .into_iter()
            .filter(|(k, _)| k.starts_with("acme/"))
            .collect(),
        "the tenant's objects, the same as in the full replay"
    );
    delete_topology(&channel, &live.topology).await;
    delete_topology(&channel, &replays.topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reaching_the_present_stops_at_the_end_it_planned_while_events_keep_arriving() {
    let events = std::sync::Arc::new(EventsTopic::create(2).await);
    let integrations = IntegrationsTopic::create().await;
    integrations.connect("acme", "acme-bucket").await;
    // Events keep arriving every 100 ms, on both partitions, while the replay runs.
    let arriving = tokio_util::sync::CancellationToken::new();
    let producer = tokio::spawn({
        let (events, arriving) = (events.clone(), arriving.clone());
        async move {
            let mut sent = 0_u64;
            while !arriving.is_cancelled() {
                let partition = i32::from(sent % 2 == 1);
                events
                    .send(partition, "acme", &format!("e{sent}"), now_unix_ms(), 50)
                    .await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent
        }
    });
    wait_for("events to arrive", Duration::from_secs(30), || async {
        integration_tests::kafka::read_all(
            &integration_tests::kafka::brokers(),
            &events.name,
            Duration::from_secs(10),
        )
        .await
        .len()
        .ge(&20)
        .then_some(())
    })
    .await;
    let (_connection, channel) = confirm_channel("batcher-replay-present").await;
    let replays = BatcherSetup::new(&events, &integrations);
    replays.topology.declare(&channel).await.expect("declare");
    // Hourly windows: the window holding the present closes about an hour from now, so a
    // replay that read on into live traffic until a record closed its range would not return
    // within the deadline; one that stops at the planned end returns in seconds.
    let from = common::clock::rfc3339_ms(now_unix_ms() - 60_000);
    let flags = replays.flags("1h", "5m");
    let output = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(integration_tests::process::binary("batcher"))
            .args(flags)
            .args(["replay", "--from", &from])
            .env("ACTIVITY_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run batcher replay");
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("replay status").is_none() {
            if std::time::Instant::now() >= give_up {
                let _ = child.kill();
                panic!("the replay still read after 60 s while events kept arriving");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("replay output")
    })
    .await
    .expect("replay thread");
    arriving.cancel();
    let sent = producer.await.expect("producer");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "replay failed: {printed}");
    let replayed: u64 = printed
        .split("replayed ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the summary says how many records: {printed}"));
    assert!(
        replayed > 0 && replayed <= sent,
        "read {replayed} of the {sent} records sent ({printed})"
    );
    assert!(
        printed.contains(": 0 object(s) enqueued")
            && !printed.contains("; 0 window part(s) still open"),
        "the open hour is left to live batching: {printed}"
    );
    delete_topology(&channel, &replays.topology).await;
}

/// The partitions `batcher` reports reading.

#[tokio::test]
async fn records_retention_deleted_below_the_read_position_are_a_gap_accepted_and_counted() {
    let events = EventsTopic::create(1).await;
    let integrations = IntegrationsTopic::create().await;
    integrations.connect("acme", "acme-bucket").await;
    let base = (now_unix_ms() + 30 * 60_000) / 10_000 * 10_000;
    for n in 0..10 {
        events
            .send(0, "acme", &format!("e{n}"), base + 1_000 + n * 100, 10)
            .await;
    }
    events.send(0, "nobody", "closer", base + 50_000, 10).await;
    let setup = BatcherSetup::new(&events, &integrations).with_future_tolerance("1h");
    // The group's position is offset 2, as if an earlier batcher had read that far; then the
    // records below offset 5 are deleted (retention, or an operator's DeleteRecords).
    let kafka = common::kafka::KafkaArgs::new(integration_tests::kafka::brokers());
    let mut position = rdkafka::TopicPartitionList::new();
    position
        .add_partition_offset(&events.name, 0, rdkafka::Offset::Offset(2))
        .expect("offset");
    let group: rdkafka::consumer::BaseConsumer = kafka
        .client_config(&[("group.id", &setup.group)])
        .create()
        .expect("consumer");
    rdkafka::consumer::Consumer::commit(&group, &position, rdkafka::consumer::CommitMode::Sync)
        .expect("commit offset 2");
    let admin: rdkafka::admin::AdminClient<_> = kafka.client_config(&[]).create().expect("admin");
    let mut below = rdkafka::TopicPartitionList::new();
    below
        .add_partition_offset(&events.name, 0, rdkafka::Offset::Offset(5))
        .expect("offset");
    admin
        .delete_records(&below, &rdkafka::admin::AdminOptions::new())
        .await
        .expect("delete the records below offset 5");

    let (_connection, channel) = confirm_channel("batcher-deleted-records").await;
    setup.topology.declare(&channel).await.expect("declare");
    let batcher = setup.spawn("10s", "2s", &[]);
    let jobs = jobs_until_events(&channel, &setup.topology.queue, 5, Duration::from_secs(60)).await;
    let delivered: Vec<String> = jobs.values().flat_map(|j| j.event_ids()).collect();
    assert_eq!(delivered, ["e5", "e6", "e7", "e8", "e9"]);
    // The batcher read again from offset 2, the broker confirmed the log starts at 5, and the
    // three offsets it holds no records at are counted (the alert's series).
    let metrics = batcher.metrics().await;
    assert_eq!(
        integration_tests::process::metric_value(&metrics, batcher::metrics::SKIPPED_OFFSETS),
        Some(3.0),
        "{metrics}"
    );
    assert!(
        integration_tests::process::metric_value(&metrics, batcher::metrics::REFETCHES)
            .is_some_and(|refetches| refetches >= 1.0)
    );
    delete_topology(&channel, &setup.topology).await;
}

#[tokio::test]
async fn two_batchers_split_the_partitions_and_a_stopped_one_hands_over_without_loss_or_repeats() {
    const PARTITIONS: i32 = 4;
    let events = EventsTopic::create(PARTITIONS).await;
    let integrations = IntegrationsTopic::create().await;
    let tenants: Vec<String> = (0..8).map(|n| format!("tenant{n}")).collect();
    for tenant in &tenants {
        integrations
            .connect(tenant, &format!("{tenant}-bucket"))
            .await;
    }
    let setup = BatcherSetup::new(&events, &integrations).with_future_tolerance("1h");
    let (_connection, channel) = confirm_channel("batcher-group-test").await;
    setup.topology.declare(&channel).await.expect("declare");
    let mut first = setup.spawn("10s", "2s", &[]);
    let second = setup.spawn("10s", "2s", &[]);
    wait_for(
        "both batchers to read partitions",
        Duration::from_secs(60),
        || async {
            let (a, b) = (
                partitions_read(&first, PARTITIONS).await,
                partitions_read(&second, PARTITIONS).await,
            );
            let all: BTreeSet<i32> = a.iter().chain(&b).copied().collect();
            (!a.is_empty() && !b.is_empty() && all.len() == PARTITIONS as usize).then_some(())
        },
    )
    .await;

    let base = (now_unix_ms() + 30 * 60_000) / 10_000 * 10_000;
    // Writes a window's events and records that close it; returns how many events.
    let write_window = async |window: i64| {
        let mut written = 0;
        for (n, tenant) in tenants.iter().enumerate() {
            let partition = i32::try_from(n).expect("small") % PARTITIONS;
            for k in 0..3 {
                let id = format!("{tenant}-w{window}-{k}");
                events
                    .send(
                        partition,
                        tenant,
                        &id,
                        base + window * 10_000 + 1_000 + k,
                        20,
                    )
                    .await;
                written += 1;
            }
        }
        for partition in 0..PARTITIONS {
            events
                .send(
                    partition,
                    "nobody",
                    "closer",
                    base + (window + 1) * 10_000 + 2_500,
                    10,
                )
                .await;
        }
        written
    };
    let window_0 = write_window(0).await;
    let before = jobs_until_events(
        &channel,
        &setup.topology.queue,
        window_0,
        Duration::from_secs(60),
    )
    .await;

    assert_eq!(
        first.terminate(Duration::from_secs(30)).await,
        Some(0),
        "a clean stop"
    );
    wait_for(
        "the other batcher to take every partition",
        Duration::from_secs(60),
        || async {
            (partitions_read(&second, PARTITIONS).await.len() == PARTITIONS as usize).then_some(())
        },
    )
    .await;
    let window_1 = write_window(1).await;
    let after = jobs_until_events(
        &channel,
        &setup.topology.queue,
        window_1,
        Duration::from_secs(60),
    )
    .await;
    let repeated: Vec<_> = after.keys().filter(|k| before.contains_key(*k)).collect();
    assert!(
        repeated.is_empty(),
        "confirmed window-0 jobs published again: {repeated:?}"
    );
    let mut ids = BTreeSet::new();
    for job in before.values().chain(after.values()) {
        for id in job.event_ids() {
            assert!(ids.insert(id.clone()), "event {id} in two objects");
        }
    }
    assert_eq!(ids.len(), window_0 + window_1, "no event missing");
    drop(second);
    delete_topology(&channel, &setup.topology).await;
}

/// A batcher deployment of its own: a fresh events topic of `partitions`, `acme` and `globex`
/// connected, and its upload queues declared on `channel`.
struct Deployment {
    events: EventsTopic,
    _integrations: IntegrationsTopic,
    setup: BatcherSetup,
    _connection: lapin::Connection,
    channel: lapin::Channel,
}

impl Deployment {
    async fn new(partitions: i32) -> Self {
        let events = EventsTopic::create(partitions).await;
        let integrations = IntegrationsTopic::create().await;
        integrations.connect("acme", "acme-bucket").await;
        integrations.connect("globex", "globex-bucket").await;
        let setup = BatcherSetup::new(&events, &integrations);
        let (connection, channel) = confirm_channel("batcher-test").await;
        setup.topology.declare(&channel).await.expect("declare");
        Self {
            events,
            _integrations: integrations,
            setup,
            _connection: connection,
            channel,
        }
    }

    /// The batcher takes record stamps up to `tolerance` ahead of its clock as they are.
    fn with_future_tolerance(mut self, tolerance: &str) -> Self {
        self.setup = self.setup.with_future_tolerance(tolerance);
        self
    }

    /// Jobs published until their objects hold `events` events (at most 60 s).
    async fn jobs(&self, events: usize) -> BTreeMap<String, PublishedJob> {
        jobs_until_events(
            &self.channel,
            &self.setup.topology.queue,
            events,
            Duration::from_secs(60),
        )
        .await
    }

    async fn finish(self) {
        delete_topology(&self.channel, &self.setup.topology).await;
    }
}

/// The value of the counter `name` that `batcher` exposes.
async fn counter(batcher: &ServiceProcess, name: &str) -> Option<f64> {
    integration_tests::process::metric_value(&batcher.metrics().await, name)
}

/// Writes 90 events of ~200 KiB for `acme` (no compression: ~18 MiB, more than RabbitMQ's
/// 16 MiB message limit) on partition 0 and 5 small ones for `globex` on partition 1, all
/// stamped in the next 10 s window, so it cannot close before they are all written. The
/// batcher must take stamps a window ahead as they are (`LARGE_WINDOW_TOLERANCE`): bounded to
/// its clock, the first events would go in the present window, which may close meanwhile.
const LARGE_WINDOW_TOLERANCE: &str = "10s";

async fn one_large_window(events: &EventsTopic) -> i64 {
    let window_start = (now_unix_ms() / 10_000 + 1) * 10_000;
    for n in 0..90 {
        events
            .send(0, "acme", &format!("big-{n}"), window_start + n, 200 * 1024)
            .await;
    }
    for n in 0..5 {
        events
            .send(1, "globex", &format!("small-{n}"), window_start + n, 10)
            .await;
    }
    window_start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_is_cut_to_what_rabbitmq_takes_even_without_compression() {
    let deployment = Deployment::new(2)
        .await
        .with_future_tolerance(LARGE_WINDOW_TOLERANCE);
    let batcher = deployment.setup.spawn("10s", "500ms", &[]);
    batcher.ready().await;

    one_large_window(&deployment.events).await;
    let jobs = deployment.jobs(95).await;
    let acme: Vec<_> = jobs
        .values()
        .filter(|j| j.job.tenant_id.as_str() == "acme")
        .collect();
    assert!(acme.len() >= 2, "{} acme part(s)", acme.len());
    for published in &acme {
        assert_eq!(published.job.codec, Codec::None);
        assert!(
            published.body.len() <= 16 * 1024 * 1024 - 64 * 1024,
            "{} bytes",
            published.body.len()
        );
    }
    assert_eq!(
        counter(&batcher, "activity_batcher_refused_parts_total").await,
        Some(0.0)
    );
    drop(batcher);
    deployment.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_rabbitmq_refuses_is_counted_and_set_aside_while_other_partitions_go_on() {
    let deployment = Deployment::new(2)
        .await
        .with_future_tolerance(LARGE_WINDOW_TOLERANCE);
    // Configured above the broker's limit, as a mistake would be.
    let batcher = deployment
        .setup
        .spawn("10s", "500ms", &["--max-message-bytes", "67108864"]);
    batcher.ready().await;

    one_large_window(&deployment.events).await;
    let jobs = deployment.jobs(5).await;
    let tenants: BTreeSet<_> = jobs.values().map(|j| j.job.tenant_id.to_string()).collect();
    assert_eq!(tenants, BTreeSet::from(["globex".to_owned()]));
    let refused = wait_for(
        "the refused part counted",
        Duration::from_secs(30),
        || async {
            counter(&batcher, "activity_batcher_refused_parts_total")
                .await
                .filter(|&n| n > 0.0)
        },
    )
    .await;
    assert_eq!(refused, 1.0);
    let queue = &deployment.setup.topology.queue;
    assert!(take_jobs(&deployment.channel, queue).await.is_empty());
    drop(batcher);
    deployment.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_stamped_far_ahead_closes_nothing_and_is_delivered_with_the_present() {
    let deployment = Deployment::new(1).await;
    // A record may be 2 s ahead of the batcher's clock (half the close delay).
    let batcher = deployment.setup.spawn("20s", "4s", &[]);
    batcher.ready().await;

    let events = &deployment.events;
    let mut acme_windows = BTreeSet::new();
    let mut send_acme = async |id: String| {
        let now = now_unix_ms();
        acme_windows.insert(now - now % 20_000);
        events.send(0, "acme", &id, now, 10).await;
    };
    for n in 0..3 {
        send_acme(format!("before-{n}")).await;
    }
    // A producer host whose clock is 50 minutes ahead: Kafka 4 refuses records stamped more
    // than an hour ahead by default, and this topic sets nothing stricter.
    let sent_at = now_unix_ms();
    events
        .send(0, "globex", "from-the-future", sent_at + 3_000_000, 10)
        .await;
    for n in 0..3 {
        send_acme(format!("after-{n}")).await;
    }

    let jobs = deployment.jobs(7).await;
    let acme = jobs
        .values()
        .filter(|j| j.job.tenant_id.as_str() == "acme")
        .count();
    // One part per window the acme events fell in (two only if the clock crossed a boundary
    // between them): the future record closed no window early.
    assert_eq!(acme, acme_windows.len());
    let globex: Vec<_> = jobs
        .values()
        .filter(|j| j.job.tenant_id.as_str() == "globex")
        .collect();
    assert_eq!(globex.len(), 1);
    assert!(
        globex[0].job.window_start_ms <= now_unix_ms(),
        "delivered with the present, not 50 minutes from now"
    );
    assert_eq!(
        counter(&batcher, "activity_batcher_future_records_total").await,
        Some(1.0)
    );
    drop(batcher);
    deployment.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_closed_by_the_clock_closes_alike_after_a_crash_and_a_later_straggler_goes_late() {
    let deployment = Deployment::new(1).await;
    // Nothing is committed or checkpointed before the crash: the restarted batcher rebuilds
    // from the start of the log and knows of the first one's clock close only from the log.
    let flags = ["--commit-interval", "1h"];
    let first = deployment.setup.spawn("5s", "500ms", &flags);
    first.ready().await;
    let now = now_unix_ms();
    for n in 0..3 {
        deployment
            .events
            .send(0, "acme", &format!("e{n}"), now + n, 10)
            .await;
    }
    // The partition is idle: its window closes by the clock.
    let before = deployment.jobs(3).await;
    assert_eq!(before.len(), 1);
    drop(first); // SIGKILL
    // A straggler of the window closed, arriving after the close.
    deployment
        .events
        .send(0, "acme", "straggler", now + 10, 10)
        .await;

    let second = deployment.setup.spawn("5s", "500ms", &flags);
    let after = deployment.jobs(4).await;
    let (key, object) = before.iter().next().expect("the first object");
    assert_eq!(
        after.get(key).map(|again| &again.body),
        Some(&object.body),
        "the rebuilt window is the object delivered, byte for byte"
    );
    let late: Vec<_> = after
        .values()
        .filter(|job| job.job.relative_key != *key)
        .collect();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].event_ids(), ["straggler"]);
    drop(second);
    deployment.finish().await;
}
