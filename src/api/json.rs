//! Request bodies: read under the cap, then parsed into the write path's types, so that a
//! malformed request is refused naming its field before anything is sent to Clerk.

use axum::body::{Body, Bytes};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::ApiError;

/// Reads the whole body, refusing one over `max` bytes (on `Content-Length` before reading).
pub async fn read_body(headers: &http::HeaderMap, body: Body, max: usize) -> Result<Bytes, ApiError> {
    let announced = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > max as u64) {
        return Err(ApiError::TooLarge(max));
    }
    Limited::new(body, max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ApiError::TooLarge(max)
            } else {
                ApiError::MalformedJson("the body could not be read".into())
            }
        })
}

/// Parses `body` as `T`: 400 [`ApiError::MalformedJson`] when it is not JSON, 422
/// [`ApiError::Invalid`] naming the field (`name`, `invitations[2].email_address`) when a value
/// is missing, unknown or not what the field takes.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson("the body is empty; send a JSON object".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = without_position(&inner.to_string());
                let field = named_field(&message).map_or(path.clone(), |f| {
                    if path == "." {
                        f.to_owned()
                    } else {
                        format!("{path}.{f}")
                    }
                });
                ApiError::Invalid {
                    field: if field == "." { "body".into() } else { field },
                    message,
                }
            }
            _ => ApiError::MalformedJson(format!("at line {} column {}", inner.line(), inner.column())),
        }
    })?;
    de.end()
        .map_err(|_| ApiError::MalformedJson("trailing characters after the JSON value".into()))?;
    Ok(value)
}

/// serde_json's messages end in " at line L column C": the field says where.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The field a "missing field `x`" message names (its path is the enclosing object's; an
/// unknown field's path is the field itself).
fn named_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manage::hotels::NewHotel;

    fn invalid(body: &str) -> (String, String) {
        match parse::<NewHotel>(body.as_bytes()) {
            Err(ApiError::Invalid { field, message }) => (field, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fields_are_named() {
        let (field, message) = invalid(r#"{"name": " ", "created_by": "user_1"}"#);
        assert_eq!(field, "name");
        assert!(message.contains("empty"), "{message}");
        assert_eq!(invalid(r#"{"created_by": "user_1"}"#).0, "name");
        assert_eq!(invalid(r#"{"name": "A", "created_by": "org_1"}"#).0, "created_by");
        assert_eq!(
            invalid(r#"{"name": "A", "created_by": "user_1", "colour": 1}"#).0,
            "colour"
        );
        assert_eq!(
            invalid(r#"{"name": "A", "created_by": "user_1", "slug": "Not A Slug"}"#).0,
            "slug"
        );
        assert_eq!(
            invalid(r#"{"name": "A", "created_by": "user_1", "public_metadata": [1]}"#).0,
            "public_metadata"
        );
    }

    #[test]
    fn malformed_bodies_are_400() {
        for body in ["", "{", r#"{"name": "A", "created_by": "user_1"} x"#, "not json"] {
            assert!(
                matches!(parse::<NewHotel>(body.as_bytes()), Err(ApiError::MalformedJson(_))),
                "{body:?}"
            );
        }
    }
}
