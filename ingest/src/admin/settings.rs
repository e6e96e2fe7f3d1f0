//! The settings a customer submits for an S3 integration, checked field by field so a `422`
//! lists every problem at once, each naming its field (DESIGN §2 "Integration").

use common::integration::{
    check_account_id, check_bucket, check_prefix, check_region, check_role_arn,
};
use common::key::Codec;
use serde::Serialize;
use serde_json::{Map, Value};

/// What the customer may set; everything else about an integration is the vendor's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationSettings {
    pub aws_account_id: String,
    pub bucket: String,
    pub prefix: String,
    pub role_arn: String,
    pub region: String,
    pub compression: Codec,
    pub enabled: bool,
}

/// One problem with one field of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

impl FieldProblem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

const REQUIRED: &[&str] = &["aws_account_id", "bucket", "role_arn", "region"];
const OPTIONAL: &[&str] = &["prefix", "compression", "enabled"];

/// Parses a request body into settings, or every problem with it.
pub fn parse(body: &[u8]) -> Result<IntegrationSettings, Vec<FieldProblem>> {
    let object: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err(vec![FieldProblem::new("body", "must be a JSON object")]),
        Err(error) => {
            return Err(vec![FieldProblem::new(
                "body",
                format!("is not valid JSON: {error}"),
            )]);
        }
    };
    let mut problems: Vec<FieldProblem> = object
        .keys()
        .filter(|key| !REQUIRED.contains(&key.as_str()) && !OPTIONAL.contains(&key.as_str()))
        .map(|key| {
            FieldProblem::new(
                key.clone(),
                format!(
                    "is not a setting; the settings are {}",
                    [REQUIRED, OPTIONAL].concat().join(", ")
                ),
            )
        })
        .collect();
    let mut text = |field: &'static str, required: bool| -> Option<String> {
        match object.get(field) {
            Some(Value::String(value)) => Some(value.clone()),
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                problems.push(FieldProblem::new(field, "is required"));
                None
            }
            Some(_) => {
                problems.push(FieldProblem::new(field, "must be a string"));
                None
            }
        }
    };
    let aws_account_id = text("aws_account_id", true);
    let bucket = text("bucket", true);
    let role_arn = text("role_arn", true);
    let region = text("region", true);
    let prefix = text("prefix", false).unwrap_or_default();
    let compression = text("compression", false);
    let enabled = match object.get("enabled") {
        None | Some(Value::Null) => Some(true),
        Some(Value::Bool(enabled)) => Some(*enabled),
        Some(_) => {
            problems.push(FieldProblem::new("enabled", "must be true or false"));
            None
        }
    };

    let mut check = |field: &'static str, result: Result<(), String>| {
        if let Err(message) = result {
            problems.push(FieldProblem::new(field, message));
        }
    };
    if let Some(account) = &aws_account_id {
        check("aws_account_id", check_account_id(account));
    }
    if let Some(bucket) = &bucket {
        check("bucket", check_bucket(bucket));
    }
    check("prefix", check_prefix(&prefix));
    if let Some(role_arn) = &role_arn {
        // The account comparison needs a well-formed account id; without one, only the form.
        let account = aws_account_id
            .as_deref()
            .filter(|a| check_account_id(a).is_ok());
        let result = match account {
            Some(account) => check_role_arn(role_arn, account),
            None => role_arn_account(role_arn)
                .map(|own| check_role_arn(role_arn, own))
                .unwrap_or_else(|| check_role_arn(role_arn, "")),
        };
        check("role_arn", result);
    }
    if let Some(region) = &region {
        check("region", check_region(region));
    }
    let compression = match compression.as_deref().map(str::parse::<Codec>) {
        None => Some(Codec::default()),
        Some(Ok(codec)) => Some(codec),
        Some(Err(message)) => {
            problems.push(FieldProblem::new("compression", message));
            None
        }
    };

    match (
        aws_account_id,
        bucket,
        role_arn,
        region,
        compression,
        enabled,
    ) {
        (
            Some(aws_account_id),
            Some(bucket),
            Some(role_arn),
            Some(region),
            Some(compression),
            Some(enabled),
        ) if problems.is_empty() => Ok(IntegrationSettings {
            aws_account_id,
            bucket,
            prefix: prefix.trim_end_matches('/').to_owned(),
            role_arn,
            region,
            compression,
            enabled,
        }),
        _ => Err(problems),
    }
}

/// The account named in a role ARN, when it has the ARN form.
fn role_arn_account(role_arn: &str) -> Option<&str> {
    role_arn
        .split(':')
        .nth(4)
        .filter(|a| check_account_id(a).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "aws_account_id": "123456789012",
            "bucket": "acme-audit-logs",
            "prefix": "activity/prod/",
            "role_arn": "arn:aws:iam::123456789012:role/ActivityLogWriter",
            "region": "eu-west-1",
        })
    }

    fn fields(body: Value) -> Vec<String> {
        parse(body.to_string().as_bytes())
            .expect_err("invalid")
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn valid_settings_get_defaults_and_a_clean_prefix() {
        let settings = parse(valid().to_string().as_bytes()).expect("valid");
        assert_eq!(settings.prefix, "activity/prod");
        assert_eq!(settings.compression, Codec::Zstd);
        assert!(settings.enabled);
    }

    #[test]
    fn every_bad_field_is_reported_once_by_name() {
        let body = json!({
            "aws_account_id": "12345",
            "bucket": "Bad_Bucket",
            "prefix": "/x/../y",
            "role_arn": "arn:aws:iam::123456789012:user/Someone",
            "region": "Europe",
            "compression": "lz4",
            "enabled": "yes",
            "color": "blue",
        });
        let mut found = fields(body);
        found.sort();
        assert_eq!(
            found,
            [
                "aws_account_id",
                "bucket",
                "color",
                "compression",
                "enabled",
                "prefix",
                "region",
                "role_arn"
            ]
        );
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        assert_eq!(
            fields(json!({"bucket": 7})),
            ["aws_account_id", "bucket", "role_arn", "region"]
        );
        assert_eq!(fields(json!([1])), ["body"]);
    }

    #[test]
    fn the_role_must_be_in_the_given_account() {
        let mut body = valid();
        body["aws_account_id"] = json!("210987654321");
        let problems = parse(body.to_string().as_bytes()).expect_err("other account");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "role_arn");
        assert!(problems[0].message.contains("210987654321"), "{problems:?}");
    }
}
