//! What the activity log delivery services share: the event type, configuration pieces, Kafka
//! client setup, metrics, logging, the operational HTTP routes and task supervision.

pub mod amqp;
pub mod async_producer;
pub mod aws;
pub mod canonical;
pub mod clock;
pub mod codec;
pub mod config;
pub mod delivery;
pub mod digest;
pub mod event;
pub mod event_line;
pub mod integration;
pub mod job;
pub mod kafka;
pub mod key;
pub mod listener;
pub mod metrics;
pub mod ops;
pub mod producer;
pub mod read_to_end;
pub mod registry;
#[cfg(feature = "s3")]
pub mod s3;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
