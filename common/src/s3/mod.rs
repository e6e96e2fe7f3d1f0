//! Writing into a customer's bucket with the customer's role (DESIGN §2–§3): assuming the role
//! with the tenant's external id, and putting or deleting objects with the headers every
//! delivered object carries. The uploader delivers through it and the admin API's connection
//! test proves access through it, so the test exercises exactly what delivery will do.

pub mod error;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use aws_config::{Region, SdkConfig};
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ServerSideEncryption};
use base64::Engine;
use bytes::Bytes;

use crate::integration::Integration;
use crate::job::{JobKind, UploadJob};
use crate::key::full_key;

pub use error::{ErrorClass, UploadError};

/// Content type of every log object.
pub const CONTENT_TYPE: &str = "application/x-ndjson";
/// Content type of digests (gzip-compressed JSON lines, named `.json.gz`).
pub const DIGEST_CONTENT_TYPE: &str = "application/json";

/// Regions whose S3 client is kept for reuse. AWS has about 35; region names are only checked
/// for their shape, so connection tests naming made-up regions must not grow the cache without
/// bound: past this many, a client is made for the call and dropped.
const MAX_CACHED_REGIONS: usize = 64;

/// Requested session length of an assumed role.
const SESSION_SECONDS: i32 = 3600;
/// STS's limit on `RoleSessionName`.
const MAX_SESSION_NAME: usize = 64;

/// Assumes the integration's role with its external id, in the integration's region (regional
/// STS endpoints keep working when the global one is slow or disabled for the account).
/// `base` carries the vendor's own identity (the standard chain) and any endpoint override.
pub async fn assume_role(
    base: &SdkConfig,
    integration: &Integration,
) -> Result<Credentials, UploadError> {
    assume_role_presenting(base, integration, Some(&integration.external_id)).await
}

/// Assumes the integration's role presenting `external_id` (none when `None`) instead of the
/// tenant's: how the connection test checks that the role refuses anyone without it.
pub async fn assume_role_presenting(
    base: &SdkConfig,
    integration: &Integration,
    external_id: Option<&str>,
) -> Result<Credentials, UploadError> {
    let step = "assume-role";
    let config = aws_sdk_sts::config::Builder::from(base)
        .region(Region::new(integration.region.clone()))
        .build();
    let output = aws_sdk_sts::Client::from_conf(config)
        .assume_role()
        .role_arn(&integration.role_arn)
        .set_external_id(external_id.map(str::to_owned))
        .role_session_name(session_name(integration.tenant_id.as_str()))
        .duration_seconds(SESSION_SECONDS)
        .send()
        .await
        .map_err(|error| UploadError::from_sdk(step, &error))?;
    let issued = output.credentials().ok_or_else(|| {
        UploadError::new(
            ErrorClass::Retryable,
            step,
            "NoCredentials",
            "STS answered without credentials",
        )
    })?;
    let expires = SystemTime::try_from(*issued.expiration()).ok();
    Ok(Credentials::new(
        issued.access_key_id(),
        issued.secret_access_key(),
        Some(issued.session_token().to_owned()),
        expires,
        "activity-logs-assume-role",
    ))
}

/// `activity-<tenant>`, cut to STS's length limit; tenant ids only hold characters STS allows.
pub fn session_name(tenant: &str) -> String {
    let mut name = format!("activity-{tenant}");
    name.truncate(MAX_SESSION_NAME);
    name
}

/// How a successful put ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The object was written.
    Created,
    /// The same object (same SHA-256) was already under the key: an earlier attempt or a
    /// rebuild delivered it, which is success.
    AlreadyThere,
    /// A *different* object was already under the key. Nothing is overwritten and the job is
    /// not counted as delivered under that key: its object is stored under
    /// [`diverged_key`] (full key given here), so both stay readable and the divergence is
    /// on record.
    Diverged { key: String },
}

/// How one conditional put ended.
enum PutAttempt {
    Created,
    /// `412` to `If-None-Match: *`: something is already under the key.
    KeyTaken,
}

/// One object to put, with what its metadata says about it.
#[derive(Debug, Clone)]
pub struct ObjectToPut {
    pub kind: JobKind,
    /// The key below the integration's prefix.
    pub relative_key: String,
    pub body: Vec<u8>,
    pub sha256: [u8; 32],
    /// Events in a log object; objects listed in a digest.
    pub event_count: u64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
}

/// Puts and deletes objects with per-tenant credentials through one S3 client per region.
pub struct S3Writer {
    base: SdkConfig,
    /// Path-style addressing, for S3-compatible servers reached through an endpoint override.
    force_path_style: bool,
    clients: Mutex<HashMap<String, aws_sdk_s3::Client>>,
}

impl S3Writer {
    pub fn new(base: SdkConfig) -> Self {
        let force_path_style = base.endpoint_url().is_some();
        Self {
            base,
            force_path_style,
            clients: Mutex::default(),
        }
    }

    /// The vendor-side AWS configuration the writer was built from.
    pub fn base(&self) -> &SdkConfig {
        &self.base
    }

    fn client(&self, region: &str) -> aws_sdk_s3::Client {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(region) {
            return client.clone();
        }
        let config = aws_sdk_s3::config::Builder::from(&self.base)
            .region(Region::new(region.to_owned()))
            .force_path_style(self.force_path_style)
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        if clients.len() < MAX_CACHED_REGIONS {
            clients.insert(region.to_owned(), client.clone());
        }
        client
    }

    /// Puts an upload job's body under the integration's bucket and prefix.
    pub async fn put(
        &self,
        integration: &Integration,
        credentials: Credentials,
        job: &UploadJob,
        body: Vec<u8>,
        sha256: [u8; 32],
    ) -> Result<Stored, UploadError> {
        let object = ObjectToPut {
            kind: job.kind,
            relative_key: job.relative_key.clone(),
            body,
            sha256,
            event_count: job.event_count,
            window_start_ms: job.window_start_ms,
            window_end_ms: job.window_end_ms,
        };
        self.put_object(integration, credentials, object).await
    }

    /// Puts an object under the integration's bucket and prefix, with server-side encryption,
    /// a SHA-256 checksum S3 verifies, `If-None-Match: *` and the window metadata. S3 refuses
    /// it (`403`) unless the bucket belongs to the integration's account: a bucket name the
    /// customer gave up and someone else took never receives their logs.
    ///
    /// When the key is taken, the stored object's SHA-256 (HEAD with checksum mode) decides:
    /// the same bytes are an earlier delivery; different bytes (or an object without a SHA-256,
    /// which this system never writes) mean the key's object is not this one, so this one goes
    /// under its [`diverged_key`] instead.
    pub async fn put_object(
        &self,
        integration: &Integration,
        credentials: Credentials,
        mut object: ObjectToPut,
    ) -> Result<Stored, UploadError> {
        let key = full_key(&integration.prefix, &object.relative_key);
        // Moved, not copied: a second attempt under another key shares the same bytes.
        let body = Bytes::from(std::mem::take(&mut object.body));
        let attempt = self
            .put_once(integration, &credentials, &key, &object, body.clone())
            .await?;
        if matches!(attempt, PutAttempt::Created) {
            return Ok(Stored::Created);
        }
        if self.stored_sha256(integration, &credentials, &key).await? == Some(object.sha256) {
            return Ok(Stored::AlreadyThere);
        }
        let diverged = diverged_key(&key, &object.sha256);
        let attempt = self
            .put_once(integration, &credentials, &diverged, &object, body)
            .await?;
        if matches!(attempt, PutAttempt::KeyTaken)
            && self
                .stored_sha256(integration, &credentials, &diverged)
                .await?
                != Some(object.sha256)
        {
            return Err(UploadError::new(
                ErrorClass::Configuration,
                "put-object",
                "KeyTaken",
                format!(
                    "other objects are stored under both {key} and {diverged}; something else writes under the tenant's prefix"
                ),
            ));
        }
        Ok(Stored::Diverged { key: diverged })
    }

    async fn put_once(
        &self,
        integration: &Integration,
        credentials: &Credentials,
        key: &str,
        object: &ObjectToPut,
        body: Bytes,
    ) -> Result<PutAttempt, UploadError> {
        let (content_type, count_name) = match object.kind {
            JobKind::Digest => (DIGEST_CONTENT_TYPE, "object-count"),
            JobKind::Log | JobKind::Unknown => (CONTENT_TYPE, "event-count"),
        };
        let result = self
            .client(&integration.region)
            .put_object()
            .bucket(&integration.bucket)
            .expected_bucket_owner(&integration.aws_account_id)
            .key(key)
            .content_type(content_type)
            .server_side_encryption(ServerSideEncryption::Aes256)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(object.sha256))
            .if_none_match("*")
            .metadata(count_name, object.event_count.to_string())
            .metadata(
                "window-start",
                crate::clock::rfc3339_ms(object.window_start_ms),
            )
            .metadata("window-end", crate::clock::rfc3339_ms(object.window_end_ms))
            .body(ByteStream::from(body))
            .customize()
            // The body is bound to the request by the signed SHA-256 checksum header, which S3
            // checks on arrival; signing the payload too would hash every body a second time.
            .disable_payload_signing()
            .config_override(
                aws_sdk_s3::config::Builder::default().credentials_provider(credentials.clone()),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(PutAttempt::Created),
            Err(error) => {
                let precondition_failed = error
                    .raw_response()
                    .is_some_and(|r| r.status().as_u16() == 412);
                if precondition_failed {
                    Ok(PutAttempt::KeyTaken)
                } else {
                    Err(UploadError::from_sdk("put-object", &error))
                }
            }
        }
    }

    /// The whole-object SHA-256 S3 keeps for the object at `key`, if it was stored with one
    /// (a multipart object's composite checksum is not one).
    pub async fn stored_sha256(
        &self,
        integration: &Integration,
        credentials: &Credentials,
        key: &str,
    ) -> Result<Option<[u8; 32]>, UploadError> {
        let head = self
            .client(&integration.region)
            .head_object()
            .bucket(&integration.bucket)
            .expected_bucket_owner(&integration.aws_account_id)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default().credentials_provider(credentials.clone()),
            )
            .send()
            .await
            .map_err(|error| UploadError::from_sdk("head-object", &error))?;
        Ok(head
            .checksum_sha256()
            .and_then(|encoded| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()
            })
            .and_then(|digest| <[u8; 32]>::try_from(digest).ok()))
    }

    /// Deletes the object at `relative_key` below the integration's prefix.
    pub async fn delete_object(
        &self,
        integration: &Integration,
        credentials: Credentials,
        relative_key: &str,
    ) -> Result<(), UploadError> {
        self.client(&integration.region)
            .delete_object()
            .bucket(&integration.bucket)
            .expected_bucket_owner(&integration.aws_account_id)
            .key(full_key(&integration.prefix, relative_key))
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default().credentials_provider(credentials),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|error| UploadError::from_sdk("delete-object", &error))
    }
}

/// Where an object goes when a different object already holds its key: the same key with the
/// first 16 hex digits of its SHA-256 before the extension, so a retry or a rebuild of the same
/// object finds it there and a third, different object gets a name of its own.
pub fn diverged_key(key: &str, sha256: &[u8; 32]) -> String {
    let name_start = key.rfind('/').map_or(0, |slash| slash + 1);
    let stem_end = key[name_start..]
        .find('.')
        .map_or(key.len(), |dot| name_start + dot);
    let digest = hex::encode(&sha256[..8]);
    format!("{}.diverged-{digest}{}", &key[..stem_end], &key[stem_end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_cache_keeps_a_bounded_number_of_regions() {
        let base = SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let writer = S3Writer::new(base);
        for n in 0..100 {
            writer.client(&format!("xx-made-up-{n}"));
        }
        writer.client("eu-west-1");
        let cached = writer.clients.lock().expect("clients").len();
        assert_eq!(cached, MAX_CACHED_REGIONS);
    }

    #[test]
    fn a_diverged_object_keeps_its_name_and_extension_with_its_digest_before_it() {
        let sha = [0xab; 32];
        assert_eq!(
            diverged_key(
                "logs/acme/2026/11/30/10/acme_20261130T1000Z_3-31.jsonl.zst",
                &sha
            ),
            "logs/acme/2026/11/30/10/acme_20261130T1000Z_3-31.diverged-abababababababab.jsonl.zst"
        );
        assert_eq!(
            diverged_key("p.v2/acme_x", &sha),
            "p.v2/acme_x.diverged-abababababababab"
        );
    }

    #[test]
    fn session_names_name_the_tenant_within_the_limit() {
        assert_eq!(session_name("acme"), "activity-acme");
        assert_eq!(session_name(&"t".repeat(63)).len(), MAX_SESSION_NAME);
    }
}
