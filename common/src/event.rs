//! The activity event, the one record every service agrees on (DESIGN §2).
//!
//! An event is a JSON object with four required fields; everything else is kept as sent. It is
//! stored and delivered as compact canonical JSON: object keys sorted, no insignificant
//! whitespace, numbers exactly as the producer wrote them, so NDJSON stays one line per event and
//! re-encoding a stored event yields the same bytes.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest accepted `id`, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Longest accepted `type`, in characters.
pub const MAX_TYPE_CHARS: usize = 128;
/// Longest accepted tenant id, in characters (it must fit a path segment).
pub const MAX_TENANT_ID_CHARS: usize = 63;

/// A validated tenant id: `^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`.
///
/// Tenant ids become S3 path segments and Kafka keys, so the pattern leaves no room for `/`,
/// `..` at the start, whitespace or anything a URL would need to escape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

/// Why a string is not a tenant id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantIdError {
    #[error("must not be empty")]
    Empty,
    #[error("is {chars} characters long; at most {MAX_TENANT_ID_CHARS} are allowed")]
    TooLong { chars: usize },
    #[error("must start with a letter or digit, not {found:?}")]
    BadFirstCharacter { found: char },
    #[error(
        "has {found:?} at position {position}; only letters, digits, '.', '_' and '-' are allowed"
    )]
    BadCharacter { found: char, position: usize },
}

/// Written as its string; read only when the string is a valid tenant id.
impl serde::Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Self::parse(&raw).map_err(|e| serde::de::Error::custom(format!("tenant_id {e}")))
    }
}

impl TenantId {
    /// Checks `raw` against the tenant id pattern.
    pub fn parse(raw: &str) -> Result<Self, TenantIdError> {
        let mut chars = raw.chars();
        let first = chars.next().ok_or(TenantIdError::Empty)?;
        let count = raw.chars().count();
        if count > MAX_TENANT_ID_CHARS {
            return Err(TenantIdError::TooLong { chars: count });
        }
        if !first.is_ascii_alphanumeric() {
            return Err(TenantIdError::BadFirstCharacter { found: first });
        }
        if let Some((index, found)) = chars
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(TenantIdError::BadCharacter {
                found,
                position: index + 2,
            });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = TenantIdError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One problem with one field of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name, e.g. `tenant_id`.
    pub field: &'static str,
    /// What is wrong with it, phrased to follow the field name.
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.field, self.problem)
    }
}

/// Why a JSON document is not an acceptable event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    #[error("{}", join_field_errors(.0))]
    InvalidFields(Vec<FieldError>),
    #[error("is {size} bytes as compact JSON; at most {limit} are allowed")]
    TooLarge { size: usize, limit: usize },
}

fn join_field_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A validated activity event and its canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    tenant_id: TenantId,
    id: String,
    canonical: Vec<u8>,
}

impl Event {
    /// Parses and validates one event from its JSON text, rejecting it when its canonical form is
    /// longer than `max_bytes`.
    pub fn from_json(json: &[u8], max_bytes: usize) -> Result<Self, EventError> {
        // Nearly every event: read in place and written back sorted, without a JSON tree.
        // Anything else (not an object, not JSON, a key with an escape) goes through a `Value`,
        // which also says what is wrong.
        if let Some(members) = crate::canonical::members(json) {
            let (tenant_id, id) = validate_required_fields(|field| match members.get(field) {
                None => Field::Missing,
                Some(raw) => crate::canonical::string(raw)
                    .map_or_else(|| Field::Other(crate::canonical::kind(raw)), Field::Text),
            })?;
            if let Some(canonical) = crate::canonical::object(&members) {
                return Self::sized(tenant_id, id, canonical, max_bytes);
            }
        }
        let value: Value = serde_json::from_slice(json)
            .map_err(|e| EventError::InvalidJson(describe_json_error(&e)))?;
        Self::from_value(value, max_bytes)
    }

    /// Validates an already parsed JSON value as an event.
    pub fn from_value(value: Value, max_bytes: usize) -> Result<Self, EventError> {
        let Value::Object(object) = value else {
            return Err(EventError::NotAnObject(json_kind(&value)));
        };
        let (tenant_id, id) = validate_required_fields(|field| match object.get(field) {
            None => Field::Missing,
            Some(Value::String(text)) => Field::Text(text.into()),
            Some(other) => Field::Other(json_kind(other)),
        })?;
        let canonical =
            serde_json::to_vec(&object).map_err(|e| EventError::InvalidJson(e.to_string()))?;
        Self::sized(tenant_id, id, canonical, max_bytes)
    }

    /// The event, unless its canonical form is longer than `max_bytes`.
    fn sized(
        tenant_id: TenantId,
        id: String,
        canonical: Vec<u8>,
        max_bytes: usize,
    ) -> Result<Self, EventError> {
        if canonical.len() > max_bytes {
            return Err(EventError::TooLarge {
                size: canonical.len(),
                limit: max_bytes,
            });
        }
        Ok(Self {
            tenant_id,
            id,
            canonical,
        })
    }

    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant_id
    }

    /// The per-tenant dedup key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Compact canonical JSON, without a trailing newline.
    pub fn canonical_json(&self) -> &[u8] {
        &self.canonical
    }
}

/// A required field of an event, as the event holds it.
enum Field<'a> {
    Missing,
    Text(Cow<'a, str>),
    /// Not a string: what it is instead (`a number`, `null`, ...).
    Other(&'static str),
}

/// Checks every required field, as `field` gives it, reporting all problems at once so a
/// producer can fix an event in one round trip.
fn validate_required_fields<'a>(
    field: impl Fn(&'static str) -> Field<'a>,
) -> Result<(TenantId, String), EventError> {
    let required_string = |name: &'static str| match field(name) {
        Field::Missing => Err("is required".to_owned()),
        Field::Text(text) => Ok(text),
        Field::Other(kind) => Err(format!("must be a string, not {kind}")),
    };
    let mut errors = Vec::new();
    let mut problem = |field: &'static str, problem: String| {
        errors.push(FieldError { field, problem });
    };

    let id = match required_string("id") {
        Ok(id) => match id.chars().count() {
            0 => {
                problem("id", "must not be empty".into());
                None
            }
            n if n > MAX_ID_CHARS => {
                problem(
                    "id",
                    format!("is {n} characters long; at most {MAX_ID_CHARS} are allowed"),
                );
                None
            }
            _ => Some(id.into_owned()),
        },
        Err(why) => {
            problem("id", why);
            None
        }
    };

    let tenant_id = match required_string("tenant_id") {
        Ok(raw) => match TenantId::parse(&raw) {
            Ok(tenant) => Some(tenant),
            Err(why) => {
                problem("tenant_id", why.to_string());
                None
            }
        },
        Err(why) => {
            problem("tenant_id", why);
            None
        }
    };

    match required_string("type").as_deref() {
        Ok("") => problem("type", "must not be empty".into()),
        Ok(kind) if kind.chars().count() > MAX_TYPE_CHARS => problem(
            "type",
            format!("is longer than {MAX_TYPE_CHARS} characters"),
        ),
        Ok(_) => {}
        Err(why) => problem("type", why.clone()),
    }

    match required_string("occurred_at") {
        Ok(raw) => {
            if let Err(why) = OffsetDateTime::parse(&raw, &Rfc3339) {
                problem(
                    "occurred_at",
                    format!("is not an RFC 3339 timestamp ({why}): {raw:?}"),
                );
            }
        }
        Err(why) => problem("occurred_at", why),
    }

    match (tenant_id, id) {
        (Some(tenant_id), Some(id)) if errors.is_empty() => Ok((tenant_id, id)),
        _ => Err(EventError::InvalidFields(errors)),
    }
}

/// Describes a JSON syntax error of a single-line document by column only, since the line number
/// within one NDJSON line would mislead.
fn describe_json_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let message = text
        .rfind(" at line ")
        .map_or(text.as_str(), |cut| &text[..cut]);
    if error.line() <= 1 {
        format!("{message} at column {}", error.column())
    } else {
        format!(
            "{message} at line {} column {}",
            error.line(),
            error.column()
        )
    }
}

/// The JSON type name of a value, as an error message would say it.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 256 * 1024;

    fn valid() -> Value {
        serde_json::json!({
            "id": "evt-1",
            "tenant_id": "acme",
            "type": "device.lock",
            "occurred_at": "2026-11-27T10:00:00Z",
        })
    }

    fn field_errors(value: Value) -> Vec<FieldError> {
        match Event::from_value(value, LIMIT) {
            Err(EventError::InvalidFields(errors)) => errors,
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_drops_whitespace_and_keeps_numbers_verbatim() {
        let raw = br#"{ "type":"device.lock", "tenant_id":"acme",
            "id":"e1", "occurred_at":"2026-11-27T10:00:00.123+02:00",
            "details": {"z": 1.50, "a": 123456789012345678901234567890, "s": "line\nbreak"} }"#;
        let event = Event::from_json(raw, LIMIT).expect("valid event");
        assert_eq!(
            std::str::from_utf8(event.canonical_json()).expect("utf-8"),
            r#"{"details":{"a":123456789012345678901234567890,"s":"line\nbreak","z":1.50},"id":"e1","occurred_at":"2026-11-27T10:00:00.123+02:00","tenant_id":"acme","type":"device.lock"}"#
        );
        assert_eq!(event.tenant_id().as_str(), "acme");
        assert_eq!(event.id(), "e1");
    }

    #[test]
    fn canonical_json_is_stable_when_reencoded() {
        let event = Event::from_value(valid(), LIMIT).expect("valid");
        let again = Event::from_json(event.canonical_json(), LIMIT).expect("valid");
        assert_eq!(event.canonical_json(), again.canonical_json());
    }

    #[test]
    fn every_missing_required_field_is_named() {
        let errors = field_errors(serde_json::json!({}));
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["id", "tenant_id", "type", "occurred_at"]);
        assert!(errors.iter().all(|e| e.problem == "is required"));
    }

    #[test]
    fn ill_typed_required_fields_say_what_they_are() {
        for field in ["id", "tenant_id", "type", "occurred_at"] {
            let mut value = valid();
            value[field] = serde_json::json!(42);
            let errors = field_errors(value);
            assert_eq!(errors.len(), 1, "{field}");
            assert_eq!(errors[0].field, field);
            assert_eq!(errors[0].problem, "must be a string, not a number");
        }
    }

    #[test]
    fn id_length_is_bounded() {
        let mut value = valid();
        value["id"] = Value::String(String::new());
        assert_eq!(field_errors(value)[0].problem, "must not be empty");
        let mut value = valid();
        value["id"] = Value::String("é".repeat(MAX_ID_CHARS));
        assert!(Event::from_value(value, LIMIT).is_ok());
        let mut value = valid();
        value["id"] = Value::String("x".repeat(MAX_ID_CHARS + 1));
        assert!(field_errors(value)[0].problem.contains("129 characters"));
    }

    #[test]
    fn tenant_id_pattern_is_enforced() {
        for good in ["a", "A.b_c-9", &"x".repeat(63)] {
            assert!(TenantId::parse(good).is_ok(), "{good}");
        }
        assert_eq!(TenantId::parse(""), Err(TenantIdError::Empty));
        assert_eq!(
            TenantId::parse(&"x".repeat(64)),
            Err(TenantIdError::TooLong { chars: 64 })
        );
        assert_eq!(
            TenantId::parse("../x"),
            Err(TenantIdError::BadFirstCharacter { found: '.' })
        );
        assert_eq!(
            TenantId::parse("acme corp"),
            Err(TenantIdError::BadCharacter {
                found: ' ',
                position: 5
            })
        );
        assert_eq!(
            TenantId::parse("a/b"),
            Err(TenantIdError::BadCharacter {
                found: '/',
                position: 2
            })
        );
    }

    #[test]
    fn occurred_at_must_be_rfc3339() {
        for bad in [
            "2026-11-27",
            "2026-11-27 10:00:00",
            "yesterday",
            "2026-13-01T00:00:00Z",
        ] {
            let mut value = valid();
            value["occurred_at"] = Value::String(bad.into());
            let errors = field_errors(value);
            assert_eq!(errors[0].field, "occurred_at", "{bad}");
            assert!(errors[0].problem.contains("RFC 3339"), "{bad}");
        }
    }

    #[test]
    fn non_objects_and_bad_json_are_rejected() {
        assert_eq!(
            Event::from_json(b"[1]", LIMIT),
            Err(EventError::NotAnObject("an array"))
        );
        assert!(matches!(
            Event::from_json(b"{\"id\":", LIMIT),
            Err(EventError::InvalidJson(_))
        ));
    }

    #[test]
    fn size_limit_applies_to_the_canonical_form() {
        let event = Event::from_value(valid(), LIMIT).expect("valid");
        let exact = event.canonical_json().len();
        assert!(Event::from_value(valid(), exact).is_ok());
        assert_eq!(
            Event::from_value(valid(), exact - 1),
            Err(EventError::TooLarge {
                size: exact,
                limit: exact - 1
            })
        );
    }
}
