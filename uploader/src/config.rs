//! Uploader settings: flags with `ACTIVITY_*` environment variables behind them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use common::amqp::AmqpArgs;
use common::aws::AwsArgs;
use common::config::{ShutdownArgs, parse_positive_duration};
use common::event::TenantId;
use common::kafka::KafkaArgs;
use common::telemetry::LogArgs;
use common::topology::UploadQueueArgs;

use crate::retry::RetryPolicy;

/// Delivers queued activity log objects into customer S3 buckets.
///
/// Consumes upload jobs from RabbitMQ, assumes each customer's role (with its external id) and
/// puts the object in the customer's bucket; failures go through the retry tiers to the
/// dead-letter queue.
#[derive(Debug, Clone, Parser)]
#[command(name = "uploader", version)]
pub struct UploaderConfig {
    /// Without a command, run the uploader service.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address for health checks and metrics.
    #[arg(
        long,
        env = "ACTIVITY_UPLOADER_LISTEN",
        default_value = "127.0.0.1:8082"
    )]
    pub listen: SocketAddr,

    /// Uploads in flight at once in this process (also its RabbitMQ prefetch).
    #[arg(long, env = "ACTIVITY_UPLOADER_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub concurrency: u16,

    /// Uploads in flight at once for a tenant whose bucket has not shown itself fast; its
    /// further jobs wait in the first retry tier (not counted as attempts), so a slow customer
    /// bucket cannot take every slot.
    #[arg(long, env = "ACTIVITY_UPLOADER_TENANT_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub tenant_concurrency: u16,

    /// Most attempts per job, the first included; then the job is dead-lettered.
    #[arg(long, env = "ACTIVITY_UPLOADER_MAX_ATTEMPTS", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Jobs older than this are dead-lettered instead of retried.
    #[arg(long, env = "ACTIVITY_UPLOADER_MAX_AGE", default_value = "24h", value_parser = parse_positive_duration)]
    pub max_age: Duration,

    /// Compacted topic holding every tenant's integration.
    #[arg(
        long,
        env = "ACTIVITY_KAFKA_INTEGRATIONS_TOPIC",
        default_value = "activity.integrations"
    )]
    pub integrations_topic: String,

    /// Topic of the delivery records (created with 12 partitions when missing).
    #[arg(
        long,
        env = "ACTIVITY_KAFKA_DELIVERIES_TOPIC",
        default_value = "activity.deliveries"
    )]
    pub deliveries_topic: String,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(flatten)]
    pub aws: AwsArgs,

    #[command(flatten)]
    pub uploads: UploadQueueArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

impl UploaderConfig {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            tiers: self.uploads.retry_tiers.len(),
            max_attempts: self.max_attempts,
            max_age: self.max_age,
        }
    }
}

/// One-off operations instead of running the service.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Inspect or redrive the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum DlqAction {
    /// List dead-lettered jobs with their last error, leaving them in place.
    List {
        /// Only this tenant's jobs.
        #[arg(long)]
        tenant: Option<TenantId>,
    },
    /// Move dead-lettered jobs back to the upload queue with a fresh retry budget.
    Redrive {
        /// Only this tenant's jobs.
        #[arg(long)]
        tenant: Option<TenantId>,
        /// At most this many jobs.
        #[arg(long)]
        limit: Option<usize>,
    },
}
