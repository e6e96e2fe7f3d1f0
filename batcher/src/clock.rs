//! Clock records. A caught-up, idle partition's windows close by the clock, and the clock is the
//! one input that is not in the log: a batcher that closed a window by it and died before its
//! next checkpoint would rebuild that window without the close, and a straggler read after the
//! close would go into a rebuilt part under the key already delivered. So the batcher writes the
//! clock into the log instead of closing by it: a record without a value, stamped with the time,
//! carrying the [`CLOCK_HEADER`], at the end of the idle partition. Reading it closes what its
//! time closes exactly as any record does (after every record before it in the log), and a
//! rebuild or a replay reads the same record and closes the same windows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clock::now_unix_ms;
use common::producer::HealingProducer;
use metrics::counter;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::metrics::CLOCK_RECORDS;

/// The header that marks a clock record of the events topic.
pub const CLOCK_HEADER: &str = "activity-clock";

/// How long a partition waits for its clock record to be read before it writes another.
const REWRITE_AFTER: Duration = Duration::from_secs(5);
/// How long writing one clock record may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `message` is a clock record rather than an event.
pub fn is_clock_record<M: Message>(message: &M) -> bool {
    message
        .headers()
        .is_some_and(|headers| headers.iter().any(|header| header.key == CLOCK_HEADER))
}

/// Writes clock records to the partitions of the events topic.
pub struct ClockWriter {
    producer: Arc<HealingProducer>,
    topic: String,
    runtime: tokio::runtime::Handle,
    written: HashMap<i32, Instant>,
}

impl ClockWriter {
    pub fn new(
        producer: Arc<HealingProducer>,
        topic: String,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            producer,
            topic,
            runtime,
            written: HashMap::new(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes a clock record stamped now to `partition`, unless one was written in the last
    /// few seconds (it is still on its way back). A failed write is logged; the next
    /// housekeeping round writes again.
    pub fn tick(&mut self, partition: i32) {
        let now = Instant::now();
        if self
            .written
            .get(&partition)
            .is_some_and(|at| now.duration_since(*at) < REWRITE_AFTER)
        {
            return;
        }
        self.written.insert(partition, now);
        let (producer, topic) = (self.producer.clone(), self.topic.clone());
        self.runtime.spawn(async move {
            let current = producer.current();
            let record = FutureRecord::<(), [u8]>::to(&topic)
                .partition(partition)
                .timestamp(now_unix_ms())
                .headers(OwnedHeaders::new().insert(Header {
                    key: CLOCK_HEADER,
                    value: Some("1"),
                }));
            let sent = current.send(record, QUEUE_TIMEOUT).await;
            producer.settle(&current, sent.is_ok()).await;
            match sent {
                Ok(_) => counter!(CLOCK_RECORDS).increment(1),
                Err(error) => {
                    tracing::warn!(partition, %error, "cannot write a clock record; trying again later");
                }
            }
        });
    }
}
