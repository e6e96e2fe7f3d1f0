//! The uploader: puts queued activity log objects into customer buckets with the customer's
//! assumed role (DESIGN §2–§3).
//!
//! Built so far: error classification, assumed-role credentials, destination resolution and the
//! PutObject itself. The queue consumer, retry tiers, delivery records and the `dlq` commands are
//! not built yet.

pub mod credentials;
pub mod destination;
pub mod error;
pub mod metrics;
