//! Publishing closed parts to RabbitMQ as upload jobs, with many messages in flight and their
//! confirms awaited in order. A part is reported confirmed only on a plain ack; anything else
//! (nack, returned message, lost connection) puts it back at the head of the line and the
//! publisher reconnects. Until a part is confirmed, offsets stay behind it.
//!
//! The one part never retried is one larger than RabbitMQ takes (its `max_message_size`, which
//! the batcher's own limit should not exceed): retrying it would stall every part behind it, so
//! it is *refused*: logged, counted, reported to the sink and dropped from memory. It is never
//! confirmed, so its partition's offsets stay behind it and a restart rebuilds it from Kafka.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use common::amqp::{AmqpArgs, Backoff, confirm_channel, confirmed, publish_persistent};
use common::job::UploadJob;
use common::topology::{UPLOAD_ROUTING_KEY, UploadTopology};
use futures_util::StreamExt;
use lapin::PublisherConfirm;
use metrics::{counter, histogram};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::{PUBLISH_CONFIRM_LATENCY, PUBLISH_FAILURES, PUBLISHED, REFUSED_PARTS};

/// Messages awaiting their confirm at once.
const IN_FLIGHT: usize = 256;
/// How often an idle publisher looks at its connection's state. A lost connection is heard of at
/// once from the connection's events; this catches a loss that raised none.
const CONNECTION_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The connection's events: how an idle publisher hears at once that its connection was lost.
type ConnectionEvents = futures_util::stream::BoxStream<'static, lapin::Event>;

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

/// A part RabbitMQ cannot take because of its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub partition: i32,
    pub sequence: u64,
    pub relative_key: String,
    pub body_bytes: u64,
    /// The largest body RabbitMQ takes, as far as the publisher knows.
    pub limit: u64,
}

/// Where confirmed and refused parts are reported; a closed receiver is ignored (the reader
/// stopped).
pub trait ConfirmSink: Send + 'static {
    fn confirmed(&self, confirmed: Confirmed);
    /// A refused part; live batching keeps its partition's offsets behind it and has nothing
    /// more to do.
    fn refused(&self, _refused: Refused) {}
}

impl ConfirmSink for std::sync::mpsc::Sender<Confirmed> {
    fn confirmed(&self, confirmed: Confirmed) {
        // A send fails only when the reader stopped, which has nothing left to learn.
        let _ = self.send(confirmed);
    }
}

impl ConfirmSink for std::sync::mpsc::Sender<Result<Confirmed, Refused>> {
    fn confirmed(&self, confirmed: Confirmed) {
        let _ = self.send(Ok(confirmed));
    }

    fn refused(&self, refused: Refused) {
        let _ = self.send(Err(refused));
    }
}

impl ConfirmSink for tokio::sync::mpsc::UnboundedSender<Result<Confirmed, Refused>> {
    fn confirmed(&self, confirmed: Confirmed) {
        let _ = self.send(Ok(confirmed));
    }

    fn refused(&self, refused: Refused) {
        let _ = self.send(Err(refused));
    }
}

/// The message size RabbitMQ says it takes at most, from its refusal of a larger one
/// (`PRECONDITION_FAILED - message size 20971520 is larger than configured max size 16777216`).
pub fn broker_max_message_size(error: &str) -> Option<u64> {
    let (_, rest) = error.split_once("larger than configured max size ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Publishes everything `parts` yields until it is closed and every part is confirmed (or
/// refused: a body over `max_body_bytes`, or over what RabbitMQ says it takes).
/// `shutdown` only stops waiting for RabbitMQ to come back; a part is never reported
/// confirmed without an ack.
pub async fn run(
    amqp: AmqpArgs,
    topology: UploadTopology,
    max_body_bytes: u64,
    parts: mpsc::Receiver<Outgoing>,
    sink: impl ConfirmSink,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut publisher = Publisher {
        topology,
        max_body_bytes,
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
                if let Some(broker_max) = broker_max_message_size(&format!("{error:#}"))
                    && broker_max < publisher.max_body_bytes
                {
                    tracing::error!(
                        broker_max,
                        configured = publisher.max_body_bytes,
                        "RabbitMQ takes smaller messages than ACTIVITY_BATCHER_MAX_MESSAGE_BYTES allows; parts above its limit are refused"
                    );
                    publisher.max_body_bytes = broker_max;
                }
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
    /// The largest body to send; larger parts are refused without being sent.
    max_body_bytes: u64,
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
        events: &mut ConnectionEvents,
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
                Some(event) = events.next() => {
                    if let lapin::Event::Error(error) = event {
                        anyhow::bail!("the RabbitMQ connection was lost: {error}");
                    }
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
        let mut events: ConnectionEvents = connection.events_listener().boxed();
        self.topology.declare(&channel).await?;
        self.connected.store(true, Ordering::Relaxed);
        backoff.reset();
        let mut in_flight: VecDeque<(Outgoing, PublisherConfirm, Instant)> = VecDeque::new();
        let result = self.pump(&channel, &mut events, &mut in_flight).await;
        if result.is_err() {
            // Unconfirmed parts go back in their original order, ahead of anything newer.
            for (part, _, _) in in_flight.into_iter().rev() {
                self.waiting.push_front(part);
            }
        }
        result
    }

    fn refuse(&self, part: Outgoing) {
        counter!(REFUSED_PARTS).increment(1);
        tracing::error!(
            key = %part.job.relative_key,
            tenant = %part.job.tenant_id,
            partition = part.partition,
            bytes = part.body.len(),
            limit = self.max_body_bytes,
            "a part is larger than RabbitMQ takes and is not published; its partition's offsets stay behind it until ACTIVITY_BATCHER_MAX_MESSAGE_BYTES is at most RabbitMQ's max_message_size and the batcher restarts"
        );
        self.sink.refused(Refused {
            partition: part.partition,
            sequence: part.sequence,
            relative_key: part.job.relative_key,
            body_bytes: part.body.len() as u64,
            limit: self.max_body_bytes,
        });
    }

    async fn pump(
        &mut self,
        channel: &lapin::Channel,
        events: &mut ConnectionEvents,
        in_flight: &mut VecDeque<(Outgoing, PublisherConfirm, Instant)>,
    ) -> anyhow::Result<()> {
        let exchange = self.topology.exchange.clone();
        loop {
            if in_flight.len() < IN_FLIGHT
                && let Some(part) = self.next(channel, events, in_flight.is_empty()).await?
            {
                if part.body.len() as u64 > self.max_body_bytes {
                    self.refuse(part);
                    continue;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_s_refusal_of_a_large_message_gives_its_limit() {
        let error = "channel error: PRECONDITION_FAILED - message size 20971520 is larger than configured max size 16777216";
        assert_eq!(broker_max_message_size(error), Some(16_777_216));
        assert_eq!(
            broker_max_message_size("PRECONDITION_FAILED - inequivalent arg"),
            None
        );
    }
}
