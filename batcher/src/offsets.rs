//! Whether a partition's records arrive at the offsets expected. The events topic has no gaps
//! of its own (an idempotent producer, no compaction, no transactions), so a record past the
//! offset expected means the broker passed records over, never to be read (retention deleted
//! them unread, or a broker bug), and a record before it was served again.

use std::ops::RangeInclusive;

use metrics::counter;

use crate::metrics::{REREAD_RECORDS, SKIPPED_OFFSETS};

/// A record's offset against the one expected next on its partition.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    InOrder,
    /// Offsets were passed over without records before this one: never read.
    AfterGap(RangeInclusive<i64>),
    /// An offset this reader took already (a broker serving a batch again): taking it twice
    /// could only put its event in a second object.
    Again,
}

/// The offset the next record of one partition must have, once known.
#[derive(Debug, Default, Clone, Copy)]
pub struct OffsetCheck {
    expected: Option<i64>,
}

impl OffsetCheck {
    /// Reading starts at `start`, or at the start of the log when `None`: the log may begin
    /// past 0 (retention), so the first record read from it is never a gap.
    pub fn starting_at(start: Option<i64>) -> Self {
        Self { expected: start }
    }

    /// The offset the next record must have: after the last record read, or the start.
    pub fn next(&self) -> Option<i64> {
        self.expected
    }

    /// Where a record at `offset` falls; moves past it unless it was read already.
    pub fn read(&mut self, offset: i64) -> Arrival {
        let arrival = match self.expected {
            Some(expected) if offset > expected => Arrival::AfterGap(expected..=offset - 1),
            Some(expected) if offset < expected => return Arrival::Again,
            _ => Arrival::InOrder,
        };
        self.expected = Some(offset + 1);
        arrival
    }
}

/// Counts and logs offsets of `partition` passed over without records.
pub fn report_skipped(partition: i32, skipped: &RangeInclusive<i64>) {
    counter!(SKIPPED_OFFSETS).increment(skipped.clone().count() as u64);
    tracing::error!(
        partition,
        from = skipped.start(),
        to = skipped.end(),
        "the broker passed over offsets without records: they were never read; replay the windows that hold them"
    );
}

/// Counts and logs a record of `partition` served again at `offset`, which the reader drops.
pub fn report_reread(partition: i32, offset: i64) {
    counter!(REREAD_RECORDS).increment(1);
    tracing::warn!(
        partition,
        offset,
        "the broker served a record already read; dropped"
    );
}

#[cfg(test)]
mod tests {
    use super::{Arrival, OffsetCheck};

    #[test]
    fn records_in_order_pass_nothing_over() {
        let mut check = OffsetCheck::starting_at(Some(5));
        assert_eq!(check.read(5), Arrival::InOrder);
        assert_eq!(check.read(6), Arrival::InOrder);
    }

    #[test]
    fn a_record_past_the_expected_offset_reports_the_offsets_passed_over() {
        let mut check = OffsetCheck::starting_at(Some(2));
        assert_eq!(check.read(5), Arrival::AfterGap(2..=4));
        assert_eq!(check.read(6), Arrival::InOrder);
    }

    #[test]
    fn a_record_served_again_is_told_apart_and_does_not_move_the_expected_offset_back() {
        let mut check = OffsetCheck::starting_at(Some(10));
        assert_eq!(check.read(10), Arrival::InOrder);
        assert_eq!(check.read(11), Arrival::InOrder);
        assert_eq!(check.read(10), Arrival::Again);
        assert_eq!(check.read(11), Arrival::Again);
        assert_eq!(check.read(12), Arrival::InOrder);
    }

    #[test]
    fn reading_from_the_start_of_the_log_expects_no_offset() {
        let mut check = OffsetCheck::starting_at(None);
        assert_eq!(check.read(40), Arrival::InOrder);
        assert_eq!(check.read(42), Arrival::AfterGap(41..=41));
    }
}
