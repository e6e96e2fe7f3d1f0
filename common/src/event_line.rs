//! Reading a few top-level string fields of an event straight from its JSON line.
//!
//! The batcher needs each record's `tenant_id` and `id`, and the uploader every line's
//! `tenant_id`, and nothing else of the event. Deserializing even into a two-field struct makes
//! serde_json parse and check every value of the line, about 1.5 ns a byte here (740 ns for an
//! event of 490 bytes, measured), which was a fifth of the batcher's CPU per event and half the
//! uploader's.
//!
//! This scan reads the line from its end, looking only at the bytes that give an object its
//! shape (quotes and braces; inside strings, eight bytes at a time), and stops once it has the
//! fields. Canonical JSON sorts keys, and `tenant_id` sorts after every field but `type` and
//! those a producer added past it, so the uploader's scan reads some 40 bytes of a line and the
//! batcher's (back to `id`) about half.
//!
//! It is a fast path, not a validator: on a JSON object it returns what serde_json reads (a
//! property test holds it to that), and whenever it cannot give a clean answer (a field
//! missing, not a string, a key written with escapes, a line that does not end its object) it
//! returns `None` and the caller reads the line with serde_json, which then names the problem.
//! What it reads is the line's tail, back to the fields: the events topic holds only what ingest
//! validated and wrote in canonical form, so the rest was checked once, where the event came in.
//! Of a key given twice it takes the last, as ingest's reading of the event did.

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
    let mut missing = N;
    // Going backwards: `end` is one past the next byte to look at.
    let mut end = skip_whitespace_back(line, line.len());
    if end == 0 || line[end - 1] != b'}' {
        return None;
    }
    let mut depth = 0_usize;
    while missing > 0 {
        let at = end.checked_sub(1)?;
        end = at;
        match line[at] {
            b'}' => depth += 1,
            // Back at the object's start with a field still missing, or past it.
            b'{' if depth <= 1 => return None,
            b'{' => depth -= 1,
            b'"' => {
                let open = opening_quote(line, at)?;
                end = open;
                let colon = skip_whitespace(line, at + 1);
                if depth != 1 || line.get(colon) != Some(&b':') {
                    continue; // a nested string, or a value
                }
                let name = &line[open + 1..at];
                // A key written with escapes could be any of `keys`; serde_json decides.
                if name.contains(&b'\\') {
                    return None;
                }
                let Some(slot) = keys.iter().position(|key| key.as_bytes() == name) else {
                    continue;
                };
                if found[slot].is_some() {
                    continue; // an earlier copy of a key given twice
                }
                let value_at = skip_whitespace(line, colon + 1);
                if line.get(value_at) != Some(&b'"') {
                    return None;
                }
                found[slot] = Some(string_at(line, value_at)?);
                missing -= 1;
            }
            _ => {}
        }
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

/// The opening quote of the string whose closing quote is at `close`: the nearest quote before
/// it not escaped, that is, not preceded by an odd run of backslashes.
fn opening_quote(line: &[u8], close: usize) -> Option<usize> {
    let mut before = close;
    loop {
        let quote = last_quote(line, before)?;
        let backslashes = line[..quote]
            .iter()
            .rev()
            .take_while(|b| **b == b'\\')
            .count();
        if backslashes % 2 == 0 {
            return Some(quote);
        }
        before = quote;
    }
}

const LOW_SEVEN_BITS: u64 = u64::from_le_bytes([0x7f; 8]);
const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);

/// The high bit of each zero byte of `word`, and no other bit.
fn zero_bytes(word: u64) -> u64 {
    // Adding 0x7f to a byte's low seven bits carries into its high bit unless they are all 0.
    !(((word & LOW_SEVEN_BITS).wrapping_add(LOW_SEVEN_BITS)) | word | LOW_SEVEN_BITS)
}

/// The first `"` or `\` at or after `at`, looked for eight bytes at a time. Strings in an event
/// are mostly a few dozen bytes long, too short for `memchr`'s vector search to pay for its
/// setup (measured: the scan took longer with it than serde_json did).
fn quote_or_backslash(line: &[u8], mut at: usize) -> Option<usize> {
    while let Some(chunk) = line.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let hits = zero_bytes(word ^ QUOTES) | zero_bytes(word ^ BACKSLASHES);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = line.get(at..)?;
    tail.iter()
        .position(|b| matches!(b, b'"' | b'\\'))
        .map(|i| at + i)
}

/// The last `"` before `end`, looked for eight bytes at a time.
fn last_quote(line: &[u8], mut end: usize) -> Option<usize> {
    while end >= 8 {
        let word = u64::from_le_bytes(line[end - 8..end].try_into().ok()?);
        let hits = zero_bytes(word ^ QUOTES);
        if hits != 0 {
            return Some(end - 1 - (hits.leading_zeros() / 8) as usize);
        }
        end -= 8;
    }
    line[..end].iter().rposition(|b| *b == b'"')
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_whitespace(line: &[u8], mut at: usize) -> usize {
    while line.get(at).copied().is_some_and(is_whitespace) {
        at += 1;
    }
    at
}

fn skip_whitespace_back(line: &[u8], mut end: usize) -> usize {
    while end > 0 && is_whitespace(line[end - 1]) {
        end -= 1;
    }
    end
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
    fn takes_the_last_of_a_key_given_twice() {
        let line = r#"{"id":"e","tenant_id":"globex","id":"f","tenant_id":"acme"}"#;
        assert_eq!(id_and_tenant(line), Some(("f".into(), "acme".into())));
        let value: serde_json::Value = serde_json::from_str(line).expect("json");
        assert_eq!(value["tenant_id"], "acme", "as ingest's reading takes it");
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
        /// The eight-bytes-at-a-time searches find what byte-by-byte ones find.
        #[test]
        fn finds_the_last_quote(
            bytes in prop::collection::vec(prop::sample::select(vec![b'"', b'\\', b'a', 0, 0x80, 0xa2, 0xdc, 0xff]), 0..40),
            end in 0_usize..41,
        ) {
            let end = end.min(bytes.len());
            prop_assert_eq!(last_quote(&bytes, end), bytes[..end].iter().rposition(|b| *b == b'"'));
        }

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
