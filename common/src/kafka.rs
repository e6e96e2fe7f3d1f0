//! Kafka client setup: one place decides the settings our durability promises depend on, and
//! operators can still pass any librdkafka setting through (SASL, TLS, tuning).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Environment variables under this prefix become librdkafka settings: the rest of the name,
/// lower-cased, with `_` read as `.` (`ACTIVITY_KAFKA_RDKAFKA_SECURITY_PROTOCOL=SASL_SSL`).
pub const PASSTHROUGH_ENV_PREFIX: &str = "ACTIVITY_KAFKA_RDKAFKA_";

/// For a consumer that follows a rarely written topic (integrations, first-delivery requests):
/// how long the broker holds a fetch that finds nothing new. A fetch is answered as soon as a
/// record arrives, so this adds no delay to a write; it only spaces the client's fetches while
/// nothing is written, where librdkafka's 500 ms cost an idle service a wake-up every half
/// second. Not for the events consumer: a partition it resumes or is newly assigned is fetched
/// only once the fetch in flight returns. Nor for readers that wait on the client's report of a
/// partition's end (checkpoint reads): a fetch that finds nothing past the end is held this long
/// before the end is reported. The registry knows its ends from the offsets asked at start and
/// needs that report only when a partition's last records are gone.
pub const QUIET_TOPIC_FETCH_WAIT: (&str, &str) = ("fetch.wait.max.ms", "5000");

/// Parts of a librdkafka setting's name that mark its value as a secret (passwords, private
/// keys and their PEM text, tokens, credentials, the OAuth bearer configuration).
const SECRET_NAME_PARTS: &[&str] = &[
    "password",
    "secret",
    "key",
    "token",
    "credential",
    "oauthbearer.config",
];

/// Whether a setting's value must never reach a log or an error message.
fn is_secret_setting(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_NAME_PARTS.iter().any(|part| key.contains(part))
}

/// How to reach the Kafka cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(
        long = "kafka-brokers",
        env = "ACTIVITY_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// A librdkafka setting as KEY=VALUE, repeatable; applied after ACTIVITY_KAFKA_RDKAFKA_* variables.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Create the topics this service writes to on start when they do not exist.
    #[arg(long = "kafka-create-topics", env = "ACTIVITY_KAFKA_CREATE_TOPICS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub create_topics: bool,
    /// Replication factor of topics the services create (use 3 on a production cluster).
    #[arg(long = "kafka-replication", env = "ACTIVITY_KAFKA_REPLICATION", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub replication: i32,
}

fn parse_property(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        // The text is not echoed: it may be a secret typed with the wrong separator.
        _ => Err("a librdkafka setting must be KEY=VALUE (e.g. security.protocol=SASL_SSL); this one has no '=' or no key".to_owned()),
    }
}

impl KafkaArgs {
    /// Settings for `brokers` with every other setting at its default.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: Vec::new(),
            create_topics: true,
            replication: 1,
        }
    }

    /// Pass-through settings from the environment and the command line, the latter winning.
    pub fn passthrough(&self) -> BTreeMap<String, String> {
        passthrough_from(std::env::vars(), &self.properties)
    }

    /// A client configuration with our `defaults`, then the brokers, then the operator's
    /// pass-through settings on top.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        config.set("bootstrap.servers", &self.brokers);
        let passthrough = self.passthrough();
        for (key, value) in &passthrough {
            config.set(key, value);
        }
        if !passthrough.is_empty() {
            tracing::info!(settings = %describe_settings(&passthrough), "librdkafka pass-through settings");
        }
        config
    }

    /// Settings for a producer that must never report success before every in-sync replica has
    /// the record, and never reorders or duplicates on its own retries.
    pub fn producer_config(&self, delivery_timeout: Duration) -> ClientConfig {
        let timeout_ms = delivery_timeout.as_millis().to_string();
        self.client_config(&[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("message.timeout.ms", &timeout_ms),
            ("linger.ms", "5"),
        ])
    }

    /// Creates each topic that does not exist yet; existing topics are left as they are. Every
    /// topic gets `min.insync.replicas` = min(2, replication), so with replication 3 a write
    /// acknowledged with `acks=all` is on two brokers at least, and one broker can be lost.
    pub async fn ensure_topics(&self, topics: &[TopicSpec<'_>]) -> Result<(), KafkaSetupError> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config(&[])
            .create()
            .map_err(KafkaSetupError::Client)?;
        let min_insync: Vec<String> = topics
            .iter()
            .map(|spec| min_insync_replicas(spec.replication).to_string())
            .collect();
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .zip(&min_insync)
            .map(|(spec, min_insync)| {
                spec.config.iter().fold(
                    NewTopic::new(
                        spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(spec.replication),
                    )
                    .set("min.insync.replicas", min_insync),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(KafkaSetupError::Client)?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(KafkaSetupError::CreateTopic { name, code }),
            }
        }
        // A new topic's partitions get their leaders shortly after the controller answers;
        // until then readers see it missing or get `NotLeaderForPartition`.
        let names: Vec<String> = topics.iter().map(|spec| spec.name.to_owned()).collect();
        tokio::task::spawn_blocking(move || wait_for_leaders(admin.inner(), &names, TOPICS_READY))
            .await
            .map_err(|_| KafkaSetupError::NotReady("the wait panicked".to_owned()))?
    }
}

/// The in-sync replicas a write needs for topics of `replication`: two where there are two
/// copies or more, so no acknowledged write lives on one broker alone.
pub fn min_insync_replicas(replication: i32) -> i32 {
    replication.clamp(1, 2)
}

/// The partition ids of `topic` in a metadata answer; empty when the topic does not exist.
pub fn topic_partitions(metadata: &rdkafka::metadata::Metadata, topic: &str) -> Vec<i32> {
    metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

/// A topic a service needs, created on start when missing.
#[derive(Debug, Clone)]
pub struct TopicSpec<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub replication: i32,
    /// Topic-level settings, e.g. `cleanup.policy=compact`.
    pub config: Vec<(&'a str, &'a str)>,
}

/// How long topics may take to get leaders for every partition.
const TOPICS_READY: Duration = Duration::from_secs(30);

/// Waits until the leader of every partition of each of `topics` answers for it. Blocking.
fn wait_for_leaders<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topics: &[String],
    within: Duration,
) -> Result<(), KafkaSetupError> {
    let give_up = std::time::Instant::now() + within;
    let not_ready = |topic: &str, why: String| KafkaSetupError::NotReady(format!("{topic}: {why}"));
    for topic in topics {
        let partitions = retry_until(give_up, |remaining| {
            let metadata = client.fetch_metadata(Some(topic), remaining)?;
            let partitions = topic_partitions(&metadata, topic);
            if partitions.is_empty() {
                // Not in this broker's metadata yet.
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
            Ok(partitions)
        })
        .map_err(|error| not_ready(topic, error.to_string()))?;
        for partition in partitions {
            retry_until(give_up, |remaining| {
                client.fetch_watermarks(topic, partition, remaining)
            })
            .map_err(|error| not_ready(topic, format!("partition {partition}: {error}")))?;
        }
    }
    Ok(())
}

/// Calls `request` with the time left until `give_up`, again after each failure, until it
/// succeeds or the time is up (then its last error): for requests that fail while a cluster
/// settles (a new topic's leaders, a leader moving). Blocking.
pub fn retry_until<T>(
    give_up: std::time::Instant,
    mut request: impl FnMut(Duration) -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    loop {
        let remaining = give_up
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(100));
        match request(remaining) {
            Ok(value) => return Ok(value),
            Err(error) if std::time::Instant::now() >= give_up => return Err(error),
            Err(error) => {
                tracing::debug!(%error, "Kafka request failed; trying again");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Why the Kafka side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot create the Kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("cannot create topic {name}: {code}")]
    CreateTopic {
        name: String,
        code: RDKafkaErrorCode,
    },
    #[error("the topics are not ready within {TOPICS_READY:?}: {0}")]
    NotReady(String),
}

fn passthrough_from(
    env: impl IntoIterator<Item = (String, String)>,
    cli: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut settings: BTreeMap<String, String> = env
        .into_iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(PASSTHROUGH_ENV_PREFIX)?;
            Some((key.to_ascii_lowercase().replace('_', "."), value))
        })
        .collect();
    settings.extend(cli.iter().cloned());
    settings
}

/// Renders settings for a log line, hiding secret values.
fn describe_settings(settings: &BTreeMap<String, String>) -> String {
    settings
        .iter()
        .map(|(key, value)| {
            if is_secret_setting(key) {
                format!("{key}=<redacted>")
            } else {
                format!("{key}={value}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_map_to_librdkafka_keys_and_the_command_line_wins() {
        let env = [
            (
                "ACTIVITY_KAFKA_RDKAFKA_SECURITY_PROTOCOL".to_string(),
                "SASL_SSL".to_string(),
            ),
            (
                "ACTIVITY_KAFKA_RDKAFKA_SASL_MECHANISMS".to_string(),
                "PLAIN".to_string(),
            ),
            (
                "ACTIVITY_KAFKA_BROKERS".to_string(),
                "ignored:9092".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let cli = [("sasl.mechanisms".to_string(), "SCRAM-SHA-512".to_string())];
        let settings = passthrough_from(env, &cli);
        assert_eq!(
            settings.into_iter().collect::<Vec<_>>(),
            [
                ("sasl.mechanisms".to_string(), "SCRAM-SHA-512".to_string()),
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ]
        );
    }

    #[test]
    fn secret_settings_are_redacted_in_logs() {
        let secrets = [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.token.endpoint.url.token",
            "SSL.Key.Password",
            "custom.credentials",
        ];
        let mut settings: BTreeMap<String, String> = secrets
            .iter()
            .map(|key| ((*key).to_string(), format!("hunter2-{key}")))
            .collect();
        settings.insert("sasl.username".to_string(), "svc".to_string());
        let shown = describe_settings(&settings);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sasl.username=svc"));
        for key in secrets {
            assert!(
                shown.contains(&format!("{key}=<redacted>")),
                "{key}: {shown}"
            );
        }
    }

    #[test]
    fn acknowledged_writes_need_two_replicas_wherever_there_are_two() {
        assert_eq!(min_insync_replicas(1), 1);
        assert_eq!(min_insync_replicas(2), 2);
        assert_eq!(min_insync_replicas(3), 2);
        assert_eq!(min_insync_replicas(5), 2);
    }

    #[test]
    fn properties_must_be_key_value() {
        assert_eq!(
            parse_property("a.b=c=d"),
            Ok(("a.b".to_string(), "c=d".to_string()))
        );
        let refused = parse_property("sasl.password:hunter2").expect_err("no '='");
        assert!(!refused.contains("hunter2"), "{refused}");
        assert!(parse_property("novalue").is_err());
        assert!(parse_property("=x").is_err());
    }
}
