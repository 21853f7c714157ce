//! What event content becomes in the rows when Postgres cannot hold it as sent.
//!
//! The job keeps the delivery byte for byte; only the values written into `hotels`, `users`
//! and `memberships` are adjusted, and always the same way (webhook or resync alike):
//!
//! - **NUL** (`\u0000`): Postgres `text` and `jsonb` cannot hold it, so it is removed from every
//!   text field and from every string and key of `public_metadata`.
//! - **Lone surrogates** (`\ud800` without its pair): not Unicode, so each becomes U+FFFD (the
//!   replacement character) in text fields.
//! - `public_metadata` that `serde_json` cannot represent as a value (a lone surrogate, a number
//!   beyond ±1.8e308, nesting deeper than 128) is not guessed at: the event fails to decode and
//!   its job is dead at once, with the reason in `last_error` (the payload stays replayable).
//! - Clerk ids that are not well-formed (see `clerk::ids`) make the event fail to decode the same
//!   way. Fields orgsync does not store (e.g. `unsafe_metadata`) are skipped without decoding,
//!   however odd or deep.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// A string as rows can hold it: NUL removed, lone surrogates replaced by U+FFFD.
struct RowText(String);

impl<'de> Deserialize<'de> for RowText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = RowText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RowText, E> {
                Ok(RowText(without_nul(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RowText, E> {
                Ok(RowText(without_nul(v)))
            }
            // serde_json hands over a string's bytes without checking them: lone surrogates
            // arrive as their WTF-8 encoding.
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<RowText, E> {
                Ok(RowText(without_nul(from_wtf8(v))))
            }
        }
        // `deserialize_bytes` (not `_str`): serde_json then accepts lone surrogates.
        d.deserialize_bytes(TextVisitor)
    }
}

/// Decodes the (possibly WTF-8) bytes of a JSON string: valid UTF-8 as is, each encoded
/// surrogate as U+FFFD, any other invalid byte as U+FFFD.
fn from_wtf8(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        let chunk = rest.utf8_chunks().next().expect("rest is not empty");
        out.push_str(chunk.valid());
        let mut used = chunk.valid().len();
        if let [0xED, 0xA0..=0xBF, 0x80..=0xBF, ..] = rest[used..] {
            // A surrogate in WTF-8 (ED A0..BF 80..BF): one character in the JSON, one U+FFFD.
            out.push(char::REPLACEMENT_CHARACTER);
            used += 3;
        } else if !chunk.invalid().is_empty() {
            out.push(char::REPLACEMENT_CHARACTER);
            used += chunk.invalid().len();
        }
        rest = &rest[used..];
    }
    out
}

fn without_nul(mut s: String) -> String {
    if s.contains('\0') {
        s.retain(|c| c != '\0');
    }
    s
}

/// `deserialize_with` for a required text field (see the module documentation).
pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    RowText::deserialize(d).map(|t| t.0)
}

/// `deserialize_with` for an optional text field; `null` is None.
pub fn optional_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<RowText>::deserialize(d)?.map(|t| t.0))
}

/// `deserialize_with` for a list of text values (`null` or absent is empty), each cleaned like
/// [`text`].
pub fn text_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<RowText>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.0)
        .collect())
}

/// `deserialize_with` for `public_metadata`: an object (`null` or absent is `{}`), with NUL
/// removed from every string and key.
pub fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    let mut value = Option::<Value>::deserialize(d)?.unwrap_or_else(|| Value::Object(Default::default()));
    strip_nul(&mut value);
    Ok(value)
}

fn strip_nul(value: &mut Value) {
    match value {
        Value::String(s) if s.contains('\0') => s.retain(|c| c != '\0'),
        Value::Array(items) => items.iter_mut().for_each(strip_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (without_nul(k), v))
                    .collect();
            }
            map.values_mut().for_each(strip_nul);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize)]
    struct Row {
        #[serde(deserialize_with = "text")]
        name: String,
        #[serde(default, deserialize_with = "optional_text")]
        slug: Option<String>,
        #[serde(default, deserialize_with = "metadata")]
        meta: Value,
    }

    #[test]
    fn nul_is_removed_and_lone_surrogates_are_replaced() {
        let row: Row = serde_json::from_str(r#"{"name":"a\u0000b\ud800c\udfffd","slug":"\u0000"}"#).unwrap();
        assert_eq!(row.name, "ab\u{FFFD}c\u{FFFD}d");
        assert_eq!(row.slug.as_deref(), Some(""));
        let paired: Row = serde_json::from_str(r#"{"name":"\ud83d\ude00"}"#).unwrap();
        assert_eq!(paired.name, "😀");
    }

    #[test]
    fn metadata_loses_nul_in_strings_and_keys() {
        let row: Row = serde_json::from_str(r#"{"name":"x","meta":{"a\u0000":["b\u0000",{"\u0000":1}]}}"#).unwrap();
        assert_eq!(row.meta, json!({"a": ["b", {"": 1}]}));
        let null: Row = serde_json::from_str(r#"{"name":"x","meta":null}"#).unwrap();
        assert_eq!(null.meta, json!({}));
    }

    #[test]
    fn metadata_serde_cannot_represent_is_a_decode_error() {
        for bad in [
            r#"{"name":"x","meta":{"a":"\ud800"}}"#,
            r#"{"name":"x","meta":{"a":1e999999}}"#,
        ] {
            assert!(serde_json::from_str::<Row>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_decoded_from_a_json_value_get_the_same_treatment() {
        let row: Row = serde_json::from_value(json!({"name": "a\u{0}b", "slug": null})).unwrap();
        assert_eq!(row.name, "ab");
        assert_eq!(row.slug, None);
    }
}
