//! Object key layout (DESIGN §2): deterministic, so a window rebuilt from the log gets the same key.
//!
//! `{prefix}/{tenant}/{YYYY}/{MM}/{DD}/{HH}/{tenant}_{YYYYMMDDTHHMM}Z_{partition}-{first_offset}.jsonl.zst`
//!
//! The batcher renders the part after the prefix (the *relative key*); the uploader adds the
//! customer's current prefix at upload time.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;
use time::macros::format_description;

use crate::event::TenantId;

/// How an object's NDJSON body is compressed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    #[default]
    Zstd,
    Gzip,
    None,
}

impl Codec {
    /// The object key's file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Zstd => "jsonl.zst",
            Self::Gzip => "jsonl.gz",
            Self::None => "jsonl",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
            Self::None => "none",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Codec {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "zstd" => Ok(Self::Zstd),
            "gzip" => Ok(Self::Gzip),
            "none" => Ok(Self::None),
            other => Err(format!("{other:?} is not a codec; use zstd, gzip or none")),
        }
    }
}

/// What identifies one object: the tenant, its window's start, and where its records begin in
/// the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    pub tenant_id: TenantId,
    pub window_start: OffsetDateTime,
    pub partition: i32,
    pub first_offset: i64,
    pub codec: Codec,
}

impl ObjectKey {
    /// The key without the customer's prefix.
    pub fn relative(&self) -> String {
        let start = self.window_start.to_offset(time::UtcOffset::UTC);
        let directory = format_description!("[year]/[month]/[day]/[hour]");
        let stamp = format_description!("[year][month][day]T[hour][minute]");
        // Formatting a UTC date with fixed numeric components cannot fail for years 0..=9999,
        // which Kafka's millisecond timestamps stay within.
        let directory = start.format(directory).unwrap_or_default();
        let stamp = start.format(stamp).unwrap_or_default();
        format!(
            "{tenant}/{directory}/{tenant}_{stamp}Z_{partition}-{offset}.{extension}",
            tenant = self.tenant_id,
            partition = self.partition,
            offset = self.first_offset,
            extension = self.codec.extension(),
        )
    }
}

/// Joins a customer's prefix (no leading or trailing `/` needed) and a relative key.
pub fn full_key(prefix: &str, relative: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        relative.to_owned()
    } else {
        format!("{prefix}/{relative}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn key(codec: Codec) -> ObjectKey {
        ObjectKey {
            tenant_id: TenantId::parse("acme-1").expect("tenant"),
            window_start: datetime!(2026-11-27 09:00 UTC),
            partition: 7,
            first_offset: 1234,
            codec,
        }
    }

    #[test]
    fn relative_keys_follow_the_design_layout() {
        assert_eq!(
            key(Codec::Zstd).relative(),
            "acme-1/2026/11/27/09/acme-1_20261127T0900Z_7-1234.jsonl.zst"
        );
        assert!(key(Codec::Gzip).relative().ends_with("_7-1234.jsonl.gz"));
        assert!(key(Codec::None).relative().ends_with("_7-1234.jsonl"));
    }

    #[test]
    fn keys_are_rendered_in_utc_whatever_the_offset_given() {
        let mut shifted = key(Codec::Zstd);
        shifted.window_start = datetime!(2026-11-27 10:00 +01:00);
        assert_eq!(shifted.relative(), key(Codec::Zstd).relative());
    }

    #[test]
    fn prefixes_join_with_exactly_one_slash() {
        let relative = key(Codec::Zstd).relative();
        assert_eq!(full_key("", &relative), relative);
        assert_eq!(
            full_key("logs/activity", &relative),
            format!("logs/activity/{relative}")
        );
        assert_eq!(full_key("logs/", &relative), format!("logs/{relative}"));
    }

    #[test]
    fn codecs_parse_from_their_names_only() {
        for codec in [Codec::Zstd, Codec::Gzip, Codec::None] {
            assert_eq!(codec.as_str().parse::<Codec>(), Ok(codec));
        }
        assert!(
            "lz4"
                .parse::<Codec>()
                .unwrap_err()
                .contains("use zstd, gzip or none")
        );
    }
}
