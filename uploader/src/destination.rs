//! Where a job goes and putting it there (DESIGN §2 "Object body", §3 "Tenant isolation").
//!
//! The destination is resolved from the *current* integration at upload time, so a job redriven
//! after the customer fixed their setup goes to the fixed destination.

use std::io::{BufRead, BufReader, Read};

use common::codec::{DecodeError, decoder, decompress};
use common::event_line::top_level_strings;
use common::integration::Integration;
use common::job::{JobKind, UploadJob};
use common::registry::IntegrationRegistry;
use sha2::{Digest, Sha256};

pub use common::s3::{CONTENT_TYPE, S3Writer, Stored};

/// How much of a decompressed body is read at a time.
const READ_BUFFER_BYTES: usize = 256 * 1024;

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
    // A digest still goes to a disabled integration: the one that ends the tenant's chain is
    // made after the period in which delivery was turned off, and lists what was delivered.
    if !integration.enabled && job.kind != JobKind::Digest {
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
/// upload), or for a digest, that it is the tenant's digest of the job's period. Returns the
/// body's SHA-256 for S3 to verify on arrival. CPU-bound: run it off the I/O threads.
pub fn verify_body(job: &UploadJob, body: &[u8]) -> Result<[u8; 32], UploadError> {
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
    match job.kind {
        JobKind::Log => verify_events(job, body)?,
        JobKind::Digest => {
            let raw = decompress(job.codec, body, job.uncompressed_bytes)
                .map_err(|error| invalid("CorruptBody", error.to_string()))?;
            check_size(job, raw.len() as u64)?;
            verify_digest(job, &raw)?;
        }
        JobKind::Unknown => {
            return Err(invalid("UnknownKind", "the job's kind is unknown".into()));
        }
    }
    Ok(digest)
}

fn invalid(code: &'static str, message: String) -> UploadError {
    UploadError::new(ErrorClass::InvalidJob, "verify-body", code, message)
}

/// The body decompresses to as many bytes as the job says.
fn check_size(job: &UploadJob, bytes: u64) -> Result<(), UploadError> {
    if bytes == job.uncompressed_bytes {
        return Ok(());
    }
    Err(invalid(
        "SizeMismatch",
        format!(
            "the body decompresses to {bytes} bytes, the job says {}",
            job.uncompressed_bytes
        ),
    ))
}

/// Every line is an event of the job's tenant, there are as many as the job says, and they
/// make as many bytes. Read a piece at a time: a whole object decompressed at once cost a fresh
/// allocation per job, its pages faulted in one by one (a sixth of the uploader's CPU).
fn verify_events(job: &UploadJob, body: &[u8]) -> Result<(), UploadError> {
    let corrupt = |error: &dyn std::fmt::Display| invalid("CorruptBody", error.to_string());
    let decoder = decoder(job.codec, body).map_err(|error| corrupt(&error))?;
    // One byte past the job's size is enough to see that the body is larger.
    let mut lines = BufReader::with_capacity(
        READ_BUFFER_BYTES,
        decoder.take(job.uncompressed_bytes.saturating_add(1)),
    );
    let mut line = Vec::new();
    let (mut events, mut bytes) = (0_u64, 0_u64);
    loop {
        line.clear();
        let read = lines
            .read_until(b'\n', &mut line)
            .map_err(|error| corrupt(&error))?;
        if read == 0 {
            break;
        }
        bytes += read as u64;
        if bytes > job.uncompressed_bytes {
            return Err(corrupt(&DecodeError::TooLarge {
                limit: job.uncompressed_bytes,
            }));
        }
        events += 1;
        let Some(line) = line.strip_suffix(b"\n") else {
            return Err(invalid(
                "NotNdjson",
                format!("line {events} does not end with a newline"),
            ));
        };
        check_tenant(job, events, line)?;
    }
    check_size(job, bytes)?;
    if events != job.event_count {
        return Err(invalid(
            "EventCountMismatch",
            format!(
                "the body holds {events} events, the job says {}",
                job.event_count
            ),
        ));
    }
    Ok(())
}

/// Line `line_number` is an event of the job's tenant.
fn check_tenant(job: &UploadJob, line_number: u64, line: &[u8]) -> Result<(), UploadError> {
    if line_tenant_is(line, job.tenant_id.as_str()) {
        return Ok(());
    }
    let event: EventTenant<'_> = serde_json::from_slice(line).map_err(|error| {
        invalid(
            "NotNdjson",
            format!("line {line_number} is not an event: {error}"),
        )
    })?;
    of_the_jobs_tenant(job, format_args!("line {line_number}"), &event.tenant_id)
}

/// `tenant`, which `what` belongs to, is the job's tenant.
fn of_the_jobs_tenant(
    job: &UploadJob,
    what: std::fmt::Arguments<'_>,
    tenant: &str,
) -> Result<(), UploadError> {
    if tenant == job.tenant_id.as_str() {
        return Ok(());
    }
    Err(invalid(
        "TenantMismatch",
        format!(
            "{what} belongs to tenant {tenant}, the job to tenant {}",
            job.tenant_id
        ),
    ))
}

/// The body is a digest of the job's tenant and period listing as many objects as the job says,
/// followed by its signature line (the signature itself is the customer's to check).
fn verify_digest(job: &UploadJob, raw: &[u8]) -> Result<(), UploadError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| invalid("NotADigest", "the digest is not UTF-8".into()))?;
    let mut lines = text.split_terminator('\n');
    let (Some(signed), Some(signature), None) = (lines.next(), lines.next(), lines.next()) else {
        return Err(invalid(
            "NotADigest",
            "a digest is two lines: the digest and its signature".into(),
        ));
    };
    let content: common::digest::Digest = serde_json::from_str(signed)
        .map_err(|error| invalid("NotADigest", format!("line 1 is not a digest: {error}")))?;
    serde_json::from_str::<common::digest::SignatureLine>(signature).map_err(|error| {
        invalid(
            "NotADigest",
            format!("line 2 is not a signature line: {error}"),
        )
    })?;
    of_the_jobs_tenant(job, format_args!("the digest"), content.tenant_id.as_str())?;
    let period_start = common::digest::timestamp_ms(job.window_start_ms);
    if content.period_start != period_start || content.objects.len() as u64 != job.event_count {
        return Err(invalid(
            "DigestMismatch",
            format!(
                "the digest covers the period from {} and lists {} objects, the job says {period_start} and {}",
                content.period_start,
                content.objects.len(),
                job.event_count
            ),
        ));
    }
    Ok(())
}

/// Whether `line`'s `tenant_id` is `tenant`, by `event_line`'s scan; `false` also when the scan
/// leaves the line to serde_json, which then reads it and names the problem.
fn line_tenant_is(line: &[u8], tenant: &str) -> bool {
    top_level_strings(line, ["tenant_id"])
        .and_then(|[found]| found.value())
        .is_some_and(|found| found == tenant)
}

/// The one field of an event the uploader reads.
#[derive(serde::Deserialize)]
struct EventTenant<'a> {
    #[serde(borrow)]
    tenant_id: std::borrow::Cow<'a, str>,
}

#[cfg(test)]
mod tests {
    use common::digest::signing::SigningKey;
    use common::digest::{Chain, reason, relative_key};
    use common::event::TenantId;
    use common::job::{JobKind, UploadJob};
    use common::key::Codec;
    use time::macros::datetime;

    use super::*;

    /// A digest job for `tenant`'s empty period at 13:00 and its body, signed for `signer`.
    fn digest_job(tenant: &str, signer: &str) -> (UploadJob, Vec<u8>) {
        let key = SigningKey::generate().expect("a key");
        let start = datetime!(2026-11-30 13:00 UTC);
        let (_, file) = Chain::start(signer, reason::CONNECTED)
            .sign_next(
                &key,
                "k",
                (start, start + time::Duration::HOUR),
                Vec::new(),
                None,
            )
            .expect("sign");
        let body = common::codec::compress(Codec::Gzip, &file, 6).expect("gzip");
        let tenant_id = TenantId::parse(tenant).expect("tenant");
        let job = UploadJob {
            kind: JobKind::Digest,
            relative_key: relative_key(&tenant_id, start),
            tenant_id,
            codec: Codec::Gzip,
            event_count: 0,
            window_start_ms: common::clock::unix_ms(start),
            window_end_ms: common::clock::unix_ms(start + time::Duration::HOUR),
            partition: 0,
            first_offset: 0,
            last_offset: 0,
            uncompressed_bytes: file.len() as u64,
            sha256_hex: hex::encode(Sha256::digest(&body)),
            created_at_ms: 0,
            attempt: 0,
        };
        (job, body)
    }

    /// A log job for `acme` whose body (zstd) is `lines`, saying it holds `event_count` events.
    fn log_job(lines: &str, event_count: u64) -> (UploadJob, Vec<u8>) {
        let body = common::codec::compress(Codec::Zstd, lines.as_bytes(), 3).expect("zstd");
        let start = datetime!(2026-11-30 13:00 UTC);
        let job = UploadJob {
            kind: JobKind::Log,
            relative_key: "acme/2026/11/30/13/acme_20261130T1300Z_0-0.jsonl.zst".into(),
            tenant_id: TenantId::parse("acme").expect("tenant"),
            codec: Codec::Zstd,
            event_count,
            window_start_ms: common::clock::unix_ms(start),
            window_end_ms: common::clock::unix_ms(start + time::Duration::HOUR),
            partition: 0,
            first_offset: 0,
            last_offset: event_count.saturating_sub(1) as i64,
            uncompressed_bytes: lines.len() as u64,
            sha256_hex: hex::encode(Sha256::digest(&body)),
            created_at_ms: 0,
            attempt: 0,
        };
        (job, body)
    }

    fn refusal(lines: &str, event_count: u64) -> UploadError {
        let (job, body) = log_job(lines, event_count);
        verify_body(&job, &body).expect_err("a refused body")
    }

    #[test]
    fn events_of_the_jobs_tenant_pass_whatever_their_nested_fields_say() {
        let lines = concat!(
            r#"{"actor":{"tenant_id":"globex"},"id":"e1","tenant_id":"acme"}"#,
            "\n",
            r#"{"id":"e2","tenant_id":"acme","z":[{"tenant_id":"globex"}]}"#,
            "\n",
        );
        let (job, body) = log_job(lines, 2);
        assert!(verify_body(&job, &body).is_ok());
    }

    #[test]
    fn a_line_of_another_tenant_is_refused_by_its_number() {
        let error = refusal(
            "{\"id\":\"e1\",\"tenant_id\":\"acme\"}\n{\"id\":\"e2\",\"tenant_id\":\"globex\"}\n",
            2,
        );
        assert_eq!(error.code, "TenantMismatch");
        assert!(
            error
                .message
                .contains("line 2 belongs to tenant globex, the job to tenant acme"),
            "{}",
            error.message
        );
    }

    #[test]
    fn lines_that_are_not_events_are_refused_by_their_number() {
        let error = refusal("{\"id\":\"e1\",\"tenant_id\":\"acme\"}\nnot json\n", 2);
        assert_eq!(error.code, "NotNdjson");
        assert!(
            error.message.starts_with("line 2 is not an event"),
            "{}",
            error.message
        );
        let error = refusal("{\"id\":\"e1\",\"tenant_id\":\"acme\"}", 1);
        assert_eq!(error.code, "NotNdjson");
        assert_eq!(error.message, "line 1 does not end with a newline");
    }

    #[test]
    fn a_body_read_in_many_pieces_passes_line_by_line() {
        let line = format!(
            "{{\"details\":\"{}\",\"id\":\"e\",\"tenant_id\":\"acme\"}}\n",
            "x".repeat(150)
        );
        let count = 3 * READ_BUFFER_BYTES / line.len();
        let (job, body) = log_job(&line.repeat(count), count as u64);
        assert!(verify_body(&job, &body).is_ok());
    }

    #[test]
    fn a_body_larger_or_smaller_than_the_job_says_is_refused() {
        let line = "{\"id\":\"e1\",\"tenant_id\":\"acme\"}\n";
        let (mut job, body) = log_job(line, 1);
        job.uncompressed_bytes -= 1;
        let error = verify_body(&job, &body).expect_err("larger");
        assert_eq!(error.code, "CorruptBody");
        assert_eq!(
            error.message,
            format!(
                "the body decompresses to more than {} bytes",
                line.len() - 1
            )
        );
        job.uncompressed_bytes += 2;
        let error = verify_body(&job, &body).expect_err("smaller");
        assert_eq!(error.code, "SizeMismatch");
    }

    #[test]
    fn a_body_holding_other_than_the_jobs_count_is_refused() {
        let error = refusal("{\"id\":\"e1\",\"tenant_id\":\"acme\"}\n", 2);
        assert_eq!(error.code, "EventCountMismatch");
        assert_eq!(error.message, "the body holds 1 events, the job says 2");
    }

    #[test]
    fn a_digest_of_the_jobs_tenant_and_period_passes() {
        let (job, body) = digest_job("acme", "acme");
        assert!(verify_body(&job, &body).is_ok());
    }

    #[test]
    fn a_digest_of_another_tenant_is_refused() {
        let (job, body) = digest_job("acme", "globex");
        let error = verify_body(&job, &body).expect_err("another tenant's digest");
        assert_eq!(error.code, "TenantMismatch");
        assert!(
            error
                .message
                .contains("belongs to tenant globex, the job to tenant acme"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_digest_listing_other_than_the_job_says_is_refused() {
        let (mut job, body) = digest_job("acme", "acme");
        job.event_count = 3;
        let error = verify_body(&job, &body).expect_err("a count mismatch");
        assert_eq!(error.code, "DigestMismatch");
    }
}
