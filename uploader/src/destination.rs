//! Where a job goes and putting it there (DESIGN §2 "Object body", §3 "Tenant isolation").
//!
//! The destination is resolved from the *current* integration at upload time, so a job redriven
//! after the customer fixed their setup goes to the fixed destination.

use common::codec::decompress;
use common::integration::Integration;
use common::job::UploadJob;
use common::registry::IntegrationRegistry;
use sha2::{Digest, Sha256};

pub use common::s3::{CONTENT_TYPE, S3Writer, Stored};

use crate::error::{ErrorClass, UploadError};

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
    let hex = hex::encode(digest);
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
