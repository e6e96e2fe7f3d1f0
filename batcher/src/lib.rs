//! The batcher: closes per-tenant windows of activity events into objects and queues them for
//! upload (DESIGN §2–§3).

pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod consume;
pub mod core;
pub mod digests;
pub mod fetch_watch;
pub mod first_delivery;
pub mod metrics;
pub mod offsets;
mod outbox;
pub mod publish;
pub mod records;
pub mod replay;
pub mod statistics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use ::metrics::counter;
use anyhow::Context;
use common::registry::IntegrationRegistry;
use common::shutdown::Supervisor;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::checkpoint::CheckpointStore;
use crate::clock::ClockWriter;
use crate::config::BatcherConfig;
use crate::consume::{BatcherContext, Batching};
use crate::core::Core;
use crate::metrics::CONSUMER_REPLACEMENTS;

/// Closed parts handed to the publisher at once before the consumer pauses.
const PUBLISH_QUEUE: usize = 1024;

/// Starts the batcher under `supervisor` and returns the address of its health and metrics
/// endpoints. Records are read only once the integration registry has caught up, so no tenant
/// is skipped for an integration that was simply not read yet.
pub async fn start(config: BatcherConfig, supervisor: &Supervisor) -> anyhow::Result<SocketAddr> {
    let metrics = common::metrics::install().context("cannot install the metrics recorder")?;
    metrics::describe();
    if config.kafka.create_topics {
        config
            .kafka
            .ensure_topics(&[
                checkpoint::topic_spec(&config.checkpoints_topic, config.kafka.replication),
                common::registry::topic_spec(
                    &config.topics.integrations_topic,
                    config.kafka.replication,
                ),
                common::integration::first_deliveries_topic_spec(
                    &config.topics.first_deliveries_topic,
                    config.kafka.replication,
                ),
                common::delivery::topic_spec(
                    &config.digests.deliveries_topic,
                    config.kafka.replication,
                ),
            ])
            .await
            .context(
                "cannot make sure the checkpoints, integrations, first-deliveries and deliveries topics exist",
            )?;
    }
    let spill_dir = prepare_spill_dir(&config.spill_dir)?;
    let registry =
        IntegrationRegistry::follow(&config.kafka, &config.topics.integrations_topic, supervisor)
            .await
            .context("cannot follow the integrations")?;

    let (parts_tx, parts_rx) = tokio::sync::mpsc::channel(PUBLISH_QUEUE);
    let (confirms_tx, confirms_rx) = std::sync::mpsc::channel();
    let rabbitmq = Arc::new(AtomicBool::new(false));
    {
        let (amqp, topology, connected) = (
            config.amqp.clone(),
            config.uploads.topology(),
            rabbitmq.clone(),
        );
        let max_body_bytes = config.batching.window_settings().max_body_bytes;
        let token = supervisor.token();
        supervisor.spawn("publisher", async move {
            publish::run(
                amqp,
                topology,
                max_body_bytes,
                parts_rx,
                confirms_tx,
                connected,
                token,
            )
            .await
        });
    }

    let writer = checkpoint::writer(&config.kafka).context("cannot create the Kafka writer")?;
    let store = CheckpointStore::new(
        &config.kafka,
        &config.checkpoints_topic,
        &config.group,
        &config.topics.events_topic,
        &config.batching.window_settings(),
        writer.clone(),
    );
    let store = check_object_shape(store, config.allow_settings_change).await?;
    let core = Core::new(
        config.batching.window_settings(),
        usize::try_from(config.memory_budget).unwrap_or(usize::MAX),
        spill_dir,
    );
    let clock = ClockWriter::new(
        writer.clone(),
        config.topics.events_topic.clone(),
        tokio::runtime::Handle::current(),
    );
    let batching = Batching::new(
        core,
        registry.clone(),
        store,
        clock,
        parts_tx,
        confirms_rx,
        tokio::runtime::Handle::current(),
    );
    let batching = Arc::new(std::sync::Mutex::new(batching));
    let kafka = config.kafka.clone();
    let group = config.group.clone();
    let new_consumer = move || -> anyhow::Result<BaseConsumer<BatcherContext>> {
        kafka
            .client_config(&[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("partition.assignment.strategy", "range,roundrobin"),
                // End offsets for lag gauges and idle closes, and the broker each partition is
                // fetched from, come from these statistics. Making them is most of an idle
                // batcher's CPU; every 5 s is fresh enough for an idle close (a stale end offset
                // is never past the true one) and for a watchdog that waits 30 s.
                ("statistics.interval.ms", "5000"),
            ])
            .create_with_context(BatcherContext::new(batching.clone()))
            .context("cannot create the Kafka consumer")
    };
    let mut consumer = new_consumer()?;

    let readiness = common::ops::registry_and_rabbitmq_readiness(
        supervisor.token(),
        registry.clone(),
        rabbitmq.clone(),
    );
    let address = common::ops::spawn(config.listen, readiness, metrics, supervisor).await?;

    {
        let (config, registry, writer, token) = (
            Arc::new(config.clone()),
            registry.clone(),
            writer.clone(),
            supervisor.token(),
        );
        supervisor.spawn("first-deliveries", async move {
            tokio::select! {
                () = registry.caught_up() => {}
                () = token.cancelled() => return Ok(()),
            }
            first_delivery::run(config, registry, writer, token).await
        });
    }

    match config.digests.signing_key() {
        Some(key) => {
            let settings = digests::Settings {
                key,
                periods: config.digests.periods(),
                deliveries_topic: config.digests.deliveries_topic.clone(),
                checkpoints_topic: config.checkpoints_topic.clone(),
                group: config
                    .digests
                    .digest_group
                    .clone()
                    .unwrap_or_else(|| format!("{}-digests", config.group)),
                max_body_bytes: config.batching.window_settings().max_body_bytes,
            };
            let (kafka, amqp, topology, token) = (
                config.kafka.clone(),
                config.amqp.clone(),
                config.uploads.topology(),
                supervisor.token(),
            );
            supervisor.spawn("digests", async move {
                digests::run(settings, kafka, writer, amqp, topology, token).await
            });
        }
        None => tracing::info!(
            "no digest signing key (ACTIVITY_DIGEST_SIGNING_KEY_FILE): signed digests are not made"
        ),
    }

    let token = supervisor.token();
    let probe = config.kafka.client_config(&[]);
    let (events_topic, commit_interval, drain) = (
        config.topics.events_topic.clone(),
        config.commit_interval,
        config.shutdown.timeout.mul_f32(0.8),
    );
    supervisor.spawn("batching", async move {
        tokio::select! {
            () = registry.caught_up() => {}
            () = token.cancelled() => return Ok(()),
        }
        tokio::task::spawn_blocking(move || {
            loop {
                consumer
                    .subscribe(&[&events_topic])
                    .with_context(|| format!("cannot subscribe to {events_topic}"))?;
                let reason = match consume::run(&consumer, &probe, &token, commit_interval, drain)? {
                    consume::Ended::Shutdown => return Ok(()),
                    consume::Ended::Stuck { partition, leader } => {
                        tracing::warn!(
                            partition,
                            leader,
                            "replacing the Kafka consumer: it fetches the partition from no broker while the cluster has a leader for it"
                        );
                        "unfetched_partition"
                    }
                    consume::Ended::NotRejoined => {
                        tracing::warn!(
                            "replacing the Kafka consumer: it lost its partitions with its group session and has not rejoined the group for a minute while the cluster answers"
                        );
                        "not_rejoined"
                    }
                };
                counter!(CONSUMER_REPLACEMENTS, "reason" => reason).increment(1);
                // Closing the old consumer first hands its partitions over with a commit; the
                // new one joins the group and rebuilds from the checkpoints.
                drop(consumer);
                consumer = new_consumer()?;
            }
        })
        .await
        .context("the consumer thread panicked")?
    });
    tracing::info!(%address, group = %config.group, topic = %config.topics.events_topic, "batcher started");
    Ok(address)
}

/// Creates the spill directory and empties it: what an earlier process spilled belongs to parts
/// that are rebuilt from Kafka anyway.
fn prepare_spill_dir(path: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(path)
        .with_context(|| format!("cannot create the spill directory {}", path.display()))?;
    for entry in std::fs::read_dir(path)
        .with_context(|| format!("cannot read the spill directory {}", path.display()))?
    {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(path.to_owned())
}

/// How long reading the checkpoints at start may take.
const SHAPE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Refuses to start when the group's checkpoints were written with other object settings,
/// unless `allow_change`; then the change is logged. Checkpoints that cannot be read now (Kafka
/// unreachable) are not waited for: the check is skipped with a warning, as reading them on
/// assignment will be retried.
pub(crate) async fn check_object_shape(
    store: CheckpointStore,
    allow_change: bool,
) -> anyhow::Result<CheckpointStore> {
    let (store, checked) = tokio::task::spawn_blocking(move || {
        let checked = store.check_shape(SHAPE_CHECK_TIMEOUT);
        (store, checked)
    })
    .await
    .context("the checkpoint check panicked")?;
    match checked {
        Ok(None) => Ok(store),
        Ok(Some(mismatch)) if allow_change => {
            tracing::warn!(%mismatch, "starting with changed object settings, as allowed");
            Ok(store)
        }
        Ok(Some(mismatch)) => Err(mismatch.into()),
        Err(error) => {
            tracing::warn!(%error, "cannot check the object settings against the checkpoints now");
            Ok(store)
        }
    }
}
