//! The connection test (DESIGN §1 step 4): assume the customer's role with the tenant's external
//! id, check that the role refuses the vendor without it (the confused deputy), put a small
//! object under the destination with the headers every delivered object carries, read back the
//! SHA-256 S3 stored for it (what delivery checks when a key is already taken), and delete it.
//! The first step that fails is reported with AWS's code and message and a hint of what to fix
//! on the customer's side.

use std::time::Duration;

use common::clock::now_unix_ms;
use common::codec::compress;
use common::integration::Integration;
use common::s3::{
    ErrorClass, ObjectToPut, S3Writer, UploadError, assume_role, assume_role_presenting,
};

use crate::admin::setup;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The steps, in order.
pub const STEPS: [&str; 5] = [
    "assume-role",
    "external-id-required",
    "put-object",
    "head-object",
    "delete-object",
];

/// Why a connection test failed.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionFailure {
    /// The step that failed: one of [`STEPS`].
    pub step: &'static str,
    /// AWS's error code, or `Timeout` / `Network` when AWS did not answer.
    pub code: String,
    /// AWS's message.
    pub message: String,
    /// What the customer should check.
    pub hint: String,
    /// Whether trying again unchanged may succeed (throttling, timeouts, 5xx).
    pub transient: bool,
    /// Steps that succeeded before.
    pub passed: Vec<&'static str>,
}

/// A successful test.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionSuccess {
    pub steps: [&'static str; 5],
    /// The key the test object had (it was deleted again).
    pub test_object_key: String,
}

/// Runs the steps in order, bounded by `timeout` as a whole.
pub async fn test_connection(
    writer: &S3Writer,
    integration: &Integration,
    timeout: Duration,
) -> Result<ConnectionSuccess, ConnectionFailure> {
    let mut passed = Vec::new();
    match tokio::time::timeout(timeout, run_steps(writer, integration, &mut passed)).await {
        Ok(Ok(key)) => Ok(ConnectionSuccess {
            steps: STEPS,
            test_object_key: common::key::full_key(&integration.prefix, &key),
        }),
        Ok(Err(error)) => Err(failure(integration, error, passed)),
        Err(_) => {
            let step = STEPS.get(passed.len()).copied().unwrap_or("delete-object");
            let error = UploadError::new(
                ErrorClass::Retryable,
                step,
                "Timeout",
                format!("no answer within {} s", timeout.as_secs()),
            );
            Err(failure(integration, error, passed))
        }
    }
}

async fn run_steps(
    writer: &S3Writer,
    integration: &Integration,
    passed: &mut Vec<&'static str>,
) -> Result<String, UploadError> {
    let credentials = assume_role(writer.base(), integration).await?;
    passed.push("assume-role");
    external_id_required(writer, integration).await?;
    passed.push("external-id-required");
    let object = test_object(integration)?;
    let (key, sha256) = (object.relative_key.clone(), object.sha256);
    writer
        .put_object(integration, credentials.clone(), object)
        .await?;
    passed.push("put-object");
    let full_key = common::key::full_key(&integration.prefix, &key);
    let stored = writer
        .stored_sha256(integration, &credentials, &full_key)
        .await?;
    if stored != Some(sha256) {
        return Err(UploadError::new(
            ErrorClass::Configuration,
            "head-object",
            "ChecksumMissing",
            format!(
                "the bucket returned {} for the test object's SHA-256, not the one it was written with",
                stored.map_or_else(|| "nothing".to_owned(), hex::encode)
            ),
        ));
    }
    passed.push("head-object");
    writer.delete_object(integration, credentials, &key).await?;
    passed.push("delete-object");
    Ok(key)
}

/// The role must refuse the vendor when the tenant's external id is missing or another one is
/// presented. A role that trusts the vendor's role without that condition can be named by anyone
/// who has an account with this service, and the vendor would write their logs into it (AWS's
/// "confused deputy"); such a connection is refused.
async fn external_id_required(
    writer: &S3Writer,
    integration: &Integration,
) -> Result<(), UploadError> {
    const STEP: &str = "external-id-required";
    // Shaped like an external id, and no tenant's.
    let another = format!("probe-{}", uuid::Uuid::new_v4().simple());
    let probes = [
        ("without an external id", None),
        ("with another external id", Some(another.as_str())),
    ];
    for (how, external_id) in probes {
        match assume_role_presenting(writer.base(), integration, external_id).await {
            Ok(_) => {
                return Err(UploadError::new(
                    ErrorClass::Configuration,
                    STEP,
                    "ExternalIdNotRequired",
                    format!("the vendor could assume {} {how}", integration.role_arn),
                ));
            }
            // STS did not answer: nothing is known about the role yet.
            Err(error) if error.class == ErrorClass::Retryable => {
                return Err(UploadError {
                    step: STEP,
                    ..error
                });
            }
            // Refused, as it must be.
            Err(_) => {}
        }
    }
    Ok(())
}

/// A one-line NDJSON object in the integration's codec, under the tenant's folder of the
/// destination, named so it cannot collide with a delivered object.
fn test_object(integration: &Integration) -> Result<ObjectToPut, UploadError> {
    let now_ms = now_unix_ms();
    let id = uuid::Uuid::new_v4();
    let line = serde_json::json!({
        "id": format!("connection-test-{id}"),
        "tenant_id": integration.tenant_id.as_str(),
        "type": "activity_logs.connection_test",
        "occurred_at": common::clock::rfc3339_ms(now_ms),
    });
    let raw = format!("{line}\n");
    let body = compress(integration.compression, raw.as_bytes(), 3).map_err(|error| {
        UploadError::new(
            ErrorClass::Retryable,
            "put-object",
            "Compression",
            error.to_string(),
        )
    })?;
    let sha256: [u8; 32] = Sha256::digest(&body).into();
    Ok(ObjectToPut {
        kind: common::job::JobKind::Log,
        relative_key: format!(
            "{}/{}{id}.{}",
            integration.tenant_id,
            setup::CONNECTION_TEST_OBJECT,
            integration.compression.extension()
        ),
        body,
        sha256,
        event_count: 1,
        window_start_ms: now_ms,
        window_end_ms: now_ms,
    })
}

fn failure(
    integration: &Integration,
    error: UploadError,
    passed: Vec<&'static str>,
) -> ConnectionFailure {
    ConnectionFailure {
        step: error.step,
        hint: hint(integration, error.step, &error.code, error.class),
        transient: error.class == ErrorClass::Retryable,
        code: error.code,
        message: error.message,
        passed,
    }
}

/// What to fix, by step and AWS error code.
pub fn hint(integration: &Integration, step: &str, code: &str, class: ErrorClass) -> String {
    let bucket = &integration.bucket;
    // S3 ARNs are in the role's partition (aws, aws-cn, aws-us-gov).
    let partition = integration.role_arn.split(':').nth(1).unwrap_or("aws");
    let (prefix, tenant) = (&integration.prefix, &integration.tenant_id);
    let objects = setup::tenant_objects_arn(partition, bucket, prefix, tenant);
    let test_objects = setup::connection_test_objects_arn(partition, bucket, prefix, tenant);
    if class == ErrorClass::Retryable {
        return "AWS answered with a temporary error or did not answer in time; nothing is wrong with the settings as far as this test could tell. Try again.".into();
    }
    match (step, code) {
        ("assume-role", "AccessDenied") => format!(
            "The role {} must trust the vendor's role: its trust policy must allow sts:AssumeRole for the vendor role with the condition sts:ExternalId = {} (see the setup documents). Check that role_arn names that role and that the trust policy was saved.",
            integration.role_arn, integration.external_id
        ),
        ("assume-role", "RegionDisabledException") => format!(
            "STS is not active in {} for the customer's account: activate the region in IAM account settings, or use the bucket's region.",
            integration.region
        ),
        ("external-id-required", _) => format!(
            "The role {} lets the vendor's role assume it without the tenant's external id, so anyone with an account on this service could have their logs written into this bucket. Add the condition \"StringEquals\": {{\"sts:ExternalId\": \"{}\"}} to the statement of its trust policy that allows the vendor's role (see the setup documents), then test again.",
            integration.role_arn, integration.external_id
        ),
        ("assume-role", _) => format!(
            "The role {} could not be assumed: check that it exists in account {} and that its trust policy names the vendor's role and external id.",
            integration.role_arn, integration.aws_account_id
        ),
        ("put-object", "NoSuchBucket") => format!(
            "There is no bucket named {bucket}: check the bucket name (and that it was created in {}).",
            integration.region
        ),
        ("put-object", "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException") => format!(
            "The bucket {bucket} is not in {}: set region to the bucket's region.",
            integration.region
        ),
        ("put-object", "AccessDenied" | "AllAccessDisabled") => format!(
            "The role may not write to the destination: its inline policy must allow s3:PutObject on {objects}, and the bucket policy must not deny it. A bucket policy that denies requests without TLS is fine (deliveries use HTTPS); one that requires SSE-KMS needs kms:GenerateDataKey for the role, and deliveries use SSE-S3 (AES256). Every write also requires the bucket to belong to account {}: a bucket owned by another account is refused.",
            integration.aws_account_id
        ),
        ("put-object", _) => format!(
            "The test object could not be written to bucket {bucket}: check the bucket's policy, default encryption and object lock settings."
        ),
        ("head-object", "AccessDenied" | "Forbidden") => format!(
            "The role may write but not read back what it wrote: its inline policy must allow s3:GetObject on {objects} (delivery reads an existing object's SHA-256 before treating it as delivered), and the bucket policy must not deny it. The test object was left in the bucket; it can be removed by hand."
        ),
        ("head-object", _) => format!(
            "The test object was written but S3 did not return the SHA-256 it was stored with; delivery needs it to tell an earlier delivery from a different object under the same key. Check that bucket {bucket} is an Amazon S3 general purpose bucket. The test object was left in the bucket; it can be removed by hand."
        ),
        ("delete-object", "AccessDenied") => format!(
            "The role may write but not delete the test object: its inline policy must allow s3:DeleteObject on {test_objects}, and the bucket policy must not deny it. The test object was left in the bucket; it can be removed by hand."
        ),
        ("delete-object", _) => "The test object was written but could not be deleted; it may be left in the bucket and can be removed by hand.".into(),
        _ => "See AWS's message.".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn integration(prefix: &str) -> Integration {
        serde_json::from_value(serde_json::json!({
            "tenant_id": "acme", "enabled": true, "aws_account_id": "123456789012",
            "bucket": "acme-logs", "prefix": prefix,
            "role_arn": "arn:aws:iam::123456789012:role/Writer",
            "external_id": "ext-0123456789", "region": "eu-west-1",
            "connected_at": "2026-11-27T10:00:00Z", "updated_at": "2026-11-27T10:00:00Z"
        }))
        .expect("integration")
    }

    #[test]
    fn hints_point_at_what_to_fix() {
        let with_prefix = integration("audit");
        let hint = |step, code| hint(&with_prefix, step, code, ErrorClass::Configuration);
        assert!(hint("assume-role", "AccessDenied").contains("sts:ExternalId = ext-0123456789"));
        assert!(
            hint("external-id-required", "ExternalIdNotRequired")
                .contains(r#""StringEquals": {"sts:ExternalId": "ext-0123456789"}"#)
        );
        assert!(hint("put-object", "NoSuchBucket").contains("no bucket named acme-logs"));
        assert!(
            hint("put-object", "AccessDenied")
                .contains("s3:PutObject on arn:aws:s3:::acme-logs/audit/acme/*")
        );
        assert!(
            hint("delete-object", "AccessDenied").contains(
                "s3:DeleteObject on arn:aws:s3:::acme-logs/audit/acme/_connection-test-*"
            )
        );
        assert!(
            hint("head-object", "AccessDenied")
                .contains("s3:GetObject on arn:aws:s3:::acme-logs/audit/acme/*")
        );
        assert!(hint("put-object", "PermanentRedirect").contains("not in eu-west-1"));
        assert!(
            super::hint(
                &with_prefix,
                "put-object",
                "SlowDown",
                ErrorClass::Retryable
            )
            .contains("Try again")
        );
    }

    #[test]
    fn the_test_object_is_one_event_of_the_tenant_in_its_codec() {
        let object = test_object(&integration("")).expect("object");
        assert!(object.relative_key.starts_with("acme/_connection-test-"));
        assert!(object.relative_key.ends_with(".jsonl.zst"));
        let raw = common::codec::decompress(common::key::Codec::Zstd, &object.body, 1 << 20)
            .expect("decompress");
        let event: serde_json::Value =
            serde_json::from_slice(raw.strip_suffix(b"\n").expect("one line")).expect("json");
        assert_eq!(event["tenant_id"], "acme");
        assert_eq!(object.event_count, 1);
    }
}
