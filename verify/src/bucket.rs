//! Reading what the customer's bucket holds: the tenant's digests for a range of periods, and
//! the SHA-256 of the objects they list and of the objects in the tenant's folders for the
//! range's hours.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;

use aws_sdk_s3::error::DisplayErrorContext;
use common::digest::check::{Checksums, DigestFile};
use common::digest::signing::PublicKeys;
use common::event::TenantId;
use common::key::full_key;
use time::macros::format_description;
use time::{Date, Duration, OffsetDateTime, Time, UtcOffset};

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

/// The digests [`Bucket::listed_later`] has read, so the many late objects of one hour do not
/// list and read the same digests again for each of them.
#[derive(Default)]
pub struct LaterDigests {
    /// The digest keys of each day's folder.
    folders: HashMap<Date, Vec<String>>,
    /// The object keys each digest lists; `None` for one that is gone or does not open with the
    /// public keys (it proves nothing either way).
    listed: HashMap<String, Option<BTreeSet<String>>>,
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
        for day in days(from, to)? {
            for key in self.digest_keys(tenant, day).await? {
                if starts_in(&key, from, to)
                    && let Some(bytes) = self.get(&key).await?
                {
                    files.push((key.clone(), gunzip(&key, &bytes)?));
                }
            }
        }
        Ok(files)
    }

    /// The keys in the tenant's digest folder of `day`.
    async fn digest_keys(&self, tenant: &TenantId, day: Date) -> Result<Vec<String>, String> {
        let folder = format!(
            "{tenant}/digests/{}/",
            day.format(format_description!("[year]/[month]/[day]"))
                .unwrap_or_default()
        );
        let listed = self.list(&full_key(&self.prefix, &folder)).await?;
        Ok(listed.into_iter().map(|(key, _)| key).collect())
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
        seen: &mut LaterDigests,
        tenant: &TenantId,
        key: &str,
        stored_at: OffsetDateTime,
        period: Duration,
        keys: &PublicKeys,
    ) -> Result<Later, String> {
        let (from, to) = (stored_at - period, stored_at + period * 2);
        // Periods are aligned to the epoch: the period after the one it was stored in.
        let period_ns = period.whole_nanoseconds().max(1);
        let stored_ns = stored_at.unix_timestamp_nanos();
        let next_period = OffsetDateTime::from_unix_timestamp_nanos(
            stored_ns - stored_ns.rem_euclid(period_ns) + period_ns,
        )
        .map_err(|error| error.to_string())?;
        let mut made_after = false;
        for day in days(from, to)? {
            if let Entry::Vacant(folder) = seen.folders.entry(day) {
                folder.insert(self.digest_keys(tenant, day).await?);
            }
            let in_range = seen.folders[&day]
                .iter()
                .filter(|digest_key| starts_in(digest_key, from, to))
                .cloned()
                .collect::<Vec<_>>();
            for digest_key in in_range {
                if let Entry::Vacant(listed) = seen.listed.entry(digest_key.clone()) {
                    listed.insert(self.listed_by(&digest_key, keys).await?);
                }
                let Some(listed) = &seen.listed[&digest_key] else {
                    continue;
                };
                if listed.contains(key) {
                    return Ok(Later::Listed);
                }
                made_after |= common::digest::period_start_of_key(&digest_key)
                    .is_some_and(|start| start >= next_period);
            }
        }
        Ok(if made_after {
            Later::NotListed
        } else {
            Later::Pending
        })
    }

    /// The object keys the digest at `digest_key` lists, if it is there and opens with `keys`.
    async fn listed_by(
        &self,
        digest_key: &str,
        keys: &PublicKeys,
    ) -> Result<Option<BTreeSet<String>>, String> {
        let Some(bytes) = self.get(digest_key).await? else {
            return Ok(None);
        };
        let file = gunzip(digest_key, &bytes)?;
        Ok(keys.open(&file).ok().map(|(digest, _)| {
            digest
                .objects
                .into_iter()
                .map(|object| object.key)
                .collect()
        }))
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

/// The UTC days `[from, to)` touches, whose digest folders hold its periods' digests.
fn days(from: OffsetDateTime, to: OffsetDateTime) -> Result<Vec<Date>, String> {
    let last = (to - Duration::NANOSECOND).to_offset(UtcOffset::UTC).date();
    let mut day = from.to_offset(UtcOffset::UTC).date();
    let mut days = Vec::new();
    while day <= last {
        days.push(day);
        day = day.next_day().ok_or("the range runs past the calendar")?;
    }
    Ok(days)
}

/// Whether the period a digest's key names starts in `[from, to)`.
fn starts_in(digest_key: &str, from: OffsetDateTime, to: OffsetDateTime) -> bool {
    common::digest::period_start_of_key(digest_key).is_some_and(|start| from <= start && start < to)
}

/// A digest file as stored (gzip), uncompressed, at most [`MAX_DIGEST_BYTES`].
fn gunzip(key: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_DIGEST_BYTES)
        .read_to_end(&mut plain)
        .map_err(|error| format!("digest {key} is not gzip: {error}"))?;
    Ok(plain)
}
