//! The upload job: what the batcher hands the uploader over RabbitMQ (DESIGN §2). The body is the
//! compressed object; these headers describe it. The uploader trusts nothing it cannot check: the
//! decoder validates every header and that the relative key is the one the other headers imply,
//! so a job can only ever name a path under its own tenant.

use std::collections::BTreeMap;
use std::fmt;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use time::OffsetDateTime;

use crate::event::TenantId;
use crate::key::{Codec, ObjectKey};

/// Header names, one place for both sides.
pub mod header {
    pub const TENANT: &str = "tenant";
    pub const RELATIVE_KEY: &str = "relative-key";
    pub const CODEC: &str = "codec";
    pub const EVENT_COUNT: &str = "event-count";
    pub const WINDOW_START: &str = "window-start-ms";
    pub const WINDOW_END: &str = "window-end-ms";
    pub const PARTITION: &str = "partition";
    pub const FIRST_OFFSET: &str = "first-offset";
    pub const LAST_OFFSET: &str = "last-offset";
    pub const UNCOMPRESSED_BYTES: &str = "uncompressed-bytes";
    pub const SHA256: &str = "sha256";
    pub const CREATED_AT: &str = "created-at-ms";
    pub const ATTEMPT: &str = "attempt";
    /// What the object is ([`JobKind`]); absent on a log object's job.
    pub const KIND: &str = "kind";
}

/// What an upload job carries: a window's log object, or a tenant's signed digest of a period
/// (whose "window" is the period, whose event count is the number of objects it lists, and
/// whose partition and offsets are 0). Delivery records name it too. A kind this version does
/// not know reads as [`JobKind::Unknown`], so records of a newer version are still read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    #[default]
    Log,
    Digest,
    #[serde(other)]
    Unknown,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Digest => "digest",
            Self::Unknown => "unknown",
        }
    }

    pub fn is_log(&self) -> bool {
        *self == Self::Log
    }
}

/// One object to upload, as described by its message headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadJob {
    pub kind: JobKind,
    pub tenant_id: TenantId,
    /// The object key without the customer's prefix; also the message id.
    pub relative_key: String,
    pub codec: Codec,
    pub event_count: u64,
    /// Window bounds, milliseconds since the epoch, `[start, end)`.
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub uncompressed_bytes: u64,
    /// SHA-256 of the message body (the object as stored), lowercase hex.
    pub sha256_hex: String,
    /// When the batcher created the job, milliseconds since the epoch (for the retry age limit).
    pub created_at_ms: i64,
    /// Upload attempts made so far; 0 for a fresh job.
    pub attempt: u32,
}

/// Why a message's headers are not a valid upload job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobHeaderError {
    #[error("header `{0}` is missing")]
    Missing(&'static str),
    #[error("header `{header}` must be {expected}, not {found}")]
    WrongType {
        header: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("header `{header}` {problem}")]
    Invalid {
        header: &'static str,
        problem: String,
    },
}

impl UploadJob {
    /// The key the headers imply; `relative_key` must equal it.
    pub fn object_key(&self) -> Result<ObjectKey, JobHeaderError> {
        Ok(ObjectKey {
            tenant_id: self.tenant_id.clone(),
            window_start: self.window_start()?,
            partition: self.partition,
            first_offset: self.first_offset,
            codec: self.codec,
        })
    }

    /// The message headers carrying this job.
    fn window_start(&self) -> Result<OffsetDateTime, JobHeaderError> {
        crate::clock::from_unix_ms(self.window_start_ms)
            .map_err(|e| invalid(header::WINDOW_START, format!("is out of range: {e}")))
    }

    pub fn to_headers(&self) -> FieldTable {
        let text = |value: &str| AMQPValue::LongString(LongString::from(value));
        let int = AMQPValue::LongLongInt;
        let count = |value: u64| AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX));
        let entries: BTreeMap<ShortString, AMQPValue> = [
            (header::TENANT, text(self.tenant_id.as_str())),
            (header::RELATIVE_KEY, text(&self.relative_key)),
            (header::CODEC, text(self.codec.as_str())),
            (header::EVENT_COUNT, count(self.event_count)),
            (header::WINDOW_START, int(self.window_start_ms)),
            (header::WINDOW_END, int(self.window_end_ms)),
            (header::PARTITION, int(i64::from(self.partition))),
            (header::FIRST_OFFSET, int(self.first_offset)),
            (header::LAST_OFFSET, int(self.last_offset)),
            (header::UNCOMPRESSED_BYTES, count(self.uncompressed_bytes)),
            (header::SHA256, text(&self.sha256_hex)),
            (header::CREATED_AT, int(self.created_at_ms)),
            (header::ATTEMPT, int(i64::from(self.attempt))),
        ]
        .into_iter()
        .chain((!self.kind.is_log()).then(|| (header::KIND, text(self.kind.as_str()))))
        .map(|(name, value)| (ShortString::from(name), value))
        .collect();
        FieldTable::from(entries)
    }

    /// Decodes and checks a job from message headers.
    pub fn from_headers(headers: &FieldTable) -> Result<Self, JobHeaderError> {
        let table = headers.inner();
        let tenant_raw = string(table, header::TENANT)?;
        let tenant_id =
            TenantId::parse(&tenant_raw).map_err(|e| invalid(header::TENANT, e.to_string()))?;
        let codec = string(table, header::CODEC)?
            .parse::<Codec>()
            .map_err(|e| invalid(header::CODEC, e))?;
        let sha256_hex = string(table, header::SHA256)?;
        if sha256_hex.len() != 64
            || !sha256_hex
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(invalid(
                header::SHA256,
                "is not 64 lowercase hex digits".into(),
            ));
        }
        let kind = match table.get(header::KIND) {
            None => JobKind::Log,
            Some(_) => match string(table, header::KIND)?.as_str() {
                "log" => JobKind::Log,
                "digest" => JobKind::Digest,
                other => {
                    return Err(invalid(
                        header::KIND,
                        format!("is {other:?}, not \"log\" or \"digest\""),
                    ));
                }
            },
        };
        let job = Self {
            kind,
            tenant_id,
            relative_key: string(table, header::RELATIVE_KEY)?,
            codec,
            event_count: non_negative(table, header::EVENT_COUNT)?,
            window_start_ms: integer(table, header::WINDOW_START)?,
            window_end_ms: integer(table, header::WINDOW_END)?,
            partition: i32::try_from(non_negative(table, header::PARTITION)?).map_err(|_| {
                invalid(
                    header::PARTITION,
                    "is larger than a Kafka partition can be".into(),
                )
            })?,
            first_offset: integer(table, header::FIRST_OFFSET)?,
            last_offset: integer(table, header::LAST_OFFSET)?,
            uncompressed_bytes: non_negative(table, header::UNCOMPRESSED_BYTES)?,
            sha256_hex,
            created_at_ms: integer(table, header::CREATED_AT)?,
            attempt: match table.get(header::ATTEMPT) {
                None => 0,
                Some(_) => u32::try_from(non_negative(table, header::ATTEMPT)?)
                    .map_err(|_| invalid(header::ATTEMPT, "is out of range".into()))?,
            },
        };
        job.check_consistency()?;
        Ok(job)
    }

    fn check_consistency(&self) -> Result<(), JobHeaderError> {
        if self.kind == JobKind::Digest {
            return self.check_digest_consistency();
        }
        if self.event_count == 0 {
            return Err(invalid(header::EVENT_COUNT, "must be at least 1".into()));
        }
        if self.window_end_ms <= self.window_start_ms {
            return Err(invalid(
                header::WINDOW_END,
                "must be after the window start".into(),
            ));
        }
        if self.first_offset < 0 || self.last_offset < self.first_offset {
            return Err(invalid(
                header::LAST_OFFSET,
                format!(
                    "{} does not follow first offset {}",
                    self.last_offset, self.first_offset
                ),
            ));
        }
        let expected = self.object_key()?.relative();
        if self.relative_key != expected {
            return Err(invalid(
                header::RELATIVE_KEY,
                format!(
                    "is {:?}, but the other headers make it {expected:?}",
                    self.relative_key
                ),
            ));
        }
        Ok(())
    }
}

impl UploadJob {
    /// A digest's job: its key is the tenant's digest key of the period, and it names no Kafka
    /// records of its own.
    fn check_digest_consistency(&self) -> Result<(), JobHeaderError> {
        if self.window_end_ms <= self.window_start_ms {
            return Err(invalid(
                header::WINDOW_END,
                "must be after the period start".into(),
            ));
        }
        if self.codec != Codec::Gzip {
            return Err(invalid(
                header::CODEC,
                format!("is {}, but digests are gzip", self.codec),
            ));
        }
        let expected = crate::digest::relative_key(&self.tenant_id, self.window_start()?);
        if self.relative_key != expected {
            return Err(invalid(
                header::RELATIVE_KEY,
                format!(
                    "is {:?}, but a digest of that tenant and period is {expected:?}",
                    self.relative_key
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for UploadJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.relative_key)
    }
}

fn invalid(header: &'static str, problem: String) -> JobHeaderError {
    JobHeaderError::Invalid { header, problem }
}

fn get<'a>(
    table: &'a BTreeMap<ShortString, AMQPValue>,
    header: &'static str,
) -> Result<&'a AMQPValue, JobHeaderError> {
    table.get(header).ok_or(JobHeaderError::Missing(header))
}

fn string(
    table: &BTreeMap<ShortString, AMQPValue>,
    header: &'static str,
) -> Result<String, JobHeaderError> {
    match get(table, header)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec())
            .map_err(|_| invalid(header, "is not UTF-8".into())),
        AMQPValue::ShortString(s) => Ok(s.as_str().to_owned()),
        other => Err(wrong_type(header, "a string", other)),
    }
}

/// Any AMQP integer type: brokers and other clients do not always keep the width we sent.
fn integer(
    table: &BTreeMap<ShortString, AMQPValue>,
    header: &'static str,
) -> Result<i64, JobHeaderError> {
    match get(table, header)? {
        AMQPValue::ShortShortInt(v) => Ok(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Ok(i64::from(*v)),
        AMQPValue::ShortInt(v) => Ok(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Ok(i64::from(*v)),
        AMQPValue::LongInt(v) => Ok(i64::from(*v)),
        AMQPValue::LongUInt(v) => Ok(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Ok(*v),
        other => Err(wrong_type(header, "an integer", other)),
    }
}

fn non_negative(
    table: &BTreeMap<ShortString, AMQPValue>,
    header: &'static str,
) -> Result<u64, JobHeaderError> {
    let value = integer(table, header)?;
    u64::try_from(value).map_err(|_| invalid(header, format!("must not be negative, is {value}")))
}

fn wrong_type(header: &'static str, expected: &'static str, found: &AMQPValue) -> JobHeaderError {
    JobHeaderError::WrongType {
        header,
        expected,
        found: format!("{:?}", found.get_type()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> UploadJob {
        let mut job = UploadJob {
            kind: JobKind::Log,
            tenant_id: TenantId::parse("acme").expect("tenant"),
            relative_key: String::new(),
            codec: Codec::Zstd,
            event_count: 3,
            window_start_ms: 1_795_770_000_000,
            window_end_ms: 1_795_773_600_000,
            partition: 2,
            first_offset: 40,
            last_offset: 42,
            uncompressed_bytes: 900,
            sha256_hex: "ab".repeat(32),
            created_at_ms: 1_795_773_700_000,
            attempt: 0,
        };
        job.relative_key = job.object_key().expect("key").relative();
        job
    }

    fn with(name: &str, value: AMQPValue) -> FieldTable {
        let mut headers = job().to_headers();
        headers.insert(name.into(), value);
        headers
    }

    #[test]
    fn headers_round_trip() {
        assert_eq!(UploadJob::from_headers(&job().to_headers()), Ok(job()));
    }

    fn digest_job() -> UploadJob {
        let mut job = UploadJob {
            kind: JobKind::Digest,
            codec: Codec::Gzip,
            event_count: 0,
            partition: 0,
            first_offset: 0,
            last_offset: 0,
            ..job()
        };
        let start = job.window_start().expect("start");
        job.relative_key = crate::digest::relative_key(&job.tenant_id, start);
        job
    }

    #[test]
    fn a_digest_job_round_trips_and_lists_no_events_of_its_own() {
        let headers = digest_job().to_headers();
        assert!(headers.inner().contains_key(header::KIND));
        assert_eq!(UploadJob::from_headers(&headers), Ok(digest_job()));
        assert!(!job().to_headers().inner().contains_key(header::KIND));
    }

    #[test]
    fn a_digest_job_may_only_name_its_tenants_digest_of_the_period() {
        let mut headers = digest_job().to_headers();
        headers.insert(
            header::RELATIVE_KEY.into(),
            AMQPValue::LongString("acme/2026/11/27/10/other.json.gz".into()),
        );
        let problem = UploadJob::from_headers(&headers)
            .expect_err("a foreign key")
            .to_string();
        assert!(
            problem.contains("but a digest of that tenant and period is \"acme/digests/"),
            "{problem}"
        );
        let mut headers = digest_job().to_headers();
        headers.insert(
            header::KIND.into(),
            AMQPValue::LongString("manifest".into()),
        );
        assert_eq!(
            UploadJob::from_headers(&headers).map_err(|e| e.to_string()),
            Err("header `kind` is \"manifest\", not \"log\" or \"digest\"".into())
        );
    }

    #[test]
    fn integers_of_any_width_are_accepted() {
        let headers = with(header::PARTITION, AMQPValue::ShortShortUInt(2));
        assert_eq!(UploadJob::from_headers(&headers), Ok(job()));
    }

    #[test]
    fn a_header_a_newer_batcher_adds_is_ignored_by_an_older_uploader() {
        let headers = with("x-future-priority", AMQPValue::LongString("high".into()));
        assert_eq!(UploadJob::from_headers(&headers), Ok(job()));
    }

    #[test]
    fn a_missing_attempt_means_a_fresh_job() {
        let mut entries = job().to_headers().inner().clone();
        entries.remove(header::ATTEMPT);
        assert_eq!(
            UploadJob::from_headers(&FieldTable::from(entries)).map(|j| j.attempt),
            Ok(0)
        );
    }

    #[test]
    fn each_problem_names_its_header() {
        let mut entries = job().to_headers().inner().clone();
        entries.remove(header::SHA256);
        assert_eq!(
            UploadJob::from_headers(&FieldTable::from(entries)),
            Err(JobHeaderError::Missing(header::SHA256))
        );
        let cases = [
            (
                header::TENANT,
                AMQPValue::LongString("../etc".into()),
                "`tenant` must start with",
            ),
            (
                header::CODEC,
                AMQPValue::LongString("lz4".into()),
                "`codec` \"lz4\" is not a codec",
            ),
            (
                header::EVENT_COUNT,
                AMQPValue::LongLongInt(0),
                "`event-count` must be at least 1",
            ),
            (
                header::EVENT_COUNT,
                AMQPValue::LongString("3".into()),
                "`event-count` must be an integer",
            ),
            (
                header::WINDOW_END,
                AMQPValue::LongLongInt(1_795_770_000_000),
                "`window-end-ms` must be after",
            ),
            (
                header::LAST_OFFSET,
                AMQPValue::LongLongInt(39),
                "`last-offset` 39 does not follow",
            ),
            (
                header::SHA256,
                AMQPValue::LongString("AB".repeat(32).into()),
                "`sha256` is not 64 lowercase",
            ),
            (
                header::PARTITION,
                AMQPValue::LongLongInt(-1),
                "`partition` must not be negative",
            ),
        ];
        for (name, value, says) in cases {
            let error = UploadJob::from_headers(&with(name, value))
                .expect_err(name)
                .to_string();
            assert!(
                error.starts_with(&format!("header {says}")),
                "{name}: {error}"
            );
        }
    }

    #[test]
    fn a_key_outside_the_tenant_or_not_matching_the_headers_is_refused() {
        for key in [
            "globex/2026/11/27/06/globex_20261127T0600Z_2-40.jsonl.zst",
            "acme/2026/11/27/06/acme_20261127T0600Z_2-41.jsonl.zst",
            "acme/../globex/x.jsonl.zst",
        ] {
            let error = UploadJob::from_headers(&with(
                header::RELATIVE_KEY,
                AMQPValue::LongString(key.into()),
            ))
            .expect_err(key);
            assert!(
                matches!(
                    error,
                    JobHeaderError::Invalid {
                        header: header::RELATIVE_KEY,
                        ..
                    }
                ),
                "{key}"
            );
        }
    }
}
