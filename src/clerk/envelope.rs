//! The envelope of a Clerk webhook body: the receiver's only gate on content.
//!
//! A body passes when it is JSON (RFC 8259, as `serde_json` reads it) nested at most
//! [`MAX_NESTING`] deep, and its top level is an object with a string `type`, `object: "event"`,
//! an object `data` and, if present, an integer `timestamp`, none of them repeated. Everything
//! else in the body is not looked at: strings holding `\u0000` or lone surrogates, numbers far
//! beyond any machine type, repeated keys inside `data` all pass, and the body is stored
//! byte for byte (the job table's `json` column holds any such text). What the rows make of
//! such content is decided when the event is applied (see `clerk::row_text`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::events::{normalize_event_time, Millis};

/// Deepest nesting of arrays and objects a body may have. Postgres parses `json` input
/// recursively and fails with "stack depth limit exceeded" somewhere between 5,000 and 20,000
/// levels (`max_stack_depth` 2 MB); Clerk's own payloads nest fewer than 10 levels, and a user's
/// metadata is limited to 8 KB. Deeper bodies are refused (400) before they reach the database.
pub const MAX_NESTING: usize = 1000;

/// Longest `entity_key` taken from a payload (Clerk ids are far shorter).
const MAX_ENTITY_KEY: usize = 128;

/// The outer shape of every Clerk webhook body: `{ "type", "object": "event", "data", ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `type`: 1-100 characters, none of them a control character.
    pub event_type: String,
    /// Event time in milliseconds, when the envelope carries a `timestamp`.
    pub timestamp: Option<Millis>,
    /// The hotel (`data.organization.id` for membership events, `data.organization_id` for
    /// invitations) or else the object (`data.id`: hotel, user, role, permission) the event is
    /// about, when that is a string of 1-128 characters without
    /// control characters. Workers never hold two jobs of one entity key at once.
    pub entity_key: Option<String>,
}

/// Why a body is not a Clerk event envelope. Messages name the category and position of the
/// problem, never the body's content.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body nests arrays and objects deeper than {MAX_NESTING} levels")]
    TooDeep,
    #[error("body is not a Clerk event envelope: {0}")]
    NotEnvelope(&'static str),
}

impl Envelope {
    /// Ok when `body` passes the gate described in the module documentation; Err says which
    /// part is wrong (without echoing the body).
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        if nesting_exceeds(body, MAX_NESTING) {
            return Err(EnvelopeError::TooDeep);
        }
        let raw: RawEnvelope<'_> = serde_json::from_slice(body).map_err(|e| match e.classify() {
            // A type error from the envelope's own fields (`type` not a string, `data` not an
            // object, a repeated field...): the JSON is fine, the shape is not.
            serde_json::error::Category::Data => EnvelopeError::NotEnvelope(shape_error(&e)),
            // Report the category and position only: serde's message can quote the input.
            other => EnvelopeError::NotJson(format!("{other:?} at line {} column {}", e.line(), e.column())),
        })?;
        let event_type = raw.event_type.ok_or(EnvelopeError::NotEnvelope("missing `type`"))?;
        if event_type.is_empty() || event_type.chars().count() > 100 || event_type.chars().any(char::is_control) {
            return Err(EnvelopeError::NotEnvelope(
                "`type` must be a short non-empty string without control characters",
            ));
        }
        if raw.object.as_deref() != Some("event") {
            return Err(EnvelopeError::NotEnvelope("`object` must be \"event\""));
        }
        let data = raw.data.ok_or(EnvelopeError::NotEnvelope("missing `data`"))?;
        let entity_key = data
            .organization
            .and_then(|org| serde_json::from_str::<EntityRefs<'_>>(org.get()).ok())
            .and_then(|org| org.id)
            .and_then(entity_key)
            .or_else(|| data.organization_id.and_then(entity_key))
            .or_else(|| data.id.and_then(entity_key));
        Ok(Self {
            event_type: event_type.into_owned(),
            timestamp: raw.timestamp.map(normalize_event_time),
            entity_key,
        })
    }
}

/// The message for a shape error. serde's own messages can quote the offending value, so only
/// fixed texts are used.
fn shape_error(e: &serde_json::Error) -> &'static str {
    let text = e.to_string();
    if text.starts_with("duplicate field") {
        "a field of the envelope is repeated"
    } else {
        "`type` and `object` must be strings, `data` an object and `timestamp` an integer"
    }
}

/// The entity key a JSON value stands for: a string of 1-128 characters without control
/// characters (which the `entity_key` text column can always hold), else None.
fn entity_key(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    if !text.starts_with('"') || text.len() > MAX_ENTITY_KEY * 6 + 2 {
        return None;
    }
    // Lone surrogates make this fail: no key, the job is then locked by its own id.
    let value: Cow<'_, str> = serde_json::from_str(text).ok()?;
    let ok = !value.is_empty() && value.chars().count() <= MAX_ENTITY_KEY && !value.chars().any(char::is_control);
    ok.then(|| value.into_owned())
}

/// True when `body`, read as JSON, opens more than `limit` arrays or objects at once. Brackets
/// inside strings do not count. Only looks at bytes: run it before parsing.
fn nesting_exceeds(body: &[u8], limit: usize) -> bool {
    if body.len() <= limit {
        return false; // each level takes at least one byte
    }
    let mut depth = 0usize;
    let mut bytes = body.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => {
                // Skip the string: up to the next quote that is not escaped.
                while let Some(&c) = bytes.next() {
                    match c {
                        b'\\' => {
                            bytes.next();
                        }
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    false
}

/// The envelope's fields, read without validating anything the gate does not need: keys are
/// compared as unescaped bytes (so a key holding a lone surrogate is simply another key), and
/// values of other keys are skipped without being decoded.
struct RawEnvelope<'a> {
    event_type: Option<Cow<'a, str>>,
    object: Option<Cow<'a, str>>,
    data: Option<EntityRefs<'a>>,
    timestamp: Option<i64>,
}

/// A key of an object, as unescaped bytes (`deserialize_bytes` accepts lone surrogates).
enum Key<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Key<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Key::Borrowed(b) => b,
            Key::Owned(b) => b,
        }
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(Key::Borrowed(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Key::Owned(v.to_vec()))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key::Borrowed(v.as_bytes()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key::Owned(v.as_bytes().to_vec()))
            }
        }
        d.deserialize_bytes(KeyVisitor)
    }
}

/// Stores `value` in `slot`, refusing a second occurrence of the same field.
fn set_once<T, E: de::Error>(slot: &mut Option<T>, value: T, field: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(field));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de> Deserialize<'de> for RawEnvelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EnvelopeVisitor;
        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = RawEnvelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Clerk event envelope object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut env = RawEnvelope {
                    event_type: None,
                    object: None,
                    data: None,
                    timestamp: None,
                };
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match key.bytes() {
                        b"type" => set_once(&mut env.event_type, map.next_value()?, "type")?,
                        b"object" => set_once(&mut env.object, map.next_value()?, "object")?,
                        b"data" => set_once(&mut env.data, map.next_value()?, "data")?,
                        b"timestamp" => {
                            let t: Option<i64> = map.next_value()?;
                            if let Some(t) = t {
                                set_once(&mut env.timestamp, t, "timestamp")?;
                            }
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(env)
            }
        }
        d.deserialize_map(EnvelopeVisitor)
    }
}

/// The parts of `data` (or of `data.organization`) that name the entity: `id`, `organization`
/// and `organization_id`, kept raw. Must be an object; other keys are skipped undecoded.
struct EntityRefs<'a> {
    id: Option<&'a RawValue>,
    organization: Option<&'a RawValue>,
    organization_id: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for EntityRefs<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RefsVisitor;
        impl<'de> Visitor<'de> for RefsVisitor {
            type Value = EntityRefs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut refs = EntityRefs {
                    id: None,
                    organization: None,
                    organization_id: None,
                };
                // A repeated key inside `data` is the consumer's concern: the last one wins here.
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match key.bytes() {
                        b"id" => refs.id = Some(map.next_value()?),
                        b"organization" => refs.organization = Some(map.next_value()?),
                        b"organization_id" => refs.organization_id = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(refs)
            }
        }
        d.deserialize_map(RefsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_requires_type_object_event_and_object_data() {
        assert!(Envelope::parse(br#"{"type":"user.created","object":"event","data":{}}"#).is_ok());
        for bad in [
            &br#"not json"#[..],
            br#"[]"#,
            br#"{"object":"event","data":{}}"#,
            br#"{"type":"user.created","object":"user","data":{}}"#,
            br#"{"type":"user.created","object":"event"}"#,
            br#"{"type":"user.created","object":"event","data":[1]}"#,
            br#"{"type":"user.created","object":"event","data":[1,2]}"#,
            br#"{"type":"","object":"event","data":{}}"#,
            br#"{"type":"a\u0000b","object":"event","data":{}}"#,
            br#"{"type":"user.created","type":"x","object":"event","data":{}}"#,
            br#"{"type":"user.created","object":"event","data":{},"timestamp":1e999999}"#,
            b"{\"type\":\"user.created\",\"object\":\"event\",\"data\":{\"a\":\"\x00\"}}",
        ] {
            assert!(Envelope::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn content_postgres_json_holds_passes_the_gate() {
        for ok in [
            &br#"{"type":"user.updated","object":"event","data":{"id":"user_1","a":"x\u0000y"}}"#[..],
            br#"{"type":"user.updated","object":"event","data":{"id":"user_1","a\u0000":1}}"#,
            br#"{"type":"user.updated","object":"event","data":{"id":"user_1","a":"\ud800"}}"#,
            br#"{"type":"user.updated","object":"event","data":{"id":"user_1","\udc00":"\ud800"}}"#,
            br#"{"type":"user.updated","object":"event","data":{"id":"user_1","a":1e999999}}"#,
            br#"{"type":"user.updated","object":"event","data":{"id":"user_1","id":"user_2"}}"#,
            br#"{"\ud800":1,"type":"user.updated","object":"event","data":{"id":"user_1"},"x":1,"x":2}"#,
        ] {
            let env = Envelope::parse(ok).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(ok)));
            assert!(env.entity_key.is_some());
        }
    }

    #[test]
    fn entity_key_is_the_organization_else_the_object_id() {
        let m = Envelope::parse(
            br#"{"type":"organizationMembership.created","object":"event",
                 "data":{"id":"orgmem_1","organization":{"id":"org_9","name":"x"}}}"#,
        )
        .unwrap();
        assert_eq!(m.entity_key.as_deref(), Some("org_9"));
        let i = Envelope::parse(
            br#"{"type":"organizationInvitation.created","object":"event",
                 "data":{"id":"orginv_1","organization_id":"org_7"}}"#,
        )
        .unwrap();
        assert_eq!(
            i.entity_key.as_deref(),
            Some("org_7"),
            "invitations are keyed by their hotel"
        );
        let r = Envelope::parse(br#"{"type":"role.created","object":"event","data":{"id":"role_1"}}"#).unwrap();
        assert_eq!(r.entity_key.as_deref(), Some("role_1"));
        let u = Envelope::parse(br#"{"type":"user.created","object":"event","data":{"id":"user_1"}}"#).unwrap();
        assert_eq!(u.entity_key.as_deref(), Some("user_1"));
        for no_key in [
            &br#"{"type":"user.created","object":"event","data":{"id":5}}"#[..],
            br#"{"type":"user.created","object":"event","data":{"id":"a\u0000b"}}"#,
            br#"{"type":"user.created","object":"event","data":{"id":"\ud800"}}"#,
            br#"{"type":"user.created","object":"event","data":{"id":""}}"#,
        ] {
            assert_eq!(Envelope::parse(no_key).unwrap().entity_key, None);
        }
    }

    #[test]
    fn nesting_is_limited_outside_strings_only() {
        let deep = |n: usize| {
            format!(
                r#"{{"type":"t","object":"event","data":{{"m":{}{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(Envelope::parse(deep(MAX_NESTING - 2).as_bytes()).is_ok());
        assert!(matches!(
            Envelope::parse(deep(MAX_NESTING).as_bytes()),
            Err(EnvelopeError::TooDeep)
        ));
        let in_string = format!(
            r#"{{"type":"t","object":"event","data":{{"m":"{}\"{}"}}}}"#,
            "[".repeat(5000),
            "{".repeat(5000)
        );
        assert!(Envelope::parse(in_string.as_bytes()).is_ok());
    }
}
