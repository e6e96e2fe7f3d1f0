//! Reading a few top-level string fields of an event straight from its JSON line.
//!
//! The batcher needs each record's `tenant_id` and `id`, and the uploader every line's
//! `tenant_id`, and nothing else of the event. Deserializing even into a two-field struct makes
//! serde_json parse and check every value of the line, about 2.5 ns a byte here (1.2 µs for an
//! event of 490 bytes, measured), which was a fifth of the batcher's CPU per event and half the
//! uploader's. This scan only looks at the bytes that give a JSON object its shape (quotes,
//! backslashes in strings, braces), and inside strings looks eight bytes at a time.
//!
//! It is a fast path, not a validator: on a well-formed JSON object it returns what serde_json
//! would read (a property test holds it to that), and whenever it cannot give a clean answer
//! (a field missing, twice, not a string, a key written with escapes, an unbalanced line) it
//! returns `None` and the caller reads the line with serde_json, which then names the problem.
//! What it accepts is one object with balanced braces and closed strings; the events topic holds
//! only what ingest validated and wrote in canonical form, so the grammar inside values was
//! checked once, where the event came in.

use std::borrow::Cow;

/// The contents of a top-level string field, between its quotes, still escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawString<'a> {
    quoted: &'a [u8],
    escaped: bool,
}

impl<'a> RawString<'a> {
    /// The string's value, unescaped; `None` when it is not valid JSON text.
    pub fn value(&self) -> Option<Cow<'a, str>> {
        if self.escaped {
            serde_json::from_slice::<String>(self.quoted)
                .ok()
                .map(Cow::Owned)
        } else {
            let contents = &self.quoted[1..self.quoted.len() - 1];
            std::str::from_utf8(contents).ok().map(Cow::Borrowed)
        }
    }
}

/// The top-level string fields `keys` of the JSON object `line`, in the order of `keys`, or
/// `None` when the scan cannot answer for sure (see the module's documentation).
pub fn top_level_strings<'a, const N: usize>(
    line: &'a [u8],
    keys: [&str; N],
) -> Option<[RawString<'a>; N]> {
    let mut found: [Option<RawString<'a>>; N] = [None; N];
    let mut at = skip_whitespace(line, 0);
    if line.get(at) != Some(&b'{') {
        return None;
    }
    let mut depth = 0_usize;
    loop {
        match *line.get(at)? {
            b'{' => {
                depth += 1;
                at += 1;
            }
            b'}' => {
                depth -= 1;
                at += 1;
                if depth == 0 {
                    break;
                }
            }
            b'"' => {
                let string = string_at(line, at)?;
                at += string.quoted.len();
                let colon = skip_whitespace(line, at);
                if depth != 1 || line.get(colon) != Some(&b':') {
                    continue;
                }
                // A key: one written with escapes could be any of `keys`; serde_json decides.
                if string.escaped {
                    return None;
                }
                let name = &string.quoted[1..string.quoted.len() - 1];
                let Some(slot) = keys.iter().position(|key| key.as_bytes() == name) else {
                    continue;
                };
                let value_at = skip_whitespace(line, colon + 1);
                if line.get(value_at) != Some(&b'"') || found[slot].is_some() {
                    return None;
                }
                let value = string_at(line, value_at)?;
                at = value_at + value.quoted.len();
                found[slot] = Some(value);
            }
            _ => at += 1,
        }
    }
    if skip_whitespace(line, at) != line.len() {
        return None;
    }
    let mut values = [RawString {
        quoted: b"\"\"",
        escaped: false,
    }; N];
    for (value, found) in values.iter_mut().zip(found) {
        *value = found?;
    }
    Some(values)
}

/// The string whose opening quote is at `open`, through its closing quote; `None` when it is
/// not closed.
fn string_at(line: &[u8], open: usize) -> Option<RawString<'_>> {
    let mut escaped = false;
    let mut at = open + 1;
    loop {
        let next = quote_or_backslash(line, at)?;
        if line[next] == b'"' {
            return Some(RawString {
                quoted: &line[open..=next],
                escaped,
            });
        }
        escaped = true;
        at = next + 2;
    }
}

/// The first `"` or `\` at or after `at`, looked for eight bytes at a time. Strings in an event
/// are mostly a few dozen bytes long, too short for `memchr`'s vector search to pay for its
/// setup (measured: the scan took longer with it than serde_json did).
fn quote_or_backslash(line: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH_BITS: u64 = u64::from_le_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);
    while let Some(chunk) = line.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        // A byte of `word ^ pattern` is zero where `word` holds the pattern's byte; the classic
        // test `(x - 1) & !x & 0x80` flags the first zero byte exactly.
        let (quotes, backslashes) = (word ^ QUOTES, word ^ BACKSLASHES);
        let zeros =
            (quotes.wrapping_sub(ONES) & !quotes) | (backslashes.wrapping_sub(ONES) & !backslashes);
        let first = zeros & HIGH_BITS;
        if first != 0 {
            return Some(at + (first.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = line.get(at..)?;
    tail.iter()
        .position(|b| matches!(b, b'"' | b'\\'))
        .map(|i| at + i)
}

fn skip_whitespace(line: &[u8], mut at: usize) -> usize {
    while line
        .get(at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::*;

    fn id_and_tenant(line: &str) -> Option<(String, String)> {
        let [id, tenant] = top_level_strings(line.as_bytes(), ["id", "tenant_id"])?;
        Some((id.value()?.into_owned(), tenant.value()?.into_owned()))
    }

    /// What serde_json reads for the same two fields.
    fn by_serde(line: &str) -> Option<(String, String)> {
        #[derive(serde::Deserialize)]
        struct Fields {
            id: String,
            tenant_id: String,
        }
        let fields: Fields = serde_json::from_str(line).ok()?;
        Some((fields.id, fields.tenant_id))
    }

    #[test]
    fn reads_the_top_level_fields_of_a_canonical_event() {
        let line = r#"{"actor":{"id":"usr_1","tenant_id":"other"},"details":{"note":"a \"quoted\" {brace}"},"id":"e1","tenant_id":"acme","type":"device.lock","z":[{"tenant_id":"x"}]}"#;
        assert_eq!(id_and_tenant(line), Some(("e1".into(), "acme".into())));
    }

    #[test]
    fn unescapes_a_value_written_with_escapes() {
        let line = r#"{"id":"line\nbreak \u00e9 \"q\" \\","tenant_id":"acme"}"#;
        assert_eq!(id_and_tenant(line), by_serde(line));
        assert_eq!(
            id_and_tenant(line).expect("read").0,
            "line\nbreak é \"q\" \\"
        );
    }

    #[test]
    fn leaves_every_doubtful_line_to_serde() {
        for line in [
            r#"{"tenant_id":"acme"}"#,
            r#"{"id":"e","tenant_id":"acme","id":"f"}"#,
            r#"{"id":5,"tenant_id":"acme"}"#,
            r#"{"\u0069d":"e","tenant_id":"acme"}"#,
            r#"{"id":"e","tenant_id":"acme""#,
            r#"{"id":"e","tenant_id":"acme"}}"#,
            r#"{"id":"e","tenant_id":"acme"} x"#,
            r#"{"id":"e","tenant_id":"acme","n":{"#,
            r#"{"id":"e","tenant_id":"ac"#,
            r#"["id","tenant_id"]"#,
            "",
        ] {
            assert_eq!(id_and_tenant(line), None, "{line}");
        }
    }

    #[test]
    fn takes_whitespace_between_tokens() {
        let line = " {\n \"id\" : \"e\" ,\t\"tenant_id\"\r\n:\"acme\" } ";
        assert_eq!(id_and_tenant(line), Some(("e".into(), "acme".into())));
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
            prop::sample::select(vec!["id", "tenant_id", "{", "}", "\"", "\\"])
                .prop_map(|s| Value::String(s.to_owned())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((any_key(), inner), 0..5)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    fn any_key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec!["id", "tenant_id", "actor", "t\"x", "{"])
                .prop_map(str::to_owned),
            ".{0,6}",
        ]
    }

    proptest! {
        /// The eight-bytes-at-a-time search finds what a byte-by-byte one finds.
        #[test]
        fn finds_the_first_quote_or_backslash(
            bytes in prop::collection::vec(prop::sample::select(vec![b'"', b'\\', b'a', 0, 0x80, 0xa2, 0xdc, 0xff]), 0..40),
            from in 0_usize..41,
        ) {
            let expected = bytes
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, b)| matches!(b, b'"' | b'\\'))
                .map(|(i, _)| i);
            prop_assert_eq!(quote_or_backslash(&bytes, from), expected);
        }

        /// On any object, the scan reads what serde_json reads, or leaves the line to it.
        #[test]
        fn agrees_with_serde_json(
            mut fields in prop::collection::vec((any_key(), any_json()), 0..6),
            id in prop::option::of(".{0,10}"),
            tenant in prop::option::of(prop_oneof![".{0,10}".prop_map(Value::String), any_json()]),
            pretty in any::<bool>(),
        ) {
            if let Some(id) = id {
                fields.push(("id".into(), json!(id)));
            }
            if let Some(tenant) = tenant {
                fields.push(("tenant_id".into(), tenant));
            }
            let object = Value::Object(fields.into_iter().collect::<Map<_, _>>());
            let line = if pretty {
                serde_json::to_string_pretty(&object)
            } else {
                serde_json::to_string(&object)
            }.expect("serialize");
            let scanned = id_and_tenant(&line);
            let expected = by_serde(&line);
            prop_assert!(scanned.is_none() || scanned == expected, "{line}: {scanned:?} vs {expected:?}");
            // A compact object with both fields as strings, and no key that needs escapes, is
            // always read by the scan.
            let plain_keys = object.as_object().is_some_and(|fields| {
                fields.keys().all(|key| serde_json::to_string(key).ok() == Some(format!("\"{key}\"")))
            });
            if !pretty && plain_keys && expected.is_some() {
                prop_assert_eq!(scanned, expected, "{}", line);
            }
        }
    }
}
