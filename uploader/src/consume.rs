//! Taking jobs off the queue: `process_one` handles one delivery (upload, or move it where its
//! failure says and wait for RabbitMQ to confirm the move); `run` only feeds it deliveries and
//! acks each once it returns.

use std::sync::Arc;
use std::time::Duration;

use common::amqp::{PublishError, publish_confirmed};
use common::clock::now_unix_ms;
use common::delivery::{DeliveryRecord, outcome};
use common::integration::Integration;
use common::job::{UploadJob, header};
use common::key::full_key;
use common::registry::IntegrationRegistry;
use common::topology::{DEAD_ROUTING_KEY, UploadTopology};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use metrics::{counter, gauge, histogram};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::credentials::AssumedRoles;
use crate::destination::{S3Writer, Stored, resolve, verify_body};
use crate::error::{ErrorClass, UploadError};
use crate::metrics::{
    DELIVERY_RECORDS_FAILED, IN_FLIGHT, OBJECT_SIZE, RETRIES, UPLOAD_LATENCY, UPLOADS,
};
use crate::retry::{NextStep, RetryPolicy};

/// Headers a moved job carries about its last failure.
pub mod failure_header {
    pub const CLASS: &str = "last-error-class";
    pub const STEP: &str = "last-error-step";
    pub const CODE: &str = "last-error-code";
    pub const MESSAGE: &str = "last-error-message";
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored(Stored),
    Retried { tier: usize, error: UploadError },
    DeadLettered(UploadError),
    Discarded(UploadError),
}

/// Where delivery records go.
pub struct DeliveryLog {
    pub producer: FutureProducer,
    pub topic: String,
}

/// How long writing a delivery record may hold up the acknowledgement of its job.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

impl DeliveryLog {
    /// Writes a record; a failure is logged and counted but does not fail the job, whose object
    /// is already stored or whose move is already confirmed.
    async fn write(&self, record: &DeliveryRecord) {
        let value = match serde_json::to_vec(record) {
            Ok(value) => value,
            Err(error) => {
                tracing::error!(%error, "cannot encode a delivery record");
                return;
            }
        };
        let sent = self
            .producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(&record.tenant_id)
                    .payload(&value),
                RECORD_TIMEOUT,
            )
            .await;
        if let Err((error, _)) = sent {
            counter!(DELIVERY_RECORDS_FAILED).increment(1);
            tracing::error!(%error, key = %record.relative_key, "cannot write a delivery record");
        }
    }
}

/// Everything one uploader process needs to handle deliveries.
pub struct Uploader {
    pub registry: IntegrationRegistry,
    pub roles: AssumedRoles,
    pub writer: S3Writer,
    pub topology: UploadTopology,
    pub policy: RetryPolicy,
    /// A channel in confirm mode, for moving jobs.
    pub publisher: Channel,
    pub deliveries: DeliveryLog,
}

impl Uploader {
    /// Handles one delivery. Returns once the job is stored or its move is confirmed.
    pub async fn process_one(
        &self,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<Outcome, PublishError> {
        let headers = properties.headers().clone().unwrap_or_default();
        let job = match UploadJob::from_headers(&headers) {
            Ok(job) => job,
            Err(problem) => {
                let error = UploadError::new(
                    ErrorClass::InvalidJob,
                    "read-job",
                    "InvalidHeaders",
                    problem.to_string(),
                );
                self.dead_letter(headers, properties, body, &error, 1)
                    .await?;
                return Ok(Outcome::DeadLettered(error));
            }
        };
        let started = std::time::Instant::now();
        let result = self.upload(&job, body).await;
        if result.is_ok() {
            histogram!(UPLOAD_LATENCY).record(started.elapsed().as_secs_f64());
            histogram!(OBJECT_SIZE).record(body.len() as f64);
        }
        let destination = result
            .as_ref()
            .ok()
            .map(|(_, integration)| integration.clone());
        let outcome = match result {
            Ok((stored, _)) => Outcome::Stored(stored),
            Err(error) => {
                let attempts = job.attempt.saturating_add(1);
                match self.policy.next_step(error.class, attempts, age(&job)) {
                    NextStep::Retry { tier } => {
                        let tier_queue = &self.topology.retry_queues[tier];
                        let headers = with_failure(headers, &error, attempts);
                        self.publish(
                            &self.topology.retry_exchange,
                            &tier_queue.routing_key,
                            headers,
                            properties,
                            body,
                        )
                        .await?;
                        counter!(RETRIES, "tier" => (tier + 1).to_string()).increment(1);
                        tracing::info!(key = %job, tenant = %job.tenant_id, attempts, tier = tier + 1, %error, "upload failed; retrying later");
                        Outcome::Retried { tier, error }
                    }
                    NextStep::DeadLetter => {
                        self.dead_letter(headers, properties, body, &error, attempts)
                            .await?;
                        tracing::warn!(key = %job, tenant = %job.tenant_id, attempts, %error, "upload dead-lettered");
                        Outcome::DeadLettered(error)
                    }
                    NextStep::Discard => {
                        tracing::warn!(key = %job, tenant = %job.tenant_id, %error, "job discarded: nobody can receive it");
                        Outcome::Discarded(error)
                    }
                }
            }
        };
        let (label, error) = match &outcome {
            Outcome::Stored(Stored::Created) => (outcome::STORED, None),
            Outcome::Stored(Stored::AlreadyThere) => (outcome::ALREADY_THERE, None),
            Outcome::Retried { error, .. } => (outcome::RETRIED, Some(error)),
            Outcome::DeadLettered(error) => (outcome::DEAD_LETTERED, Some(error)),
            Outcome::Discarded(error) => (outcome::DISCARDED, Some(error)),
        };
        let class = error.map_or("none", |e| e.class.as_str());
        counter!(UPLOADS, "outcome" => label, "class" => class).increment(1);
        let record = delivery_record(&job, body.len(), label, error, destination.as_ref());
        self.deliveries.write(&record).await;
        Ok(outcome)
    }

    async fn upload(
        &self,
        job: &UploadJob,
        body: &[u8],
    ) -> Result<(Stored, Integration), UploadError> {
        let sha256 = verify_body(job, body)?;
        let integration = resolve(&self.registry, job)?;
        let credentials = self.roles.credentials(&integration).await?;
        let stored = self
            .writer
            .put(&integration, credentials, job, body.to_vec(), sha256)
            .await?;
        Ok((stored, integration))
    }

    async fn dead_letter(
        &self,
        headers: FieldTable,
        properties: &BasicProperties,
        body: &[u8],
        error: &UploadError,
        attempts: u32,
    ) -> Result<(), PublishError> {
        let headers = with_failure(headers, error, attempts);
        self.publish(
            &self.topology.dead_letter_exchange,
            DEAD_ROUTING_KEY,
            headers,
            properties,
            body,
        )
        .await
    }

    /// Moves the job's message; until RabbitMQ confirms, the delivery stays unacknowledged and
    /// goes back to the queue on failure, so nothing is lost.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: FieldTable,
        original: &BasicProperties,
        body: &[u8],
    ) -> Result<(), PublishError> {
        publish_confirmed(
            &self.publisher,
            exchange,
            routing_key,
            body,
            headers,
            original.message_id().clone(),
        )
        .await
    }

    /// Consumes the upload queue until `shutdown`, with at most `concurrency` uploads at once;
    /// uploads in flight at shutdown finish before it returns.
    pub async fn run(
        self: Arc<Self>,
        consumer_channel: Channel,
        concurrency: u16,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        consumer_channel
            .basic_qos(concurrency, BasicQosOptions::default())
            .await?;
        let mut deliveries = consumer_channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                "activity-uploader".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let slots = Arc::new(Semaphore::new(usize::from(concurrency)));
        let in_flight = TaskTracker::new();
        loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => break,
                next = deliveries.next() => match next {
                    Some(delivery) => delivery?,
                    None => anyhow::bail!("RabbitMQ closed the upload consumer"),
                },
            };
            let slot = slots.clone().acquire_owned().await?;
            let this = self.clone();
            in_flight.spawn(async move {
                let _slot = slot;
                gauge!(IN_FLIGHT).increment(1.0);
                let acked = match this.process_one(&delivery.properties, &delivery.data).await {
                    Ok(_) => delivery.acker.ack(BasicAckOptions::default()).await,
                    Err(error) => {
                        tracing::error!(%error, "cannot move a failed job; returning it to the queue");
                        delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
                    }
                };
                if let Err(error) = acked {
                    // The broker redelivers an unacknowledged job; If-None-Match makes that safe.
                    tracing::warn!(%error, "cannot acknowledge a delivery; it will be redelivered");
                }
                gauge!(IN_FLIGHT).decrement(1.0);
            });
        }
        in_flight.close();
        in_flight.wait().await;
        Ok(())
    }
}

fn age(job: &UploadJob) -> Duration {
    Duration::from_millis(
        u64::try_from(now_unix_ms().saturating_sub(job.created_at_ms)).unwrap_or(0),
    )
}

fn delivery_record(
    job: &UploadJob,
    bytes: usize,
    outcome: &str,
    error: Option<&UploadError>,
    destination: Option<&Integration>,
) -> DeliveryRecord {
    DeliveryRecord {
        tenant_id: job.tenant_id.to_string(),
        relative_key: job.relative_key.clone(),
        bucket: destination.map(|d| d.bucket.clone()),
        key: destination.map(|d| full_key(&d.prefix, &job.relative_key)),
        bytes: bytes as u64,
        event_count: job.event_count,
        window_start_ms: job.window_start_ms,
        window_end_ms: job.window_end_ms,
        outcome: outcome.to_owned(),
        error_class: error.map(|e| e.class.as_str().to_owned()),
        error_code: error.map(|e| e.code.clone()),
        error_message: error.map(|e| e.message.clone()),
        attempt: job.attempt.saturating_add(1),
        at_ms: now_unix_ms(),
    }
}

fn with_failure(mut headers: FieldTable, error: &UploadError, attempts: u32) -> FieldTable {
    let text = |value: &str| AMQPValue::LongString(LongString::from(value));
    headers.insert(
        header::ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    headers.insert(failure_header::CLASS.into(), text(error.class.as_str()));
    headers.insert(failure_header::STEP.into(), text(error.step));
    headers.insert(failure_header::CODE.into(), text(&error.code));
    headers.insert(failure_header::MESSAGE.into(), text(&error.message));
    headers
}
