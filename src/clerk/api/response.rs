//! Reading Clerk's answers: request descriptions for errors, `Retry-After`, error bodies, and
//! list pages parsed item by item. Nothing here returns response payloads: decode errors have
//! quoted input removed.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ClerkApiError, InvalidItem, Page};

/// `GET /v1/organizations?offset=1000` style description of a request for errors and logs
/// (paging parameters only; filter ids are summarised).
pub(super) fn describe(path: &str, query: &[(&str, String)]) -> String {
    let mut out = format!("GET {path}");
    let mut sep = '?';
    for (k, v) in query {
        if matches!(*k, "offset" | "starting_after") {
            out.push_str(&format!("{sep}{k}={v}"));
            sep = '&';
        }
    }
    let filters = query
        .iter()
        .filter(|(k, _)| matches!(*k, "user_id" | "organization_id"))
        .count();
    if filters > 0 {
        out.push_str(&format!(" ({filters} ids)"));
    }
    out
}

/// Seconds (`120`) or an HTTP date, as RFC 9110 allows.
pub(super) fn parse_retry_after(value: &reqwest::header::HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

pub(super) fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out (CLERK_TIMEOUT)".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        // reqwest's message names the URL (no key, no body) and the cause.
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        reason
    }
}

#[derive(Deserialize)]
pub(super) struct ClerkErrors {
    errors: Vec<ClerkErrorItem>,
}

#[derive(Deserialize)]
pub(super) struct ClerkErrorItem {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    long_message: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

/// The first of Clerk's `{errors: [{message, long_message, code}]}`, short; or the body's size
/// when it is not one (a proxy's HTML page, say), never the body itself.
pub(super) fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ClerkErrors>(body) {
        Ok(errs) if !errs.errors.is_empty() => {
            let e = &errs.errors[0];
            let text = e
                .long_message
                .as_deref()
                .or(e.message.as_deref())
                .unwrap_or("no message");
            let text: String = text.chars().take(300).collect();
            match &e.code {
                Some(code) => format!("{text} ({code})"),
                None => text,
            }
        }
        _ => format!("a {}-byte body that is not a Clerk error", body.len()),
    }
}

/// The `code` of the first of Clerk's errors in `body`, if it is one (e.g.
/// `form_identifier_exists`, `resource_not_found`): what the API passes on as `clerk_code`.
pub(super) fn error_code(body: &[u8]) -> Option<String> {
    let errs = serde_json::from_slice::<ClerkErrors>(body).ok()?;
    errs.errors
        .into_iter()
        .next()?
        .code
        .map(|c| c.chars().take(100).collect())
}

/// True when `body` is Clerk's own error shape (`{errors: [...]}`).
pub(super) fn is_clerk_error(body: &[u8]) -> bool {
    serde_json::from_slice::<ClerkErrors>(body).is_ok()
}

pub(super) fn client_error(status: u16, endpoint: &str, body: &[u8]) -> ClerkApiError {
    let message = error_message(body);
    match status {
        401 => ClerkApiError::Auth {
            status,
            endpoint: endpoint.to_owned(),
            hint: "the key is wrong, revoked, or of another Clerk instance; check CLERK_SECRET_KEY",
            message,
        },
        403 => ClerkApiError::Auth {
            status,
            endpoint: endpoint.to_owned(),
            hint: "the key is not allowed to do this (a restricted or wrong-environment key?); check CLERK_SECRET_KEY",
            message,
        },
        // Only a 404 in Clerk's own error shape means "no such object": a 404 from a proxy or a
        // wrong CLERK_API_URL must never be read as "deleted" (tombstones are final).
        404 if serde_json::from_slice::<ClerkErrors>(body).is_ok() => ClerkApiError::NotFound {
            endpoint: endpoint.to_owned(),
            message,
        },
        _ => ClerkApiError::Request {
            status,
            endpoint: endpoint.to_owned(),
            message,
        },
    }
}

pub(super) fn decode<'a, T: Deserialize<'a>>(body: &'a [u8], endpoint: &str) -> Result<T, ClerkApiError> {
    serde_json::from_slice(body).map_err(|e| ClerkApiError::Decode {
        endpoint: endpoint.to_owned(),
        reason: redact(&e),
    })
}

/// A serde error's message with quoted input removed (it can quote names or email addresses).
pub(super) fn redact(e: &serde_json::Error) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in e.to_string().chars() {
        match c {
            '"' if !quoted => {
                quoted = true;
                out.push_str("\"…");
            }
            '"' => {
                quoted = false;
                out.push('"');
            }
            c if !quoted => out.push(c),
            _ => {}
        }
    }
    out
}

#[derive(Deserialize)]
pub(super) struct RawList<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
    total_count: Option<i64>,
}

pub(super) fn parse_list<T: DeserializeOwned>(body: &[u8], endpoint: &str) -> Result<Page<T>, ClerkApiError> {
    let raw: RawList<'_> = decode(body, endpoint)?;
    Ok(parse_items(&raw.data, raw.total_count))
}

pub(super) fn parse_array<T: DeserializeOwned>(body: &[u8], endpoint: &str) -> Result<Page<T>, ClerkApiError> {
    let raw: Vec<&RawValue> = decode(body, endpoint)?;
    Ok(parse_items(&raw, None))
}

/// Whatever ids an item carries, read leniently (for items that do not parse).
#[derive(Deserialize, Default)]
pub(super) struct ItemKey {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    organization: Option<serde_json::Value>,
    #[serde(default)]
    public_user_data: Option<serde_json::Value>,
}

impl ItemKey {
    fn read(raw: &RawValue) -> Self {
        serde_json::from_str(raw.get()).unwrap_or_default()
    }

    fn id(&self) -> Option<String> {
        self.id.as_ref()?.as_str().map(str::to_owned)
    }

    fn nested(v: &Option<serde_json::Value>, field: &str) -> Option<String> {
        v.as_ref()?.get(field)?.as_str().map(str::to_owned)
    }
}

pub(super) fn parse_items<T: DeserializeOwned>(raw: &[&RawValue], total_count: Option<i64>) -> Page<T> {
    let mut items = Vec::with_capacity(raw.len());
    let mut invalid = Vec::new();
    for item in raw {
        match serde_json::from_str::<T>(item.get()) {
            Ok(v) => items.push(v),
            Err(e) => {
                let key = ItemKey::read(item);
                invalid.push(InvalidItem {
                    id: key.id(),
                    organization_id: ItemKey::nested(&key.organization, "id"),
                    user_id: ItemKey::nested(&key.public_user_data, "user_id"),
                    reason: redact(&e),
                });
            }
        }
    }
    let last_id = raw.last().and_then(|r| ItemKey::read(r).id());
    Page {
        items,
        invalid,
        total_count,
        len: raw.len(),
        last_id,
    }
}
