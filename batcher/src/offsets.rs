//! Whether a partition's records arrive at the offsets expected, and what to do when not
//! (DESIGN §3: a gap in the offsets read is refetched, never stepped over).
//!
//! The events topic written by ingest has no gaps of its own (an idempotent producer, no
//! compaction, no transactions). A record at another offset than the next one expected is
//! therefore not taken: the partition is read again from the expected offset. Only when that
//! fresh read shows the same gap does the broker truly hold no records there (retention deleted
//! them below the log start, or a transactional producer's markers take those offsets); that gap
//! is accepted, counted and alerted.

use std::ops::RangeInclusive;

use std::time::Duration;

use metrics::counter;
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};

use crate::metrics::{REFETCHES, SKIPPED_OFFSETS};

/// How long moving a partition's read position back may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// A record's offset against the one expected next on its partition.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The offset expected: take the record.
    InOrder,
    /// Not the offset expected: do not take the record; read the partition again from `from`.
    Refetch { from: i64 },
    /// A read from the expected offset showed the same gap again: the broker holds no records
    /// at these offsets. Take the record; the gap is reported.
    AcceptedGap(RangeInclusive<i64>),
}

/// The offset the next record of one partition must have, once known.
#[derive(Debug, Default, Clone, Copy)]
pub struct OffsetCheck {
    expected: Option<i64>,
    /// The mismatch that made the last refetch: (offset expected, offset read instead).
    refetched: Option<(i64, i64)>,
}

impl OffsetCheck {
    /// Reading starts at `start`, or at the start of the log when `None`: the log may begin
    /// past 0 (retention), so the first record read from it is never a gap.
    pub fn starting_at(start: Option<i64>) -> Self {
        Self {
            expected: start,
            refetched: None,
        }
    }

    /// The offset the next record must have: after the last record taken, or the start.
    pub fn next(&self) -> Option<i64> {
        self.expected
    }

    /// Where a record at `offset` falls; moves past it when it is to be taken.
    pub fn read(&mut self, offset: i64) -> Arrival {
        let Some(expected) = self.expected.filter(|expected| *expected != offset) else {
            self.refetched = None;
            self.expected = Some(offset + 1);
            return Arrival::InOrder;
        };
        if offset > expected && self.refetched == Some((expected, offset)) {
            self.refetched = None;
            self.expected = Some(offset + 1);
            return Arrival::AcceptedGap(expected..=offset - 1);
        }
        self.refetched = Some((expected, offset));
        Arrival::Refetch { from: expected }
    }
}

/// Checks `message` against its partition's `check`: true when the record is to be taken. A
/// record at another offset than expected is not taken and `consumer` reads the partition again
/// from the expected offset (a failed seek is retried by the next record that arrives out of
/// place); a gap the broker confirms is reported and the record taken.
pub fn admit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    check: &mut OffsetCheck,
    message: &BorrowedMessage<'_>,
) -> bool {
    let partition = message.partition();
    match check.read(message.offset()) {
        Arrival::InOrder => true,
        Arrival::AcceptedGap(skipped) => {
            report_skipped(partition, &skipped);
            true
        }
        Arrival::Refetch { from } => {
            counter!(REFETCHES).increment(1);
            tracing::warn!(
                partition,
                expected = from,
                read = message.offset(),
                "a record arrived at another offset than the next expected; reading the partition again from the expected offset"
            );
            if let Err(error) = consumer.seek(
                message.topic(),
                partition,
                Offset::Offset(from),
                SEEK_TIMEOUT,
            ) {
                tracing::warn!(partition, %error, "cannot move the read position back; the next record retries");
            }
            false
        }
    }
}

/// Counts and logs offsets of `partition` the broker holds no records at.
fn report_skipped(partition: i32, skipped: &RangeInclusive<i64>) {
    counter!(SKIPPED_OFFSETS).increment(skipped.clone().count() as u64);
    tracing::error!(
        partition,
        from = skipped.start(),
        to = skipped.end(),
        "the broker holds no records at these offsets (deleted by retention before they were read, or transaction markers): their events, if any, are not delivered"
    );
}

#[cfg(test)]
mod tests {
    use super::{Arrival, OffsetCheck};

    #[test]
    fn records_in_order_are_taken() {
        let mut check = OffsetCheck::starting_at(Some(5));
        assert_eq!(check.read(5), Arrival::InOrder);
        assert_eq!(check.read(6), Arrival::InOrder);
        assert_eq!(check.next(), Some(7));
    }

    #[test]
    fn a_record_past_the_expected_offset_makes_a_refetch_from_the_expected_offset() {
        let mut check = OffsetCheck::starting_at(Some(2));
        assert_eq!(check.read(5), Arrival::Refetch { from: 2 });
        assert_eq!(check.next(), Some(2), "the record is not taken");
        // The refetch serves the missing records: nothing is passed over.
        assert_eq!(check.read(2), Arrival::InOrder);
        assert_eq!(check.read(3), Arrival::InOrder);
        assert_eq!(check.read(4), Arrival::InOrder);
        assert_eq!(check.read(5), Arrival::InOrder);
    }

    #[test]
    fn the_same_gap_after_a_refetch_is_accepted_and_reported() {
        let mut check = OffsetCheck::starting_at(Some(2));
        assert_eq!(check.read(5), Arrival::Refetch { from: 2 });
        assert_eq!(check.read(5), Arrival::AcceptedGap(2..=4));
        assert_eq!(check.read(6), Arrival::InOrder);
    }

    #[test]
    fn a_different_gap_after_a_refetch_is_refetched_again() {
        let mut check = OffsetCheck::starting_at(Some(2));
        assert_eq!(check.read(9), Arrival::Refetch { from: 2 });
        assert_eq!(check.read(2), Arrival::InOrder);
        assert_eq!(check.read(7), Arrival::Refetch { from: 3 });
        assert_eq!(check.read(7), Arrival::AcceptedGap(3..=6));
    }

    #[test]
    fn a_record_before_the_expected_offset_is_not_taken_twice() {
        let mut check = OffsetCheck::starting_at(Some(10));
        assert_eq!(check.read(10), Arrival::InOrder);
        assert_eq!(check.read(11), Arrival::InOrder);
        assert_eq!(check.read(10), Arrival::Refetch { from: 12 });
        assert_eq!(check.read(10), Arrival::Refetch { from: 12 });
        assert_eq!(check.read(12), Arrival::InOrder);
    }

    #[test]
    fn reading_from_the_start_of_the_log_expects_no_offset() {
        let mut check = OffsetCheck::starting_at(None);
        assert_eq!(check.read(40), Arrival::InOrder);
        assert_eq!(check.read(42), Arrival::Refetch { from: 41 });
    }
}
