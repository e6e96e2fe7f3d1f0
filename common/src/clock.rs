//! Wall-clock time as the records and messages carry it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch; an error beyond what `OffsetDateTime` holds
/// (past the year 9999 either way).
pub fn from_unix_ms(ms: i64) -> Result<time::OffsetDateTime, time::error::ComponentRange> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
}

/// RFC 3339 of `ms` milliseconds after the Unix epoch, with the fraction when there is one (as
/// object metadata, API answers and logs give times); the number itself when out of range.
pub fn rfc3339_ms(ms: i64) -> String {
    from_unix_ms(ms)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// `time` as milliseconds since the Unix epoch (`i64::MAX` beyond what that can hold).
pub fn unix_ms(time: time::OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_convert_both_ways_and_out_of_range_ones_say_so() {
        let ms = 1_795_773_600_123; // 2026-11-27T10:00:00.123Z
        assert_eq!(unix_ms(from_unix_ms(ms).expect("in range")), ms);
        assert_eq!(rfc3339_ms(ms), "2026-11-27T10:00:00.123Z");
        assert_eq!(rfc3339_ms(ms - 123), "2026-11-27T10:00:00Z");
        assert!(from_unix_ms(i64::MAX).is_err());
        assert_eq!(rfc3339_ms(i64::MAX), i64::MAX.to_string());
    }
}
