//! Taking jobs off the queue: `process_one` handles one delivery (upload, or move it where its
//! failure says and wait for RabbitMQ to confirm the move); `run` only feeds it deliveries and
//! acks each once it returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use common::amqp::{AmqpArgs, Backoff, PublishError, confirm_channel, publish_confirmed};
use common::clock::now_unix_ms;
use common::delivery;
use common::integration::Integration;
use common::job::{JobKind, UploadJob, header};
use common::key::full_key;
use common::registry::IntegrationRegistry;
use common::topology::{DEAD_ROUTING_KEY, UploadTopology};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use metrics::{counter, gauge, histogram};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::credentials::AssumedRoles;
use crate::delivery_log::{self, DeliveryLog};
use crate::destination::{S3Writer, Stored, resolve, verify_body};
use crate::error::{ErrorClass, UploadError};
use crate::failure;
use crate::fairness::{TenantSlot, TenantSlots};
use crate::metrics::{
    DEFERRED, DELIVERY_LAG, DIGEST_LAG, DIVERGED_OBJECTS, DLQ_DEPTH, IN_FLIGHT, OBJECT_SIZE,
    RECONNECTS, RETRIES, UPLOAD_LATENCY, UPLOADS,
};
use crate::retry::{NextStep, RetryPolicy};

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored(Stored),
    Retried { tier: usize, error: UploadError },
    DeadLettered(UploadError),
    Discarded(UploadError),
}

/// Everything one uploader process needs to handle deliveries.
pub struct Uploader {
    pub registry: IntegrationRegistry,
    pub roles: AssumedRoles,
    pub writer: S3Writer,
    pub topology: UploadTopology,
    pub policy: RetryPolicy,
    pub deliveries: DeliveryLog,
    /// At most this many uploads at once in this process, across reconnections.
    pub concurrency: u16,
    /// At most this many of them for one tenant.
    pub tenant_concurrency: u16,
    /// Whether a RabbitMQ session is up, for readiness.
    pub connected: Arc<AtomicBool>,
}

impl Uploader {
    /// Handles one delivery. Returns once the job is stored or its move, published on
    /// `publisher` (a channel in confirm mode), is confirmed.
    pub async fn process_one(
        &self,
        publisher: &Channel,
        properties: &BasicProperties,
        body: &[u8],
        tenant_slot: Option<TenantSlot>,
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
                self.dead_letter(publisher, headers, properties, body, &error, 1)
                    .await?;
                return Ok(Outcome::DeadLettered(error));
            }
        };
        let started = std::time::Instant::now();
        let result = self.upload(&job, body).await;
        if let Some(slot) = tenant_slot {
            slot.finish(result.is_ok(), std::time::Instant::now());
        }
        if result.is_ok() {
            histogram!(UPLOAD_LATENCY).record(started.elapsed().as_secs_f64());
            histogram!(OBJECT_SIZE).record(body.len() as f64);
        }
        let destination = result.as_ref().ok().map(|(stored, integration)| {
            let key = match stored {
                Stored::Diverged { key } => key.clone(),
                Stored::Created | Stored::AlreadyThere => {
                    full_key(&integration.prefix, &job.relative_key)
                }
            };
            (integration.bucket.clone(), key)
        });
        let outcome = match result {
            Ok((stored, _)) => {
                if stored != Stored::AlreadyThere {
                    let lag_ms = now_unix_ms().saturating_sub(job.window_end_ms).max(0);
                    let lag = match job.kind {
                        JobKind::Digest => DIGEST_LAG,
                        JobKind::Log | JobKind::Unknown => DELIVERY_LAG,
                    };
                    histogram!(lag).record(lag_ms as f64 / 1000.0);
                }
                if let Stored::Diverged { key } = &stored {
                    counter!(DIVERGED_OBJECTS).increment(1);
                    tracing::error!(key = %job, tenant = %job.tenant_id, stored_as = %key, "a different object already holds this key; stored under an alternate key");
                }
                Outcome::Stored(stored)
            }
            Err(error) => {
                self.after_failure(publisher, headers.clone(), properties, body, &job, error)
                    .await?
            }
        };
        let (recorded_as, error) = match &outcome {
            Outcome::Stored(Stored::Created) => (delivery::Outcome::Stored, None),
            Outcome::Stored(Stored::AlreadyThere) => (delivery::Outcome::AlreadyThere, None),
            Outcome::Stored(Stored::Diverged { .. }) => (delivery::Outcome::Diverged, None),
            Outcome::Retried { error, .. } => (delivery::Outcome::Retried, Some(error)),
            Outcome::DeadLettered(error) => (delivery::Outcome::DeadLettered, Some(error)),
            Outcome::Discarded(error) => (delivery::Outcome::Discarded, Some(error)),
        };
        let class = error.map_or("none", |e| e.class.as_str());
        counter!(UPLOADS, "outcome" => recorded_as.as_str(), "class" => class).increment(1);
        let record = delivery_log::record(&job, body.len(), recorded_as, error, destination);
        let recorded = self.deliveries.write(&record).await;
        if !recorded && matches!(outcome, Outcome::Stored(_)) {
            // A stored object without its record would be missing from the tenant's signed
            // digest: the job goes round again, finds its object already there, and records it.
            let error = UploadError::new(
                ErrorClass::Retryable,
                "record-delivery",
                "DeliveryRecordNotWritten",
                "the object is stored but Kafka did not take its delivery record",
            );
            return self
                .after_failure(publisher, headers, properties, body, &job, error)
                .await;
        }
        Ok(outcome)
    }

    /// Moves a job that failed with `error` where the retry policy says: a retry tier, the
    /// dead-letter queue, or nowhere (discarded). Returns once RabbitMQ confirmed the move.
    async fn after_failure(
        &self,
        publisher: &Channel,
        headers: FieldTable,
        properties: &BasicProperties,
        body: &[u8],
        job: &UploadJob,
        error: UploadError,
    ) -> Result<Outcome, PublishError> {
        let attempts = job.attempt.saturating_add(1);
        Ok(
            match self.policy.next_step(error.class, attempts, age(job)) {
                NextStep::Retry { tier } => {
                    let tier_queue = &self.topology.retry_queues[tier];
                    let headers = failure::with_failure(headers, &error, attempts);
                    publish_moved(
                        publisher,
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
                    self.dead_letter(publisher, headers, properties, body, &error, attempts)
                        .await?;
                    tracing::warn!(key = %job, tenant = %job.tenant_id, attempts, %error, "upload dead-lettered");
                    Outcome::DeadLettered(error)
                }
                NextStep::Discard => {
                    tracing::warn!(key = %job, tenant = %job.tenant_id, %error, "job discarded: nobody can receive it");
                    Outcome::Discarded(error)
                }
            },
        )
    }

    async fn upload(
        &self,
        job: &UploadJob,
        body: &[u8],
    ) -> Result<(Stored, Integration), UploadError> {
        let integration = resolve(&self.registry, job)?;
        let (body, sha256) = {
            let (job, body) = (job.clone(), body.to_vec());
            tokio::task::spawn_blocking(move || verify_body(&job, &body).map(|sha| (body, sha)))
                .await
                .map_err(|error| {
                    UploadError::new(
                        ErrorClass::Retryable,
                        "verify-body",
                        "Internal",
                        error.to_string(),
                    )
                })??
        };
        let credentials = self.roles.credentials(&integration).await?;
        let stored = self
            .writer
            .put(&integration, credentials, job, body, sha256)
            .await?;
        Ok((stored, integration))
    }

    async fn dead_letter(
        &self,
        publisher: &Channel,
        headers: FieldTable,
        properties: &BasicProperties,
        body: &[u8],
        error: &UploadError,
        attempts: u32,
    ) -> Result<(), PublishError> {
        let headers = failure::with_failure(headers, error, attempts);
        publish_moved(
            publisher,
            &self.topology.dead_letter_exchange,
            DEAD_ROUTING_KEY,
            headers,
            properties,
            body,
        )
        .await
    }

    /// Consumes the upload queue until `shutdown`, reconnecting whenever the RabbitMQ
    /// connection is lost. Unacknowledged jobs of a lost connection go back to the queue on the
    /// broker's side; an upload still running for one is harmless (`If-None-Match`).
    pub async fn run(
        self: Arc<Self>,
        amqp: &AmqpArgs,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let in_flight = TaskTracker::new();
        let mut backoff = Backoff::default();
        let slots = Slots {
            process: Arc::new(Semaphore::new(usize::from(self.concurrency))),
            tenants: TenantSlots::new(usize::from(self.tenant_concurrency)),
        };
        while let Some(connection) = amqp
            .connect_with_retry("activity-uploader", &shutdown)
            .await
        {
            let session = self
                .clone()
                .session(&connection, &slots, &in_flight, &shutdown, &mut backoff)
                .await;
            self.connected.store(false, Ordering::Relaxed);
            match session {
                Ok(()) => break,
                Err(error) => {
                    counter!(RECONNECTS).increment(1);
                    tracing::warn!(error = format!("{error:#}"), "lost RabbitMQ; reconnecting");
                }
            }
            // The connection may be fine while the broker refuses what we declare: wait.
            if !backoff.wait(&shutdown).await {
                break;
            }
        }
        in_flight.close();
        in_flight.wait().await;
        Ok(())
    }

    /// One connection's life: declare the topology, consume, and keep the DLQ depth gauge
    /// current. Returns `Ok` on shutdown and an error when the connection fails.
    async fn session(
        self: Arc<Self>,
        connection: &lapin::Connection,
        slots: &Slots,
        in_flight: &TaskTracker,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let publisher = confirm_channel(connection)
            .await
            .context("cannot open a RabbitMQ channel with publisher confirms")?;
        self.topology.declare(&publisher).await?;
        let consumer = connection
            .create_channel()
            .await
            .context("cannot open a RabbitMQ channel")?;
        consumer
            .basic_qos(self.concurrency, BasicQosOptions::default())
            .await
            .context("cannot set the consumer prefetch")?;
        let mut deliveries = consumer
            .basic_consume(
                self.topology.queue.as_str().into(),
                CONSUMER_TAG.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("cannot consume the upload queue")?;
        let depth = connection
            .create_channel()
            .await
            .context("cannot open a RabbitMQ channel")?;
        self.connected.store(true, Ordering::Relaxed);
        backoff.reset();
        tracing::info!(queue = %self.topology.queue, "consuming uploads");
        let mut depth_tick = tokio::time::interval(DLQ_DEPTH_INTERVAL);
        loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => {
                    // Stop new deliveries, then let the uploads in flight finish and settle on
                    // this channel: closing it first would hand their jobs back, and a job
                    // already stored would be delivered a second time.
                    if let Err(error) = consumer
                        .basic_cancel(CONSUMER_TAG.into(), BasicCancelOptions::default())
                        .await
                    {
                        tracing::warn!(%error, "cannot cancel the upload consumer");
                    }
                    in_flight.close();
                    in_flight.wait().await;
                    return Ok(());
                }
                _ = depth_tick.tick() => {
                    let depth = queue_depth(&depth, &self.topology.dead_letter_queue).await?;
                    gauge!(DLQ_DEPTH).set(f64::from(depth));
                    continue;
                }
                next = deliveries.next() => match next {
                    Some(delivery) => delivery.context("the upload consumer failed")?,
                    None => anyhow::bail!("RabbitMQ closed the upload consumer"),
                },
            };
            let slot = slots.process.clone().acquire_owned().await?;
            let this = self.clone();
            let publisher = publisher.clone();
            let tenant = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|headers| headers.inner().get(header::TENANT))
                .and_then(|tenant| tenant.as_long_string())
                .map(|tenant| String::from_utf8_lossy(tenant.as_bytes()).into_owned());
            let tenant_slot = tenant
                .as_deref()
                .map(|t| slots.tenants.try_take(t, std::time::Instant::now()));
            if let Some(None) = tenant_slot
                && !self.topology.retry_queues.is_empty()
            {
                in_flight.spawn(async move {
                    let _slot = slot;
                    let deferred = this
                        .defer(&publisher, &delivery.properties, &delivery.data)
                        .await;
                    if deferred.is_ok() {
                        counter!(DEFERRED).increment(1);
                    }
                    settle(delivery, deferred).await;
                });
                continue;
            }
            in_flight.spawn(async move {
                let _slot = slot;
                gauge!(IN_FLIGHT).increment(1.0);
                let processed = this
                    .process_one(
                        &publisher,
                        &delivery.properties,
                        &delivery.data,
                        tenant_slot.flatten(),
                    )
                    .await;
                settle(delivery, processed.map(drop)).await;
                gauge!(IN_FLIGHT).decrement(1.0);
            });
        }
    }

    /// Puts a job of a tenant already at its share of uploads in the first retry tier, without
    /// counting an attempt.
    async fn defer(
        &self,
        publisher: &Channel,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let mut headers = properties.headers().clone().unwrap_or_default();
        let deferrals = match headers.inner().get(DEFERRALS) {
            Some(AMQPValue::LongLongInt(n)) => n.saturating_add(1),
            _ => 1,
        };
        headers.insert(DEFERRALS.into(), AMQPValue::LongLongInt(deferrals));
        publish_moved(
            publisher,
            &self.topology.retry_exchange,
            &self.topology.retry_queues[0].routing_key,
            headers,
            properties,
            body,
        )
        .await
    }
}

/// The upload consumer's tag, to cancel it on shutdown.
const CONSUMER_TAG: &str = "activity-uploader";

/// Header counting how often a job waited because its tenant had its share of uploads running.
pub const DEFERRALS: &str = "deferrals";

/// The process's upload slots and each tenant's share of them.
struct Slots {
    process: Arc<Semaphore>,
    tenants: TenantSlots,
}

/// Acknowledges a delivery that was handled, or returns it to the queue when its move was not
/// confirmed, so nothing is lost.
async fn settle(delivery: lapin::message::Delivery, handled: Result<(), PublishError>) {
    let settled = match handled {
        Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
        Err(error) => {
            tracing::error!(%error, "cannot move a job; returning it to the queue");
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(error) = settled {
        // The broker redelivers an unacknowledged job; If-None-Match makes that safe.
        tracing::warn!(%error, "cannot acknowledge a delivery; it will be redelivered");
    }
}

/// How often the dead-letter queue's depth is read for its gauge.
const DLQ_DEPTH_INTERVAL: Duration = Duration::from_secs(15);

/// Messages ready in `queue`, read with a passive declare.
async fn queue_depth(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .with_context(|| format!("cannot read the depth of {queue}"))?;
    Ok(queue.message_count())
}

/// Moves a job's message; until RabbitMQ confirms, the delivery stays unacknowledged and goes
/// back to the queue on failure, so nothing is lost.
async fn publish_moved(
    publisher: &Channel,
    exchange: &str,
    routing_key: &str,
    headers: FieldTable,
    original: &BasicProperties,
    body: &[u8],
) -> Result<(), PublishError> {
    publish_confirmed(
        publisher,
        exchange,
        routing_key,
        body,
        headers,
        original.message_id().clone(),
    )
    .await
}

fn age(job: &UploadJob) -> Duration {
    Duration::from_millis(
        u64::try_from(now_unix_ms().saturating_sub(job.created_at_ms)).unwrap_or(0),
    )
}
