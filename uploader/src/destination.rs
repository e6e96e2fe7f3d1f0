//! Where a job goes and putting it there (DESIGN §2 "Object body", §3 "Tenant isolation").
//!
//! The destination is resolved from the *current* integration at upload time, so a job redriven
//! after the customer fixed their setup goes to the fixed destination.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_config::{Region, SdkConfig};
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ServerSideEncryption};
use base64::Engine;
use common::codec::decompress;
use common::integration::Integration;
use common::job::UploadJob;
use common::key::full_key;
use common::registry::IntegrationRegistry;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{ErrorClass, UploadError};

/// Content type of every object.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// How a successful upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The object was written.
    Created,
    /// An object with this key was already there (`412` to `If-None-Match: *`): an earlier
    /// attempt or a rebuild delivered it, which is success.
    AlreadyThere,
}

/// The integration a job must go to, or why it must not go anywhere.
pub fn resolve(
    registry: &IntegrationRegistry,
    job: &UploadJob,
) -> Result<Integration, UploadError> {
    let step = "resolve-destination";
    let integration = registry.get(&job.tenant_id).ok_or_else(|| {
        UploadError::new(
            ErrorClass::Discard,
            step,
            "NoIntegration",
            format!("tenant {} has no integration", job.tenant_id),
        )
    })?;
    if integration.tenant_id != job.tenant_id {
        return Err(UploadError::new(
            ErrorClass::InvalidJob,
            step,
            "TenantMismatch",
            format!(
                "job for tenant {} resolved to tenant {}",
                job.tenant_id, integration.tenant_id
            ),
        ));
    }
    if !integration.enabled {
        return Err(UploadError::new(
            ErrorClass::Park,
            step,
            "IntegrationDisabled",
            "the integration is disabled",
        ));
    }
    let problems = integration.problems();
    if !problems.is_empty() {
        let described: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(UploadError::new(
            ErrorClass::Configuration,
            step,
            "InvalidIntegration",
            described.join("; "),
        ));
    }
    Ok(integration)
}

/// Checks that the body is the object the headers describe, and that every event in it belongs
/// to the job's tenant (DESIGN §3: job headers are checked against the payload's tenant before
/// upload). Returns the body's SHA-256 for S3 to verify on arrival. CPU-bound: run it off the
/// I/O threads.
pub fn verify_body(job: &UploadJob, body: &[u8]) -> Result<[u8; 32], UploadError> {
    let invalid = |code: &'static str, message: String| {
        UploadError::new(ErrorClass::InvalidJob, "verify-body", code, message)
    };
    let digest: [u8; 32] = Sha256::digest(body).into();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if hex != job.sha256_hex {
        return Err(invalid(
            "ChecksumMismatch",
            format!(
                "the body's SHA-256 is {hex}, the job says {}",
                job.sha256_hex
            ),
        ));
    }
    let raw = decompress(job.codec, body, job.uncompressed_bytes)
        .map_err(|error| invalid("CorruptBody", error.to_string()))?;
    if raw.len() as u64 != job.uncompressed_bytes {
        return Err(invalid(
            "SizeMismatch",
            format!(
                "the body decompresses to {} bytes, the job says {}",
                raw.len(),
                job.uncompressed_bytes
            ),
        ));
    }
    let mut events = 0_u64;
    for (index, line) in raw.split_inclusive(|b| *b == b'\n').enumerate() {
        let line_number = index + 1;
        let Some(line) = line.strip_suffix(b"\n") else {
            return Err(invalid(
                "NotNdjson",
                format!("line {line_number} does not end with a newline"),
            ));
        };
        let event: EventTenant<'_> = serde_json::from_slice(line).map_err(|error| {
            invalid(
                "NotNdjson",
                format!("line {line_number} is not an event: {error}"),
            )
        })?;
        if event.tenant_id != job.tenant_id.as_str() {
            return Err(invalid(
                "TenantMismatch",
                format!(
                    "line {line_number} belongs to tenant {}, the job to tenant {}",
                    event.tenant_id, job.tenant_id
                ),
            ));
        }
        events += 1;
    }
    if events != job.event_count {
        return Err(invalid(
            "EventCountMismatch",
            format!(
                "the body holds {events} events, the job says {}",
                job.event_count
            ),
        ));
    }
    Ok(digest)
}

/// The one field of an event the uploader reads.
#[derive(serde::Deserialize)]
struct EventTenant<'a> {
    #[serde(borrow)]
    tenant_id: std::borrow::Cow<'a, str>,
}

/// Puts objects with per-tenant credentials through one S3 client per region.
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

    fn client(&self, region: &str) -> aws_sdk_s3::Client {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let config = aws_sdk_s3::config::Builder::from(&self.base)
                    .region(Region::new(region.to_owned()))
                    .force_path_style(self.force_path_style)
                    .build();
                aws_sdk_s3::Client::from_conf(config)
            })
            .clone()
    }

    /// Puts the job's body under the integration's bucket and prefix, with server-side
    /// encryption, a SHA-256 checksum S3 verifies, and `If-None-Match: *`.
    pub async fn put(
        &self,
        integration: &Integration,
        credentials: Credentials,
        job: &UploadJob,
        body: Vec<u8>,
        sha256: [u8; 32],
    ) -> Result<Stored, UploadError> {
        let key = full_key(&integration.prefix, &job.relative_key);
        let result = self
            .client(&integration.region)
            .put_object()
            .bucket(&integration.bucket)
            .key(&key)
            .content_type(CONTENT_TYPE)
            .server_side_encryption(ServerSideEncryption::Aes256)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha256))
            .if_none_match("*")
            .metadata("event-count", job.event_count.to_string())
            .metadata("window-start", rfc3339_ms(job.window_start_ms))
            .metadata("window-end", rfc3339_ms(job.window_end_ms))
            .body(ByteStream::from(body))
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default().credentials_provider(credentials),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(Stored::Created),
            Err(error) => {
                let failure = UploadError::from_sdk("put-object", &error);
                let precondition_failed = error
                    .raw_response()
                    .is_some_and(|r| r.status().as_u16() == 412);
                if precondition_failed {
                    Ok(Stored::AlreadyThere)
                } else {
                    Err(failure)
                }
            }
        }
    }
}

fn rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}
