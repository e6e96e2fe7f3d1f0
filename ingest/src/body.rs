//! Turning a request body into validated events, all or nothing. Pure: no I/O, so the fuzz target
//! and unit tests drive exactly what the server runs.

use std::io::Read;

use common::event::{Event, EventError};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::error::{ApiError, EventProblem, Position};

/// The request limits (DESIGN §2 defaults: 256 KiB per event, 5 MiB and 10,000 events per request).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_body_bytes: usize,
    pub max_events: usize,
}

/// How the events are laid out in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// One JSON array of objects.
    JsonArray,
}

impl Format {
    /// Picks the format from a `Content-Type` value; parameters such as `charset` are ignored.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, ApiError> {
        let raw = content_type.unwrap_or("");
        let essence = raw
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Self::Ndjson),
            "application/json" => Ok(Self::JsonArray),
            _ => Err(ApiError::UnsupportedMediaType {
                found: raw.to_owned(),
            }),
        }
    }
}

/// Undoes a `Content-Encoding`, refusing output larger than `limit` (a small gzip body can
/// expand without bound).
pub fn decode_content(
    body: bytes::Bytes,
    encoding: Option<&str>,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("" | "identity") => Ok(body),
        Some("gzip" | "x-gzip") => {
            let mut decoded = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            let reader = flate2::read::MultiGzDecoder::new(body.as_ref());
            reader
                .take(limit as u64 + 1)
                .read_to_end(&mut decoded)
                .map_err(|e| {
                    ApiError::InvalidBody(format!("the gzip body cannot be decoded: {e}"))
                })?;
            if decoded.len() > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
            Ok(decoded.into())
        }
        Some(other) => Err(ApiError::UnsupportedEncoding {
            found: other.to_owned(),
        }),
    }
}

/// Parses and validates every event of a body; any problem rejects the whole body.
pub fn parse_events(body: &[u8], format: Format, limits: &Limits) -> Result<Vec<Event>, ApiError> {
    if body.len() > limits.max_body_bytes {
        return Err(ApiError::BodyTooLarge {
            limit: limits.max_body_bytes,
        });
    }
    // Counted before anything is kept per event: a body of millions of tiny events is refused
    // without allocating an entry for each.
    let count = match format {
        Format::Ndjson => ndjson_lines(body).count(),
        Format::JsonArray => serde_json::from_slice::<Vec<IgnoredAny>>(body)
            .map_err(not_an_array)?
            .len(),
    };
    if count > limits.max_events {
        return Err(ApiError::TooManyEvents {
            count,
            limit: limits.max_events,
        });
    }
    let items: Vec<(Position, &[u8])> = match format {
        Format::Ndjson => ndjson_lines(body).collect(),
        Format::JsonArray => serde_json::from_slice::<Vec<&RawValue>>(body)
            .map_err(not_an_array)?
            .into_iter()
            .enumerate()
            .map(|(index, raw)| (Position::Index(index), raw.get().as_bytes()))
            .collect(),
    };
    if items.is_empty() {
        return Err(ApiError::InvalidBody("the body holds no events".into()));
    }

    let total = items.len();
    let mut events = Vec::with_capacity(total);
    let mut problems = Vec::new();
    for (position, json) in items {
        match Event::from_json(json, limits.max_event_bytes) {
            Ok(event) => events.push(event),
            Err(error) => problems.extend(describe(position, error)),
        }
    }
    if problems.is_empty() {
        Ok(events)
    } else {
        Err(ApiError::InvalidEvents { problems, total })
    }
}

fn not_an_array(error: serde_json::Error) -> ApiError {
    ApiError::InvalidBody(format!(
        "the body must be a JSON array of event objects: {error}"
    ))
}

/// Non-blank lines with their 1-based line numbers; CRLF line ends and a leading byte-order mark
/// are tolerated.
fn ndjson_lines(body: &[u8]) -> impl Iterator<Item = (Position, &[u8])> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    // memchr finds the line ends many bytes at a time; a byte-by-byte split was a tenth of
    // ingest's CPU per event.
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    let mut start = 0;
    ends.enumerate()
        .map(move |(index, end)| {
            let line = &body[start..end];
            start = end + 1;
            (
                Position::Line(index + 1),
                line.strip_suffix(b"\r").unwrap_or(line),
            )
        })
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
}

fn describe(position: Position, error: EventError) -> Vec<EventProblem> {
    let whole = |message: String, too_large: bool| EventProblem {
        position,
        field: None,
        message,
        too_large,
    };
    match error {
        EventError::InvalidFields(fields) => fields
            .into_iter()
            .map(|f| EventProblem {
                position,
                field: Some(f.field),
                message: format!("`{}` {}", f.field, f.problem),
                too_large: false,
            })
            .collect(),
        EventError::TooLarge { .. } => vec![whole(format!("the event {error}"), true)],
        EventError::InvalidJson(_) | EventError::NotAnObject(_) => {
            vec![whole(format!("the event is {error}"), false)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_event_bytes: 1024,
        max_body_bytes: 64 * 1024,
        max_events: 5,
    };

    fn event(id: &str) -> String {
        format!(
            r#"{{"id":"{id}","tenant_id":"acme","type":"user.invite","occurred_at":"2026-11-27T10:00:00Z"}}"#
        )
    }

    fn problems(result: Result<Vec<Event>, ApiError>) -> Vec<EventProblem> {
        match result {
            Err(ApiError::InvalidEvents { problems, .. }) => problems,
            other => panic!("expected invalid events, got {other:?}"),
        }
    }

    #[test]
    fn ndjson_tolerates_crlf_blank_lines_and_a_bom() {
        let body = format!("\u{feff}{}\r\n\r\n   \n{}\r\n", event("a"), event("b"));
        let events = parse_events(body.as_bytes(), Format::Ndjson, &LIMITS).expect("valid");
        let ids: Vec<_> = events.iter().map(Event::id).collect();
        assert_eq!(ids, ["a", "b"]);
        let unterminated = format!("{}\n\n{}", event("a"), event("b"));
        let lines: Vec<_> = ndjson_lines(unterminated.as_bytes())
            .map(|(p, _)| p)
            .collect();
        assert_eq!(lines, [Position::Line(1), Position::Line(3)]);
    }

    #[test]
    fn problems_name_the_physical_line_and_the_field() {
        let body = format!("{}\n\n{{\"id\":\"x\"}}\nnot json\n[1]\n", event("a"));
        let found = problems(parse_events(body.as_bytes(), Format::Ndjson, &LIMITS));
        let line3: Vec<_> = found
            .iter()
            .filter(|p| p.position == Position::Line(3))
            .map(|p| p.field)
            .collect();
        assert_eq!(
            line3,
            [Some("tenant_id"), Some("type"), Some("occurred_at")]
        );
        let line4 = found
            .iter()
            .find(|p| p.position == Position::Line(4))
            .expect("line 4");
        assert!(
            line4.message.contains("not valid JSON") && line4.message.contains("column"),
            "{}",
            line4.message
        );
        let line5 = found
            .iter()
            .find(|p| p.position == Position::Line(5))
            .expect("line 5");
        assert!(
            line5
                .message
                .contains("must be a JSON object, not an array")
        );
    }

    #[test]
    fn json_arrays_report_zero_based_indexes() {
        let body = format!("[{}, {{\"id\": 7}}]", event("a"));
        let found = problems(parse_events(body.as_bytes(), Format::JsonArray, &LIMITS));
        assert!(found.iter().all(|p| p.position == Position::Index(1)));
        assert!(
            found
                .iter()
                .any(|p| p.message == "`id` must be a string, not a number")
        );
    }

    #[test]
    fn a_json_body_that_is_not_an_array_is_refused() {
        let result = parse_events(event("a").as_bytes(), Format::JsonArray, &LIMITS);
        assert!(matches!(result, Err(ApiError::InvalidBody(m)) if m.contains("JSON array")));
    }

    #[test]
    fn limits_give_payload_too_large() {
        let body = (0..6)
            .map(|i| event(&i.to_string()))
            .collect::<Vec<_>>()
            .join("\n");
        let result = parse_events(body.as_bytes(), Format::Ndjson, &LIMITS);
        assert!(matches!(
            result,
            Err(ApiError::TooManyEvents { count: 6, limit: 5 })
        ));

        let big = format!(
            r#"{{"id":"a","tenant_id":"acme","type":"t","occurred_at":"2026-11-27T10:00:00Z","pad":"{}"}}"#,
            "x".repeat(2000)
        );
        let error = parse_events(big.as_bytes(), Format::Ndjson, &LIMITS).unwrap_err();
        assert_eq!(error.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert!(problems(Err(error))[0].too_large);
    }

    #[test]
    fn an_empty_body_is_refused() {
        assert!(matches!(
            parse_events(b"\n \r\n", Format::Ndjson, &LIMITS),
            Err(ApiError::InvalidBody(_))
        ));
    }

    #[test]
    fn content_types_are_matched_by_essence() {
        assert_eq!(
            Format::from_content_type(Some("application/x-ndjson; charset=utf-8")).ok(),
            Some(Format::Ndjson)
        );
        assert_eq!(
            Format::from_content_type(Some("Application/JSON")).ok(),
            Some(Format::JsonArray)
        );
        assert!(matches!(
            Format::from_content_type(Some("text/plain")),
            Err(ApiError::UnsupportedMediaType { .. })
        ));
        assert!(Format::from_content_type(None).is_err());
    }

    #[test]
    fn gzip_bodies_are_decoded_within_the_limit() {
        use std::io::Write;
        let plain = event("a").repeat(100);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(plain.as_bytes()).expect("compress");
        let gz = bytes::Bytes::from(encoder.finish().expect("compress"));
        let decoded = decode_content(gz.clone(), Some("gzip"), plain.len()).expect("fits");
        assert_eq!(decoded.as_ref(), plain.as_bytes());
        assert!(matches!(
            decode_content(gz, Some("gzip"), plain.len() - 1),
            Err(ApiError::BodyTooLarge { .. })
        ));
        assert!(matches!(
            decode_content(bytes::Bytes::from_static(b"nope"), Some("gzip"), 100),
            Err(ApiError::InvalidBody(_))
        ));
        assert!(matches!(
            decode_content(bytes::Bytes::new(), Some("br"), 100),
            Err(ApiError::UnsupportedEncoding { .. })
        ));
    }
}
