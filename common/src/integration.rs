//! A tenant's S3 integration (DESIGN §2) and the rules its settings must follow. Every service
//! reads integrations from the compacted `activity.integrations` topic; the admin API writes them.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::{FieldError, TenantId};
use crate::key::Codec;

/// Longest accepted destination prefix, in bytes.
pub const MAX_PREFIX_BYTES: usize = 512;

/// Where and how a tenant's activity logs are delivered. Fields it does not know are ignored
/// when read: during a rolling upgrade a newer admin API may write one, and an older service
/// must not take the tenant for disconnected (the admin API's own input is checked strictly,
/// in `ingest::admin::settings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integration {
    pub tenant_id: TenantId,
    pub enabled: bool,
    pub aws_account_id: String,
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    pub role_arn: String,
    pub external_id: String,
    pub region: String,
    #[serde(default)]
    pub compression: Codec,
    #[serde(with = "time::serde::rfc3339")]
    pub connected_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Integration {
    /// Every problem with the customer-supplied settings, one per field.
    pub fn problems(&self) -> Vec<FieldError> {
        let checks = [
            ("aws_account_id", check_account_id(&self.aws_account_id)),
            ("bucket", check_bucket(&self.bucket)),
            ("prefix", check_prefix(&self.prefix)),
            (
                "role_arn",
                check_role_arn(&self.role_arn, &self.aws_account_id),
            ),
            ("region", check_region(&self.region)),
            ("external_id", check_external_id(&self.external_id)),
        ];
        checks
            .into_iter()
            .filter_map(|(field, result)| result.err().map(|problem| FieldError { field, problem }))
            .collect()
    }
}

/// Asks the batchers for a newly connected tenant's *first delivery*: the windows from the one
/// before `connected_at`'s window up to where live batching takes over (DESIGN §1 step 5). The
/// admin API writes it to the first-deliveries topic before saving the integration; a request
/// whose `connected_at` no longer matches the tenant's integration is stale and dropped. Fields
/// it does not know are ignored, as for [`Integration`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstDeliveryRequest {
    pub tenant_id: TenantId,
    #[serde(with = "time::serde::rfc3339")]
    pub connected_at: OffsetDateTime,
}

/// The first-deliveries topic as services create it: one partition, so requests are handled in
/// the order they were made, kept a week.
pub fn first_deliveries_topic_spec(name: &str, replication: i32) -> crate::kafka::TopicSpec<'_> {
    crate::kafka::TopicSpec {
        name,
        partitions: 1,
        replication,
        config: vec![("retention.ms", "604800000")],
    }
}

/// 12 digits.
pub fn check_account_id(raw: &str) -> Result<(), String> {
    if raw.len() == 12 && raw.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("must be the 12-digit AWS account id, not {raw:?}"))
    }
}

/// S3 general purpose bucket naming rules.
pub fn check_bucket(raw: &str) -> Result<(), String> {
    const RESERVED_PREFIXES: &[&str] = &["xn--", "sthree-", "amzn-s3-demo-"];
    const RESERVED_SUFFIXES: &[&str] = &["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"];
    if !(3..=63).contains(&raw.len()) {
        return Err(format!("must be 3 to 63 characters long, is {}", raw.len()));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return Err(format!(
            "may hold only lowercase letters, digits, '.' and '-', not {bad:?}"
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !edge_ok(raw.chars().next()) || !edge_ok(raw.chars().last()) {
        return Err("must begin and end with a letter or digit".into());
    }
    if raw.contains("..") {
        return Err("must not hold two adjacent periods".into());
    }
    if raw.parse::<Ipv4Addr>().is_ok() {
        return Err("must not be formatted as an IP address".into());
    }
    if let Some(prefix) = RESERVED_PREFIXES.iter().find(|p| raw.starts_with(*p)) {
        return Err(format!(
            "must not start with the reserved prefix {prefix:?}"
        ));
    }
    if let Some(suffix) = RESERVED_SUFFIXES.iter().find(|s| raw.ends_with(*s)) {
        return Err(format!("must not end with the reserved suffix {suffix:?}"));
    }
    Ok(())
}

/// Optional; no leading `/`, no empty, `.` or `..` segments, at most 512 bytes, and only the
/// characters S3 calls safe in keys.
pub fn check_prefix(raw: &str) -> Result<(), String> {
    if raw.is_empty() {
        return Ok(());
    }
    if raw.len() > MAX_PREFIX_BYTES {
        return Err(format!(
            "is {} bytes; at most {MAX_PREFIX_BYTES} are allowed",
            raw.len()
        ));
    }
    if raw.starts_with('/') {
        return Err("must not start with '/'".into());
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "!-_.*'()/".contains(*c)))
    {
        return Err(format!(
            "may hold only letters, digits, '/' and !-_.*'(), not {bad:?}"
        ));
    }
    let trimmed = raw.strip_suffix('/').unwrap_or(raw);
    if trimmed
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err("must not hold empty, '.' or '..' path segments".into());
    }
    Ok(())
}

/// `arn:<partition>:iam::<account>:role/<path/>name`, in the integration's own account.
pub fn check_role_arn(raw: &str, account_id: &str) -> Result<(), String> {
    let form = "must look like arn:aws:iam::123456789012:role/RoleName";
    let parts: Vec<&str> = raw.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts.as_slice() else {
        return Err(form.into());
    };
    if *arn != "arn"
        || !matches!(*partition, "aws" | "aws-cn" | "aws-us-gov")
        || *service != "iam"
        || !region.is_empty()
    {
        return Err(form.into());
    }
    check_account_id(account).map_err(|_| form.to_owned())?;
    let Some(name) = resource.strip_prefix("role/") else {
        return Err(form.into());
    };
    let name_ok = !name.is_empty()
        && name.len() <= 512
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c));
    if !name_ok {
        return Err("names no valid role (letters, digits and +=,.@_-/ only)".into());
    }
    if *account != account_id {
        return Err(format!(
            "is in account {account}, but aws_account_id is {account_id}: the role must be in the bucket owner's account"
        ));
    }
    Ok(())
}

/// An AWS region name such as `eu-west-1` or `us-gov-west-1`.
pub fn check_region(raw: &str) -> Result<(), String> {
    let parts: Vec<&str> = raw.split('-').collect();
    let well_formed = parts.len() >= 3
        && parts[0].len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_lowercase()));
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "must be an AWS region such as eu-west-1, not {raw:?}"
        ))
    }
}

/// STS accepts 2 to 1224 characters from `[\w+=,.@:/-]`.
pub fn check_external_id(raw: &str) -> Result<(), String> {
    let ok = (2..=1224).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
    if ok {
        Ok(())
    } else {
        Err("must be 2 to 1224 characters of letters, digits and _+=,.@:/-".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn integration() -> Integration {
        Integration {
            tenant_id: TenantId::parse("acme").expect("tenant"),
            enabled: true,
            aws_account_id: "123456789012".into(),
            bucket: "acme-audit-logs".into(),
            prefix: "activity/prod".into(),
            role_arn: "arn:aws:iam::123456789012:role/vendor/ActivityLogWriter".into(),
            external_id: "9f2c1e6b3a7d4f0e8c5b2a1d6e3f7a9c".into(),
            region: "eu-west-1".into(),
            compression: Codec::Zstd,
            connected_at: datetime!(2026-11-27 10:00 UTC),
            updated_at: datetime!(2026-11-27 10:00 UTC),
        }
    }

    #[test]
    fn a_valid_integration_round_trips_through_json() {
        let json = serde_json::to_string(&integration()).expect("serialize");
        assert!(
            json.contains(r#""connected_at":"2026-11-27T10:00:00Z""#),
            "{json}"
        );
        let back: Integration = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, integration());
        assert!(back.problems().is_empty());
    }

    #[test]
    fn records_a_newer_version_wrote_are_read_and_bad_tenants_refused() {
        let mut value = serde_json::to_value(integration()).expect("value");
        value["kms_key_arn"] = serde_json::json!("arn:aws:kms:eu-west-1:123456789012:key/1");
        let read = serde_json::from_value::<Integration>(value).expect("a newer integration");
        assert_eq!(read, integration());
        let request = serde_json::json!({
            "tenant_id": "acme", "connected_at": "2026-11-27T10:00:00Z", "requested_by": "x"
        });
        let read = serde_json::from_value::<FirstDeliveryRequest>(request).expect("newer");
        assert_eq!(read.tenant_id.as_str(), "acme");
        let mut value = serde_json::to_value(integration()).expect("value");
        value["tenant_id"] = serde_json::json!("../x");
        let error = serde_json::from_value::<Integration>(value).expect_err("bad tenant");
        assert!(
            error.to_string().contains("tenant_id must start with"),
            "{error}"
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut bad = integration();
        bad.aws_account_id = "12345".into();
        bad.bucket = "Acme_Logs".into();
        bad.prefix = "/logs".into();
        bad.region = "Europe".into();
        bad.external_id = "x".into();
        let fields: Vec<_> = bad.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "aws_account_id",
                "bucket",
                "prefix",
                "role_arn",
                "region",
                "external_id"
            ]
        );
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for good in ["abc", "my.bucket-1", &"a".repeat(63)] {
            assert_eq!(check_bucket(good), Ok(()), "{good}");
        }
        for bad in [
            "ab",
            "UPPER",
            "-start",
            "end-",
            "a..b",
            "192.168.1.1",
            "xn--abc",
            "logs-s3alias",
            "has_underscore",
            &"a".repeat(64),
        ] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_cannot_escape_or_hide_segments() {
        for good in ["", "logs", "logs/activity/", "a-b_c.d/e(1)"] {
            assert_eq!(check_prefix(good), Ok(()), "{good:?}");
        }
        for bad in [
            "/logs",
            "a//b",
            "a/../b",
            "..",
            "a/./b",
            "sp ace",
            "a\\b",
            &"a".repeat(513),
        ] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn role_arns_must_be_iam_roles_in_the_same_account() {
        assert_eq!(
            check_role_arn("arn:aws:iam::123456789012:role/Writer", "123456789012"),
            Ok(())
        );
        let other = check_role_arn("arn:aws:iam::210987654321:role/Writer", "123456789012")
            .expect_err("other account");
        assert!(other.contains("is in account 210987654321"), "{other}");
        for bad in [
            "arn:aws:iam::123456789012:user/Writer",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam:eu-west-1:123456789012:role/Writer",
            "role/Writer",
        ] {
            assert!(check_role_arn(bad, "123456789012").is_err(), "{bad}");
        }
    }

    #[test]
    fn regions_have_the_aws_form() {
        for good in ["eu-west-1", "us-gov-west-1", "ap-southeast-4"] {
            assert_eq!(check_region(good), Ok(()), "{good}");
        }
        for bad in ["eu-west", "EU-WEST-1", "europe-1", "eu-west-1a", ""] {
            assert!(check_region(bad).is_err(), "{bad}");
        }
    }
}
