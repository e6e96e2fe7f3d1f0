//! The ingest service: accepts activity events over HTTP and writes them to Kafka, answering
//! `202` only after Kafka has acknowledged every event of the request (DESIGN §3).

#[cfg(feature = "admin")]
pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod produce;
pub mod rate_limit;
pub mod token_bucket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::post;
use common::kafka::TopicSpec;
use common::ops::ReadinessCheck;
use common::shutdown::Supervisor;

#[cfg(feature = "admin")]
use crate::admin::AdminApi;
use crate::auth::Tokens;
use crate::body::Limits;
use crate::config::IngestConfig;
use crate::http::EventsApi;
use crate::produce::EventWriter;
use crate::rate_limit::TenantRateLimiter;

/// Follows the integrations and delivery records and builds what the admin API needs.
#[cfg(feature = "admin")]
async fn start_admin(
    config: &IngestConfig,
    supervisor: &Supervisor,
) -> anyhow::Result<Arc<AdminApi>> {
    use crate::admin::setup::Vendor;
    use crate::admin::status::DeliveryStatuses;
    use common::registry::IntegrationRegistry;
    use common::s3::S3Writer;

    let admin = &config.admin;
    let registry =
        IntegrationRegistry::follow(&config.kafka, &admin.integrations_topic, supervisor)
            .await
            .context("cannot follow the integrations")?;
    let statuses = DeliveryStatuses::default();
    statuses
        .follow(&config.kafka, &admin.deliveries_topic, supervisor)
        .await
        .context("cannot follow the delivery records")?;
    let producer = common::producer::HealingProducer::new(
        config.kafka.producer_config(config.produce_timeout),
        "ingest-admin",
    )
    .context("cannot create the admin API's Kafka producer")?;
    let (Some(vendor_role_arn), Some(external_id_secret)) = (
        admin.vendor_role_arn.clone(),
        admin.external_id_secret.clone(),
    ) else {
        anyhow::bail!(
            "the admin API needs ACTIVITY_VENDOR_ROLE_ARN and ACTIVITY_EXTERNAL_ID_SECRET"
        );
    };
    Ok(Arc::new(AdminApi {
        tokens: Tokens::new(&admin.admin_tokens),
        vendor: Vendor {
            role_arn: vendor_role_arn,
        },
        external_id_secret,
        registry,
        statuses,
        writer: S3Writer::new(admin.aws.sdk_config().await),
        producer,
        integrations_topic: admin.integrations_topic.clone(),
        first_deliveries_topic: admin.first_deliveries_topic.clone(),
        deliveries_topic: admin.deliveries_topic.clone(),
        connection_test_timeout: admin.connection_test_timeout,
        connection_tests: admin::test_limits::ConnectionTestLimits::default(),
        write_timeout: config.produce_timeout,
        digest_keys: admin
            .digest_public_keys
            .clone()
            .unwrap_or(config::PublishedKeys { keys: Vec::new() }),
        stale_after: admin.stale_after,
    }))
}

/// How often the stale-tenants gauge is counted again.
#[cfg(feature = "admin")]
const STALE_TENANTS_INTERVAL: Duration = Duration::from_secs(15);

/// Keeps `activity_ingest_stale_tenants` current until shutdown.
#[cfg(feature = "admin")]
fn count_stale_tenants(api: Arc<admin::AdminApi>, supervisor: &Supervisor) {
    supervisor.spawn_every("stale-tenants", STALE_TENANTS_INTERVAL, move || {
        let stale = api.stale_tenants(common::clock::now_unix_ms()).len();
        ::metrics::gauge!(metrics::STALE_TENANTS).set(stale as f64);
    });
}

/// How long one broker check answers `/readyz`, so polling clients cost one round trip at most
/// this often.
const READINESS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often tenants with full token buckets are forgotten.
const RATE_LIMITER_CLEANUP: Duration = Duration::from_secs(60);

/// Starts ingest under `supervisor` and returns the address it listens on. The service stops
/// when the supervisor's token is cancelled: it stops accepting connections, answers the requests
/// in flight truthfully, then flushes the producer.
pub async fn start(config: IngestConfig, supervisor: &Supervisor) -> anyhow::Result<SocketAddr> {
    config.validate().map_err(anyhow::Error::msg)?;
    let metrics = common::metrics::install().context("cannot install the metrics recorder")?;
    metrics::describe();

    if config.kafka.create_topics {
        let replication = config.kafka.replication;
        let mut topics = vec![TopicSpec {
            name: &config.events_topic,
            partitions: config.events_partitions,
            replication,
            // A record's timestamp is the time ingest accepted it and decides its window; the
            // broker refuses one more than a minute ahead of its own clock (an ingest host with
            // a wrong clock), instead of letting it close windows early.
            config: vec![("message.timestamp.after.max.ms", "60000")],
        }];
        if config.admin.enabled() {
            topics.extend([
                common::registry::topic_spec(&config.admin.integrations_topic, replication),
                common::integration::first_deliveries_topic_spec(
                    &config.admin.first_deliveries_topic,
                    replication,
                ),
                common::delivery::topic_spec(&config.admin.deliveries_topic, replication),
            ]);
        }
        config
            .kafka
            .ensure_topics(&topics)
            .await
            .context("cannot make sure the topics exist")?;
    }
    let writer = Arc::new(
        EventWriter::new(
            config.kafka.producer_config(config.produce_timeout),
            &config.events_topic,
            config.produce_timeout,
        )
        .context("cannot create the Kafka producer")?,
    );

    let rate_limiter = config
        .tenant_rate
        .zip(config.effective_tenant_burst())
        .map(|(rate, burst)| TenantRateLimiter::new(rate, burst));
    let api = Arc::new(EventsApi {
        tokens: Tokens::new(&config.tokens),
        limits: Limits {
            max_event_bytes: config.max_event_bytes,
            max_body_bytes: config.max_body_bytes,
            max_events: config.max_events,
        },
        writer: writer.clone(),
        rate_limiter,
        inflight: EventsApi::inflight_budget(config.max_inflight_bytes),
        retry_after: config.retry_after,
        body_timeout: config.body_timeout,
    });

    // The admin API is ready once it has read the integrations; ingest says ready only then.
    #[cfg(feature = "admin")]
    let admin_api = if config.admin.enabled() {
        let api = start_admin(&config, supervisor).await?;
        count_stale_tenants(api.clone(), supervisor);
        Some(api)
    } else {
        None
    };
    #[cfg(feature = "admin")]
    let admin_integrations = admin_api.as_ref().map(|api| api.registry.clone());
    #[cfg(not(feature = "admin"))]
    let admin_integrations: Option<common::registry::IntegrationRegistry> = None;

    let token = supervisor.token();
    let readiness: ReadinessCheck = {
        let broker = {
            let writer = writer.clone();
            let check: ReadinessCheck = Arc::new(move || {
                let writer = writer.clone();
                Box::pin(async move { writer.check_reachable().await })
            });
            common::ops::cached(check, READINESS_CHECK_INTERVAL)
        };
        let token = token.clone();
        Arc::new(move || {
            let broker = broker.clone();
            let draining = token.is_cancelled();
            let reading = admin_integrations
                .as_ref()
                .is_some_and(|registry| !registry.is_caught_up());
            Box::pin(async move {
                if draining {
                    return Err("shutting down".to_string());
                }
                if reading {
                    return Err("the admin API is still reading the integrations".to_string());
                }
                broker().await
            })
        })
    };
    let router = Router::new()
        .route("/v1/events", post(http::post_events))
        .with_state(api.clone())
        .merge(common::ops::router(readiness, metrics));
    #[cfg(feature = "admin")]
    let router = match admin_api {
        Some(api) => router.merge(admin::router(api)),
        None => router,
    };
    #[cfg(not(feature = "admin"))]
    anyhow::ensure!(
        !config.admin.enabled(),
        "this ingest was built without the admin API; unset ACTIVITY_ADMIN_TOKENS"
    );

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let (flush_timeout, max_connections, idle_timeout) = (
        config.shutdown.timeout,
        usize::try_from(config.max_connections).unwrap_or(usize::MAX),
        config.idle_timeout,
    );
    supervisor.spawn("http", async move {
        common::ops::serve(listener, router, token, max_connections, idle_timeout)
            .await
            .context("the HTTP server failed")?;
        // Requests that already answered 503 may have left records queued; give them their
        // chance, since the client will retry and the event id makes the copy harmless.
        writer
            .flush(flush_timeout)
            .await
            .context("records were still queued at shutdown")?;
        Ok(())
    });
    if api.rate_limiter.is_some() {
        supervisor.spawn_every("rate-limiter-cleanup", RATE_LIMITER_CLEANUP, move || {
            if let Some(limiter) = &api.rate_limiter {
                limiter.forget_idle_tenants();
            }
        });
    }
    tracing::info!(%address, topic = %config.events_topic, "ingest is listening");
    Ok(address)
}
