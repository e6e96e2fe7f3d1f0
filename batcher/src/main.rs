use std::process::ExitCode;

use batcher::config::{BatcherConfig, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let config: BatcherConfig = common::config::parse_command_line();
    if let Some(Command::Replay(replay)) = &config.command {
        if let Err(error) = config.log.init() {
            eprintln!("batcher replay: {error:#}");
            return ExitCode::from(2);
        }
        return match batcher::replay::run(&config, replay).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("batcher replay: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let (log, drain) = (config.log.clone(), config.shutdown.timeout);
    common::shutdown::run_service("batcher", &log, drain, |supervisor| async move {
        batcher::start(config, &supervisor).await
    })
    .await
}
