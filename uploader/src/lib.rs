//! The uploader: puts queued activity log objects into customer buckets with the customer's
//! assumed role (DESIGN §2–§3).
//!
//! Built so far: error classification, assumed-role credentials, destination resolution, the
//! PutObject itself, and the queue consumer with retry tiers and the dead-letter queue. Delivery
//! records, the `dlq` commands and the service binary are not built yet.

pub mod consume;
pub mod credentials;
pub mod destination;
pub mod error;
pub mod metrics;
pub mod retry;
