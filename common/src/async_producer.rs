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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use tokio::sync::oneshot;

use crate::producer::Position;

/// How long one poll for delivery reports lasts: its closing spin is then at most 1 ms in 10 s
/// (measured at 1 s, it was still a third of an idle batcher's CPU). It is also how long the
/// polling thread, and with it the librdkafka client, may outlive the producer's last handle.
const POLL_SPAN: Duration = Duration::from_secs(10);
/// How long a write waits before trying again when librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Where a record landed once acknowledged, or why it failed.
pub type DeliveryOutcome = Result<Position, KafkaError>;

/// Completes when the broker acknowledged the record, or it failed.
pub struct Delivery(oneshot::Receiver<DeliveryOutcome>);

impl Delivery {
    pub async fn outcome(self) -> DeliveryOutcome {
        // The sender goes only with the producer, which fails what it still holds first.
        self.0.await.unwrap_or(Err(KafkaError::Canceled))
    }
}

/// Hands each delivery report to the write waiting for it.
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<oneshot::Sender<DeliveryOutcome>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(message) => Ok(Position {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, _)) => Err(error.clone()),
        };
        // A write that stopped waiting does not need the answer.
        let _ = waiting.send(outcome);
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

    /// Queues `record`; the returned [`Delivery`] completes with its acknowledgement.
    pub fn enqueue<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<Delivery, KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (record, delivery) = answered(record);
        self.producer
            .send(record)
            .map(|()| delivery)
            .map_err(|(error, _)| error)
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
        let (mut record, delivery) = answered(record);
        loop {
            match self.producer.send(record) {
                Ok(()) => return delivery.outcome().await,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if tokio::time::Instant::now() < give_up =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// Waits up to `timeout` for queued records to be acknowledged. Blocks.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(Timeout::After(timeout))
    }

    pub fn client(&self) -> &Client<Deliveries> {
        self.producer.client()
    }
}

/// `record` with the channel its delivery report is answered on.
fn answered<'a, K, P>(
    record: FutureRecord<'a, K, P>,
) -> (
    BaseRecord<'a, K, P, <Deliveries as ProducerContext>::DeliveryOpaque>,
    Delivery,
)
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    let (answer, delivery) = oneshot::channel();
    let record = BaseRecord {
        topic: record.topic,
        partition: record.partition,
        payload: record.payload,
        key: record.key,
        timestamp: record.timestamp,
        headers: record.headers,
        delivery_opaque: Box::new(answer),
    };
    (record, Delivery(delivery))
}

impl Drop for AsyncProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
