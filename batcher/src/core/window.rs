//! Window arithmetic and the close rule: windows of `length` milliseconds aligned to the UTC
//! epoch, each closed once time passes its end by the close delay.

/// The start of the window holding `timestamp_ms` (floor division, so times before the epoch
/// align correctly too).
pub fn window_start(timestamp_ms: i64, length_ms: i64) -> i64 {
    timestamp_ms.div_euclid(length_ms) * length_ms
}

/// The close rule: at `time_ms` (a partition's stream time, or the clock for an idle one), every
/// window ending at or before the returned time is closed. A window closes once time is past
/// its end by `close_delay_ms`, which gives records that arrive a little out of order the time to
/// still land in their window.
pub fn closed_until(time_ms: i64, length_ms: i64, close_delay_ms: i64) -> i64 {
    window_start(time_ms - close_delay_ms, length_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn a_window_holds_its_start_but_not_its_end() {
        let ten = 1_795_773_600_000; // 2026-11-27T10:00:00Z
        assert_eq!(window_start(ten, HOUR), ten);
        assert_eq!(window_start(ten + HOUR - 1, HOUR), ten);
        assert_eq!(window_start(ten + HOUR, HOUR), ten + HOUR);
        assert_eq!(window_start(ten - 1, HOUR), ten - HOUR);
    }

    #[test]
    fn short_windows_align_to_the_epoch_and_negative_times_floor() {
        assert_eq!(window_start(61_999, 2_000), 60_000);
        assert_eq!(window_start(-1, 1_000), -1_000);
    }

    #[test]
    fn a_window_closes_once_time_is_its_close_delay_past_its_end() {
        let ten = 1_795_773_600_000; // 2026-11-27T10:00:00Z
        let eleven = ten + HOUR;
        let delay = 5 * 60_000;
        assert!(closed_until(eleven + delay - 1, HOUR, delay) < eleven);
        assert_eq!(closed_until(eleven + delay, HOUR, delay), eleven);
        assert_eq!(closed_until(eleven + HOUR + delay - 1, HOUR, delay), eleven);
    }
}
