//! The ingest service: accepts activity events over HTTP and writes them to Kafka, answering
//! `202` only after Kafka has acknowledged every event of the request (DESIGN §3).

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod produce;
pub mod rate_limit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::post;
use common::kafka::TopicSpec;
use common::ops::ReadinessCheck;
use common::shutdown::Supervisor;

use crate::auth::Tokens;
use crate::body::Limits;
use crate::config::IngestConfig;
use crate::http::EventsApi;
use crate::produce::EventWriter;
use crate::rate_limit::TenantRateLimiter;

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
        config
            .kafka
            .ensure_topics(&[TopicSpec {
                name: &config.events_topic,
                partitions: config.events_partitions,
                replication: config.kafka.replication,
                config: vec![],
            }])
            .await
            .context("cannot make sure the events topic exists")?;
    }
    let writer = Arc::new(
        EventWriter::new(
            config.kafka.producer_config(config.produce_timeout),
            config.events_topic.clone(),
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
    });

    let token = supervisor.token();
    let readiness: ReadinessCheck = {
        let writer = writer.clone();
        let token = token.clone();
        Arc::new(move || {
            let writer = writer.clone();
            let draining = token.is_cancelled();
            Box::pin(async move {
                if draining {
                    return Err("shutting down".to_string());
                }
                writer.check_reachable().await
            })
        })
    };
    let router = Router::new()
        .route("/v1/events", post(http::post_events))
        .with_state(api.clone())
        .merge(common::ops::router(readiness, metrics));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let flush_timeout = config.shutdown.timeout;
    supervisor.spawn("http", async move {
        common::ops::serve(listener, router, token)
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
        let token = supervisor.token();
        supervisor.spawn("rate-limiter-cleanup", async move {
            let mut tick = tokio::time::interval(RATE_LIMITER_CLEANUP);
            loop {
                tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    _ = tick.tick() => {
                        if let Some(limiter) = &api.rate_limiter {
                            limiter.forget_idle_tenants();
                        }
                    }
                }
            }
        });
    }
    tracing::info!(%address, topic = %config.events_topic, "ingest is listening");
    Ok(address)
}
