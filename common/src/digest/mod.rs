//! Signed digests: per tenant and period (an hour by default), the list of every object stored
//! for the tenant in that period with its SHA-256, chained to the previous period's digest and
//! signed with Ed25519, so a customer can tell whether an object was deleted, altered or never
//! delivered, and whether a digest itself was (CloudTrail's digest files, per tenant).
//!
//! A digest file is two lines of JSON, gzip-compressed:
//!
//! ```text
//! {"format":"activity-logs-digest/1","tenant_id":"acme",...,"objects":[...],"previous":{...}}
//! {"key_id":"5f1c9a0d2b7e4c11","signature":"<base64 Ed25519 signature of line 1's bytes>"}
//! ```
//!
//! The first line is exactly the signed bytes (without its newline), so a customer can check a
//! digest with `gunzip`, `sed` and `openssl pkeyutl -verify -rawin` alone.

pub mod check;
pub mod signing;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::event::TenantId;

/// The format every digest names on its first line.
pub const FORMAT: &str = "activity-logs-digest/1";

/// Why a chain starts or ends with a digest.
pub mod reason {
    /// The tenant connected (or reconnected): no previous digest to link to.
    pub const CONNECTED: &str = "connected";
    /// Delivery was enabled again after a disabled period.
    pub const ENABLED: &str = "enabled";
    /// The tenant disabled delivery: no digests until it is enabled again.
    pub const DISABLED: &str = "disabled";
    /// The tenant disconnected.
    pub const DISCONNECTED: &str = "disconnected";
    /// Objects were stored while delivery was off (uploads that were under way when it was
    /// turned off): a digest lists them, starting and ending a chain of its own.
    pub const DELIVERED_WHILE_OFF: &str = "delivered while off";
}

/// The signed content of one digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub format: String,
    pub tenant_id: String,
    /// The period covered, `[start, end)`, RFC 3339 in UTC.
    pub period_start: String,
    pub period_end: String,
    /// Every object stored for the tenant in the period, by key.
    pub objects: Vec<DigestedObject>,
    /// The previous digest of the chain; `None` on the first after a (re)connection or
    /// re-enabling, which `chain_start` then names.
    pub previous: Option<Link>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_start: Option<String>,
    /// Set on the last digest before a disabled or disconnected period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_end: Option<String>,
    /// The signing key's id (see [`signing::key_id`]).
    pub key_id: String,
}

/// One stored object, as the delivery record says it was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestedObject {
    /// The full key in the bucket (with the customer's prefix).
    pub key: String,
    /// SHA-256 of the object's bytes as stored, lowercase hex.
    pub sha256: String,
    pub bytes: u64,
    pub event_count: u64,
    pub window_start: String,
    pub window_end: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// Where the previous digest is and what its signature was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub key: String,
    /// Base64 (standard alphabet, padded).
    pub signature: String,
}

/// The second line of a digest file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureLine {
    pub key_id: String,
    pub signature: String,
}

/// One tenant's chain of digests as it is signed, period after period: each digest links to
/// the one before, the first says why the chain starts, the last may say why it ends. It is
/// the state a digest builder keeps between periods (and checkpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    tenant_id: String,
    previous: Option<Link>,
    start_reason: String,
}

impl Chain {
    /// A chain for `tenant_id` starting for `reason` (see [`reason`]).
    pub fn start(tenant_id: &str, reason: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            previous: None,
            start_reason: reason.to_owned(),
        }
    }

    /// Signs with `key` the digest of `[start, end)` listing `objects` (put in key order), to be
    /// stored at `digest_key` (full key); `ends` names why the chain ends with it, if it does.
    /// Returns the digest and its file (uncompressed). Ed25519 signatures are deterministic, so
    /// the same chain and objects always make the same bytes.
    pub fn sign_next(
        &mut self,
        key: &signing::SigningKey,
        digest_key: &str,
        (start, end): (OffsetDateTime, OffsetDateTime),
        mut objects: Vec<DigestedObject>,
        ends: Option<&str>,
    ) -> Result<(Digest, Vec<u8>), String> {
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        let digest = Digest {
            format: FORMAT.into(),
            tenant_id: self.tenant_id.clone(),
            period_start: timestamp(start),
            period_end: timestamp(end),
            objects,
            chain_start: self.previous.is_none().then(|| self.start_reason.clone()),
            previous: self.previous.clone(),
            chain_end: ends.map(str::to_owned),
            key_id: key.key_id().to_owned(),
        };
        let (file, signature) = key.sign(&digest)?;
        self.previous = Some(Link {
            key: digest_key.to_owned(),
            signature,
        });
        Ok((digest, file))
    }
}

/// How a digest's name writes its period's start.
const KEY_STAMP: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]");
/// How a digest's name ends.
const KEY_SUFFIX: &str = "Z_digest.json.gz";

/// The digest's key below the customer's prefix:
/// `{tenant}/digests/{YYYY}/{MM}/{DD}/{tenant}_{YYYYMMDD}T{HHMMSS}Z_digest.json.gz`, beside the
/// tenant's log objects but in a folder of its own, named by the period's start.
pub fn relative_key(tenant: &TenantId, period_start: OffsetDateTime) -> String {
    let start = period_start.to_offset(time::UtcOffset::UTC);
    // Formatting a UTC date with numeric components cannot fail for years 0..=9999.
    let directory = start
        .format(format_description!("[year]/[month]/[day]"))
        .unwrap_or_default();
    let stamp = start.format(KEY_STAMP).unwrap_or_default();
    format!("{tenant}/digests/{directory}/{tenant}_{stamp}{KEY_SUFFIX}")
}

/// The period start a digest's key (full or relative) names, if it is a digest's key.
pub fn period_start_of_key(key: &str) -> Option<OffsetDateTime> {
    let name = key.rsplit('/').next()?.strip_suffix(KEY_SUFFIX)?;
    let stamp = name.rsplit('_').next()?;
    time::PrimitiveDateTime::parse(stamp, KEY_STAMP)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

/// SHA-256 of `bytes` in lowercase hex, as digests list objects.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// RFC 3339 in UTC to the second, as digests write times.
pub fn timestamp(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .unwrap_or_default()
}

/// [`timestamp`] of milliseconds since the epoch.
pub fn timestamp_ms(ms: i64) -> String {
    crate::clock::from_unix_ms(ms)
        .map(timestamp)
        .unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn digests_live_in_the_tenants_digest_folder_named_by_their_period() {
        let tenant = TenantId::parse("acme").expect("tenant");
        assert_eq!(
            relative_key(&tenant, datetime!(2026-11-30 14:00 +01:00)),
            "acme/digests/2026/11/30/acme_20261130T130000Z_digest.json.gz"
        );
        assert_eq!(
            period_start_of_key(
                "audit/acme/digests/2026/11/30/acme_20261130T130000Z_digest.json.gz"
            ),
            Some(datetime!(2026-11-30 13:00 UTC))
        );
        assert_eq!(
            period_start_of_key("audit/acme/2026/11/30/13/acme_20261130T1300Z_0-0.jsonl.zst"),
            None
        );
        let odd_start = datetime!(2026-11-30 14:20:05 UTC);
        assert_eq!(
            period_start_of_key(&crate::key::full_key(
                "audit",
                &relative_key(&tenant, odd_start)
            )),
            Some(odd_start),
            "the name keeps the period's start to the second"
        );
        assert_eq!(
            timestamp(datetime!(2026-11-30 14:05:09.5 UTC)),
            "2026-11-30T14:05:09Z"
        );
    }
}
