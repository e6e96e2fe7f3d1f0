//! Publishing closed parts to RabbitMQ as upload jobs, with many messages in flight and their
//! confirms awaited in order. A part is reported confirmed only on a plain ack; anything else
//! (nack, returned message, lost connection) puts it back at the head of the line and the
//! publisher reconnects. A part is never dropped: until it is confirmed, offsets stay behind it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use common::amqp::{AmqpArgs, confirmed, publish_persistent};
use common::job::UploadJob;
use common::topology::{UPLOAD_ROUTING_KEY, UploadTopology};
use lapin::PublisherConfirm;
use lapin::options::ConfirmSelectOptions;
use metrics::{counter, histogram};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::{PUBLISH_CONFIRM_LATENCY, PUBLISH_FAILURES, PUBLISHED};

/// Messages awaiting their confirm at once.
const IN_FLIGHT: usize = 256;

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
    mut parts: mpsc::Receiver<Outgoing>,
    sink: impl ConfirmSink,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut waiting: VecDeque<Outgoing> = VecDeque::new();
    let mut closed = false;
    loop {
        let Some(connection) = amqp.connect_with_retry("activity-batcher", &shutdown).await else {
            anyhow::ensure!(
                waiting.is_empty(),
                "stopped with {} part(s) unpublished; they will be rebuilt from Kafka",
                waiting.len()
            );
            return Ok(());
        };
        let session = session(
            &connection,
            &topology,
            &mut parts,
            &mut waiting,
            &mut closed,
            &sink,
            &connected,
        )
        .await;
        connected.store(false, Ordering::Relaxed);
        match session {
            Ok(()) => return Ok(()),
            Err(error) => {
                counter!(PUBLISH_FAILURES).increment(1);
                tracing::warn!(
                    error = format!("{error:#}"),
                    waiting = waiting.len(),
                    "publishing to RabbitMQ failed; reconnecting"
                );
            }
        }
        if shutdown.is_cancelled() && closed && waiting.is_empty() {
            return Ok(());
        }
    }
}

/// One connection's life. On error, every unconfirmed part is back in `waiting`.
async fn session(
    connection: &lapin::Connection,
    topology: &UploadTopology,
    parts: &mut mpsc::Receiver<Outgoing>,
    waiting: &mut VecDeque<Outgoing>,
    closed: &mut bool,
    sink: &impl ConfirmSink,
    connected: &AtomicBool,
) -> anyhow::Result<()> {
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a RabbitMQ channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("cannot enable publisher confirms")?;
    topology.declare(&channel).await?;
    connected.store(true, Ordering::Relaxed);
    let mut in_flight: VecDeque<(Outgoing, PublisherConfirm, Instant)> = VecDeque::new();
    let result = async {
        loop {
            if in_flight.len() < IN_FLIGHT {
                let next = match waiting.pop_front() {
                    Some(part) => Some(part),
                    None if *closed => None,
                    None if in_flight.is_empty() => match parts.recv().await {
                        Some(part) => Some(part),
                        None => {
                            *closed = true;
                            None
                        }
                    },
                    None => parts.try_recv().ok(),
                };
                if let Some(part) = next {
                    let pending = publish_persistent(
                        &channel,
                        &topology.exchange,
                        UPLOAD_ROUTING_KEY,
                        &part.body,
                        part.job.to_headers(),
                        Some(part.job.relative_key.as_str().into()),
                    )
                    .await;
                    match pending {
                        Ok(pending) => in_flight.push_back((part, pending, Instant::now())),
                        Err(error) => {
                            waiting.push_front(part);
                            return Err(anyhow::Error::new(error));
                        }
                    }
                    continue;
                }
            }
            let Some((part, pending, sent)) = in_flight.pop_front() else {
                // Nothing in flight and nothing more will come.
                return Ok(());
            };
            match confirmed(&topology.exchange, pending).await {
                Ok(()) => {
                    histogram!(PUBLISH_CONFIRM_LATENCY).record(sent.elapsed().as_secs_f64());
                    counter!(PUBLISHED).increment(1);
                    sink.confirmed(Confirmed {
                        partition: part.partition,
                        sequence: part.sequence,
                    });
                }
                Err(error) => {
                    waiting.push_front(part);
                    return Err(anyhow::Error::new(error));
                }
            }
        }
    }
    .await;
    if result.is_err() {
        // Unconfirmed parts go back in their original order, ahead of anything newer.
        for (part, _, _) in in_flight.into_iter().rev() {
            waiting.push_front(part);
        }
    }
    result
}
