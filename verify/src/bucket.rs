//! Reading what the customer's bucket holds: the tenant's digests for a range of periods, and
//! the SHA-256 of the objects they list and of the objects in the tenant's folders for the
//! range's hours.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use aws_sdk_s3::error::DisplayErrorContext;
use common::digest::check::{Checksums, DigestFile};
use common::digest::signing::PublicKeys;
use common::event::TenantId;
use common::key::full_key;
use time::macros::format_description;
use time::{Duration, OffsetDateTime, Time, UtcOffset};

use crate::Args;

/// Longest digest file read (uncompressed): a day's worth of a busy tenant's objects is far less.
const MAX_DIGEST_BYTES: u64 = 256 << 20;

/// What the tenant's folders hold for a range.
pub struct Found {
    pub checksums: Checksums,
    /// When each object found in the range's folders was stored (S3's `LastModified`).
    pub stored_at: BTreeMap<String, OffsetDateTime>,
}

/// Whether a digest after the range lists an object.
pub enum Later {
    Listed,
    /// The digests that would list it exist and do not.
    NotListed,
    /// Stored too recently: the digests that would list it are not made yet.
    Pending,
}

pub struct Bucket {
    s3: aws_sdk_s3::Client,
    name: String,
    prefix: String,
}

impl Bucket {
    pub async fn new(args: &Args) -> Self {
        let config = args.aws.sdk_config().await;
        // S3-compatible servers reached through an endpoint override want path-style keys.
        let s3 = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(config.endpoint_url().is_some())
            .build();
        Self {
            s3: aws_sdk_s3::Client::from_conf(s3),
            name: args.bucket.clone(),
            prefix: args.prefix.clone(),
        }
    }

    /// Every digest file (full key, uncompressed) whose period starts in `[from, to)`.
    pub async fn digests(
        &self,
        tenant: &TenantId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<DigestFile>, String> {
        let mut files = Vec::new();
        let mut day = from.to_offset(UtcOffset::UTC).date();
        while day <= (to - Duration::NANOSECOND).to_offset(UtcOffset::UTC).date() {
            let folder = format!(
                "{tenant}/digests/{}/",
                day.format(format_description!("[year]/[month]/[day]"))
                    .unwrap_or_default()
            );
            for (key, _) in self.list(&full_key(&self.prefix, &folder)).await? {
                let in_range = common::digest::period_start_of_key(&key)
                    .is_some_and(|start| from <= start && start < to);
                if in_range && let Some(bytes) = self.get(&key).await? {
                    files.push((key.clone(), gunzip(&key, &bytes)?));
                }
            }
            day = day.next_day().ok_or("the range runs past the calendar")?;
        }
        Ok(files)
    }

    /// The SHA-256 of every object the digests list and of every object in the tenant's folders
    /// for the hours of `[from, to)` (objects that are not there are left out), and when each
    /// object found in those folders was stored.
    pub async fn objects(
        &self,
        tenant: &TenantId,
        (from, to): (OffsetDateTime, OffsetDateTime),
        keys: &PublicKeys,
        digests: &[DigestFile],
    ) -> Result<Found, String> {
        let mut wanted: BTreeSet<String> = digests
            .iter()
            .filter_map(|(_, file)| keys.open(file).ok())
            .flat_map(|(digest, _)| digest.objects.into_iter().map(|object| object.key))
            .collect();
        let mut stored_at = BTreeMap::new();
        let from = from.to_offset(UtcOffset::UTC);
        let top_of_hour = Time::from_hms(from.hour(), 0, 0).map_err(|error| error.to_string())?;
        let mut hour = from.replace_time(top_of_hour);
        while hour < to {
            let folder = format!(
                "{tenant}/{}/",
                hour.format(format_description!("[year]/[month]/[day]/[hour]"))
                    .unwrap_or_default()
            );
            for (key, at) in self.list(&full_key(&self.prefix, &folder)).await? {
                if let Some(at) = at {
                    stored_at.insert(key.clone(), at);
                }
                wanted.insert(key);
            }
            hour += Duration::HOUR;
        }
        let mut checksums = BTreeMap::new();
        for key in wanted {
            if let Some(bytes) = self.get(&key).await? {
                checksums.insert(key, common::digest::sha256_hex(&bytes));
            }
        }
        Ok(Found {
            checksums,
            stored_at,
        })
    }

    /// Where an object stored at `stored_at` that no digest of the range lists is listed: a
    /// digest of the period it was stored in or the next (its delivery record may come a little
    /// late), when that digest exists.
    pub async fn listed_later(
        &self,
        tenant: &TenantId,
        key: &str,
        stored_at: OffsetDateTime,
        period: Duration,
        keys: &PublicKeys,
    ) -> Result<Later, String> {
        let files = self
            .digests(tenant, stored_at - period, stored_at + period * 2)
            .await?;
        // Periods are aligned to the epoch: the period after the one it was stored in.
        let period_ns = period.whole_nanoseconds().max(1);
        let stored_ns = stored_at.unix_timestamp_nanos();
        let next_period = OffsetDateTime::from_unix_timestamp_nanos(
            stored_ns - stored_ns.rem_euclid(period_ns) + period_ns,
        )
        .map_err(|error| error.to_string())?;
        let mut made_after = false;
        for (digest_key, file) in files {
            let Ok((digest, _)) = keys.open(&file) else {
                continue;
            };
            if digest.objects.iter().any(|object| object.key == key) {
                return Ok(Later::Listed);
            }
            made_after |= common::digest::period_start_of_key(&digest_key)
                .is_some_and(|start| start >= next_period);
        }
        Ok(if made_after {
            Later::NotListed
        } else {
            Later::Pending
        })
    }

    /// The keys under `folder`, each with when it was stored.
    async fn list(&self, folder: &str) -> Result<Vec<(String, Option<OffsetDateTime>)>, String> {
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.name)
            .prefix(folder)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| {
                format!(
                    "listing s3://{}/{folder}: {}",
                    self.name,
                    DisplayErrorContext(error)
                )
            })?;
            keys.extend(page.contents().iter().filter_map(|object| {
                let stored_at = object
                    .last_modified()
                    .and_then(|at| OffsetDateTime::from_unix_timestamp_nanos(at.as_nanos()).ok());
                object.key().map(|key| (key.to_owned(), stored_at))
            }));
        }
        Ok(keys)
    }

    /// The object's bytes, or `None` when there is no such object.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let failed = |error: String| format!("reading s3://{}/{key}: {error}", self.name);
        match self
            .s3
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(object) => {
                let body = object
                    .body
                    .collect()
                    .await
                    .map_err(|error| failed(error.to_string()))?;
                Ok(Some(body.to_vec()))
            }
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(error) => Err(failed(DisplayErrorContext(error).to_string())),
        }
    }
}

/// The period start a digest's key names (`..._{YYYYMMDD}T{HHMM}Z_digest.json.gz`).
fn gunzip(key: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_DIGEST_BYTES)
        .read_to_end(&mut plain)
        .map_err(|error| format!("digest {key} is not gzip: {error}"))?;
    Ok(plain)
}
