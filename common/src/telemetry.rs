//! Structured logging: text for people, JSON for log pipelines.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings shared by every service.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(
        long = "log-format",
        env = "ACTIVITY_LOG_FORMAT",
        default_value = "text"
    )]
    pub format: LogFormat,
    /// Which log lines to keep, in tracing's filter syntax (e.g. `info,ingest=debug`).
    #[arg(long = "log-filter", env = "ACTIVITY_LOG", default_value = "info")]
    pub filter: String,
}

impl LogArgs {
    /// Installs the global subscriber. Fails if the filter does not parse or a subscriber is
    /// already installed.
    pub fn init(&self) -> anyhow::Result<()> {
        let filter = EnvFilter::try_new(&self.filter).map_err(|e| {
            anyhow::anyhow!("ACTIVITY_LOG {:?} is not a valid filter: {e}", self.filter)
        })?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let installed = match self.format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
        installed.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
    }
}
