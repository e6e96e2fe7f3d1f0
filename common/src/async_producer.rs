//! A Kafka producer whose writes are futures, like rdkafka's `FutureProducer`, without its busy
//! wait when idle.
//!
//! `FutureProducer` serves delivery reports from a thread that polls librdkafka for 100 ms at a
//! time, and each of those polls ends in a spin: once less than a millisecond is left, rdkafka
//! (0.39) hands librdkafka a timeout of 0 ms (`Timeout::as_millis` truncates) and polls again
//! until the deadline passes. Up to 1 ms of spinning in every 100 was about 9 ms of CPU a second
//! per producer, measured on idle services, and most of what each of them burnt with nothing to
//! do. The same poll here spans [`POLL_SPAN`], a hundred times longer, so the spin costs a
//! hundredth as much, while a delivery report is still served the moment it arrives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer, ProducerContext,
};
use rdkafka::util::Timeout;
use tokio::sync::Notify;

use crate::producer::Position;

/// How long one poll for delivery reports lasts: its closing spin is then at most 1 ms in 10 s
/// (measured at 1 s, it was still a third of an idle batcher's CPU). It is also how long the
/// polling thread, and with it the librdkafka client, may outlive the producer's last handle.
const POLL_SPAN: Duration = Duration::from_secs(10);
/// How long a write waits before trying again when librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Where a record landed once acknowledged, or why it failed.
pub type DeliveryOutcome = Result<Position, KafkaError>;

/// Records written together and answered together: one tally for the set, and one wake-up of
/// the writer once every record is answered. A channel per record cost two allocations per
/// record and woke the writing task once per acknowledgement (up to 200 times for a request of
/// 200 events).
#[derive(Default)]
pub struct Writes(Arc<Tally>);

impl Writes {
    /// Completes once every record queued in this set is answered: with where each landed (in
    /// the order they were acknowledged), or with the first failure.
    pub async fn acknowledged(self) -> Result<Vec<Position>, KafkaError> {
        loop {
            // Made before looking, so an answer between the look and the wait is not missed.
            let answered = self.0.all_answered.notified();
            {
                let mut answers = self.0.answers();
                if answers.answered() == answers.queued {
                    return match answers.failure.take() {
                        Some(error) => Err(error),
                        None => Ok(std::mem::take(&mut answers.positions)),
                    };
                }
            }
            answered.await;
        }
    }
}

/// What a set of writes has been answered so far, shared with the delivery thread.
#[derive(Default)]
pub struct Tally {
    answers: Mutex<Answers>,
    all_answered: Notify,
}

impl Tally {
    fn answers(&self) -> MutexGuard<'_, Answers> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct Answers {
    queued: usize,
    positions: Vec<Position>,
    failed: usize,
    failure: Option<KafkaError>,
}

impl Answers {
    fn answered(&self) -> usize {
        self.positions.len() + self.failed
    }
}

/// Hands each delivery report to the set of writes it belongs to.
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Tally>;

    fn delivery(&self, result: &DeliveryResult<'_>, tally: Self::DeliveryOpaque) {
        let mut answers = tally.answers();
        match result {
            Ok(message) => answers.positions.push(Position {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, _)) => {
                answers.failed += 1;
                answers.failure.get_or_insert_with(|| error.clone());
            }
        }
        // A writer still queueing may see this set complete early; it looks again when it
        // waits, so the spare wake-up does no harm.
        if answers.answered() == answers.queued {
            drop(answers);
            tally.all_answered.notify_one();
        }
    }
}

/// A producer and the thread that serves its delivery reports.
pub struct AsyncProducer {
    producer: Arc<BaseProducer<Deliveries>>,
    stop: Arc<AtomicBool>,
}

impl AsyncProducer {
    pub fn new(config: &ClientConfig) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, Deliveries)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopping) = (producer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-deliveries".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    polled.poll(POLL_SPAN);
                }
                // Dropping the last handle here purges what is still queued, so every write
                // is answered (as failed), without waiting for it to be delivered: whoever
                // wanted that asked for a flush.
            })
            .map_err(|_| KafkaError::ClientCreation("cannot start the delivery thread".into()))?;
        Ok(Self { producer, stop })
    }

    /// Queues `record` as one of `writes`, which answers once all of them are acknowledged.
    pub fn enqueue<K, P>(
        &self,
        writes: &Writes,
        record: FutureRecord<'_, K, P>,
    ) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        // Counted first, so the set never looks answered while a record is still on its way.
        writes.0.answers().queued += 1;
        self.producer
            .send(answered_in(record, &writes.0))
            .map_err(|(error, _)| {
                writes.0.answers().queued -= 1;
                error
            })
    }

    /// Writes `record` and waits for its acknowledgement, waiting at most `queue_timeout` for
    /// room in librdkafka's queue.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> DeliveryOutcome
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let give_up = tokio::time::Instant::now() + queue_timeout;
        let writes = Writes::default();
        writes.0.answers().queued = 1;
        let mut record = answered_in(record, &writes.0);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if tokio::time::Instant::now() < give_up =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
        let positions = writes.acknowledged().await?;
        positions.first().copied().ok_or(KafkaError::Canceled)
    }

    /// Waits up to `timeout` for queued records to be acknowledged. Blocks.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(Timeout::After(timeout))
    }

    pub fn client(&self) -> &Client<Deliveries> {
        self.producer.client()
    }
}

/// `record`, its delivery report to be counted in `tally`.
fn answered_in<'a, K, P>(
    record: FutureRecord<'a, K, P>,
    tally: &Arc<Tally>,
) -> BaseRecord<'a, K, P, <Deliveries as ProducerContext>::DeliveryOpaque>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    BaseRecord {
        topic: record.topic,
        partition: record.partition,
        payload: record.payload,
        key: record.key,
        timestamp: record.timestamp,
        headers: record.headers,
        delivery_opaque: tally.clone(),
    }
}

impl Drop for AsyncProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
