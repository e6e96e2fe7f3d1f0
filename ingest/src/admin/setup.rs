//! What a customer needs to connect: the external id and the three policy documents, filled in
//! for their bucket (DESIGN §1 steps 1–2).

use common::event::TenantId;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;

/// Derives a tenant's external id: an HMAC of the tenant id under the vendor's secret, so it is
/// stable without being stored and cannot be guessed from the tenant id (DESIGN §2). An
/// integration keeps the external id it was saved with; a new secret only changes the ids of
/// tenants that connect afterwards.
pub fn external_id(secret: &[u8], tenant: &TenantId) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"activity-logs external id v1\0");
    mac.update(tenant.as_str().as_bytes());
    let digest = mac.finalize().into_bytes();
    hex::encode(digest)
}

/// The answer to `GET /v1/integrations/s3/setup`.
#[derive(Debug, Serialize)]
pub struct SetupDocuments {
    pub tenant_id: String,
    pub vendor_account_id: String,
    pub vendor_role_arn: String,
    pub external_id: String,
    pub bucket: String,
    pub prefix: String,
    /// Where objects will land: `s3://bucket/prefix/tenant/`.
    pub destination: String,
    /// Denies every request that does not use TLS.
    pub bucket_policy: Value,
    /// Lets the vendor's role assume the customer's role, only with the external id.
    pub trust_policy: Value,
    /// The customer role's inline policy: listing the bucket, writing under the prefix.
    pub role_policy: Value,
}

/// The vendor side of the setup, from configuration.
#[derive(Debug, Clone)]
pub struct Vendor {
    pub role_arn: String,
}

impl Vendor {
    /// The vendor's AWS account, from its role ARN (`arn:aws:iam::<account>:role/...`).
    pub fn account_id(&self) -> &str {
        self.role_arn.split(':').nth(4).unwrap_or_default()
    }

    /// The ARN partition (`aws`, `aws-cn`, `aws-us-gov`) the documents name resources in.
    pub fn partition(&self) -> &str {
        self.role_arn.split(':').nth(1).unwrap_or("aws")
    }
}

/// What the connection test's object is named after, under the tenant's folder; the role may
/// delete only objects named so.
pub const CONNECTION_TEST_OBJECT: &str = "_connection-test-";

/// The ARN of the bucket in an S3 partition (`aws`, `aws-cn`, `aws-us-gov`).
fn bucket_arn(partition: &str, bucket: &str) -> String {
    format!("arn:{partition}:s3:::{bucket}")
}

/// The ARN of the tenant's folder below the prefix (without the trailing `/`).
fn tenant_folder_arn(partition: &str, bucket: &str, prefix: &str, tenant: &TenantId) -> String {
    let folder = common::key::full_key(prefix, tenant.as_str());
    format!("{}/{folder}", bucket_arn(partition, bucket))
}

/// The ARN pattern of every object delivered for `tenant`.
pub fn tenant_objects_arn(
    partition: &str,
    bucket: &str,
    prefix: &str,
    tenant: &TenantId,
) -> String {
    format!("{}/*", tenant_folder_arn(partition, bucket, prefix, tenant))
}

/// The ARN pattern of the connection test's objects, the only ones the role may delete.
pub fn connection_test_objects_arn(
    partition: &str,
    bucket: &str,
    prefix: &str,
    tenant: &TenantId,
) -> String {
    let folder = tenant_folder_arn(partition, bucket, prefix, tenant);
    format!("{folder}/{CONNECTION_TEST_OBJECT}*")
}

/// Fills in the three documents. The role's inline policy is as narrow as delivery needs:
/// writes only in the tenant's folder, deletes only of the connection test's object, and the
/// listing the S3 console needs to show the folder.
pub fn documents(
    vendor: &Vendor,
    tenant: &TenantId,
    external_id: &str,
    bucket: &str,
    prefix: &str,
) -> SetupDocuments {
    let partition = vendor.partition();
    let bucket_arn = bucket_arn(partition, bucket);
    let bucket_policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, format!("{bucket_arn}/*")],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}
        }]
    });
    let trust_policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AllowActivityLogDelivery",
            "Effect": "Allow",
            "Principal": {"AWS": vendor.role_arn},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": external_id}}
        }]
    });
    let mut list = json!({
        "Sid": "ListDestination",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": bucket_arn,
    });
    if !prefix.is_empty() {
        list["Condition"] = json!({"StringLike": {"s3:prefix": [format!("{prefix}/*")]}});
    }
    let role_policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            list,
            {
                "Sid": "WriteActivityLogs",
                "Effect": "Allow",
                // GetObject lets delivery read back an existing object's SHA-256 (HEAD) before
                // it counts a taken key as an earlier delivery of the same object.
                "Action": ["s3:PutObject", "s3:GetObject"],
                "Resource": tenant_objects_arn(partition, bucket, prefix, tenant)
            },
            {
                "Sid": "RemoveConnectionTestObject",
                "Effect": "Allow",
                "Action": "s3:DeleteObject",
                "Resource": connection_test_objects_arn(partition, bucket, prefix, tenant)
            }
        ]
    });
    let destination = if prefix.is_empty() {
        format!("s3://{bucket}/{tenant}/")
    } else {
        format!("s3://{bucket}/{prefix}/{tenant}/")
    };
    SetupDocuments {
        tenant_id: tenant.to_string(),
        vendor_account_id: vendor.account_id().to_owned(),
        vendor_role_arn: vendor.role_arn.clone(),
        external_id: external_id.to_owned(),
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
        destination,
        bucket_policy,
        trust_policy,
        role_policy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(raw: &str) -> TenantId {
        TenantId::parse(raw).expect("tenant")
    }

    #[test]
    fn external_ids_are_stable_per_tenant_and_secret() {
        let a = external_id(b"secret-one", &tenant("acme"));
        assert_eq!(a, external_id(b"secret-one", &tenant("acme")));
        assert_eq!(a.len(), 64);
        assert_ne!(a, external_id(b"secret-one", &tenant("globex")));
        assert_ne!(a, external_id(b"secret-two", &tenant("acme")));
        assert!(common::integration::check_external_id(&a).is_ok());
    }

    #[test]
    fn documents_name_the_bucket_prefix_vendor_and_external_id() {
        let vendor = Vendor {
            role_arn: "arn:aws:iam::111122223333:role/ActivityDelivery".into(),
        };
        let docs = documents(&vendor, &tenant("acme"), "ext-1234", "acme-logs", "audit");
        assert_eq!(docs.vendor_account_id, "111122223333");
        assert_eq!(docs.destination, "s3://acme-logs/audit/acme/");
        assert_eq!(
            docs.trust_policy["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
            "ext-1234"
        );
        assert_eq!(
            docs.trust_policy["Statement"][0]["Principal"]["AWS"],
            vendor.role_arn
        );
        assert_eq!(
            docs.role_policy["Statement"][1]["Action"],
            json!(["s3:PutObject", "s3:GetObject"])
        );
        assert_eq!(
            docs.role_policy["Statement"][1]["Resource"],
            "arn:aws:s3:::acme-logs/audit/acme/*"
        );
        assert_eq!(
            docs.role_policy["Statement"][2]["Action"],
            "s3:DeleteObject"
        );
        assert_eq!(
            docs.role_policy["Statement"][2]["Resource"],
            "arn:aws:s3:::acme-logs/audit/acme/_connection-test-*"
        );
        assert_eq!(
            docs.role_policy["Statement"].as_array().map(Vec::len),
            Some(3)
        );
        assert_eq!(
            docs.bucket_policy["Statement"][0]["Condition"]["Bool"]["aws:SecureTransport"],
            "false"
        );
        let bare = documents(&vendor, &tenant("acme"), "ext-1234", "acme-logs", "");
        assert_eq!(
            bare.role_policy["Statement"][1]["Resource"],
            "arn:aws:s3:::acme-logs/acme/*"
        );
        assert!(bare.role_policy["Statement"][0].get("Condition").is_none());
    }
}
