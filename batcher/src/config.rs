//! Batcher settings: flags with `ACTIVITY_*` environment variables behind them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use common::amqp::AmqpArgs;
use common::config::{ShutdownArgs, parse_duration, parse_positive_duration};
use common::digest::signing::SigningKey;
use common::event::TenantId;
use common::kafka::KafkaArgs;
use common::telemetry::LogArgs;
use common::topology::UploadQueueArgs;

use crate::core::{PartSettings, WindowSettings};
use crate::digests::fold::Periods;

/// Closes per-tenant windows of activity events into objects and queues them for upload.
///
/// Reads the events topic in the `activity-batcher` consumer group, keeps one open part per
/// tenant and window, and when a window closes publishes each part as an upload job to
/// RabbitMQ with publisher confirms; Kafka offsets are committed only behind confirmed parts.
#[derive(Debug, Clone, Parser)]
#[command(name = "batcher", version)]
pub struct BatcherConfig {
    /// Without a command, run the batcher service.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address for health checks and metrics.
    #[arg(
        long,
        env = "ACTIVITY_BATCHER_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: SocketAddr,

    /// Consumer group of the batchers sharing the events topic.
    #[arg(
        long,
        env = "ACTIVITY_BATCHER_GROUP",
        default_value = "activity-batcher"
    )]
    pub group: String,

    #[command(flatten)]
    pub batching: BatchingArgs,

    /// Directory for parts spilled above the memory budget; only a cache, emptied on start.
    #[arg(
        long,
        env = "ACTIVITY_BATCHER_SPILL_DIR",
        default_value = "/var/cache/activity-logs/batcher-spill"
    )]
    pub spill_dir: PathBuf,

    /// Bytes of open parts held in memory before the largest spill to disk.
    #[arg(long, env = "ACTIVITY_BATCHER_MEMORY_BUDGET", default_value_t = 512 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1_048_576..))]
    pub memory_budget: u64,

    /// How often confirmed progress is checkpointed and committed.
    #[arg(long, env = "ACTIVITY_BATCHER_COMMIT_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    pub commit_interval: Duration,

    /// Compacted topic of the batchers' checkpoints (created when missing).
    #[arg(
        long,
        env = "ACTIVITY_KAFKA_CHECKPOINTS_TOPIC",
        default_value = "activity.batcher.checkpoints"
    )]
    pub checkpoints_topic: String,

    /// Start even though the group's checkpoints were written with other object settings
    /// (window, close delay, object and message sizes, frame size, zstd level). Without it the
    /// batcher refuses to start, since rebuilding with other settings cuts other objects under
    /// keys already delivered. Use it only with every batcher of the group stopped.
    #[arg(long, env = "ACTIVITY_BATCHER_ALLOW_SETTINGS_CHANGE")]
    pub allow_settings_change: bool,

    #[command(flatten)]
    pub topics: TopicArgs,

    #[command(flatten)]
    pub digests: DigestArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(flatten)]
    pub uploads: UploadQueueArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

/// Signed digests (README "Verifying delivered logs"): built from the deliveries topic by the
/// batchers when a signing key is given.
#[derive(Debug, Clone, Args)]
pub struct DigestArgs {
    /// File holding the Ed25519 private key that signs digests (PKCS#8 PEM, as `openssl genpkey
    /// -algorithm ed25519` writes it). Without it, or `ACTIVITY_DIGEST_SIGNING_KEY`, no digests
    /// are made.
    #[arg(long, env = "ACTIVITY_DIGEST_SIGNING_KEY_FILE", value_parser = read_signing_key_file, conflicts_with = "digest_signing_key")]
    pub digest_signing_key_file: Option<Arc<SigningKey>>,

    /// The signing key itself (the PEM text), for a secret store that hands it over as a setting.
    #[arg(long, env = "ACTIVITY_DIGEST_SIGNING_KEY", hide_env_values = true, value_parser = parse_signing_key)]
    pub digest_signing_key: Option<Arc<SigningKey>>,

    /// Length of a digest's period, aligned to the UTC epoch.
    #[arg(long, env = "ACTIVITY_DIGEST_PERIOD", default_value = "1h", value_parser = parse_positive_duration)]
    pub digest_period: Duration,

    /// How long after a period's end a delivery in it may still be recorded; the period's
    /// digests are made once that much time has passed.
    #[arg(long, env = "ACTIVITY_DIGEST_GRACE", default_value = "5m", value_parser = parse_duration)]
    pub digest_grace: Duration,

    /// Consumer group of the digest builders; the batchers' group followed by `-digests` when
    /// unset. A group new to the deliveries topic rebuilds every digest from the topic's start:
    /// the same bytes, which the uploads then find already stored.
    #[arg(long, env = "ACTIVITY_DIGEST_GROUP")]
    pub digest_group: Option<String>,

    /// Topic of the delivery records, which digests are built from.
    #[arg(
        long,
        env = "ACTIVITY_KAFKA_DELIVERIES_TOPIC",
        default_value = "activity.deliveries"
    )]
    pub deliveries_topic: String,
}

/// A duration in whole milliseconds, as windows and periods are counted.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl DigestArgs {
    pub fn periods(&self) -> Periods {
        Periods {
            length_ms: millis(self.digest_period).max(1),
            grace_ms: millis(self.digest_grace),
        }
    }

    /// The key that signs digests, if digests are made.
    pub fn signing_key(&self) -> Option<Arc<SigningKey>> {
        self.digest_signing_key_file
            .clone()
            .or_else(|| self.digest_signing_key.clone())
    }
}

fn read_signing_key_file(path: &str) -> Result<Arc<SigningKey>, String> {
    let pem = std::fs::read(path).map_err(|error| format!("cannot read {path}: {error}"))?;
    SigningKey::from_pem(&pem)
        .map(Arc::new)
        .map_err(|error| format!("{path}: {error}"))
}

fn parse_signing_key(pem: &str) -> Result<Arc<SigningKey>, String> {
    SigningKey::from_pem(pem.as_bytes()).map(Arc::new)
}

/// The topics both the service and `replay` read.
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// Topic of the accepted events.
    #[arg(
        long,
        env = "ACTIVITY_KAFKA_EVENTS_TOPIC",
        default_value = "activity.events"
    )]
    pub events_topic: String,

    /// Compacted topic holding every tenant's integration.
    #[arg(
        long,
        env = "ACTIVITY_KAFKA_INTEGRATIONS_TOPIC",
        default_value = "activity.integrations"
    )]
    pub integrations_topic: String,

    /// Topic of first-delivery requests, written by the admin API when a tenant connects.
    #[arg(
        long,
        env = "ACTIVITY_KAFKA_FIRST_DELIVERIES_TOPIC",
        default_value = "activity.first-deliveries"
    )]
    pub first_deliveries_topic: String,
}

/// Half the close delay, so a window still waits at least half its close delay for
/// stragglers, and at most a minute (the events topic refuses records stamped further ahead,
/// `message.timestamp.after.max.ms`, when the services created it).
pub fn default_future_tolerance_ms(close_delay_ms: i64) -> i64 {
    (close_delay_ms / 2).min(60_000)
}

/// What a job's headers and properties may take of a RabbitMQ message; the body gets the rest.
const MESSAGE_HEADER_ALLOWANCE: u64 = 64 * 1024;

/// The largest part body that fits in a message of `max_message_bytes`.
pub fn max_body_bytes(max_message_bytes: u64) -> u64 {
    max_message_bytes.saturating_sub(MESSAGE_HEADER_ALLOWANCE)
}

/// How events become windows and objects; a replay must use the values the live batcher used,
/// or it builds different objects.
#[derive(Debug, Clone, Args)]
pub struct BatchingArgs {
    /// Window length; windows are aligned to the UTC epoch.
    #[arg(long, env = "ACTIVITY_BATCHER_WINDOW", default_value = "1h", value_parser = parse_positive_duration)]
    pub window: Duration,

    /// How far a partition's stream time must pass a window's end before it closes, so
    /// stragglers from other ingest instances still make it in.
    #[arg(long, env = "ACTIVITY_BATCHER_CLOSE_DELAY", default_value = "2m", value_parser = parse_duration)]
    pub close_delay: Duration,

    /// Largest object, in uncompressed bytes; a window's part is cut before it would grow past it.
    #[arg(long, env = "ACTIVITY_BATCHER_MAX_OBJECT_BYTES", default_value_t = 32 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_object_bytes: u64,

    /// Largest RabbitMQ message, at most the broker's `max_message_size` (RabbitMQ 4's
    /// default is 16 MiB): a part is also cut before its compressed body could outgrow it, so a
    /// tenant with `compression: none`, or events that barely compress, never makes a job the
    /// broker refuses.
    #[arg(long, env = "ACTIVITY_BATCHER_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(2 * MESSAGE_HEADER_ALLOWANCE..=512 * 1024 * 1024))]
    pub max_message_bytes: u64,

    /// An open part's raw tail is compressed into a frame once it holds this many bytes.
    #[arg(long, env = "ACTIVITY_BATCHER_FRAME_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(256..=16_777_216))]
    pub frame_bytes: u64,

    /// How far ahead of the batcher's clock a record's time may be; a record stamped further
    /// ahead (a host's clock running ahead) is batched as if stamped at this bound, so it
    /// cannot close every open window. Default: half the close delay, at most a minute.
    #[arg(long, env = "ACTIVITY_BATCHER_FUTURE_TOLERANCE", value_parser = parse_duration)]
    pub future_tolerance: Option<Duration>,

    /// zstd compression level of the objects.
    #[arg(long, env = "ACTIVITY_BATCHER_ZSTD_LEVEL", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
}

impl BatchingArgs {
    pub fn window_settings(&self) -> WindowSettings {
        let close_delay_ms = millis(self.close_delay);
        WindowSettings {
            length_ms: millis(self.window).max(1),
            close_delay_ms,
            future_tolerance_ms: self
                .future_tolerance
                .map_or_else(|| default_future_tolerance_ms(close_delay_ms), millis),
            max_object_bytes: self.max_object_bytes,
            max_body_bytes: max_body_bytes(self.max_message_bytes),
            part: PartSettings {
                frame_bytes: usize::try_from(self.frame_bytes).unwrap_or(usize::MAX),
                zstd_level: self.zstd_level,
            },
        }
    }
}

/// One-off operations instead of running the service.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Rebuild the windows of a range of the events topic and enqueue their objects again.
    ///
    /// Each partition starts at the beginning of the window holding its start, so the objects
    /// are the ones live batching made (same keys, same bytes): running it twice, or over
    /// objects already delivered, is safe.
    Replay(ReplayArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Where to start: an RFC 3339 time (`2026-11-27T09:00:00Z`), or `partition:offset` pairs
    /// separated by commas (`0:1200,3:880`).
    #[arg(long, value_parser = parse_start)]
    pub from: ReplayStart,
    /// Stop at this RFC 3339 time (exclusive): windows starting at or after it are not built.
    /// Default: now.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<time::OffsetDateTime>,
    /// Only this tenant's objects.
    #[arg(long)]
    pub tenant: Option<TenantId>,
}

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStart {
    Time(time::OffsetDateTime),
    Offsets(Vec<(i32, i64)>),
}

fn parse_time(raw: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{raw:?} is not an RFC 3339 time ({e}); e.g. 2026-11-27T09:00:00Z"))
}

fn parse_start(raw: &str) -> Result<ReplayStart, String> {
    if raw.contains('T') {
        return parse_time(raw).map(ReplayStart::Time);
    }
    let mut offsets = Vec::new();
    for pair in raw.split(',') {
        let parsed = pair.split_once(':').and_then(|(partition, offset)| {
            Some((
                partition.trim().parse::<i32>().ok()?,
                offset.trim().parse::<i64>().ok()?,
            ))
        });
        match parsed {
            Some((partition, offset)) if partition >= 0 && offset >= 0 => {
                offsets.push((partition, offset));
            }
            _ => {
                return Err(format!(
                    "{pair:?} is neither an RFC 3339 time nor partition:offset (e.g. 2026-11-27T09:00:00Z or 0:1200,3:880)"
                ));
            }
        }
    }
    Ok(ReplayStart::Offsets(offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_hourly_contract() {
        let config = BatcherConfig::try_parse_from(["batcher"]).expect("defaults");
        let settings = config.batching.window_settings();
        assert_eq!(settings.length_ms, 3_600_000);
        assert_eq!(settings.max_object_bytes, 32 * 1024 * 1024);
        assert_eq!(settings.max_body_bytes, 16 * 1024 * 1024 - 64 * 1024);
        assert_eq!(settings.future_tolerance_ms, 60_000);
        assert_eq!(default_future_tolerance_ms(500), 250);
        assert_eq!(settings.part.zstd_level, 3);
        assert_eq!(config.group, "activity-batcher");
    }

    #[test]
    fn replay_starts_parse_as_a_time_or_offsets_and_explain_mistakes() {
        assert_eq!(
            parse_start("0:1200, 3:880"),
            Ok(ReplayStart::Offsets(vec![(0, 1200), (3, 880)]))
        );
        assert!(matches!(
            parse_start("2026-11-27T09:00:00Z"),
            Ok(ReplayStart::Time(_))
        ));
        assert!(
            parse_start("0:-1")
                .unwrap_err()
                .contains("partition:offset")
        );
        assert!(parse_start("yesterday").unwrap_err().contains("RFC 3339"));
        assert!(
            parse_start("2026-11-27T25:00:00Z")
                .unwrap_err()
                .contains("RFC 3339")
        );
    }

    #[test]
    fn the_replay_command_takes_its_range_and_tenant() {
        let config = BatcherConfig::try_parse_from([
            "batcher",
            "replay",
            "--from",
            "2026-11-27T09:00:00Z",
            "--to",
            "2026-11-27T11:00:00Z",
            "--tenant",
            "acme",
        ])
        .expect("replay");
        let Some(Command::Replay(replay)) = config.command else {
            panic!("a replay command");
        };
        assert_eq!(replay.tenant.map(|t| t.to_string()), Some("acme".into()));
        assert!(replay.to.is_some());
    }
}
