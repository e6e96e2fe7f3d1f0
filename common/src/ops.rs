//! The operational HTTP routes every service serves: `/healthz`, `/readyz` and `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::LimitedListener;

/// Answers whether the service can do its work right now, or why not.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Readiness of a service that works from the integration registry and a RabbitMQ session:
/// not while shutting down, before the registry caught up, or while RabbitMQ is away.
pub fn registry_and_rabbitmq_readiness(
    shutdown: CancellationToken,
    registry: crate::registry::IntegrationRegistry,
    rabbitmq_connected: Arc<std::sync::atomic::AtomicBool>,
) -> ReadinessCheck {
    Arc::new(move || {
        let state = if shutdown.is_cancelled() {
            Err("shutting down".to_string())
        } else if !registry.is_caught_up() {
            Err("the integration registry is still catching up".to_string())
        } else if !rabbitmq_connected.load(std::sync::atomic::Ordering::Relaxed) {
            Err("not connected to RabbitMQ".to_string())
        } else {
            Ok(())
        };
        Box::pin(async move { state })
    })
}

/// `check`, run at most once per `ttl`: callers within `ttl` of the last run get its answer,
/// and callers arriving while it runs wait for it. However many clients poll `/readyz`, the
/// dependency behind it (a broker round trip, say) sees one request per `ttl`.
pub fn cached(check: ReadinessCheck, ttl: std::time::Duration) -> ReadinessCheck {
    type Last = Option<(tokio::time::Instant, Result<(), String>)>;
    let last: Arc<tokio::sync::Mutex<Last>> = Arc::default();
    Arc::new(move || {
        let (check, last) = (check.clone(), last.clone());
        Box::pin(async move {
            let mut last = last.lock().await;
            if let Some((at, answer)) = last.as_ref()
                && at.elapsed() < ttl
            {
                return answer.clone();
            }
            let answer = check().await;
            *last = Some((tokio::time::Instant::now(), answer.clone()));
            answer
        })
    })
}

#[derive(Clone)]
struct OpsState {
    readiness: ReadinessCheck,
    metrics: PrometheusHandle,
}

/// Routes for liveness, readiness and Prometheus scraping.
pub fn router(readiness: ReadinessCheck, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState { readiness, metrics })
}

async fn readyz(State(state): State<OpsState>) -> Response {
    match (state.readiness)().await {
        Ok(()) => "ready\n".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Serves `router` until `shutdown` is cancelled, then stops accepting connections and waits for
/// the requests in flight. At most `max_connections` connections are open at once, and one
/// silent for `idle_timeout` is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    max_connections: usize,
    idle_timeout: std::time::Duration,
) -> std::io::Result<()> {
    axum::serve(
        LimitedListener::new(listener, max_connections, idle_timeout),
        router,
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

/// Connections the operational routes keep open at once (scrapers and probes), and how long
/// one may stay silent.
const OPS_MAX_CONNECTIONS: usize = 64;
const OPS_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves the operational routes on `listen` under `supervisor` and returns the bound address.
pub async fn spawn(
    listen: std::net::SocketAddr,
    readiness: ReadinessCheck,
    metrics: PrometheusHandle,
    supervisor: &crate::shutdown::Supervisor,
) -> anyhow::Result<std::net::SocketAddr> {
    use anyhow::Context;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let token = supervisor.token();
    let router = router(readiness, metrics);
    supervisor.spawn("http", async move {
        serve(
            listener,
            router,
            token,
            OPS_MAX_CONNECTIONS,
            OPS_IDLE_TIMEOUT,
        )
        .await
        .context("the HTTP server failed")
    });
    Ok(address)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_cached_check_runs_once_per_interval_however_many_ask() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let check: ReadinessCheck = Arc::new(move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if run == 0 {
                    Ok(())
                } else {
                    Err(format!("run {run}"))
                }
            })
        });
        let readiness = cached(check, Duration::from_secs(1));
        let callers: Vec<_> = (0..32).map(|_| tokio::spawn(readiness())).collect();
        for caller in callers {
            assert_eq!(caller.await.expect("caller"), Ok(()));
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "32 callers at once, one check"
        );

        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(readiness().await, Ok(()));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "still within the interval");

        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(readiness().await, Err("run 1".to_string()));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "a new check once the interval passed"
        );
    }
}
