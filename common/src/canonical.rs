//! An event's compact canonical JSON (DESIGN §2: object keys sorted, no insignificant
//! whitespace, numbers as the producer wrote them but for the exponent's form) made from its text, without a
//! `serde_json::Value` tree: building and dropping that tree (a `String` per key and string, a
//! B-tree per object) was most of ingest's CPU per event.
//!
//! Members are read as borrowed slices of the text and written back in key order; only a string
//! holding an escape is decoded and written again, as serde_json writes strings. The bytes are
//! the ones parsing to a `Value` and writing it gives (property test below). Anything this
//! does not take (a key holding an escape, nesting deeper than serde_json's limit) answers
//! `None`, and callers go through a `Value`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// An object's members in key order; of duplicate keys the last wins, as in a
/// `serde_json::Map`. A sorted list rather than a `BTreeMap`: an event's objects hold a dozen
/// members or fewer, and the map's node inserts were a twentieth of ingest's CPU.
pub struct Members<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'a> Members<'a> {
    /// The value of member `key`.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0
            .binary_search_by(|(member, _)| (*member).cmp(key))
            .ok()
            .map(|at| self.0[at].1)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;

        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members: Vec<(&str, &RawValue)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                // A stable sort keeps duplicates in the order written; the last is kept.
                members.sort_by_key(|(key, _)| *key);
                members.dedup_by(|later, kept| {
                    let same = later.0 == kept.0;
                    if same {
                        *kept = *later;
                    }
                    same
                });
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(Object)
    }
}

/// The deepest nesting taken, serde_json's own limit for a `Value`.
const MAX_DEPTH: usize = 128;

/// The members of the JSON object `json`, or `None` when it is not one (or a key holds an
/// escape, which cannot be borrowed).
pub fn members(json: &[u8]) -> Option<Members<'_>> {
    // UTF-8 checked once here: parsing a `str` does not check each borrowed key and value again,
    // nor the nested objects' text when `write_value` reads their members.
    members_of(std::str::from_utf8(json).ok()?)
}

fn members_of(json: &str) -> Option<Members<'_>> {
    serde_json::from_str(json).ok()
}

/// The canonical form of the object with `members`.
pub fn object(members: &Members<'_>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(members.0.iter().map(|(_, v)| v.get().len() + 8).sum());
    write_object(members, &mut out, 1)?;
    Some(out)
}

/// The text of a JSON string value, decoded; `None` when `raw` is not a string.
pub fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// The JSON type name of `raw`, as an error message says it (see `event::json_kind`).
pub fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn write_object(members: &Members<'_>, out: &mut Vec<u8>, depth: usize) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    out.push(b'{');
    for (n, (key, value)) in members.0.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        // Borrowed keys hold no escape, so their text is what serde_json writes.
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        write_value(value, out, depth)?;
    }
    out.push(b'}');
    Some(())
}

fn write_value(raw: &RawValue, out: &mut Vec<u8>, depth: usize) -> Option<()> {
    let text = raw.get();
    match text.as_bytes().first()? {
        b'{' => write_object(&members_of(text)?, out, depth + 1),
        b'[' => {
            if depth + 1 > MAX_DEPTH {
                return None;
            }
            let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_value(item, out, depth + 1)?;
            }
            out.push(b']');
            Some(())
        }
        // Without an escape, a JSON string's text is what serde_json writes for it: it escapes
        // only quotes, backslashes and control characters, which such a text cannot hold.
        b'"' if !text.contains('\\') => {
            out.extend_from_slice(text.as_bytes());
            Some(())
        }
        b'"' => serde_json::to_writer(&mut *out, &string(raw)?).ok(),
        b'-' | b'0'..=b'9' => {
            write_number(text, out);
            Some(())
        }
        // true, false and null.
        _ => {
            out.extend_from_slice(text.as_bytes());
            Some(())
        }
    }
}

/// A number as serde_json's `arbitrary_precision` keeps it: digits as written, an exponent as
/// `e` with its sign (`1E5` is `1e+5`).
fn write_number(text: &str, out: &mut Vec<u8>) {
    let Some(at) = text.find(['e', 'E']) else {
        out.extend_from_slice(text.as_bytes());
        return;
    };
    let (mantissa, exponent) = (&text[..at], &text[at + 1..]);
    out.extend_from_slice(mantissa.as_bytes());
    out.push(b'e');
    if !exponent.starts_with(['+', '-']) {
        out.push(b'+');
    }
    out.extend_from_slice(exponent.as_bytes());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What writing a `Value` gives: the definition of canonical this module must match.
    fn through_a_tree(json: &str) -> Vec<u8> {
        let value: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
        serde_json::to_vec(&value).expect("serialize")
    }

    fn directly(json: &str) -> Option<Vec<u8>> {
        object(&members(json.as_bytes())?)
    }

    /// Whitespace JSON allows between tokens.
    fn space() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", " ", "\n", "\t ", "\r\n  "])
    }

    /// String literals, some with escapes serde_json writes differently.
    fn string_literal() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>().prop_map(|s| serde_json::to_string(&s).expect("a string")),
            prop::sample::select(vec![
                r#""plain""#,
                r#""""#,
                r#""\u0041\u00e9\/""#,
                r#""tab\there""#,
                r#""\ud83d\ude00 smile""#,
                r#""quote \" and \\""#,
                r#""\u001f""#,
                "\"caf\u{e9} \u{2028}\"",
            ])
            .prop_map(str::to_owned),
        ]
    }

    /// Number literals in the forms JSON allows.
    fn number_literal() -> impl Strategy<Value = String> {
        "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,6})?([eE][+-]?[0-9]{1,3})?"
    }

    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            number_literal(),
            string_literal(),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..6), space()).prop_map(
                    |(items, space)| format!(
                        "[{space}{}{space}]",
                        items.join(&format!(",{space}"))
                    )
                ),
                (prop::collection::vec((key_literal(), inner), 0..6), space())
                    .prop_map(|(members, space)| object_text(&members, space)),
            ]
        })
    }

    /// Keys from a small set, so objects often repeat one.
    fn key_literal() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "id", "Zeta", "é", "a b", "tenant_id", ""])
            .prop_map(|k| serde_json::to_string(k).expect("a key"))
    }

    fn object_text(members: &[(String, String)], space: &str) -> String {
        let members: Vec<String> = members
            .iter()
            .map(|(key, value)| format!("{space}{key}{space}:{space}{value}{space}"))
            .collect();
        format!("{{{}}}", members.join(","))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn gives_the_bytes_writing_a_value_gives(
            members in prop::collection::vec((key_literal(), json_text()), 0..8),
            space in space(),
        ) {
            let json = object_text(&members, space);
            let direct = directly(&json);
            prop_assert!(direct.is_some(), "taken: {json}");
            prop_assert_eq!(
                String::from_utf8(direct.unwrap()).unwrap(),
                String::from_utf8(through_a_tree(&json)).unwrap()
            );
        }
    }

    #[test]
    fn the_last_of_duplicate_keys_wins_as_in_a_value() {
        let json = r#"{"b":1,"a":{"x":1,"x":2},"b":3}"#;
        assert_eq!(directly(json).unwrap(), br#"{"a":{"x":2},"b":3}"#);
        assert_eq!(directly(json).unwrap(), through_a_tree(json));
    }

    #[test]
    fn what_it_does_not_take_is_left_to_a_value() {
        assert_eq!(directly("[1]"), None);
        assert_eq!(directly(r#"{"a":"#), None);
        assert_eq!(directly(r#"{"\u0061":1}"#), None, "an escaped key");
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(directly(&deep), None);
    }

    #[test]
    fn strings_are_read_decoded_and_kinds_named() {
        let members =
            members(br#"{"s":"a\"b","n":1.5,"o":{},"l":[],"t":true,"z":null}"#).expect("an object");
        let member = |key| members.get(key).expect("a member");
        assert_eq!(string(member("s")).as_deref(), Some("a\"b"));
        let kinds: Vec<&str> = ["n", "o", "l", "t", "z", "s"]
            .iter()
            .map(|key| kind(member(key)))
            .collect();
        assert_eq!(
            kinds,
            [
                "a number",
                "an object",
                "an array",
                "a boolean",
                "null",
                "a string"
            ]
        );
        assert_eq!(string(member("n")), None);
    }
}
