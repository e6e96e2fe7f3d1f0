//! Noticing a partition the Kafka client stopped fetching for good, or a consumer that never
//! rejoined its group.
//!
//! After a broker pause, librdkafka 2.12 can leave a partition routed to no broker while the
//! cluster has long had a leader for it (a fetch answered "not leader, leader -1" is never
//! corrected by later metadata: confluentinc/librdkafka#5430). The consumer then waits forever
//! and that partition's events are never batched. The client's statistics show it: the
//! partition is fetched from no broker. A partition in that state for `STUCK_AFTER` is checked
//! against the cluster's metadata; if the cluster names a leader, the consumer is replaced.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long an assigned partition may be fetched from no broker before the cluster is asked.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);

/// How long a consumer that lost its partitions with its group session may stay without a new
/// assignment before the cluster is asked. After the whole cluster restarted, librdkafka 2.12
/// can keep its request to the group coordinator queued and never sent (`REQTMOUT ...
/// GroupCoordinator: Timed out 0 in-flight, 0 retry-queued, 1 out-queue`): the consumer never
/// rejoins and its partitions' events are never batched. A rejoin normally takes well under a
/// minute (34 s measured after a cluster restart).
pub const REJOIN_AFTER: Duration = Duration::from_secs(60);

/// Whether a consumer that lost its assignment at `lost_since` (`None`: it holds one, or never
/// lost one) has waited past [`REJOIN_AFTER`] at `now` without being assigned again.
pub fn rejoin_overdue(lost_since: Option<Instant>, now: Instant) -> bool {
    lost_since.is_some_and(|since| now.duration_since(since) >= REJOIN_AFTER)
}

/// Since when each assigned partition has been fetched from no broker.
#[derive(Debug, Default)]
pub struct FetchWatch {
    unfetched_since: HashMap<i32, Instant>,
}

impl FetchWatch {
    /// Takes what the client's statistics say `partition` is fetched from (`None` when they
    /// do not say yet) at `now`; returns true when it has been fetched from no broker for
    /// `STUCK_AFTER`, so the cluster should be asked whether it has a leader.
    pub fn observe(&mut self, partition: i32, broker: Option<i32>, now: Instant) -> bool {
        match broker {
            Some(broker) if broker < 0 => {
                let since = *self.unfetched_since.entry(partition).or_insert(now);
                now.duration_since(since) >= STUCK_AFTER
            }
            _ => {
                self.unfetched_since.remove(&partition);
                false
            }
        }
    }

    /// The cluster has no leader for `partition` either: waiting is right; ask again after
    /// another `STUCK_AFTER`.
    pub fn leaderless(&mut self, partition: i32, now: Instant) {
        self.unfetched_since.insert(partition, now);
    }

    /// Forgets partitions no longer assigned here (assigned again later, they start over).
    pub fn keep_only(&mut self, assigned: &[i32]) {
        self.unfetched_since
            .retain(|partition, _| assigned.contains(partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_fetched_from_no_broker_is_due_for_a_check_after_the_wait() {
        let start = Instant::now();
        let mut watch = FetchWatch::default();
        assert!(!watch.observe(0, Some(-1), start));
        assert!(!watch.observe(0, Some(-1), start + STUCK_AFTER / 2));
        assert!(watch.observe(0, Some(-1), start + STUCK_AFTER));
    }

    #[test]
    fn fetching_again_or_unknown_statistics_start_the_wait_over() {
        let start = Instant::now();
        let mut watch = FetchWatch::default();
        watch.observe(0, Some(-1), start);
        assert!(!watch.observe(0, Some(2), start + STUCK_AFTER / 2));
        assert!(!watch.observe(0, Some(-1), start + STUCK_AFTER));
        assert!(!watch.observe(0, None, start + STUCK_AFTER * 2));
        assert!(!watch.observe(0, Some(-1), start + STUCK_AFTER * 2));
    }

    #[test]
    fn a_cluster_without_a_leader_either_postpones_the_next_check() {
        let start = Instant::now();
        let mut watch = FetchWatch::default();
        watch.observe(1, Some(-1), start);
        assert!(watch.observe(1, Some(-1), start + STUCK_AFTER));
        watch.leaderless(1, start + STUCK_AFTER);
        assert!(!watch.observe(1, Some(-1), start + STUCK_AFTER + STUCK_AFTER / 2));
        assert!(watch.observe(1, Some(-1), start + STUCK_AFTER * 2));
    }

    #[test]
    fn partitions_are_watched_apart_and_forgotten_when_revoked() {
        let start = Instant::now();
        let mut watch = FetchWatch::default();
        watch.observe(0, Some(-1), start);
        assert!(!watch.observe(1, Some(-1), start + STUCK_AFTER));
        watch.keep_only(&[1]);
        assert!(!watch.observe(0, Some(-1), start + STUCK_AFTER));
        assert!(watch.observe(1, Some(-1), start + STUCK_AFTER * 2));
    }

    #[test]
    fn a_consumer_without_partitions_since_losing_its_session_is_overdue_after_a_minute() {
        let lost = Instant::now();
        assert!(!rejoin_overdue(None, lost + REJOIN_AFTER * 10));
        assert!(!rejoin_overdue(
            Some(lost),
            lost + REJOIN_AFTER - Duration::from_secs(1)
        ));
        assert!(rejoin_overdue(Some(lost), lost + REJOIN_AFTER));
    }
}
