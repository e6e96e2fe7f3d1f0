//! Publishing closed parts to RabbitMQ as upload jobs, with many messages in flight and their
//! confirms awaited in order. A part is reported confirmed only on a plain ack; anything else
//! (nack, returned message, lost connection) puts it back at the head of the line and the
//! publisher reconnects. A part is never dropped: until it is confirmed, offsets stay behind it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use common::amqp::{AmqpArgs, Backoff, confirm_channel, confirmed, publish_persistent};
use common::job::UploadJob;
use common::topology::{UPLOAD_ROUTING_KEY, UploadTopology};
use lapin::PublisherConfirm;
use metrics::{counter, histogram};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::{PUBLISH_CONFIRM_LATENCY, PUBLISH_FAILURES, PUBLISHED};

/// Messages awaiting their confirm at once.
const IN_FLIGHT: usize = 256;
/// How often an idle publisher checks that its connection is still up.
const CONNECTION_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// One closed part on its way to RabbitMQ.
#[derive(Debug)]
pub struct Outgoing {
    pub partition: i32,
    /// The part's number among its partition's parts, for confirm tracking.
    pub sequence: u64,
    pub job: UploadJob,
    pub body: Vec<u8>,
}

/// A part RabbitMQ has taken for sure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    pub partition: i32,
    pub sequence: u64,
}

/// Where confirmed parts are reported; a closed receiver is ignored (the reader stopped).
pub trait ConfirmSink: Send + 'static {
    fn confirmed(&self, confirmed: Confirmed);
}

impl ConfirmSink for std::sync::mpsc::Sender<Confirmed> {
    fn confirmed(&self, confirmed: Confirmed) {
        // A send fails only when the reader stopped, which has nothing left to learn.
        let _ = self.send(confirmed);
    }
}

/// Publishes everything `parts` yields until it is closed and every part is confirmed.
/// `shutdown` only stops waiting for RabbitMQ to come back; a part is never reported
/// confirmed without an ack.
pub async fn run(
    amqp: AmqpArgs,
    topology: UploadTopology,
    parts: mpsc::Receiver<Outgoing>,
    sink: impl ConfirmSink,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut publisher = Publisher {
        topology,
        parts,
        waiting: VecDeque::new(),
        closed: false,
        sink,
        connected,
    };
    let mut backoff = Backoff::default();
    loop {
        let Some(connection) = amqp.connect_with_retry("activity-batcher", &shutdown).await else {
            anyhow::ensure!(
                publisher.waiting.is_empty(),
                "stopped with {} part(s) unpublished; they will be rebuilt from Kafka",
                publisher.waiting.len()
            );
            return Ok(());
        };
        let session = publisher.session(&connection, &mut backoff).await;
        publisher.connected.store(false, Ordering::Relaxed);
        match session {
            Ok(()) => return Ok(()),
            Err(error) => {
                counter!(PUBLISH_FAILURES).increment(1);
                tracing::warn!(
                    error = format!("{error:#}"),
                    waiting = publisher.waiting.len(),
                    "publishing to RabbitMQ failed; reconnecting"
                );
            }
        }
        // The connection may be fine while the broker refuses what we declare: wait before
        // the next session.
        backoff.wait(&shutdown).await;
    }
}

/// The publisher's state across sessions.
struct Publisher<S> {
    topology: UploadTopology,
    parts: mpsc::Receiver<Outgoing>,
    /// Parts to publish before taking new ones: those a failed session left unconfirmed.
    waiting: VecDeque<Outgoing>,
    /// Whether `parts` has ended.
    closed: bool,
    sink: S,
    connected: Arc<AtomicBool>,
}

impl<S: ConfirmSink> Publisher<S> {
    /// The next part to publish: a waiting one, a new one (waiting for it only when nothing
    /// is in flight), or none. While it waits, a lost connection ends the wait with an error,
    /// so readiness says so even when nothing is being published.
    async fn next(
        &mut self,
        channel: &lapin::Channel,
        nothing_in_flight: bool,
    ) -> anyhow::Result<Option<Outgoing>> {
        if let Some(part) = self.waiting.pop_front() {
            return Ok(Some(part));
        }
        if self.closed {
            return Ok(None);
        }
        if !nothing_in_flight {
            return Ok(self.parts.try_recv().ok());
        }
        let mut check = tokio::time::interval(CONNECTION_CHECK);
        loop {
            tokio::select! {
                part = self.parts.recv() => {
                    self.closed = part.is_none();
                    return Ok(part);
                }
                _ = check.tick() => anyhow::ensure!(
                    channel.status().connected(),
                    "the RabbitMQ connection was lost"
                ),
            }
        }
    }

    /// One connection's life: returns `Ok` once `parts` ended and everything is confirmed.
    /// On error, every unconfirmed part is back in `waiting`.
    async fn session(
        &mut self,
        connection: &lapin::Connection,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let channel = confirm_channel(connection)
            .await
            .context("cannot open a RabbitMQ channel with publisher confirms")?;
        self.topology.declare(&channel).await?;
        self.connected.store(true, Ordering::Relaxed);
        backoff.reset();
        let mut in_flight: VecDeque<(Outgoing, PublisherConfirm, Instant)> = VecDeque::new();
        let result = self.pump(&channel, &mut in_flight).await;
        if result.is_err() {
            // Unconfirmed parts go back in their original order, ahead of anything newer.
            for (part, _, _) in in_flight.into_iter().rev() {
                self.waiting.push_front(part);
            }
        }
        result
    }

    async fn pump(
        &mut self,
        channel: &lapin::Channel,
        in_flight: &mut VecDeque<(Outgoing, PublisherConfirm, Instant)>,
    ) -> anyhow::Result<()> {
        let exchange = self.topology.exchange.clone();
        loop {
            if in_flight.len() < IN_FLIGHT
                && let Some(part) = self.next(channel, in_flight.is_empty()).await?
            {
                let pending = publish_persistent(
                    channel,
                    &exchange,
                    UPLOAD_ROUTING_KEY,
                    &part.body,
                    part.job.to_headers(),
                    Some(part.job.relative_key.as_str().into()),
                )
                .await;
                match pending {
                    Ok(pending) => in_flight.push_back((part, pending, Instant::now())),
                    Err(error) => {
                        self.waiting.push_front(part);
                        return Err(anyhow::Error::new(error));
                    }
                }
                continue;
            }
            let Some((part, pending, sent)) = in_flight.pop_front() else {
                // Nothing in flight and nothing more will come.
                return Ok(());
            };
            match confirmed(&exchange, pending).await {
                Ok(()) => {
                    histogram!(PUBLISH_CONFIRM_LATENCY).record(sent.elapsed().as_secs_f64());
                    counter!(PUBLISHED).increment(1);
                    self.sink.confirmed(Confirmed {
                        partition: part.partition,
                        sequence: part.sequence,
                    });
                }
                Err(error) => {
                    self.waiting.push_front(part);
                    return Err(anyhow::Error::new(error));
                }
            }
        }
    }
}
