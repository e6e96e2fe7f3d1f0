//! The uploader: puts queued activity log objects into customer buckets with the customer's
//! assumed role (DESIGN §2–§3).
//!
//! Not built yet: reconnecting
//! to RabbitMQ in-process (today a lost connection stops the service, for its supervisor to
//! restart).

pub mod config;
pub mod consume;
pub mod credentials;
pub mod destination;
pub mod dlq;
pub mod error;
pub mod metrics;
pub mod retry;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use common::ops::ReadinessCheck;
use common::registry::IntegrationRegistry;
use common::shutdown::Supervisor;
use lapin::options::ConfirmSelectOptions;

use crate::config::UploaderConfig;
use crate::consume::{DeliveryLog, Uploader};
use crate::credentials::AssumedRoles;
use crate::destination::S3Writer;

/// How often the dead-letter queue's depth is read for its gauge.
const DLQ_DEPTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// Partitions of the deliveries topic when the uploader creates it.
const DELIVERIES_PARTITIONS: i32 = 12;

/// Starts the uploader under `supervisor` and returns the address of its health and metrics
/// endpoints. Jobs are consumed only once the integration registry has caught up, so no job is
/// discarded for a tenant whose integration was simply not read yet.
pub async fn start(config: UploaderConfig, supervisor: &Supervisor) -> anyhow::Result<SocketAddr> {
    let metrics = common::metrics::install().context("cannot install the metrics recorder")?;
    metrics::describe();
    if config.kafka.create_topics {
        config
            .kafka
            .ensure_topics(&[
                common::kafka::TopicSpec {
                    name: &config.deliveries_topic,
                    partitions: DELIVERIES_PARTITIONS,
                    replication: config.kafka.replication,
                    config: vec![],
                },
                common::registry::topic_spec(&config.integrations_topic, config.kafka.replication),
            ])
            .await
            .context("cannot make sure the deliveries and integrations topics exist")?;
    }
    let registry =
        IntegrationRegistry::follow(&config.kafka, &config.integrations_topic, supervisor)
            .await
            .context("cannot follow the integrations")?;

    let deliveries = DeliveryLog {
        producer: config
            .kafka
            .producer_config(std::time::Duration::from_secs(30))
            .create()
            .context("cannot create the Kafka producer")?,
        topic: config.deliveries_topic.clone(),
    };

    let connection = config.amqp.connect("activity-uploader").await?;
    let publisher = connection
        .create_channel()
        .await
        .context("cannot open a RabbitMQ channel")?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("cannot enable publisher confirms")?;
    let consumer = connection
        .create_channel()
        .await
        .context("cannot open a RabbitMQ channel")?;
    let topology = config.uploads.topology();
    topology.declare(&publisher).await?;
    let dead_letter_queue = topology.dead_letter_queue.clone();

    let sdk = config.aws.sdk_config().await;
    let uploader = Arc::new(Uploader {
        registry: registry.clone(),
        roles: AssumedRoles::new(sdk.clone()),
        writer: S3Writer::new(sdk),
        topology,
        policy: config.retry_policy(),
        publisher,
        deliveries,
    });

    let connection = Arc::new(connection);
    let readiness: ReadinessCheck = {
        let registry = registry.clone();
        let connection = connection.clone();
        let token = supervisor.token();
        Arc::new(move || {
            let state = if token.is_cancelled() {
                Err("shutting down".to_string())
            } else if !registry.is_caught_up() {
                Err("the integration registry is still catching up".to_string())
            } else if !connection.status().connected() {
                Err("not connected to RabbitMQ".to_string())
            } else {
                Ok(())
            };
            Box::pin(async move { state })
        })
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let router = common::ops::router(readiness, metrics);
    let token = supervisor.token();
    supervisor.spawn("http", async move {
        common::ops::serve(listener, router, token)
            .await
            .context("the HTTP server failed")
    });

    let depth_channel = connection
        .create_channel()
        .await
        .context("cannot open a RabbitMQ channel")?;
    let token = supervisor.token();
    supervisor.spawn("dlq-depth", async move {
        let mut tick = tokio::time::interval(DLQ_DEPTH_INTERVAL);
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
                    let queue = depth_channel
                        .queue_declare(dead_letter_queue.as_str().into(), options, lapin::types::FieldTable::default())
                        .await
                        .context("cannot read the dead-letter queue's depth")?;
                    ::metrics::gauge!(crate::metrics::DLQ_DEPTH).set(f64::from(queue.message_count()));
                }
            }
        }
    });

    let token = supervisor.token();
    let concurrency = config.concurrency;
    supervisor.spawn("uploads", async move {
        tokio::select! {
            () = registry.caught_up() => {}
            () = token.cancelled() => return Ok(()),
        }
        let _connection = connection;
        uploader.run(consumer, concurrency, token).await
    });
    tracing::info!(%address, queue = %config.uploads.name, concurrency, "uploader started");
    Ok(address)
}
