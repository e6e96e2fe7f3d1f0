//! Closed parts on their way to the publisher, and RabbitMQ's answers coming back: the one
//! place live batching and replays number what they send and account for what is confirmed,
//! by the commit rule's [`Ledger`].
//!
//! The reader runs on a thread of its own and must never wait on the async publisher while it
//! holds records: parts that do not fit in the publisher's queue wait in a backlog, which live
//! batching flushes between records (and pauses reading while it is not empty), and a replay
//! flushes by waiting.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use crate::core::commit_rule::Ledger;
use crate::core::{Checkpoint, ClosedPart};
use crate::publish::{Confirmed, Outgoing, Refused};

/// How long one wait for an answer lasts before the backlog is looked at again.
const ANSWER_POLL: Duration = Duration::from_millis(100);

/// What the publisher reports of one part.
pub trait Answer: Send + 'static {
    fn into_result(self) -> Result<Confirmed, Refused>;
}

/// Live batching's publisher reports confirms only: a refused part keeps its partition's
/// offsets behind it, which is all live batching does about it.
impl Answer for Confirmed {
    fn into_result(self) -> Result<Confirmed, Refused> {
        Ok(self)
    }
}

/// A replay's publisher reports refusals too: a replay cannot deliver what it was asked to.
impl Answer for Result<Confirmed, Refused> {
    fn into_result(self) -> Result<Confirmed, Refused> {
        self
    }
}

/// Why the outbox cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("the publisher stopped")]
    PublisherStopped,
    #[error(
        "RabbitMQ cannot take {} ({} bytes, its limit is {}): set ACTIVITY_BATCHER_MAX_MESSAGE_BYTES to at most RabbitMQ's max_message_size, for the replay and the live batchers alike",
        .0.relative_key, .0.body_bytes, .0.limit
    )]
    Refused(Refused),
}

/// The parts handed to the publisher and the answers received, per partition.
pub struct Outbox<A> {
    outgoing: Sender<Outgoing>,
    answers: Receiver<A>,
    /// Which parts are confirmed and which checkpoints may be written.
    pub ledger: Ledger<Checkpoint>,
    backlog: VecDeque<Outgoing>,
}

impl<A: Answer> Outbox<A> {
    pub fn new(outgoing: Sender<Outgoing>, answers: Receiver<A>) -> Self {
        Self {
            outgoing,
            answers,
            ledger: Ledger::default(),
            backlog: VecDeque::new(),
        }
    }

    /// Numbers `part` and queues it for the publisher, stamped `now`; a part of a partition
    /// not assigned is dropped (its owner rebuilds it). Call [`Self::flush`] or
    /// [`Self::flush_waiting`] to hand it over.
    pub fn queue(&mut self, part: ClosedPart, now_ms: i64) {
        let Some(sequence) = self.ledger.sent(part.partition) else {
            return;
        };
        self.backlog.push_back(Outgoing {
            partition: part.partition,
            sequence,
            job: part.job(now_ms),
            body: part.content.body,
        });
    }

    /// Parts waiting for room in the publisher's queue.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Hands over what fits in the publisher's queue now.
    pub fn flush(&mut self) -> Result<(), OutboxError> {
        while let Some(part) = self.backlog.pop_front() {
            match self.outgoing.try_send(part) {
                Ok(()) => {}
                Err(TrySendError::Full(part)) => {
                    self.backlog.push_front(part);
                    break;
                }
                Err(TrySendError::Closed(_)) => return Err(OutboxError::PublisherStopped),
            }
        }
        Ok(())
    }

    /// Hands over the whole backlog, waiting for room. Never call it from the async runtime.
    pub fn flush_waiting(&mut self) -> Result<(), OutboxError> {
        while let Some(part) = self.backlog.pop_front() {
            self.outgoing
                .blocking_send(part)
                .map_err(|_| OutboxError::PublisherStopped)?;
            self.take_answers()?;
        }
        Ok(())
    }

    /// Takes the answers already received.
    pub fn take_answers(&mut self) -> Result<(), OutboxError> {
        while let Ok(answer) = self.answers.try_recv() {
            self.answer(answer)?;
        }
        Ok(())
    }

    fn answer(&mut self, answer: A) -> Result<(), OutboxError> {
        let confirmed = answer.into_result().map_err(OutboxError::Refused)?;
        self.ledger
            .confirmed(confirmed.partition, confirmed.sequence);
        Ok(())
    }

    /// How many parts of `partitions` sent so far are not confirmed yet.
    pub fn unconfirmed(&self, partitions: &[i32]) -> usize {
        partitions.iter().map(|p| self.ledger.unconfirmed(*p)).sum()
    }

    /// Waits up to `wait` until every part of `partitions` queued so far is confirmed, handing
    /// the backlog over as room frees up; false when the time ran out first.
    pub fn await_confirms(
        &mut self,
        partitions: &[i32],
        wait: Duration,
    ) -> Result<bool, OutboxError> {
        let deadline = Instant::now() + wait;
        loop {
            self.take_answers()?;
            self.flush()?;
            if self.unconfirmed(partitions) == 0 {
                return Ok(true);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(false);
            }
            match self.answers.recv_timeout(remaining.min(ANSWER_POLL)) {
                Ok(answer) => self.answer(answer)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(OutboxError::PublisherStopped),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use common::event::TenantId;
    use common::key::Codec;

    use super::*;
    use crate::core::CloseReason;
    use crate::core::part::FinishedBody;

    fn part(partition: i32, first_offset: i64) -> ClosedPart {
        ClosedPart {
            partition,
            tenant: TenantId::parse("acme").unwrap(),
            window_start_ms: 0,
            window_end_ms: 60_000,
            first_offset,
            last_offset: first_offset,
            codec: Codec::Zstd,
            reason: CloseReason::Window,
            content: FinishedBody {
                body: vec![1, 2, 3],
                event_count: 1,
                uncompressed_bytes: 3,
            },
        }
    }

    /// An outbox whose publisher takes `room` parts, with the far ends of its channels.
    fn outbox<A: Answer>(
        room: usize,
    ) -> (
        Outbox<A>,
        tokio::sync::mpsc::Receiver<Outgoing>,
        std::sync::mpsc::Sender<A>,
    ) {
        let (outgoing, published) = tokio::sync::mpsc::channel(room);
        let (answer, answers) = std::sync::mpsc::channel();
        let mut outbox = Outbox::new(outgoing, answers);
        outbox.ledger.assign(0, None);
        outbox.ledger.assign(1, None);
        (outbox, published, answer)
    }

    #[test]
    fn parts_past_the_publishers_room_wait_in_order_and_go_as_it_frees_up() {
        let (mut outbox, mut published, _answers) = outbox::<Confirmed>(2);
        for offset in 0..5 {
            outbox.queue(part(0, offset), 0);
        }
        outbox.flush().unwrap();
        assert_eq!(outbox.backlog(), 3);
        let taken: Vec<i64> = (0..2)
            .map(|_| published.try_recv().unwrap().job.first_offset)
            .collect();
        outbox.flush().unwrap();
        assert_eq!(outbox.backlog(), 1);
        let taken_next: Vec<i64> = (0..2)
            .map(|_| published.try_recv().unwrap().job.first_offset)
            .collect();
        assert_eq!([taken, taken_next].concat(), [0, 1, 2, 3]);
    }

    #[test]
    fn confirms_are_counted_per_partition_and_a_part_of_an_unassigned_one_is_not_sent() {
        let (mut outbox, mut published, answers) = outbox::<Confirmed>(8);
        outbox.queue(part(0, 0), 0);
        outbox.queue(part(1, 0), 0);
        outbox.queue(part(2, 0), 0);
        outbox.flush().unwrap();
        let sent: Vec<Outgoing> = std::iter::from_fn(|| published.try_recv().ok()).collect();
        assert_eq!(sent.len(), 2, "partition 2 is not assigned");
        answers
            .send(Confirmed {
                partition: 1,
                sequence: sent[1].sequence,
            })
            .unwrap();
        assert!(!outbox.await_confirms(&[0, 1], Duration::ZERO).unwrap());
        assert_eq!(outbox.unconfirmed(&[0]), 1);
        assert_eq!(outbox.unconfirmed(&[1]), 0);
    }

    #[test]
    fn a_refused_part_stops_a_replay_naming_the_setting_to_change() {
        let (mut outbox, mut published, answers) = outbox::<Result<Confirmed, Refused>>(8);
        outbox.queue(part(0, 0), 0);
        outbox.flush().unwrap();
        let sent = published.try_recv().unwrap();
        answers
            .send(Err(Refused {
                partition: 0,
                sequence: sent.sequence,
                relative_key: "acme/part".into(),
                body_bytes: 20,
                limit: 10,
            }))
            .unwrap();
        let error = outbox.await_confirms(&[0], Duration::ZERO).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("set ACTIVITY_BATCHER_MAX_MESSAGE_BYTES"),
            "{error}"
        );
    }

    #[test]
    fn a_stopped_publisher_ends_the_wait_with_an_error() {
        let (mut outbox, published, answers) = outbox::<Confirmed>(8);
        outbox.queue(part(0, 0), 0);
        drop((published, answers));
        assert!(matches!(
            outbox.await_confirms(&[0], Duration::from_secs(5)),
            Err(OutboxError::PublisherStopped)
        ));
    }
}
