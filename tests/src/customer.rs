//! A customer's side of a connection, made the way the setup guide and documents say: the bucket
//! (public access blocked, SSE-S3 with the bucket key, versioning off, the SSL-only policy) and a
//! role in the customer's account whose trust policy and inline policy are the documents' own,
//! on the local S3/STS server (which checks the trust policy's external id on every AssumeRole
//! and the policy's `aws:SecureTransport`, see `scripts/moto-server.py`).

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde_json::Value;

/// The customer account every test connects (the local server's default account).
pub const CUSTOMER_ACCOUNT: &str = "123456789012";

/// IAM's query API on `endpoint` (plain HTTP: this client speaks no TLS), signed with the
/// standard credential chain's environment keys (the local server accepts any; against AWS
/// these would be the customer's administrator's).
pub struct Iam {
    endpoint: String,
    credentials: Credentials,
    http: reqwest::Client,
}

impl Iam {
    pub fn new(endpoint: &str) -> Self {
        let key = |name: &str| std::env::var(name).unwrap_or_else(|_| "test".to_owned());
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            credentials: Credentials::new(
                key("AWS_ACCESS_KEY_ID"),
                key("AWS_SECRET_ACCESS_KEY"),
                None,
                None,
                "environment",
            ),
            http: reqwest::Client::new(),
        }
    }

    /// Creates role `name` in the customer account with `trust_policy`, and its inline policy
    /// `role_policy`; returns the role's ARN.
    pub async fn create_role(
        &self,
        name: &str,
        trust_policy: &Value,
        role_policy: &Value,
    ) -> Result<String, String> {
        self.call(
            "CreateRole",
            &[
                ("RoleName", name),
                ("AssumeRolePolicyDocument", &trust_policy.to_string()),
            ],
        )
        .await?;
        self.call(
            "PutRolePolicy",
            &[
                ("RoleName", name),
                ("PolicyName", "ActivityLogDelivery"),
                ("PolicyDocument", &role_policy.to_string()),
            ],
        )
        .await?;
        Ok(format!("arn:aws:iam::{CUSTOMER_ACCOUNT}:role/{name}"))
    }

    /// Replaces the trust policy of role `name`.
    pub async fn update_trust_policy(
        &self,
        name: &str,
        trust_policy: &Value,
    ) -> Result<(), String> {
        self.call(
            "UpdateAssumeRolePolicy",
            &[
                ("RoleName", name),
                ("PolicyDocument", &trust_policy.to_string()),
            ],
        )
        .await
    }

    async fn call(&self, action: &str, params: &[(&str, &str)]) -> Result<(), String> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", action)
            .extend_pairs(params)
            .append_pair("Version", "2010-05-08");
        let body = form.finish();
        let url = format!("{}/", self.endpoint);
        let content_type = ("content-type", "application/x-www-form-urlencoded");
        let identity = self.credentials.clone().into();
        let signing = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("iam")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|error| format!("signing parameters: {error}"))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &url,
            std::iter::once(content_type),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|error| format!("signing: {error}"))?;
        let (instructions, _) = sign(signable, &signing)
            .map_err(|error| format!("signing: {error}"))?
            .into_parts();
        let mut request = self
            .http
            .post(&url)
            .header(content_type.0, content_type.1)
            .body(body);
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|error| format!("IAM {action}: {error}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("IAM {action} answered {status}: {text}"))
        }
    }
}

/// Creates the role the setup documents `setup` (the admin API's answer to
/// `GET /v1/integrations/s3/setup`) ask the customer for, named `role_name`; returns its ARN.
pub async fn create_role_from_setup(
    iam: &Iam,
    setup: &Value,
    role_name: &str,
) -> Result<String, String> {
    iam.create_role(role_name, &setup["trust_policy"], &setup["role_policy"])
        .await
}

/// The bucket the setup guide has a customer make: all public access blocked, versioning left
/// off, default encryption SSE-S3 with the bucket key, and the setup documents' bucket policy
/// (which denies every request not made over TLS) exactly as given.
pub async fn create_bucket_from_setup(
    s3: &aws_sdk_s3::Client,
    setup: &Value,
    bucket: &str,
) -> Result<(), String> {
    use aws_sdk_s3::types::{
        PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
        ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    };
    let failed = |step: &str, error: &dyn std::fmt::Display| format!("{step} {bucket}: {error}");
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| failed("CreateBucket", &aws_sdk_s3::error::DisplayErrorContext(e)))?;
    let block_all = PublicAccessBlockConfiguration::builder()
        .block_public_acls(true)
        .ignore_public_acls(true)
        .block_public_policy(true)
        .restrict_public_buckets(true)
        .build();
    s3.put_public_access_block()
        .bucket(bucket)
        .public_access_block_configuration(block_all)
        .send()
        .await
        .map_err(|e| {
            failed(
                "PutPublicAccessBlock",
                &aws_sdk_s3::error::DisplayErrorContext(e),
            )
        })?;
    let sse_s3 = ServerSideEncryptionByDefault::builder()
        .sse_algorithm(ServerSideEncryption::Aes256)
        .build()
        .map_err(|e| failed("encryption settings for", &e))?;
    let rule = ServerSideEncryptionRule::builder()
        .apply_server_side_encryption_by_default(sse_s3)
        .bucket_key_enabled(true)
        .build();
    let encryption = ServerSideEncryptionConfiguration::builder()
        .rules(rule)
        .build()
        .map_err(|e| failed("encryption settings for", &e))?;
    s3.put_bucket_encryption()
        .bucket(bucket)
        .server_side_encryption_configuration(encryption)
        .send()
        .await
        .map_err(|e| {
            failed(
                "PutBucketEncryption",
                &aws_sdk_s3::error::DisplayErrorContext(e),
            )
        })?;
    s3.put_bucket_policy()
        .bucket(bucket)
        .policy(setup["bucket_policy"].to_string())
        .send()
        .await
        .map_err(|e| {
            failed(
                "PutBucketPolicy",
                &aws_sdk_s3::error::DisplayErrorContext(e),
            )
        })?;
    Ok(())
}
