//! The uploader: puts queued activity log objects into customer buckets with the customer's
//! assumed role (DESIGN §2–§3).
//! A lost RabbitMQ connection is reopened in-process; jobs it held go back to the queue.

pub mod config;
pub mod consume;
pub mod credentials;
pub mod delivery_log;
pub mod destination;
pub mod dlq;
pub mod error;
pub mod failure;
pub mod fairness;
pub mod metrics;
pub mod retry;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use common::producer::HealingProducer;
use common::registry::IntegrationRegistry;
use common::shutdown::Supervisor;

use crate::config::UploaderConfig;
use crate::consume::Uploader;
use crate::credentials::AssumedRoles;
use crate::delivery_log::DeliveryLog;
use crate::destination::S3Writer;

/// Starts the uploader under `supervisor` and returns the address of its health and metrics
/// endpoints. Jobs are consumed only once the integration registry has caught up, so no job is
/// discarded for a tenant whose integration was simply not read yet.
pub async fn start(config: UploaderConfig, supervisor: &Supervisor) -> anyhow::Result<SocketAddr> {
    let metrics = common::metrics::install().context("cannot install the metrics recorder")?;
    metrics::describe();
    // Every retry tier has a series from the start.
    for tier in 1..=config.uploads.topology().retry_queues.len() {
        ::metrics::counter!(metrics::RETRIES, "tier" => tier.to_string()).increment(0);
    }
    if config.kafka.create_topics {
        config
            .kafka
            .ensure_topics(&[
                common::delivery::topic_spec(&config.deliveries_topic, config.kafka.replication),
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
        producer: HealingProducer::new(
            config
                .kafka
                .producer_config(std::time::Duration::from_secs(30)),
            "uploader-deliveries",
        )
        .context("cannot create the Kafka producer")?,
        topic: config.deliveries_topic.clone(),
    };

    let sdk = config.aws.sdk_config().await;
    let uploader = Arc::new(Uploader {
        registry: registry.clone(),
        roles: AssumedRoles::new(sdk.clone()),
        writer: S3Writer::new(sdk),
        topology: config.uploads.topology(),
        policy: config.retry_policy(),
        deliveries,
        concurrency: config.concurrency,
        tenant_concurrency: config.tenant_concurrency,
        connected: Arc::default(),
    });

    let readiness = common::ops::registry_and_rabbitmq_readiness(
        supervisor.token(),
        registry.clone(),
        uploader.connected.clone(),
    );
    let address = common::ops::spawn(config.listen, readiness, metrics, supervisor).await?;

    let token = supervisor.token();
    let amqp = config.amqp.clone();
    supervisor.spawn("uploads", async move {
        tokio::select! {
            () = registry.caught_up() => {}
            () = token.cancelled() => return Ok(()),
        }
        uploader.run(&amqp, token).await
    });
    tracing::info!(%address, queue = %config.uploads.name, concurrency = config.concurrency, "uploader started");
    Ok(address)
}
