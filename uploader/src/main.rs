use std::process::ExitCode;

use uploader::config::{Command, DlqAction, UploaderConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let config: UploaderConfig = common::config::parse_command_line();
    if let Some(Command::Dlq { action }) = &config.command {
        return match run_dlq(&config, action).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("uploader dlq: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let (log, drain) = (config.log.clone(), config.shutdown.timeout);
    common::shutdown::run_service("uploader", &log, drain, |supervisor| async move {
        uploader::start(config, &supervisor).await
    })
    .await
}

async fn run_dlq(config: &UploaderConfig, action: &DlqAction) -> anyhow::Result<()> {
    let connection = config.amqp.connect("activity-uploader-dlq").await?;
    let channel = common::amqp::confirm_channel(&connection).await?;
    let topology = config.uploads.topology();
    topology.declare(&channel).await?;
    match action {
        DlqAction::List { tenant } => {
            let jobs = uploader::dlq::list(&channel, &topology, tenant.as_ref()).await?;
            for job in &jobs {
                println!(
                    "{}\ttenant={}\tattempts={}\t{}/{}: {}",
                    job.key, job.tenant, job.attempts, job.class, job.code, job.message
                );
            }
            println!("{} job(s) in {}", jobs.len(), topology.dead_letter_queue);
        }
        DlqAction::Redrive { tenant, limit } => {
            let summary =
                uploader::dlq::redrive(&channel, &topology, tenant.as_ref(), *limit).await?;
            for job in &summary.redriven {
                println!("redriven\t{}\ttenant={}", job.key, job.tenant);
            }
            println!(
                "redrove {} job(s) to {}; {} left in {}",
                summary.redriven.len(),
                topology.queue,
                summary.kept,
                topology.dead_letter_queue
            );
        }
    }
    Ok(())
}
