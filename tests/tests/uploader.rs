//! The uploader's PutObject path against the moto S3/STS server: the object lands exactly as the
//! contract says, a second delivery is a no-op, one AssumeRole serves many uploads, and a bucket
//! policy that denies writes is a configuration error.

use aws_sdk_s3::types::ChecksumMode;
use common::codec::compress;
use common::integration::Integration;
use common::key::Codec;
use integration_tests::fixtures::{
    REGION, aws_config, deny_on_objects, moto_endpoint, new_bucket, payload, s3_client, upload_job,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uploader::credentials::AssumedRoles;
use uploader::destination::{S3Writer, Stored, verify_body};
use uploader::error::ErrorClass;

fn integration(tenant: &str, bucket: &str) -> Integration {
    let now = OffsetDateTime::now_utc();
    Integration {
        tenant_id: tenant.parse().expect("tenant"),
        enabled: true,
        aws_account_id: "123456789012".into(),
        bucket: bucket.into(),
        prefix: "audit/activity".into(),
        role_arn: "arn:aws:iam::123456789012:role/ActivityLogWriter".into(),
        external_id: "ext-7c1d0a4f9b2e".into(),
        region: REGION.into(),
        compression: Codec::None,
        connected_at: now,
        updated_at: now,
    }
}

const BODY: &[u8] =
    b"{\"id\":\"e1\",\"tenant_id\":\"acme\"}\n{\"id\":\"e2\",\"tenant_id\":\"acme\"}\n";

#[tokio::test]
async fn an_object_lands_with_its_headers_once_and_one_assume_role_serves_many_uploads() {
    let config = aws_config(&moto_endpoint()).await;
    let s3 = s3_client(&config);
    let bucket = new_bucket(&s3).await;
    let integration = integration("acme", &bucket);
    let roles = AssumedRoles::new(config.clone());
    let writer = S3Writer::new(config.clone());

    let first = upload_job("acme", 100, BODY);
    let sha = verify_body(&first, BODY).expect("body matches its job");
    let credentials = roles.credentials(&integration).await.expect("assume role");
    let stored = writer
        .put(
            &integration,
            credentials.clone(),
            &first,
            BODY.to_vec(),
            sha,
        )
        .await
        .expect("put");
    assert_eq!(stored, Stored::Created);

    let key = format!("audit/activity/{}", first.relative_key);
    let object = s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .expect("the object is there");
    assert_eq!(object.content_type(), Some("application/x-ndjson"));
    assert_eq!(
        object.server_side_encryption().map(|s| s.as_str()),
        Some("AES256")
    );
    let metadata = object.metadata().expect("metadata");
    assert_eq!(metadata.get("event-count").map(String::as_str), Some("2"));
    assert_eq!(
        metadata.get("window-start").map(String::as_str),
        Some("2026-11-27T09:00:00Z")
    );
    let attributes = s3
        .get_object_attributes()
        .bucket(&bucket)
        .key(&key)
        .object_attributes(aws_sdk_s3::types::ObjectAttributes::Checksum)
        .send()
        .await
        .expect("object attributes");
    let expected_checksum = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(sha)
    };
    assert_eq!(
        attributes.checksum().and_then(|c| c.checksum_sha256()),
        Some(expected_checksum.as_str()),
        "S3 kept the SHA-256 it was given"
    );
    let bytes = object.body.collect().await.expect("body").into_bytes();
    assert_eq!(bytes.as_ref(), BODY);

    let again = writer
        .put(&integration, credentials, &first, BODY.to_vec(), sha)
        .await
        .expect("second put");
    assert_eq!(again, Stored::AlreadyThere, "a repeated job is a no-op");

    for offset in 0..20 {
        let next = upload_job("acme", 1_000 + offset, BODY);
        let credentials = roles
            .credentials(&integration)
            .await
            .expect("cached credentials");
        writer
            .put(&integration, credentials, &next, BODY.to_vec(), sha)
            .await
            .expect("put");
    }
    assert_eq!(
        roles.calls(),
        1,
        "every upload after the first reused the assumed role"
    );
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list");
    assert_eq!(
        listed.key_count(),
        Some(21),
        "one object per job, the repeated one only once"
    );
}

#[tokio::test]
async fn a_bucket_policy_denying_writes_is_a_configuration_error_named_access_denied() {
    let config = aws_config(&moto_endpoint()).await;
    let s3 = s3_client(&config);
    let bucket = new_bucket(&s3).await;
    deny_on_objects(&s3, &bucket, "s3:PutObject").await;

    let integration = integration("acme", &bucket);
    let roles = AssumedRoles::new(config.clone());
    let writer = S3Writer::new(config);
    let job = upload_job("acme", 7, BODY);
    let sha = verify_body(&job, BODY).expect("body");
    let credentials = roles.credentials(&integration).await.expect("assume role");
    let error = writer
        .put(&integration, credentials, &job, BODY.to_vec(), sha)
        .await
        .expect_err("denied");
    assert_eq!(error.class, ErrorClass::Configuration, "{error}");
    assert_eq!(error.code, "AccessDenied", "{error}");
    assert_eq!(error.step, "put-object");
}

#[test]
fn a_body_that_does_not_match_its_job_is_refused_before_upload() {
    let job = upload_job("acme", 1, BODY);
    let error = verify_body(&job, b"tampered").expect_err("mismatch");
    assert_eq!(error.class, ErrorClass::InvalidJob);
    assert_eq!(error.code, "ChecksumMismatch");
}

#[test]
fn a_body_holding_another_tenants_events_never_passes() {
    let foreign = payload("globex");
    let job = upload_job("acme", 1, &foreign);
    let error = verify_body(&job, &foreign).expect_err("foreign events");
    assert_eq!(error.class, ErrorClass::InvalidJob);
    assert_eq!(error.code, "TenantMismatch", "{error}");
    assert!(error.message.contains("globex"), "{error}");
}

#[test]
fn a_body_that_disagrees_with_its_event_count_or_size_is_refused() {
    let body = payload("acme");
    let mut job = upload_job("acme", 1, &body);
    job.event_count = 3;
    assert_eq!(
        verify_body(&job, &body).expect_err("count").code,
        "EventCountMismatch"
    );
    job.event_count = 2;
    job.uncompressed_bytes += 1;
    assert_eq!(
        verify_body(&job, &body).expect_err("size").code,
        "SizeMismatch"
    );
}

#[test]
fn a_compressed_body_of_concatenated_frames_is_verified_after_decompression() {
    let raw = payload("acme");
    let (first, second) = raw.split_at(raw.len() / 2 + 1);
    let mut body = compress(Codec::Zstd, first, 3).expect("frame");
    body.extend(compress(Codec::Zstd, second, 3).expect("frame"));
    let mut job = upload_job("acme", 1, &raw);
    job.codec = Codec::Zstd;
    job.sha256_hex = hex::encode(Sha256::digest(&body));
    verify_body(&job, &body).expect("a valid zstd part");
}
