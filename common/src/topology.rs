//! The RabbitMQ topology between the batcher and the uploader (DESIGN §1–§3), declared the same
//! way by both, idempotently:
//!
//! ```text
//!  {name} (direct) ──upload──▶ {name} (quorum queue) ──▶ uploaders
//!                                 └── past the delivery limit, dead-lettered ──▶ {name}.dlq exchange
//!  {name}.retry (direct) ──tier-N──▶ {name}.retry.N (quorum, TTL = delay N)
//!                                      └── expires, dead-lettered back ──▶ {name} exchange
//!  {name}.dlq (direct) ──dead──▶ {name}.dlq (quorum queue)
//! ```
//!
//! Each retry tier is its own queue with one TTL, so messages expire in arrival order and a long
//! delay never holds back a short one. Quorum queues dead-letter at-least-once only with
//! `x-dead-letter-strategy=at-least-once`, which in turn needs `x-overflow=reject-publish`.
//!
//! Every queue states its delivery limit. RabbitMQ 4 gives quorum queues a default of 20 and
//! *drops* a message returned more often than that when the queue has no dead-letter target. A
//! job on the upload queue that keeps coming back (uploaders crashing or losing their connection
//! while holding it) goes to the dead-letter queue instead, where `uploader dlq` shows it.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::parse_positive_duration;

/// Routing key of jobs on the main exchange.
pub const UPLOAD_ROUTING_KEY: &str = "upload";
/// Routing key of jobs on the dead-letter exchange.
pub const DEAD_ROUTING_KEY: &str = "dead";

/// Deliveries of one job from the upload queue before RabbitMQ moves it to the dead-letter
/// queue: an uploader settles every job it handles, so only jobs whose uploaders died or lost
/// their connection while holding them come back, and twenty such returns mean the job itself
/// is the likely cause (say, a body that exhausts an uploader's memory).
pub const UPLOAD_DELIVERY_LIMIT: i64 = 20;
/// The dead-letter queue's delivery limit, set so high it never applies: it is read only by
/// `uploader dlq`, which moves every message it reads instead of returning it, and a message
/// past its limit there would have nowhere to go but away.
const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000;

/// Names and retry delays of the upload queues.
#[derive(Debug, Clone, clap::Args)]
pub struct UploadQueueArgs {
    /// Name of the upload exchange and queue; the retry and dead-letter ones are named after it.
    #[arg(
        long = "uploads-name",
        env = "ACTIVITY_UPLOADS_NAME",
        default_value = "activity.uploads"
    )]
    pub name: String,
    /// Delays of the retry tiers, comma separated; after the last one a job goes to the dead-letter queue.
    #[arg(
        long = "retry-tiers",
        env = "ACTIVITY_RETRY_TIERS",
        value_delimiter = ',',
        default_value = "10s,1m,5m,30m,2h",
        value_parser = parse_positive_duration
    )]
    pub retry_tiers: Vec<Duration>,
}

/// The exchange and queue names of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTopology {
    pub exchange: String,
    pub queue: String,
    pub retry_exchange: String,
    /// One queue per tier, shortest delay first.
    pub retry_queues: Vec<RetryTier>,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
}

/// One retry tier: jobs wait in `queue` for `delay`, then return to the main exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTier {
    pub queue: String,
    pub routing_key: String,
    pub delay: Duration,
}

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "cannot declare {what} {name}: {source} (if it already exists with other settings, \
         such as different retry delays, delete it or choose another ACTIVITY_UPLOADS_NAME)"
    )]
    Declare {
        what: &'static str,
        name: String,
        #[source]
        source: lapin::Error,
    },
}

impl UploadQueueArgs {
    pub fn topology(&self) -> UploadTopology {
        UploadTopology::new(&self.name, &self.retry_tiers)
    }
}

impl UploadTopology {
    pub fn new(name: &str, retry_delays: &[Duration]) -> Self {
        Self {
            exchange: name.to_owned(),
            queue: name.to_owned(),
            retry_exchange: format!("{name}.retry"),
            retry_queues: retry_delays
                .iter()
                .enumerate()
                .map(|(index, delay)| RetryTier {
                    queue: format!("{name}.retry.{}", index + 1),
                    routing_key: format!("tier-{}", index + 1),
                    delay: *delay,
                })
                .collect(),
            dead_letter_exchange: format!("{name}.dlq"),
            dead_letter_queue: format!("{name}.dlq"),
        }
    }

    /// Declares every exchange, queue and binding; declaring again with the same settings is a
    /// no-op, so every process can call it on start.
    pub async fn declare(&self, channel: &Channel) -> Result<(), TopologyError> {
        for exchange in [
            &self.exchange,
            &self.retry_exchange,
            &self.dead_letter_exchange,
        ] {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|source| declare_error("exchange", exchange, source))?;
        }
        let mut upload_arguments = quorum(UPLOAD_DELIVERY_LIMIT);
        dead_letter_to(
            &mut upload_arguments,
            &self.dead_letter_exchange,
            DEAD_ROUTING_KEY,
        );
        declare_bound_queue(
            channel,
            &self.queue,
            &self.exchange,
            UPLOAD_ROUTING_KEY,
            upload_arguments,
        )
        .await?;
        declare_bound_queue(
            channel,
            &self.dead_letter_queue,
            &self.dead_letter_exchange,
            DEAD_ROUTING_KEY,
            quorum(DEAD_LETTER_DELIVERY_LIMIT),
        )
        .await?;
        for tier in &self.retry_queues {
            // Nothing consumes a tier: its messages only expire, so no delivery is counted.
            let mut arguments = quorum(UPLOAD_DELIVERY_LIMIT);
            let ttl_ms = i64::try_from(tier.delay.as_millis()).unwrap_or(i64::MAX);
            arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
            dead_letter_to(&mut arguments, &self.exchange, UPLOAD_ROUTING_KEY);
            declare_bound_queue(
                channel,
                &tier.queue,
                &self.retry_exchange,
                &tier.routing_key,
                arguments,
            )
            .await?;
        }
        Ok(())
    }
}

fn quorum(delivery_limit: i64) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-queue-type"), long_string("quorum"));
    arguments.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongLongInt(delivery_limit),
    );
    arguments
}

/// Dead-letters at least once (RabbitMQ keeps a message until the target confirmed it) to
/// `exchange` with `routing_key`.
fn dead_letter_to(arguments: &mut FieldTable, exchange: &str, routing_key: &str) {
    arguments.insert("x-dead-letter-exchange".into(), long_string(exchange));
    arguments.insert("x-dead-letter-routing-key".into(), long_string(routing_key));
    arguments.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    arguments.insert("x-overflow".into(), long_string("reject-publish"));
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn declare_error(what: &'static str, name: &str, source: lapin::Error) -> TopologyError {
    TopologyError::Declare {
        what,
        name: name.to_owned(),
        source,
    }
}

async fn declare_bound_queue(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    arguments: FieldTable,
) -> Result<(), TopologyError> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .map_err(|source| declare_error("queue", queue, source))?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| declare_error("binding of queue", queue, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_one_base_and_tiers_keep_their_order() {
        let topology = UploadTopology::new(
            "activity.uploads",
            &[Duration::from_secs(10), Duration::from_secs(60)],
        );
        assert_eq!(topology.queue, "activity.uploads");
        assert_eq!(topology.dead_letter_queue, "activity.uploads.dlq");
        let tiers: Vec<_> = topology
            .retry_queues
            .iter()
            .map(|t| (t.queue.as_str(), t.routing_key.as_str(), t.delay.as_secs()))
            .collect();
        assert_eq!(
            tiers,
            [
                ("activity.uploads.retry.1", "tier-1", 10),
                ("activity.uploads.retry.2", "tier-2", 60)
            ]
        );
    }
}
