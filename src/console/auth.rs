//! Signing in to the console with an API token (`orgsync tokens create NAME [--read-only]`),
//! the session that follows, and the CSRF token of every state-changing form.
//!
//! - **Sessions are kept server-side** (`console_sessions`), not signed into the cookie: signing
//!   out, expiry and revoking the token end a session at once (a signed cookie stays valid until
//!   it expires), and no signing key has to be generated, stored and shared across replicas.
//!   The cookie holds a random 32-byte id; the table holds only its SHA-256, and the non-secret
//!   key id of the token that signed in. Every request reads the token's name and access through
//!   it, so a revoked token's sessions stop working on their next request.
//! - **The cookie** is `HttpOnly`, `SameSite=Strict`, scoped to `/console`, and `Secure` when the
//!   console is reached over TLS (see [`super::SecureCookie`]).
//! - **CSRF**: every form that changes something carries `csrf`, an HMAC-SHA256 of a fixed label
//!   keyed with the session id. Only a page of this session can know it; it is compared in
//!   constant time; the database never holds it. `SameSite=Strict` alone would already keep a
//!   cross-site form from carrying the cookie; the token covers what SameSite does not (older
//!   browsers, sibling subdomains). Signing in has its own: a random value in a short-lived
//!   cookie that the form must repeat (so another site cannot sign a browser in as someone else).
//! - The presented token is never logged, kept, or echoed into a page.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use maud::html;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::layout;
use super::{ConsoleError, ConsoleResult, ConsoleState, SecureCookie};

/// The session cookie.
pub const SESSION_COOKIE: &str = "orgsync_console";
/// The sign-in form's double-submit cookie.
const LOGIN_COOKIE: &str = "orgsync_console_login";
/// What the CSRF HMAC signs.
const CSRF_LABEL: &[u8] = b"orgsync console csrf v1";

/// The signed-in operator: who (the token's name) and whether they may change things.
#[derive(Debug, Clone)]
pub struct Operator {
    pub token_name: String,
    pub can_write: bool,
    csrf: String,
}

impl Operator {
    /// The CSRF token every state-changing form of this session must carry.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Ok when the operator's token may change things (replay, resync).
    pub fn require_write(&self) -> ConsoleResult<()> {
        if self.can_write {
            Ok(())
        } else {
            Err(ConsoleError::ReadOnly(self.token_name.clone()))
        }
    }

    /// Ok when `presented` is this session's CSRF token (compared in constant time).
    pub fn verify_csrf(&self, presented: &str) -> ConsoleResult<()> {
        if constant_time_eq(presented.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        }
    }
}

impl FromRequestParts<ConsoleState> for Operator {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(session_id) = jar.get(SESSION_COOKIE).and_then(|c| decode_id(c.value())) else {
            return Err(ConsoleError::SignIn);
        };
        let hash = hash_id(&session_id);
        let row = sqlx::query!(
            r#"
            select t.name, not t.read_only as "can_write!"
            from console_sessions s
            join api_tokens t on t.key_id = s.token_key_id and t.revoked_at is null
            where s.id_hash = $1 and s.expires_at > now()
            "#,
            hash.as_slice()
        )
        .fetch_optional(&state.pool)
        .await?;
        let row = row.ok_or(ConsoleError::SignIn)?;
        Ok(Self {
            token_name: row.name,
            can_write: row.can_write,
            csrf: csrf_for(&session_id),
        })
    }
}

/// `GET /console/login`: the sign-in form (and its double-submit cookie).
pub async fn login_page(State(state): State<ConsoleState>, headers: HeaderMap, jar: CookieJar) -> Response {
    login_form(&state, &headers, jar, None)
}

fn login_form(state: &ConsoleState, headers: &HeaderMap, jar: CookieJar, problem: Option<&str>) -> Response {
    let nonce = URL_SAFE_NO_PAD.encode(random_id());
    let cookie = Cookie::build((LOGIN_COOKIE, nonce.clone()))
        .path("/console/login")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(is_secure(state, headers))
        .max_age(cookie::time::Duration::minutes(30))
        .build();
    let body = html! {
        h1 { "Sign in" }
        p { "Sign in with an API token made by " code { "orgsync tokens create NAME" }
            " (add " code { "--read-only" } " for a token that can look but not replay or resync)." }
        @if let Some(problem) = problem { p.problem role="alert" { (problem) } }
        form method="post" action="/console/login" {
            input type="hidden" name="login_csrf" value=(nonce);
            label for="token" { "API token" }
            input #token type="password" name="token" autocomplete="off" required autofocus;
            button type="submit" { "Sign in" }
        }
    };
    let status = if problem.is_some() {
        axum::http::StatusCode::UNAUTHORIZED
    } else {
        axum::http::StatusCode::OK
    };
    (status, jar.add(cookie), layout::bare_page("Sign in", body)).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    login_csrf: String,
}

/// `POST /console/login`: checks the token; on success starts a session and goes to the overview.
pub async fn login(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> ConsoleResult<Response> {
    let expected = jar.get(LOGIN_COOKIE).map(|c| c.value().to_owned()).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), form.login_csrf.as_bytes()) {
        return Ok(login_form(
            &state,
            &headers,
            jar,
            Some("The sign-in form expired or came from elsewhere; please try again."),
        ));
    }
    let presented = form.token.trim();
    let Some(caller) = crate::tokens::authenticate(&state.pool, presented).await? else {
        tracing::info!("console sign-in refused: unknown or revoked token");
        return Ok(login_form(
            &state,
            &headers,
            jar,
            Some("That token is not valid (unknown, mistyped or revoked)."),
        ));
    };
    // A token that authenticated is well-formed: `osk_<key_id>_<secret>`.
    let key_id = presented
        .strip_prefix(crate::tokens::PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map(|(key_id, _)| key_id.to_owned())
        .ok_or(ConsoleError::SignIn)?;
    let session_id = random_id();
    let ttl = state.config.session_ttl;
    let hash = hash_id(&session_id);
    sqlx::query!(
        "insert into console_sessions (id_hash, token_key_id, expires_at) \
         values ($1, $2, now() + make_interval(secs => $3))",
        hash.as_slice(),
        key_id,
        ttl.as_secs_f64(),
    )
    .execute(&state.pool)
    .await?;
    // Sessions that ran out go at each sign-in: the table stays as small as the live sessions.
    sqlx::query!("delete from console_sessions where expires_at <= now()")
        .execute(&state.pool)
        .await?;
    tracing::info!(token = %caller.name, can_write = caller.can_write(), "console sign-in");
    let cookie = Cookie::build((SESSION_COOKIE, URL_SAFE_NO_PAD.encode(session_id)))
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(is_secure(&state, &headers))
        .max_age(cookie::time::Duration::seconds(ttl.as_secs() as i64))
        .build();
    let jar = jar
        .remove(Cookie::build(LOGIN_COOKIE).path("/console/login"))
        .add(cookie);
    Ok((jar, Redirect::to("/console/")).into_response())
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

/// `POST /console/logout`: ends the session (the row is deleted) and clears the cookie.
pub async fn logout(
    State(state): State<ConsoleState>,
    operator: Operator,
    jar: CookieJar,
    Form(form): Form<CsrfForm>,
) -> ConsoleResult<Response> {
    operator.verify_csrf(&form.csrf)?;
    if let Some(id) = jar.get(SESSION_COOKIE).and_then(|c| decode_id(c.value())) {
        let hash = hash_id(&id);
        sqlx::query!("delete from console_sessions where id_hash = $1", hash.as_slice())
            .execute(&state.pool)
            .await?;
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/console"));
    Ok((jar, Redirect::to("/console/login")).into_response())
}

/// Whether cookies set in answer to this request carry `Secure`.
fn is_secure(state: &ConsoleState, headers: &HeaderMap) -> bool {
    match state.config.secure_cookie {
        SecureCookie::Always => true,
        SecureCookie::Auto => headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https")),
    }
}

fn random_id() -> [u8; 32] {
    let mut id = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    id
}

fn decode_id(text: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

fn hash_id(id: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(id).into()
}

/// The CSRF token of the session `id`.
fn csrf_for(id: &[u8; 32]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(id).expect("HMAC takes any key length");
    mac.update(CSRF_LABEL);
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let a = random_id();
        let b = random_id();
        assert_eq!(csrf_for(&a), csrf_for(&a));
        assert_ne!(csrf_for(&a), csrf_for(&b));
        assert_ne!(
            csrf_for(&a),
            URL_SAFE_NO_PAD.encode(a),
            "the CSRF token does not reveal the session id"
        );
    }

    #[test]
    fn session_ids_round_trip_and_junk_is_refused() {
        let id = random_id();
        assert_eq!(decode_id(&URL_SAFE_NO_PAD.encode(id)), Some(id));
        assert_eq!(decode_id("short"), None);
        assert_eq!(decode_id("not base64 !!"), None);
    }
}
