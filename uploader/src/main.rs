use std::process::ExitCode;

use clap::Parser;
use common::shutdown::Supervisor;
use uploader::config::UploaderConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config = UploaderConfig::parse();
    if let Err(error) = config.log.init() {
        eprintln!("uploader: {error:#}");
        return ExitCode::from(2);
    }
    let supervisor = Supervisor::new();
    if let Err(error) = supervisor.cancel_on_signals() {
        tracing::error!(%error, "cannot listen for signals");
        return ExitCode::FAILURE;
    }
    if let Err(error) = uploader::start(config.clone(), &supervisor).await {
        tracing::error!(error = format!("{error:#}"), "uploader could not start");
        return ExitCode::FAILURE;
    }
    match supervisor.run_until_stopped(config.shutdown.timeout).await {
        Ok(()) => {
            tracing::info!("uploader stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "uploader stopped uncleanly");
            ExitCode::FAILURE
        }
    }
}
