//! Configuration pieces every service flattens into its own command line.
//!
//! Every setting is a command-line flag with an `ACTIVITY_*` environment variable behind it, so
//! `--help` documents the environment too. Values are validated while parsing; a service never
//! starts on a setting it would reject later.

use std::time::Duration;

/// The prefix of every environment variable the services read.
pub const ENV_PREFIX: &str = "ACTIVITY_";

/// Parses a duration such as `250ms`, `10s` or `1h`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 1h)"))
}

/// Parses a strictly positive duration.
pub fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    match parse_duration(raw)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

/// How long a service may take to stop after SIGTERM or SIGINT.
#[derive(Debug, Clone, clap::Args)]
pub struct ShutdownArgs {
    /// Longest time to finish in-flight work after SIGTERM before exiting anyway.
    #[arg(
        long = "shutdown-timeout",
        env = "ACTIVITY_SHUTDOWN_TIMEOUT",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_explain_mistakes() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").unwrap_err().contains("expected e.g."));
        assert_eq!(
            parse_positive_duration("0s"),
            Err("must be greater than zero".to_string())
        );
    }
}
