//! The batcher: closes per-tenant windows of activity events into objects and queues them for
//! upload (DESIGN §2–§3).

pub mod config;
pub mod core;
pub mod metrics;
pub mod publish;
pub mod records;
