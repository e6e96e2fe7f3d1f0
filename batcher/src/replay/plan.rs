//! Where a replay reads each partition, worked out from what the events topic's index answers
//! (its partitions, end offsets, and offsets by time). The rule lives here apart from Kafka, so
//! it is tested as a table; [`super::index`] answers the questions from the broker.

use crate::config::ReplayStart;
use crate::core::WindowSettings;
use crate::core::window::window_start;

/// What a replay reads from one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    pub partition: i32,
    /// The first record of the window holding the requested start.
    pub start_offset: i64,
    /// Reading stops before this offset.
    pub end_offset: i64,
    /// Parts of windows starting before this are not published (they began before the range).
    pub first_window_ms: i64,
    /// No record closes the last window: reading stops at the end offset the broker reported
    /// when the replay was planned, and windows whose close time has passed are closed by the
    /// clock; later records are live batching's.
    pub to_end: bool,
}

/// The questions planning asks of the events topic.
pub trait TopicIndex {
    /// The topic's partitions (none when it does not exist).
    fn partitions(&self) -> anyhow::Result<Vec<i32>>;
    /// The offset after the last record of `partition`.
    fn end_offset(&self, partition: i32) -> anyhow::Result<i64>;
    /// The first offset of `partition` whose timestamp is at or after `time_ms`, if any.
    fn offset_for_time(&self, partition: i32, time_ms: i64) -> anyhow::Result<Option<i64>>;
    /// The timestamp of the record at `offset` of `partition` (below its end offset).
    fn timestamp_at(&self, partition: i32, offset: i64) -> anyhow::Result<i64>;
}

/// Works out, per partition, where reading starts and stops to rebuild the windows from
/// `start` up to `to_ms` (exclusive). Reading starts at the first record of the window holding
/// the start, where live batching started that window, so the objects come out alike; it stops
/// at the first record whose time closes the last window, or at the end of the log.
pub fn plan(
    index: &impl TopicIndex,
    topic: &str,
    start: &ReplayStart,
    to_ms: i64,
    settings: &WindowSettings,
) -> anyhow::Result<Vec<PartitionPlan>> {
    let partitions = index.partitions()?;
    anyhow::ensure!(!partitions.is_empty(), "the topic {topic} does not exist");
    let first_windows: Vec<(i32, i64)> = match start {
        ReplayStart::Time(from) => {
            let from_ms = common::clock::unix_ms(*from);
            let first = window_start(from_ms, settings.length_ms);
            partitions.iter().map(|p| (*p, first)).collect()
        }
        ReplayStart::Offsets(offsets) => {
            let mut windows = Vec::new();
            for (partition, offset) in offsets {
                anyhow::ensure!(
                    partitions.contains(partition),
                    "{topic} has no partition {partition}"
                );
                let end = index.end_offset(*partition)?;
                anyhow::ensure!(
                    *offset < end,
                    "{topic}/{partition} has no record at offset {offset} (it ends at {end})"
                );
                let timestamp = index.timestamp_at(*partition, *offset)?;
                windows.push((*partition, window_start(timestamp, settings.length_ms)));
            }
            windows
        }
    };
    let last_window_end = window_start(to_ms - 1, settings.length_ms) + settings.length_ms;
    let closing_time = last_window_end + settings.close_delay_ms;
    let mut plans = Vec::new();
    for (partition, first_window_ms) in first_windows {
        if first_window_ms >= to_ms {
            continue;
        }
        let Some(start_offset) = index.offset_for_time(partition, first_window_ms)? else {
            continue;
        };
        let (end_offset, to_end) = match index.offset_for_time(partition, closing_time)? {
            // That record's time closes the last window: read it too.
            Some(closing) => (closing + 1, false),
            None => (index.end_offset(partition)?, true),
        };
        if start_offset < end_offset {
            plans.push(PartitionPlan {
                partition,
                start_offset,
                end_offset,
                first_window_ms,
                to_end,
            });
        }
    }
    Ok(plans)
}

/// The plan in lines an operator reads before the replay starts.
pub fn describe(
    topic: &str,
    plans: &[PartitionPlan],
    to_ms: i64,
    tenant: Option<&common::event::TenantId>,
    settings: &WindowSettings,
) -> Vec<String> {
    let mut lines = vec![format!(
        "replay of {topic}, windows of {} s from their start up to {} (exclusive), tenant: {}",
        settings.length_ms / 1000,
        common::clock::rfc3339_ms(to_ms),
        tenant.map_or_else(|| "all with an integration".to_owned(), ToString::to_string)
    )];
    lines.extend(plans.iter().map(|plan| {
        format!(
            "  partition {}: offsets {} to {}{}, windows from {}",
            plan.partition,
            plan.start_offset,
            plan.end_offset - 1,
            if plan.to_end { " (end of log)" } else { "" },
            common::clock::rfc3339_ms(plan.first_window_ms)
        )
    }));
    lines
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const MINUTE: i64 = 60_000;

    /// A topic held in memory: each partition's record timestamps, by offset from `first`.
    struct Log {
        partitions: BTreeMap<i32, (i64, Vec<i64>)>,
    }

    impl Log {
        fn new(partitions: &[(i32, &[i64])]) -> Self {
            Self::from(partitions.iter().map(|(p, times)| (*p, 0, *times)))
        }

        fn from<'a>(partitions: impl Iterator<Item = (i32, i64, &'a [i64])>) -> Self {
            Self {
                partitions: partitions
                    .map(|(p, first, times)| (p, (first, times.to_vec())))
                    .collect(),
            }
        }

        fn records(&self, partition: i32) -> anyhow::Result<&(i64, Vec<i64>)> {
            self.partitions
                .get(&partition)
                .ok_or_else(|| anyhow::anyhow!("no partition {partition}"))
        }
    }

    impl TopicIndex for Log {
        fn partitions(&self) -> anyhow::Result<Vec<i32>> {
            Ok(self.partitions.keys().copied().collect())
        }

        fn end_offset(&self, partition: i32) -> anyhow::Result<i64> {
            let (first, times) = self.records(partition)?;
            Ok(first + times.len() as i64)
        }

        fn offset_for_time(&self, partition: i32, time_ms: i64) -> anyhow::Result<Option<i64>> {
            let (first, times) = self.records(partition)?;
            Ok(times
                .iter()
                .position(|t| *t >= time_ms)
                .map(|i| first + i as i64))
        }

        fn timestamp_at(&self, partition: i32, offset: i64) -> anyhow::Result<i64> {
            let (first, times) = self.records(partition)?;
            Ok(times[usize::try_from(offset - first)?])
        }
    }

    /// Ten-minute windows closed a minute after their end.
    fn settings() -> WindowSettings {
        WindowSettings::for_tests(10 * MINUTE, MINUTE)
    }

    fn at(minutes: i64) -> ReplayStart {
        ReplayStart::Time(common::clock::from_unix_ms(minutes * MINUTE).unwrap())
    }

    fn plan_of(log: &Log, start: &ReplayStart, to_minutes: i64) -> Vec<PartitionPlan> {
        plan(log, "events", start, to_minutes * MINUTE, &settings()).unwrap()
    }

    fn minutes(times: &[i64]) -> Vec<i64> {
        times.iter().map(|t| t * MINUTE).collect()
    }

    #[test]
    fn reading_starts_at_the_first_record_of_the_window_holding_the_start() {
        let times = minutes(&[2, 9, 11, 14, 25, 33]);
        let log = Log::new(&[(0, &times)]);
        // 14:00 is in the window of 10:00, whose first record is at offset 2 (11:00).
        let plans = plan_of(&log, &at(14), 20);
        assert_eq!(plans[0].start_offset, 2);
        assert_eq!(plans[0].first_window_ms, 10 * MINUTE);
    }

    #[test]
    fn reading_stops_after_the_first_record_that_closes_the_last_window() {
        let times = minutes(&[11, 14, 20, 20, 21, 25, 33]);
        let log = Log::new(&[(0, &times)]);
        // The last window is 10-20, closed by the first record at or after 21:00 (offset 4).
        let plans = plan_of(&log, &at(10), 20);
        assert_eq!((plans[0].end_offset, plans[0].to_end), (5, false));
    }

    #[test]
    fn without_a_closing_record_reading_stops_at_the_end_of_the_log() {
        let times = minutes(&[11, 14, 20]);
        let log = Log::new(&[(0, &times)]);
        let plans = plan_of(&log, &at(10), 20);
        assert_eq!((plans[0].end_offset, plans[0].to_end), (3, true));
    }

    #[test]
    fn a_range_ending_inside_a_window_rebuilds_that_whole_window() {
        let times = minutes(&[11, 14, 19, 25, 31, 33]);
        let log = Log::new(&[(0, &times)]);
        // Up to 15:00: the window 10-20 is built whole, closed by 25:00 at offset 3.
        let plans = plan_of(&log, &at(10), 15);
        assert_eq!((plans[0].end_offset, plans[0].to_end), (4, false));
    }

    #[test]
    fn a_time_start_plans_every_partition_with_records_in_range() {
        let (zero, one, two) = (minutes(&[11, 40]), minutes(&[1, 2]), minutes(&[12]));
        let log = Log::new(&[(0, &zero), (1, &one), (2, &two)]);
        let plans = plan_of(&log, &at(10), 20);
        let partitions: Vec<i32> = plans.iter().map(|p| p.partition).collect();
        assert_eq!(partitions, [0, 2], "partition 1 has nothing from 10:00 on");
    }

    #[test]
    fn an_offset_start_plans_the_partitions_named_from_their_records_windows() {
        let (zero, one) = (minutes(&[1, 12, 23, 40]), minutes(&[5, 31, 32, 45]));
        let log = Log::new(&[(0, &zero), (1, &one)]);
        let start = ReplayStart::Offsets(vec![(0, 2), (1, 1)]);
        let plans = plan_of(&log, &start, 60);
        assert_eq!(plans.len(), 2);
        assert_eq!(
            (plans[0].start_offset, plans[0].first_window_ms),
            (2, 20 * MINUTE)
        );
        assert_eq!(
            (plans[1].start_offset, plans[1].first_window_ms),
            (1, 30 * MINUTE)
        );
    }

    #[test]
    fn an_offset_inside_a_window_starts_at_that_windows_first_record() {
        let times = minutes(&[10, 12, 15, 18]);
        let log = Log::new(&[(0, &times)]);
        let plans = plan_of(&log, &ReplayStart::Offsets(vec![(0, 2)]), 60);
        assert_eq!(plans[0].start_offset, 0);
    }

    #[test]
    fn a_log_that_retention_shortened_starts_at_its_first_record() {
        let times = minutes(&[14, 16]);
        let log = Log::from([(0, 500, times.as_slice())].into_iter());
        let plans = plan_of(&log, &at(10), 20);
        assert_eq!((plans[0].start_offset, plans[0].end_offset), (500, 502));
    }

    #[test]
    fn a_start_at_or_after_the_end_plans_nothing() {
        let times = minutes(&[11, 25]);
        let log = Log::new(&[(0, &times)]);
        assert!(plan_of(&log, &at(30), 30).is_empty());
        assert!(plan_of(&log, &ReplayStart::Offsets(vec![(0, 1)]), 20).is_empty());
    }

    #[test]
    fn offsets_the_topic_does_not_hold_are_refused_by_name() {
        let times = minutes(&[11]);
        let log = Log::new(&[(0, &times)]);
        let settings = settings();
        let missing = plan(
            &log,
            "events",
            &ReplayStart::Offsets(vec![(3, 0)]),
            0,
            &settings,
        );
        assert_eq!(
            missing.unwrap_err().to_string(),
            "events has no partition 3"
        );
        let past_end = plan(
            &log,
            "events",
            &ReplayStart::Offsets(vec![(0, 1)]),
            0,
            &settings,
        );
        assert_eq!(
            past_end.unwrap_err().to_string(),
            "events/0 has no record at offset 1 (it ends at 1)"
        );
        let empty = Log::new(&[]);
        assert_eq!(
            plan(&empty, "events", &at(0), 0, &settings)
                .unwrap_err()
                .to_string(),
            "the topic events does not exist"
        );
    }
}
