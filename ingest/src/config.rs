//! Ingest settings: flags with `ACTIVITY_*` environment variables behind them.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Args, Parser};
use common::aws::AwsArgs;
use common::config::{ShutdownArgs, parse_positive_duration};
use common::kafka::KafkaArgs;
use common::telemetry::LogArgs;
use secrecy::{ExposeSecret, SecretString};

/// Shortest bearer token accepted, so a typo'd or placeholder token cannot guard the API.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Accepts activity events over HTTP and writes them to Kafka.
///
/// `POST /v1/events` takes NDJSON (`application/x-ndjson`) or a JSON array (`application/json`),
/// optionally gzip-compressed, and answers `202` only once Kafka has acknowledged every event.
#[derive(Debug, Clone, Parser)]
#[command(name = "ingest", version)]
pub struct IngestConfig {
    /// Address for the events API, health checks and metrics.
    #[arg(long, env = "ACTIVITY_INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Bearer tokens accepted by the events API, comma separated; several allow rotation.
    #[arg(
        long = "token",
        env = "ACTIVITY_INGEST_TOKENS",
        value_delimiter = ',',
        required = true,
        hide_env_values = true,
        value_parser = parse_token
    )]
    pub tokens: Vec<SecretString>,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic the events are written to.
    #[arg(
        long,
        env = "ACTIVITY_KAFKA_EVENTS_TOPIC",
        default_value = "activity.events"
    )]
    pub events_topic: String,

    /// Partitions of the events topic when ingest creates it (a tenant's events share one).
    #[arg(long, env = "ACTIVITY_KAFKA_EVENTS_PARTITIONS", default_value_t = 12,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub events_partitions: i32,

    /// Largest accepted event, in bytes of compact JSON.
    #[arg(long, env = "ACTIVITY_INGEST_MAX_EVENT_BYTES", default_value_t = 256 * 1024)]
    pub max_event_bytes: usize,

    /// Largest accepted request body, in bytes, both as sent and after gzip decompression.
    #[arg(long, env = "ACTIVITY_INGEST_MAX_BODY_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long a request's body may take to arrive once its headers did; a slower one is
    /// answered 408 and its connection closed, so a client trickling bytes cannot hold a
    /// connection and its share of the in-flight budget for long.
    #[arg(long, env = "ACTIVITY_INGEST_BODY_TIMEOUT", default_value = "30s",
          value_parser = parse_positive_duration)]
    pub body_timeout: Duration,

    /// Most client connections open at once; past it, new ones wait to be accepted until one
    /// closes, so no client can make ingest hold unbounded sockets.
    #[arg(long, env = "ACTIVITY_INGEST_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// A client connection on which nothing is read or written for this long is closed, so
    /// connections left open and silent do not keep their places under the connection limit.
    /// Longer than the body and produce timeouts, so a request being handled is never cut.
    #[arg(long, env = "ACTIVITY_INGEST_IDLE_TIMEOUT", default_value = "60s",
          value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// Most events accepted in one request.
    #[arg(long, env = "ACTIVITY_INGEST_MAX_EVENTS", default_value_t = 10_000)]
    pub max_events: usize,

    /// How long a request waits for Kafka to acknowledge its events before answering 503.
    #[arg(long, env = "ACTIVITY_INGEST_PRODUCE_TIMEOUT", default_value = "10s",
          value_parser = parse_positive_duration)]
    pub produce_timeout: Duration,

    /// The Retry-After a 503 answer carries.
    #[arg(long, env = "ACTIVITY_INGEST_RETRY_AFTER", default_value = "5s",
          value_parser = parse_positive_duration)]
    pub retry_after: Duration,

    /// Request bytes held in memory at once across all requests; past it, requests get 503.
    #[arg(long, env = "ACTIVITY_INGEST_MAX_INFLIGHT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_inflight_bytes: usize,

    /// Per-tenant rate limit in events per second; unset means no limit.
    #[arg(long, env = "ACTIVITY_INGEST_TENANT_RATE")]
    pub tenant_rate: Option<NonZeroU32>,

    /// Per-tenant burst in events (defaults to the larger of the rate and --max-events).
    #[arg(long, env = "ACTIVITY_INGEST_TENANT_BURST", requires = "tenant_rate")]
    pub tenant_burst: Option<NonZeroU32>,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

/// Shortest external-id secret accepted: it is all that keeps external ids unguessable.
pub const MIN_SECRET_CHARS: usize = 32;

/// The admin API, where customers connect their buckets. Off unless admin tokens are set.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Bearer tokens of the admin API, comma separated; unset, the admin API is off. They must
    /// differ from the events API's tokens.
    #[arg(
        long = "admin-token",
        env = "ACTIVITY_ADMIN_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_token
    )]
    pub admin_tokens: Vec<SecretString>,

    /// The vendor's IAM role that assumes customer roles (the uploader's identity); customers'
    /// trust policies name it.
    #[arg(long, env = "ACTIVITY_VENDOR_ROLE_ARN")]
    pub vendor_role_arn: Option<String>,

    /// Secret the tenants' external ids are derived from (HMAC-SHA256), at least 32 characters.
    /// Saved integrations keep their external id when it changes.
    #[arg(long, env = "ACTIVITY_EXTERNAL_ID_SECRET", hide_env_values = true,
          value_parser = parse_secret)]
    pub external_id_secret: Option<SecretString>,

    /// Longest a connection test (assume role, put, read back, delete) may take.
    #[arg(long, env = "ACTIVITY_ADMIN_CONNECTION_TEST_TIMEOUT", default_value = "30s",
          value_parser = parse_positive_duration)]
    pub connection_test_timeout: Duration,

    /// Compacted topic holding every tenant's integration.
    #[arg(
        long,
        env = "ACTIVITY_KAFKA_INTEGRATIONS_TOPIC",
        default_value = "activity.integrations"
    )]
    pub integrations_topic: String,

    /// Topic of first-delivery requests for the batchers.
    #[arg(
        long,
        env = "ACTIVITY_KAFKA_FIRST_DELIVERIES_TOPIC",
        default_value = "activity.first-deliveries"
    )]
    pub first_deliveries_topic: String,

    /// Topic of the uploaders' delivery records, which integration status is built from.
    #[arg(
        long,
        env = "ACTIVITY_KAFKA_DELIVERIES_TOPIC",
        default_value = "activity.deliveries"
    )]
    pub deliveries_topic: String,

    /// The public keys digests are signed with, with their validity periods: a JSON file
    /// `{"keys": [{"key_id", "public_key_pem", "valid_from", "valid_until"}]}`, served as is by
    /// `GET /v1/digest-keys` for customers' verifiers. Each key is checked when ingest starts.
    #[arg(long, env = "ACTIVITY_DIGEST_PUBLIC_KEYS_FILE", value_parser = read_public_keys)]
    pub digest_public_keys: Option<PublishedKeys>,

    /// A connected, enabled tenant whose uploads have failed this long, with no object stored
    /// since, is not getting its logs: `GET /v1/stale-tenants` lists it and
    /// `activity_ingest_stale_tenants` counts it. Two windows is a good value.
    #[arg(long, env = "ACTIVITY_ADMIN_STALE_AFTER", default_value = "2h", value_parser = parse_positive_duration)]
    pub stale_after: Duration,

    #[command(flatten)]
    pub aws: AwsArgs,
}

/// The digest public keys as published, each checked.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PublishedKeys {
    pub keys: Vec<common::digest::signing::PublishedKey>,
}

fn read_public_keys(path: &str) -> Result<PublishedKeys, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("cannot read {path}: {error}"))?;
    let published: PublishedKeys = serde_json::from_str(&text)
        .map_err(|error| format!("{path} is not a list of public keys: {error}"))?;
    common::digest::signing::PublicKeys::new(published.keys.clone())
        .map_err(|error| format!("{path}: {error}"))?;
    Ok(published)
}

impl AdminArgs {
    pub fn enabled(&self) -> bool {
        !self.admin_tokens.is_empty()
    }
}

fn parse_secret(raw: &str) -> Result<SecretString, String> {
    if raw.chars().count() < MIN_SECRET_CHARS {
        return Err(format!(
            "the secret must be at least {MIN_SECRET_CHARS} characters long"
        ));
    }
    Ok(SecretString::from(raw))
}

fn parse_token(raw: &str) -> Result<SecretString, String> {
    let raw = raw.trim();
    if raw.chars().count() < MIN_TOKEN_CHARS {
        return Err(format!(
            "each token must be at least {MIN_TOKEN_CHARS} characters long"
        ));
    }
    Ok(SecretString::from(raw))
}

impl IngestConfig {
    /// Checks the settings that depend on each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_event_bytes == 0 || self.max_body_bytes == 0 || self.max_events == 0 {
            return Err(
                "ACTIVITY_INGEST_MAX_EVENT_BYTES, _MAX_BODY_BYTES and _MAX_EVENTS must be positive"
                    .into(),
            );
        }
        if self.admin.enabled() {
            let role = self.admin.vendor_role_arn.as_deref().ok_or(
                "ACTIVITY_VENDOR_ROLE_ARN is required with ACTIVITY_ADMIN_TOKENS: customers' trust policies name it",
            )?;
            let account = role.split(':').nth(4).unwrap_or_default();
            common::integration::check_role_arn(role, account)
                .map_err(|problem| format!("ACTIVITY_VENDOR_ROLE_ARN {problem}"))?;
            if self.admin.external_id_secret.is_none() {
                return Err(
                    "ACTIVITY_EXTERNAL_ID_SECRET is required with ACTIVITY_ADMIN_TOKENS".into(),
                );
            }
            let shared = self.admin.admin_tokens.iter().any(|admin| {
                self.tokens
                    .iter()
                    .any(|events| events.expose_secret() == admin.expose_secret())
            });
            if shared {
                return Err(
                    "ACTIVITY_ADMIN_TOKENS must differ from ACTIVITY_INGEST_TOKENS: event producers must not manage integrations".into(),
                );
            }
        }
        let longest_wait = [
            ("ACTIVITY_INGEST_BODY_TIMEOUT", self.body_timeout),
            ("ACTIVITY_INGEST_PRODUCE_TIMEOUT", self.produce_timeout),
            (
                "ACTIVITY_ADMIN_CONNECTION_TEST_TIMEOUT",
                self.admin.connection_test_timeout,
            ),
        ]
        .into_iter()
        .filter(|(name, _)| self.admin.enabled() || !name.starts_with("ACTIVITY_ADMIN"))
        .max_by_key(|(_, wait)| *wait);
        if let Some((name, wait)) = longest_wait
            && self.idle_timeout <= wait
        {
            return Err(format!(
                "ACTIVITY_INGEST_IDLE_TIMEOUT ({:?}) must be longer than {name} ({wait:?}): a connection waiting on a request would be cut",
                self.idle_timeout
            ));
        }
        if self.max_inflight_bytes < self.max_body_bytes {
            return Err(format!(
                "ACTIVITY_INGEST_MAX_INFLIGHT_BYTES ({}) must be at least ACTIVITY_INGEST_MAX_BODY_BYTES ({})",
                self.max_inflight_bytes, self.max_body_bytes
            ));
        }
        Ok(())
    }

    /// The per-tenant burst, when rate limiting is on.
    pub fn effective_tenant_burst(&self) -> Option<NonZeroU32> {
        let rate = self.tenant_rate?;
        let max_events = NonZeroU32::new(u32::try_from(self.max_events).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        Some(self.tenant_burst.unwrap_or(rate.max(max_events)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<IngestConfig, clap::Error> {
        let mut args = vec!["ingest", "--token", "0123456789abcdef0123"];
        args.extend_from_slice(extra);
        IngestConfig::try_parse_from(args)
    }

    #[test]
    fn a_digest_key_file_with_a_wrong_key_is_refused_at_start() {
        let path = std::env::temp_dir().join(format!("digest-keys-{}.json", std::process::id()));
        let key = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let file = serde_json::json!({"keys": [{
            "key_id": "0123456789abcdef", "public_key_pem": key,
            "valid_from": "2026-01-01T00:00:00Z"
        }]});
        std::fs::write(&path, file.to_string()).expect("write");
        let path_text = path.to_string_lossy().into_owned();
        let error = parse(&["--digest-public-keys", &path_text])
            .expect_err("refused")
            .to_string();
        assert!(error.contains("key 0123456789abcdef has the id"), "{error}");
        std::fs::write(&path, "[]").expect("write");
        let error = parse(&["--digest-public-keys", &path_text])
            .expect_err("refused")
            .to_string();
        assert!(error.contains("is not a list of public keys"), "{error}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_idle_timeout_must_outlast_every_wait_of_a_request() {
        let config = IngestConfig::try_parse_from([
            "ingest",
            "--token",
            "0123456789abcdef0123",
            "--idle-timeout",
            "20s",
        ])
        .expect("parse");
        let problem = config
            .validate()
            .expect_err("20 s idle under a 30 s body timeout");
        assert!(
            problem.contains("ACTIVITY_INGEST_BODY_TIMEOUT (30s)"),
            "{problem}"
        );
    }

    #[test]
    fn defaults_match_the_design_limits() {
        let config = parse(&[]).expect("parses");
        assert_eq!(config.max_event_bytes, 262_144);
        assert_eq!(config.max_body_bytes, 5_242_880);
        assert_eq!(config.max_events, 10_000);
        assert!(config.validate().is_ok());
        assert_eq!(config.effective_tenant_burst(), None);
    }

    #[test]
    fn short_tokens_are_refused_with_a_reason() {
        let error = IngestConfig::try_parse_from(["ingest", "--token", "short"]).unwrap_err();
        assert!(
            error.to_string().contains("at least 16 characters"),
            "{error}"
        );
    }

    #[test]
    fn the_burst_defaults_to_one_full_request() {
        let config = parse(&["--tenant-rate", "100"]).expect("parses");
        assert_eq!(
            config.effective_tenant_burst().map(NonZeroU32::get),
            Some(10_000)
        );
    }

    #[test]
    fn the_admin_api_needs_its_own_tokens_a_vendor_role_and_a_secret() {
        let secret = "s".repeat(MIN_SECRET_CHARS);
        let role = "arn:aws:iam::111122223333:role/Delivery";
        let token = "admin-token-0123456789";
        let ok = parse(&[
            "--admin-token",
            token,
            "--vendor-role-arn",
            role,
            "--external-id-secret",
            &secret,
        ])
        .expect("parses");
        assert!(ok.admin.enabled());
        assert_eq!(ok.validate(), Ok(()));
        let no_role =
            parse(&["--admin-token", token, "--external-id-secret", &secret]).expect("parses");
        assert!(
            no_role
                .validate()
                .unwrap_err()
                .contains("ACTIVITY_VENDOR_ROLE_ARN")
        );
        let shared = parse(&[
            "--admin-token",
            "0123456789abcdef0123",
            "--vendor-role-arn",
            role,
            "--external-id-secret",
            &secret,
        ])
        .expect("parses");
        assert!(shared.validate().unwrap_err().contains("must differ"));
        assert!(parse(&["--external-id-secret", "short"]).is_err());
        assert!(!parse(&[]).expect("parses").admin.enabled());
    }

    #[test]
    fn inflight_memory_must_hold_one_request() {
        let config =
            parse(&["--max-inflight-bytes", "1000", "--max-body-bytes", "2000"]).expect("parses");
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("MAX_INFLIGHT_BYTES")
        );
    }
}
