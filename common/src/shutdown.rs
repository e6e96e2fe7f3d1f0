//! Task supervision and graceful shutdown.
//!
//! Every long-running task is spawned through a [`Supervisor`]: when one fails or stops on its own,
//! it is logged and the whole service is told to stop, instead of dying silently while the rest
//! keeps running. SIGTERM and SIGINT cancel the same token, and the final drain is bounded.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Owns the service's cancellation token and its tasks.
#[derive(Clone, Default)]
pub struct Supervisor {
    token: CancellationToken,
    tracker: TaskTracker,
    failed: Arc<AtomicBool>,
}

/// How a supervised service ended.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("a task failed; see the log line before this one")]
    TaskFailed,
    #[error("tasks still running {0:?} after shutdown began; exiting anyway")]
    DrainTimedOut(Duration),
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// The token every task watches to know when to stop.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Asks every task to stop.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Runs `work` every `period` (the first time at once) until shutdown, as an essential task.
    pub fn spawn_every<W>(&self, name: &'static str, period: Duration, mut work: W)
    where
        W: FnMut() + Send + 'static,
    {
        let token = self.token.clone();
        self.spawn(name, async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    _ = ticks.tick() => work(),
                }
            }
        });
    }

    /// Spawns an essential task: if it fails, or returns before shutdown began, the whole service
    /// is asked to stop.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let token = self.token.clone();
        let failed = self.failed.clone();
        self.tracker.spawn(async move {
            match task.await {
                Ok(()) if token.is_cancelled() => tracing::debug!(task = name, "task stopped"),
                Ok(()) => {
                    tracing::error!(
                        task = name,
                        "task stopped before shutdown; stopping the service"
                    );
                    failed.store(true, Ordering::SeqCst);
                    token.cancel();
                }
                Err(error) => {
                    tracing::error!(
                        task = name,
                        error = format!("{error:#}"),
                        "task failed; stopping the service"
                    );
                    failed.store(true, Ordering::SeqCst);
                    token.cancel();
                }
            }
        });
    }

    /// Cancels the token on the first SIGTERM or SIGINT.
    pub fn cancel_on_signals(&self) -> std::io::Result<()> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
                () = token.cancelled() => return,
            }
            token.cancel();
        });
        Ok(())
    }

    /// Waits until shutdown begins, then gives the tasks at most `drain` to finish.
    pub async fn run_until_stopped(self, drain: Duration) -> Result<(), ShutdownError> {
        self.token.cancelled().await;
        self.tracker.close();
        if tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_err()
        {
            return Err(ShutdownError::DrainTimedOut(drain));
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(ShutdownError::TaskFailed);
        }
        Ok(())
    }
}

/// A service's `main` after its settings are parsed: installs logging, starts the service under a
/// supervisor that SIGTERM and SIGINT cancel, and waits for it to stop within `drain`.
pub async fn run_service<Start, Started>(
    name: &str,
    log: &crate::telemetry::LogArgs,
    drain: Duration,
    start: Start,
) -> ExitCode
where
    Start: FnOnce(Supervisor) -> Started,
    Started: Future<Output = anyhow::Result<std::net::SocketAddr>>,
{
    if let Err(error) = log.init() {
        eprintln!("{name}: {error:#}");
        return ExitCode::from(2);
    }
    let supervisor = Supervisor::new();
    if let Err(error) = supervisor.cancel_on_signals() {
        tracing::error!(%error, "cannot listen for signals");
        return ExitCode::FAILURE;
    }
    if let Err(error) = start(supervisor.clone()).await {
        tracing::error!(
            service = name,
            error = format!("{error:#}"),
            "could not start"
        );
        return ExitCode::FAILURE;
    }
    match supervisor.run_until_stopped(drain).await {
        Ok(()) => {
            tracing::info!(service = name, "stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(service = name, %error, "stopped uncleanly");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_task_stops_the_others() {
        let supervisor = Supervisor::new();
        let token = supervisor.token();
        supervisor.spawn("waits", async move {
            token.cancelled().await;
            Ok(())
        });
        supervisor.spawn("fails", async { anyhow::bail!("boom") });
        let outcome = supervisor.run_until_stopped(Duration::from_secs(5)).await;
        assert!(matches!(outcome, Err(ShutdownError::TaskFailed)));
    }

    #[tokio::test]
    async fn a_clean_shutdown_waits_for_tasks_to_finish() {
        let supervisor = Supervisor::new();
        let token = supervisor.token();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        supervisor.spawn("drains", async move {
            token.cancelled().await;
            tokio::task::yield_now().await;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        supervisor.cancel();
        supervisor
            .clone()
            .run_until_stopped(Duration::from_secs(5))
            .await
            .expect("clean shutdown");
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_work_runs_every_period_until_shutdown_and_stops_cleanly() {
        let supervisor = Supervisor::new();
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        supervisor.spawn_every("counts", Duration::from_secs(10), move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_secs(25)).await;
        supervisor.cancel();
        supervisor
            .run_until_stopped(Duration::from_secs(5))
            .await
            .expect("a clean shutdown");
        assert_eq!(runs.load(Ordering::SeqCst), 3, "at 0, 10 and 20 s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_is_bounded() {
        let supervisor = Supervisor::new();
        supervisor.spawn("stuck", std::future::pending());
        supervisor.cancel();
        let outcome = supervisor.run_until_stopped(Duration::from_secs(30)).await;
        assert!(matches!(outcome, Err(ShutdownError::DrainTimedOut(_))));
    }
}
