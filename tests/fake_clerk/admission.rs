//! What every request passes before its handler runs (authentication, injected failures, the
//! request log, gates), and Clerk's answers: its error bodies (`{errors: [{message,
//! long_message, code, meta}], clerk_trace_id}`, with the codes of Clerk's error index) and
//! JSON pages.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::params::{self, Params};
use super::{Collection, Entry, Logged, LostMode, Shared, World};

pub(super) fn clerk_error(status: StatusCode, message: &str, long: &str, code: &str) -> Response {
    clerk_error_meta(status, message, long, code, None)
}

pub(super) fn clerk_error_meta(
    status: StatusCode,
    message: &str,
    long: &str,
    code: &str,
    meta: Option<Value>,
) -> Response {
    let mut error = json!({"message": message, "long_message": long, "code": code});
    if let Some(meta) = meta {
        error["meta"] = meta;
    }
    let body = json!({"errors": [error], "clerk_trace_id": "trace_fake"});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

pub(super) fn unprocessable(long: &str) -> Response {
    clerk_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid request parameters",
        long,
        "form_param_invalid",
    )
}

/// 422 `form_param_missing`: a required parameter is absent.
pub(super) fn missing(param: &str) -> Response {
    clerk_error_meta(
        StatusCode::UNPROCESSABLE_ENTITY,
        "is missing",
        &format!("{param} must be included."),
        "form_param_missing",
        Some(json!({"param_name": param})),
    )
}

/// 422 `form_param_value_invalid`.
pub(super) fn invalid(param: &str, long: &str) -> Response {
    clerk_error_meta(
        StatusCode::UNPROCESSABLE_ENTITY,
        "is invalid",
        long,
        "form_param_value_invalid",
        Some(json!({"param_name": param})),
    )
}

/// 422 `form_param_format_invalid`.
pub(super) fn format_invalid(param: &str, long: &str) -> Response {
    clerk_error_meta(
        StatusCode::UNPROCESSABLE_ENTITY,
        "is invalid",
        long,
        "form_param_format_invalid",
        Some(json!({"param_name": param})),
    )
}

/// 422 `form_param_unknown`: a parameter the endpoint does not take.
pub(super) fn unknown_param(param: &str) -> Response {
    clerk_error_meta(
        StatusCode::UNPROCESSABLE_ENTITY,
        "is unknown",
        &format!("{param} is not a valid parameter for this request."),
        "form_param_unknown",
        Some(json!({"param_name": param})),
    )
}

/// 422 `form_param_type_invalid`.
pub(super) fn wrong_type(param: &str, expected: &str) -> Response {
    clerk_error_meta(
        StatusCode::UNPROCESSABLE_ENTITY,
        "is invalid",
        &format!("`{param}` must be a `{expected}`."),
        "form_param_type_invalid",
        Some(json!({"param_name": param})),
    )
}

/// 422 `form_identifier_exists` (a slug or key already used).
pub(super) fn identifier_exists(param: &str, message: &str) -> Response {
    clerk_error_meta(
        StatusCode::UNPROCESSABLE_ENTITY,
        message,
        message,
        "form_identifier_exists",
        Some(json!({"param_name": param})),
    )
}

/// 404 `resource_not_found`.
pub(super) fn not_found(long: &str) -> Response {
    clerk_error(StatusCode::NOT_FOUND, "not found", long, "resource_not_found")
}

pub(super) fn org_not_found() -> Response {
    not_found("Given organization not found.")
}

pub(super) fn role_not_found(param: &str) -> Response {
    clerk_error_meta(
        StatusCode::NOT_FOUND,
        "not found",
        "Organization role not found",
        "resource_not_found",
        Some(json!({"param_name": param})),
    )
}

pub(super) fn json_response(body: String) -> Response {
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

pub(super) fn json_value(v: &Value) -> Response {
    json_response(v.to_string())
}

/// Authentication, logging, injected failures and gates, common to every read. Ok gives the
/// parsed parameters.
pub(super) async fn admit(
    world: &Shared,
    path: &str,
    headers: &HeaderMap,
    raw: Option<String>,
) -> Result<Params, Response> {
    let pairs = params::parse_query(raw.as_deref());
    admit_request(world, "GET", path, headers, pairs.clone(), None).await?;
    Ok(Params::new(pairs))
}

/// As [`admit`] for a write: Ok gives its JSON body (`{}` when empty); a body that is not JSON
/// is Clerk's 400 `request_body_invalid`.
pub(super) async fn admit_write(
    world: &Shared,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, Response> {
    let parsed: Result<Value, _> = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(json!({}))
    } else {
        serde_json::from_slice(body)
    };
    admit_request(world, method, path, headers, Vec::new(), parsed.as_ref().ok().cloned()).await?;
    parsed.map_err(|_| body_invalid())
}

async fn admit_request(
    world: &Shared,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    pairs: Vec<(String, String)>,
    body: Option<Value>,
) -> Result<(), Response> {
    let offset = pairs
        .iter()
        .find(|(k, _)| k == "offset")
        .and_then(|(_, v)| v.parse::<u32>().ok())
        .unwrap_or(0);
    let (gate, outcome) = {
        let mut w = world.lock().unwrap();
        let expected = format!("Bearer {}", w.key);
        let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
        let mut outcome: Option<Response> = None;
        let mut status = 200;
        if !authorized {
            status = 401;
            outcome = Some(clerk_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized request",
                "The provided Clerk Secret Key is invalid. Make sure that your Clerk Secret Key is correct.",
                "authentication_invalid",
            ));
        } else if let Some(i) = w.failures.iter().position(|f| {
            f.path == path
                && f.method.as_deref().is_none_or(|m| m == method)
                && f.offset.is_none_or(|o| o == offset)
                && f.times != Some(0)
        }) {
            let f = &mut w.failures[i];
            if let Some(n) = f.times.as_mut() {
                *n -= 1;
            }
            status = f.status;
            let code = StatusCode::from_u16(f.status).unwrap();
            let mut resp = clerk_error(
                code,
                "injected failure",
                "The fake Clerk API was told to fail here",
                "injected",
            );
            if let Some(ra) = &f.retry_after {
                resp.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            outcome = Some(resp);
        }
        w.log.push(Logged {
            method: method.to_owned(),
            path: path.to_owned(),
            query: pairs,
            body,
            status,
        });
        let gate = w.gates.iter().find(|g| g.path == path).map(|g| g.open.clone());
        (gate, outcome)
    };
    if let Some(gate) = gate {
        let _permit = gate.acquire().await.expect("gate semaphore is never closed");
    }
    match outcome {
        Some(resp) => Err(resp),
        None => Ok(()),
    }
}

impl World {
    /// The lost-answer rule matching this successful request, counted down.
    pub(super) fn take_lost(&mut self, method: &str, path: &str) -> Option<LostMode> {
        let rule = self
            .lost_answers
            .iter_mut()
            .find(|l| l.method == method && l.path == path && l.times != Some(0))?;
        if let Some(n) = rule.times.as_mut() {
            *n -= 1;
        }
        Some(rule.mode.clone())
    }
}

/// Pages `entries` (already filtered and ordered) into a JSON array string.
pub(super) fn page_json<'a>(entries: impl Iterator<Item = &'a Entry>, offset: usize, limit: usize) -> String {
    let mut out = String::from("[");
    for (i, e) in entries.skip(offset).take(limit).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&e.json);
    }
    out.push(']');
    out
}

pub(super) fn ordered<'a>(c: &'a Collection, ascending: bool) -> Box<dyn Iterator<Item = &'a Entry> + 'a> {
    if ascending {
        Box::new(c.ordered.values())
    } else {
        Box::new(c.ordered.values().rev())
    }
}

/// Clerk's 400 `request_body_invalid`.
pub(super) fn body_invalid() -> Response {
    clerk_error(
        StatusCode::BAD_REQUEST,
        "Request body invalid",
        "The request body is invalid. Please consult the API documentation for more information.",
        "request_body_invalid",
    )
}

/// The body's object, or Clerk's 400 for any other JSON.
pub(super) fn object(body: &Value) -> Result<&serde_json::Map<String, Value>, Response> {
    body.as_object().ok_or_else(body_invalid)
}

/// A string parameter: Ok(None) when absent or null, Err when another type.
pub(super) fn opt_str<'a>(body: &'a serde_json::Map<String, Value>, param: &str) -> Result<Option<&'a str>, Response> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong_type(param, "string")),
    }
}

/// A required, non-empty string parameter.
pub(super) fn req_str<'a>(body: &'a serde_json::Map<String, Value>, param: &str) -> Result<&'a str, Response> {
    match opt_str(body, param)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(missing(param)),
    }
}

/// An object parameter (metadata): Ok(None) when absent or null.
pub(super) fn opt_object(body: &serde_json::Map<String, Value>, param: &str) -> Result<Option<Value>, Response> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(wrong_type(param, "object")),
    }
}

/// Refuses any parameter outside `allowed` (endpoints with `additionalProperties: false`).
pub(super) fn only(body: &serde_json::Map<String, Value>, allowed: &[&str]) -> Result<(), Response> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(unknown_param(k)),
        None => Ok(()),
    }
}
