//! The operator console: server-rendered pages under `/console` on the admin listener, on only
//! when `ORGSYNC_CONSOLE=on` (and only with a separate `ORGSYNC_ADMIN_LISTEN`: the main listener
//! faces Clerk's webhooks, often the internet, and the console must not be reachable there).
//!
//! One file per page or area: [`overview`], [`jobs`] (the list and one job; payloads through
//! [`redact`]), [`replay`], [`resync`], [`access`] (the access explorer), [`changes`] (the feed,
//! followed live over server-sent events); [`auth`] (sign-in with an API token, sessions, CSRF),
//! [`layout`] (the page shell), [`assets`] (the stylesheet and the one script, compiled in).
//!
//! Every page reuses the library function behind the matching command (`orgsync status`,
//! `jobs`, `replay`, `resync`, `access`, `changes`), so the browser and the terminal give the
//! same answer. Templates are `maud`, which escapes every interpolated value: names, emails and
//! payloads from Clerk are text, never markup. Every response carries a Content-Security-Policy
//! that allows scripts, styles and connections from the console's own origin only and no inline
//! script or style.

pub mod access;
pub mod assets;
pub mod auth;
pub mod changes;
pub mod jobs;
pub mod layout;
pub mod overview;
pub mod redact;
pub mod replay;
pub mod resync;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::clerk::api::ClerkClient;

/// The Content-Security-Policy of every console response: the console's own origin only, no
/// inline script or style, no framing, forms post only back to the console.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// When the session cookie carries `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecureCookie {
    /// When the request reached the console over TLS. orgsync itself serves plain HTTP, so that
    /// is when a TLS-terminating proxy in front says so with `X-Forwarded-Proto: https`. (A
    /// client forging the header only makes its own cookie stricter.)
    #[default]
    Auto,
    /// Always (the proxy terminates TLS but does not send `X-Forwarded-Proto`).
    Always,
}

/// How the console is configured (`ORGSYNC_CONSOLE=on` and its settings).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub secure_cookie: SecureCookie,
    /// How long a sign-in lasts (then the operator signs in again).
    pub session_ttl: Duration,
    /// The overview's verdict: a due job older than this needs a person (as `orgsync status
    /// --max-pending-age`).
    pub max_pending_age: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            secure_cookie: SecureCookie::Auto,
            session_ttl: Duration::from_secs(12 * 3600),
            max_pending_age: Duration::from_secs(600),
        }
    }
}

/// What the console's handlers share.
#[derive(Clone)]
pub struct ConsoleState {
    pub pool: PgPool,
    pub config: ConsoleConfig,
    /// The Clerk Backend API, when configured: enables the resync page's buttons.
    pub clerk: Option<ClerkClient>,
    /// The mass-delete threshold of a resync started here (`ORGSYNC_MASS_DELETE_THRESHOLD`).
    pub mass_delete_threshold: f64,
    /// Fires at shutdown: live streams end, a resync started here is abandoned.
    pub cancel: CancellationToken,
    /// The resync started from the console, if any (its report, with ids, for the diff).
    pub resync: Arc<resync::Slot>,
    /// Wakes the live change streams when the feed's `NOTIFY` arrives.
    pub feed: changes::Wakeups,
}

impl ConsoleState {
    /// The console's state; starts the one `LISTEN` task that wakes every live change stream
    /// (it ends when `cancel` fires).
    pub fn new(
        pool: PgPool,
        config: ConsoleConfig,
        clerk: Option<ClerkClient>,
        mass_delete_threshold: f64,
        cancel: CancellationToken,
    ) -> Self {
        let feed = changes::Wakeups::start(pool.clone(), cancel.clone());
        Self {
            pool,
            config,
            clerk,
            mass_delete_threshold,
            cancel,
            resync: Arc::default(),
            feed,
        }
    }
}

/// The console's routes, all under `/console`, each response with the security headers.
pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(overview::page))
        .route("/console/overview/live", get(overview::live))
        .route("/console/login", get(auth::login_page).post(auth::login))
        .route("/console/logout", post(auth::logout))
        .route("/console/jobs", get(jobs::list))
        .route("/console/jobs/{id}", get(jobs::show))
        .route("/console/jobs/{id}/live", get(jobs::live))
        .route("/console/jobs/{id}/replay", post(replay::replay_one))
        .route("/console/replay", get(replay::confirm).post(replay::replay_matching))
        .route("/console/resync", get(resync::page))
        .route("/console/resync/live", get(resync::live))
        .route("/console/resync/start", post(resync::start))
        .route("/console/resync/runs/{id}", get(resync::run_page))
        .route("/console/access", get(access::page))
        .route("/console/changes", get(changes::page))
        .route("/console/changes/stream", get(changes::stream))
        .route("/console/assets/{name}", get(assets::serve))
        // Unknown console paths answer the console's 404 (with its headers); other paths of the
        // admin listener are not the console's business.
        .route("/console/{*rest}", get(|| async { ConsoleError::NotFound }))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Adds the console's security headers to a response.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        // Pages show live data and sometimes personal data: never kept by a cache.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Why a console request failed; each answers with a short page (or a redirect to sign in).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No valid session: the browser is sent to the sign-in page.
    #[error("sign in first")]
    SignIn,
    /// The session's token is read-only and the request would change something.
    #[error("this needs a read-write API token; yours ({0}) is read-only")]
    ReadOnly(String),
    /// A state-changing request without the session's CSRF token.
    #[error("the form has expired or did not come from this console; reload the page and try again")]
    Csrf,
    #[error("not found")]
    NotFound,
    /// A malformed parameter; the message says which.
    #[error("{0}")]
    BadRequest(String),
    #[error("the database cannot be read right now: {0}")]
    Database(#[from] sqlx::Error),
}

impl ConsoleError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::SignIn => StatusCode::SEE_OTHER,
            Self::ReadOnly(_) | Self::Csrf => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if let Self::SignIn = self {
            return Redirect::to("/console/login").into_response();
        }
        if let Self::Database(e) = &self {
            // sqlx's error text names no password; the page shows it to the operator.
            tracing::warn!(error = %e, "console request failed on the database");
        }
        (
            self.status_code(),
            layout::error_page(self.status_code(), &self.to_string()),
        )
            .into_response()
    }
}

/// The handlers' result.
pub type ConsoleResult<T> = Result<T, ConsoleError>;
