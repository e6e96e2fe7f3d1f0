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

/// Parses the command line as `T::parse` does, except that a refused value of a secret setting
/// (one whose environment value `--help` hides, or a `--kafka-property`) is not echoed: clap's
/// message quotes the value, and start-up errors end up in logs.
pub fn parse_command_line<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(error) => {
            let message = without_secret_value(&T::command(), &error);
            match message {
                Some(message) => {
                    eprint!("{message}");
                    std::process::exit(error.exit_code());
                }
                None => error.exit(),
            }
        }
    }
}

/// The error's message with the refused value hidden, when the value belongs to a secret
/// setting; `None` when clap's own message can be shown.
fn without_secret_value(command: &clap::Command, error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidValue) else {
        return None;
    };
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.trim_start_matches('-').split([' ', '=']).next()?;
    let secret = command.get_arguments().any(|candidate| {
        candidate.get_long() == Some(long)
            && (candidate.is_hide_env_values_set() || long == "kafka-property")
    });
    secret.then(|| {
        error
            .render()
            .to_string()
            .replace(&format!("'{value}'"), "(hidden)")
    })
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
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Secrets {
        #[arg(long, env = "TEST_SECRET_TOKEN", hide_env_values = true, value_parser = parse_positive_duration)]
        secret: Option<Duration>,
        #[arg(long, value_parser = parse_positive_duration)]
        plain: Option<Duration>,
    }

    #[test]
    fn a_refused_secret_value_is_hidden_and_a_plain_one_shown() {
        let command = <Secrets as clap::CommandFactory>::command();
        let error = Secrets::try_parse_from(["t", "--secret", "hunter2"]).unwrap_err();
        let shown = without_secret_value(&command, &error).expect("a secret");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("--secret"), "{shown}");
        let error = Secrets::try_parse_from(["t", "--plain", "5x"]).unwrap_err();
        assert_eq!(without_secret_value(&command, &error), None);
    }

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
