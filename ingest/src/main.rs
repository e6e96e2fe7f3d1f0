use std::process::ExitCode;

use ingest::config::IngestConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config: IngestConfig = common::config::parse_command_line();
    if let Err(problem) = config.validate() {
        eprintln!("ingest: invalid configuration: {problem}");
        return ExitCode::from(2);
    }
    let (log, drain) = (config.log.clone(), config.shutdown.timeout);
    common::shutdown::run_service("ingest", &log, drain, |supervisor| async move {
        ingest::start(config, &supervisor).await
    })
    .await
}
