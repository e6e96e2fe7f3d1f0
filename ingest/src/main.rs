use std::process::ExitCode;

use clap::Parser;
use common::shutdown::Supervisor;
use ingest::config::IngestConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config = IngestConfig::parse();
    if let Err(problem) = config.validate() {
        eprintln!("ingest: invalid configuration: {problem}");
        return ExitCode::from(2);
    }
    if let Err(error) = config.log.init() {
        eprintln!("ingest: {error:#}");
        return ExitCode::from(2);
    }
    let supervisor = Supervisor::new();
    if let Err(error) = supervisor.cancel_on_signals() {
        tracing::error!(%error, "cannot listen for signals");
        return ExitCode::FAILURE;
    }
    if let Err(error) = ingest::start(config.clone(), &supervisor).await {
        tracing::error!(error = format!("{error:#}"), "ingest could not start");
        return ExitCode::FAILURE;
    }
    match supervisor.run_until_stopped(config.shutdown.timeout).await {
        Ok(()) => {
            tracing::info!("ingest stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "ingest stopped uncleanly");
            ExitCode::FAILURE
        }
    }
}
