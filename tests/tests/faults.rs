//! Fault scenarios through the whole pipeline: the three real binaries as
//! processes, four tenants, events posted all along, and one kind of fault injected at random
//! moments drawn from a seed: processes SIGKILLed, RabbitMQ stopped, the Kafka broker frozen
//! (a broker of the scenario's own), S3 storms, STS throttling, a bucket policy revoked, a
//! rebalance at a window close; and on a three-broker cluster of the scenario's own
//! (replication 3, `min.insync.replicas=2`): a partition leader SIGKILLed, a broker frozen past
//! its session, the whole cluster stopped and started again. The checker then reads every object back: every acknowledged
//! event delivered, none in another tenant's bucket, every object decoding, fitting the key
//! layout and its window, with its checksum. `ACTIVITY_FAULT_SEED=<n>` replays a run.
//!
//! The scenarios take turns (one RabbitMQ restart would break the others). `soak` runs many
//! randomized scenarios in a row and prints a table: `cargo test -p integration-tests --test
//! faults soak -- --ignored --nocapture` (`ACTIVITY_SOAK_RUNS`, default 20).

use std::time::Duration;

use integration_tests::e2e::{Deployment, Verdict, pause, rng, seed};
use integration_tests::fault_proxy::{FaultProxy, Faults};
use integration_tests::fixtures::{aws_config, deny_on_objects, moto_endpoint, s3_client};
use integration_tests::kafka_cluster::KafkaCluster;
use integration_tests::plan::Shape;
use integration_tests::services::rabbitmqctl;
use rand::Rng;
use rand::rngs::StdRng;

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TENANTS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillUploader,
    KillBatcher,
    KillIngest,
    RestartRabbitmq,
    KafkaOutage,
    S3Storm,
    StsOutage,
    PolicyRevoked,
    Rebalance,
    LeaderKilled,
    BrokerFrozen,
    ClusterRestart,
}

impl Fault {
    const ALL: [Fault; 12] = [
        Fault::KillUploader,
        Fault::KillBatcher,
        Fault::KillIngest,
        Fault::RestartRabbitmq,
        Fault::KafkaOutage,
        Fault::S3Storm,
        Fault::StsOutage,
        Fault::PolicyRevoked,
        Fault::Rebalance,
        Fault::LeaderKilled,
        Fault::BrokerFrozen,
        Fault::ClusterRestart,
    ];

    /// How many Kafka nodes of its own the scenario runs on; 0: the shared test broker.
    fn private_cluster(self) -> usize {
        match self {
            Fault::KafkaOutage => 1,
            Fault::LeaderKilled | Fault::BrokerFrozen | Fault::ClusterRestart => 3,
            _ => 0,
        }
    }

    /// Why an event may land twice under this fault, or `None` where it must not. Only a
    /// producer's retry of a request that reached Kafka without a `202` makes a second copy of
    /// an event (a new record with the same id, possibly in a later window); everything else
    /// rebuilds the same objects.
    fn duplicates_allowed(self) -> Option<&'static str> {
        match self {
            Fault::KillIngest => Some(
                "ingest died after Kafka took a request but before it answered; the producer \
                 sent the request again",
            ),
            Fault::KafkaOutage
            | Fault::LeaderKilled
            | Fault::BrokerFrozen
            | Fault::ClusterRestart => Some(
                "ingest answered 503 when its produce timed out, but the brokers still held \
                 the records and wrote them once they could; the producer sent the request \
                 again",
            ),
            _ => None,
        }
    }
}

/// Starts RabbitMQ again even when the scenario fails half way.
struct RabbitmqBack;

impl Drop for RabbitmqBack {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

/// Runs one scenario and returns the checker's verdict.
async fn run(fault: Fault, seed: u64) -> Verdict {
    let _turn = TURN.lock().await;
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let proxy = FaultProxy::start(&moto_endpoint()).await;
    let batchers = if fault == Fault::Rebalance { 2 } else { 1 };
    let mut shape = Shape::new(batchers, 2);
    // Broker faults hit a cluster of the scenario's own, not the broker other tests share.
    let mut cluster = (fault.private_cluster() > 0)
        .then(|| tokio::task::block_in_place(|| KafkaCluster::start(fault.private_cluster())));
    if let Some(cluster) = &cluster {
        shape = shape.on_cluster(cluster);
    }
    let mut deployment = Deployment::start(&s3, &proxy.url(), TENANTS, shape).await;
    let mut rng = rng(seed);
    let producer = deployment.produce(seed);
    pause(&mut rng, 1_000..2_000).await;

    match fault {
        Fault::KillUploader => {
            for _ in 0..3 {
                pause(&mut rng, 500..2_500).await;
                let victim = rng.random_range(0..deployment.uploaders.len());
                deployment.uploaders[victim] = deployment.plan.spawn_uploader();
            }
        }
        Fault::KillBatcher => {
            for kill in 0..2 {
                // The first kill lands while a window closes (parts being cut, published and
                // confirmed, the commit moving), the second at a random moment.
                if kill == 0 {
                    deployment.until_window_closes(&mut rng).await;
                } else {
                    pause(&mut rng, 1_000..3_000).await;
                }
                // Assigning drops (SIGKILLs) the old process.
                deployment.batchers[0] = deployment.plan.spawn_batcher();
            }
        }
        Fault::KillIngest => {
            for _ in 0..2 {
                pause(&mut rng, 1_000..3_000).await;
                deployment.ingest = deployment.plan.spawn_ingest();
                deployment.ingest.ready().await;
            }
        }
        Fault::RestartRabbitmq => {
            pause(&mut rng, 1_000..3_000).await;
            let back = RabbitmqBack;
            rabbitmqctl(&["stop_app"]);
            pause(&mut rng, 1_000..4_000).await;
            drop(back);
        }
        Fault::KafkaOutage => {
            let cluster = cluster.as_ref().expect("the scenario's broker");
            pause(&mut rng, 1_000..3_000).await;
            // Frozen, not dead: connections stay open and nothing answers, for longer than
            // ingest's 5 s produce timeout in most runs and than the batchers' 6 s session.
            cluster.pause(0);
            pause(&mut rng, 2_000..9_000).await;
            cluster.resume(0);
        }
        Fault::LeaderKilled => {
            let cluster = cluster.as_mut().expect("the scenario's cluster");
            pause(&mut rng, 1_000..3_000).await;
            let victim = events_leader(cluster, &deployment, &mut rng);
            // No controlled shutdown: the controller notices the lost heartbeats and elects a
            // leader among the in-sync replicas, which hold every acknowledged record.
            cluster.kill(victim);
            pause(&mut rng, 3_000..8_000).await;
            tokio::task::block_in_place(|| cluster.restart(victim));
        }
        Fault::BrokerFrozen => {
            let cluster = cluster.as_ref().expect("the scenario's cluster");
            pause(&mut rng, 1_000..3_000).await;
            let victim = events_leader(cluster, &deployment, &mut rng);
            // Longer than the brokers' 6 s session with the controller and the batchers' 6 s
            // group session: the cluster fences it and moves its leaders, then it wakes up
            // believing it still leads.
            cluster.pause(victim);
            pause(&mut rng, 8_000..12_000).await;
            cluster.resume(victim);
        }
        Fault::ClusterRestart => {
            let cluster = cluster.as_mut().expect("the scenario's cluster");
            pause(&mut rng, 1_000..3_000).await;
            tokio::task::block_in_place(|| cluster.stop_all());
            pause(&mut rng, 1_000..3_000).await;
            tokio::task::block_in_place(|| cluster.start_all());
        }
        Fault::StsOutage => {
            pause(&mut rng, 500..1_500).await;
            proxy.set(Faults {
                throttle_assume_role: true,
                ..Faults::default()
            });
            // New uploaders hold no credentials, so every tenant's next upload needs STS.
            for uploader in &mut deployment.uploaders {
                *uploader = deployment.plan.spawn_uploader();
            }
            pause(&mut rng, 3_000..6_000).await;
            proxy.set(Faults::default());
        }
        Fault::S3Storm => {
            pause(&mut rng, 500..1_500).await;
            proxy.set(Faults {
                failing_puts: rng.random_range(10..40),
                delay: Duration::from_millis(rng.random_range(50..400)),
                ..Faults::default()
            });
            pause(&mut rng, 3_000..6_000).await;
            proxy.set(Faults::default());
        }
        Fault::PolicyRevoked => {
            pause(&mut rng, 1_000..2_000).await;
            let tenant = format!("t{:03}", rng.random_range(0..TENANTS));
            let bucket = deployment.tenants[&tenant].clone();
            deny_on_objects(&s3, &bucket, "s3:PutObject").await;
            pause(&mut rng, 3_000..5_000).await;
            s3.delete_bucket_policy()
                .bucket(&bucket)
                .send()
                .await
                .expect("restore the policy");
        }
        Fault::Rebalance => {
            // Stop one batcher just after a window's close time, so its partitions move while
            // windows close; a new member joins a little later and they move again.
            deployment.until_window_closes(&mut rng).await;
            // A graceful leave (SIGTERM: the member leaves the group at once); a SIGKILLed
            // member is the KillBatcher scenario.
            let mut leaving = deployment.batchers.remove(1);
            assert_eq!(leaving.terminate(Duration::from_secs(30)).await, Some(0));
            pause(&mut rng, 2_000..4_000).await;
            let joining = deployment.plan.spawn_batcher();
            deployment.batchers.push(joining);
        }
    }
    pause(&mut rng, 1_000..2_000).await;
    let acknowledged = producer.finish().await;

    // Jobs dead-lettered while a customer's policy denied writes are redriven after the fix,
    // as an operator would; every other fault heals by itself.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
    let verdict = loop {
        let verdict = deployment.check(&s3, &acknowledged).await;
        if verdict.lost.is_empty() || tokio::time::Instant::now() >= give_up {
            break verdict;
        }
        if fault == Fault::PolicyRevoked {
            let (_connection, channel) =
                integration_tests::fixtures::confirm_channel("faults-redrive").await;
            uploader::dlq::redrive(&channel, &deployment.plan.setup.topology, None, None)
                .await
                .expect("redrive");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if !verdict.lost.is_empty() {
        let sample = &verdict.lost[..verdict.lost.len().min(10)];
        println!(
            "{fault:?} seed {seed}: lost events\n  {}",
            deployment.locate(sample).await.join("\n  ")
        );
    }
    deployment.stop().await;
    drop(cluster);
    verdict
}

/// The node leading an events partition drawn from `rng`.
fn events_leader(cluster: &KafkaCluster, deployment: &Deployment, rng: &mut StdRng) -> usize {
    let partition = rng.random_range(0..deployment.plan.shape.partitions);
    cluster
        .leader_node(&deployment.plan.events_topic, partition)
        .expect("the events partition has a leader")
}

/// What is wrong with a scenario's verdict: nothing when it passes. Every verdict needs events
/// in, 0 lost, 0 foreign and 0 bad objects; duplicates only where the fault allows them.
fn failures(fault: Fault, verdict: &Verdict) -> Vec<String> {
    let mut failures = Vec::new();
    if verdict.acknowledged == 0 {
        failures.push("the producer got no events in".to_owned());
    }
    if !verdict.lost.is_empty() {
        failures.push(format!(
            "{} acknowledged event(s) lost, e.g. {:?}",
            verdict.lost.len(),
            &verdict.lost[..verdict.lost.len().min(5)]
        ));
    }
    if !verdict.foreign.is_empty() {
        failures.push(format!("foreign events: {:?}", verdict.foreign));
    }
    if !verdict.bad_objects.is_empty() {
        failures.push(format!("bad objects: {:?}", verdict.bad_objects));
    }
    if fault.duplicates_allowed().is_none() && verdict.duplicates > 0 {
        failures.push(format!("{} duplicated event(s)", verdict.duplicates));
    }
    failures
}

fn judge(fault: Fault, seed: u64, verdict: &Verdict) {
    println!("{}", verdict.row(&format!("{fault:?}"), seed));
    if let Some(why) = fault
        .duplicates_allowed()
        .filter(|_| verdict.duplicates > 0)
    {
        println!("  {} duplicate(s), allowed: {why}", verdict.duplicates);
    }
    let failures = failures(fault, verdict);
    assert!(
        failures.is_empty(),
        "{fault:?} seed {seed}: {}",
        failures.join("; ")
    );
}

async fn scenario(fault: Fault) {
    let seed = seed();
    let verdict = run(fault, seed).await;
    judge(fault, seed, &verdict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaders_killed_at_random_moments_lose_and_repeat_nothing() {
    scenario(Fault::KillUploader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batcher_killed_at_random_moments_loses_and_repeats_nothing() {
    scenario(Fault::KillBatcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_at_random_moments_loses_nothing_acknowledged() {
    scenario(Fault::KillIngest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_under_load_loses_and_repeats_nothing() {
    scenario(Fault::RestartRabbitmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_kafka_broker_loses_nothing_acknowledged() {
    scenario(Fault::KafkaOutage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_throttling_new_uploaders_loses_and_repeats_nothing() {
    scenario(Fault::StsOutage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_storm_of_503s_and_latency_loses_and_repeats_nothing() {
    scenario(Fault::S3Storm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_policy_revoked_and_restored_delivers_everything_after_redrive() {
    scenario(Fault::PolicyRevoked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batchers_rebalancing_during_a_window_close_lose_and_repeat_nothing() {
    scenario(Fault::Rebalance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_of_an_events_partition_killed_and_restarted_loses_nothing_acknowledged() {
    scenario(Fault::LeaderKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_frozen_past_its_session_and_resumed_loses_nothing_acknowledged() {
    scenario(Fault::BrokerFrozen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_stopped_and_started_with_its_data_loses_nothing_acknowledged() {
    scenario(Fault::ClusterRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of many randomized runs; run it by hand"]
async fn soak() {
    let runs: usize = std::env::var("ACTIVITY_SOAK_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let mut picker = rng(seed());
    // Every kind of fault in turn, from a random one, so a soak of N runs covers each kind
    // N / 12 times at least; the seeds are random.
    let first = picker.random_range(0..Fault::ALL.len());
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for run_number in 1..=runs {
        let fault = Fault::ALL[(first + run_number) % Fault::ALL.len()];
        let seed = picker.random::<u64>();
        let verdict = run(fault, seed).await;
        let row = format!(
            "{run_number:>3}  {}",
            verdict.row(&format!("{fault:?}"), seed)
        );
        println!("{row}");
        rows.push(row);
        failed.extend(
            failures(fault, &verdict)
                .into_iter()
                .map(|failure| format!("{fault:?} seed {seed}: {failure}")),
        );
    }
    println!("\nsoak summary: {runs} run(s)\n{}", rows.join("\n"));
    assert!(failed.is_empty(), "failed runs:\n{}", failed.join("\n"));
}
