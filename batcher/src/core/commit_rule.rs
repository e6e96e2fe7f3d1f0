//! The commit rule (DESIGN §3), apart from Kafka and RabbitMQ so it can be read and tested as a
//! table: offsets move only behind confirms.
//!
//! Every part handed to the publisher gets a sequence number, unique across all partitions and
//! assignments of the process. A checkpoint snapshot taken at some moment remembers the first
//! sequence number not yet used then; it may be written (and its offset committed) once no part
//! of its partition numbered below that is unconfirmed. A confirm carries the number of the part
//! it confirms, so one that arrives after its partition was revoked, and perhaps assigned back,
//! matches no part sent since and can never let a new checkpoint pass an unconfirmed part.

use std::collections::{BTreeSet, HashMap};

/// The bookkeeping of one partition's assignment.
#[derive(Debug)]
struct Assignment<C> {
    unconfirmed: BTreeSet<u64>,
    /// A snapshot waiting for the parts sent before it, with the first sequence number after
    /// them.
    pending: Option<(C, u64)>,
    /// The checkpoint last written (or read at assignment): writing it again would be idle.
    last_written: Option<C>,
}

/// Which parts are confirmed and which checkpoint may be written, per assigned partition.
/// `C` is the checkpoint (generic so the rule's tests can use plain values).
#[derive(Debug)]
pub struct Ledger<C> {
    assignments: HashMap<i32, Assignment<C>>,
    next_sequence: u64,
}

impl<C> Default for Ledger<C> {
    fn default() -> Self {
        Self {
            assignments: HashMap::new(),
            next_sequence: 0,
        }
    }
}

impl<C: Clone + PartialEq> Ledger<C> {
    /// Starts `partition`'s bookkeeping afresh; `stored` is the checkpoint it starts from.
    pub fn assign(&mut self, partition: i32, stored: Option<C>) {
        self.assignments.insert(
            partition,
            Assignment {
                unconfirmed: BTreeSet::new(),
                pending: None,
                last_written: stored,
            },
        );
    }

    /// Forgets `partition`: its unconfirmed parts are the next owner's to rebuild.
    pub fn revoke(&mut self, partition: i32) {
        self.assignments.remove(&partition);
    }

    pub fn is_assigned(&self, partition: i32) -> bool {
        self.assignments.contains_key(&partition)
    }

    /// Numbers a part of `partition` handed to the publisher, or `None` when the partition is
    /// not assigned (the part is not sent: its owner rebuilds it).
    pub fn sent(&mut self, partition: i32) -> Option<u64> {
        let assignment = self.assignments.get_mut(&partition)?;
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        assignment.unconfirmed.insert(sequence);
        Some(sequence)
    }

    /// RabbitMQ confirmed part `sequence` of `partition`. A confirm of a part sent under an
    /// earlier assignment matches nothing.
    pub fn confirmed(&mut self, partition: i32, sequence: u64) {
        if let Some(assignment) = self.assignments.get_mut(&partition) {
            assignment.unconfirmed.remove(&sequence);
        }
    }

    /// How many parts of `partition` sent so far are not confirmed yet (none when it is not
    /// assigned).
    pub fn unconfirmed(&self, partition: i32) -> usize {
        self.assignments
            .get(&partition)
            .map_or(0, |assignment| assignment.unconfirmed.len())
    }

    /// The checkpoint of `partition` that may be written now, if any. `snapshot` gives the
    /// partition's checkpoint as of now; it is taken when nothing is waiting already, or when
    /// every part is confirmed (then the present state supersedes an older snapshot, so a final
    /// commit at shutdown never writes a stale one).
    pub fn writable(&mut self, partition: i32, snapshot: impl FnOnce() -> Option<C>) -> Option<C> {
        let next_sequence = self.next_sequence;
        let assignment = self.assignments.get_mut(&partition)?;
        if assignment.unconfirmed.is_empty() || assignment.pending.is_none() {
            assignment.pending = snapshot().map(|checkpoint| (checkpoint, next_sequence));
        }
        let (_, before) = assignment.pending.as_ref()?;
        let confirmed_before = assignment
            .unconfirmed
            .first()
            .is_none_or(|first| first >= before);
        if !confirmed_before {
            return None;
        }
        let (checkpoint, _) = assignment.pending.take()?;
        (assignment.last_written.as_ref() != Some(&checkpoint)).then_some(checkpoint)
    }

    /// `checkpoint` of `partition` is written, so writing it again is idle.
    pub fn written(&mut self, partition: i32, checkpoint: C) {
        if let Some(assignment) = self.assignments.get_mut(&partition) {
            assignment.last_written = Some(checkpoint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints in these tests are the offsets they would commit.
    fn ledger() -> Ledger<i64> {
        let mut ledger = Ledger::default();
        ledger.assign(0, None);
        ledger
    }

    #[test]
    fn a_checkpoint_with_nothing_sent_before_it_is_writable_at_once_and_only_once() {
        let mut ledger = ledger();
        assert_eq!(ledger.writable(0, || Some(10)), Some(10));
        ledger.written(0, 10);
        assert_eq!(ledger.writable(0, || Some(10)), None, "already written");
        assert_eq!(ledger.writable(0, || Some(12)), Some(12));
    }

    #[test]
    fn a_checkpoint_waits_for_every_part_sent_before_it() {
        let mut ledger = ledger();
        let first = ledger.sent(0).unwrap();
        let second = ledger.sent(0).unwrap();
        assert_eq!(ledger.writable(0, || Some(10)), None);
        ledger.confirmed(0, second);
        assert_eq!(
            ledger.writable(0, || Some(11)),
            None,
            "a gap: the first part is still unconfirmed"
        );
        ledger.confirmed(0, first);
        assert_eq!(ledger.writable(0, || Some(12)), Some(12));
    }

    #[test]
    fn parts_sent_after_the_snapshot_do_not_hold_it_back() {
        let mut ledger = ledger();
        let before = ledger.sent(0).unwrap();
        assert_eq!(ledger.writable(0, || Some(10)), None, "snapshot 10 waits");
        let _after = ledger.sent(0).unwrap();
        ledger.confirmed(0, before);
        assert_eq!(
            ledger.writable(0, || Some(20)),
            Some(10),
            "the waiting snapshot, not the present state, whose parts are not all confirmed"
        );
    }

    #[test]
    fn a_stale_snapshot_is_superseded_once_everything_is_confirmed() {
        let mut ledger = ledger();
        let part = ledger.sent(0).unwrap();
        assert_eq!(ledger.writable(0, || Some(10)), None);
        ledger.confirmed(0, part);
        assert_eq!(ledger.writable(0, || Some(30)), Some(30));
    }

    #[test]
    fn another_partitions_unconfirmed_parts_hold_nothing_back() {
        let mut ledger = ledger();
        ledger.assign(1, None);
        let _other = ledger.sent(1).unwrap();
        assert_eq!(ledger.writable(0, || Some(10)), Some(10));
        assert_eq!(ledger.writable(1, || Some(5)), None);
    }

    #[test]
    fn a_revoked_partition_sends_and_writes_nothing() {
        let mut ledger = ledger();
        let _part = ledger.sent(0).unwrap();
        ledger.revoke(0);
        assert!(!ledger.is_assigned(0));
        assert_eq!(ledger.sent(0), None);
        assert_eq!(ledger.writable(0, || Some(10)), None);
        assert_eq!(ledger.unconfirmed(0), 0);
    }

    #[test]
    fn a_confirm_from_before_a_revocation_is_not_credited_to_a_part_of_the_next_assignment() {
        let mut ledger = ledger();
        let old = ledger.sent(0).unwrap();
        ledger.revoke(0);
        ledger.assign(0, Some(7));
        let new = ledger.sent(0).unwrap();
        assert_ne!(old, new);
        ledger.confirmed(0, old);
        assert_eq!(ledger.unconfirmed(0), 1);
        assert_eq!(
            ledger.writable(0, || Some(10)),
            None,
            "the new part is still unconfirmed"
        );
        ledger.confirmed(0, new);
        assert_eq!(ledger.unconfirmed(0), 0);
        assert_eq!(ledger.writable(0, || Some(10)), Some(10));
    }

    #[test]
    fn the_checkpoint_read_at_assignment_is_not_written_again() {
        let mut ledger = ledger();
        ledger.assign(0, Some(7));
        assert_eq!(ledger.writable(0, || Some(7)), None);
        assert_eq!(ledger.writable(0, || Some(8)), Some(8));
    }

    #[test]
    fn a_partition_without_a_checkpoint_yet_has_nothing_to_write() {
        let mut ledger = ledger();
        assert_eq!(ledger.writable(0, || None), None);
        assert_eq!(ledger.writable(0, || Some(1)), Some(1));
    }
}
