//! The `/v1` JSON API for the app's backend, on its own listener (`ORGSYNC_API_LISTEN`, default
//! `127.0.0.1:8082`, never the public webhook listener), served by
//! [`crate::http::server::serve`] under the same slow-client deadlines.
//!
//! - Every request needs `Authorization: Bearer <token>` ([`crate::tokens`]): missing, unknown or
//!   revoked → 401; a read-only token on anything but `GET` → 403. Tokens are never logged.
//! - Bodies are capped ([`ApiSettings::max_body`], 413 above) and parsed into the write path's
//!   types before anything is sent to Clerk: 400 for what is not JSON, 422 naming the field.
//! - Errors have one shape, `{"error": {"code", "message", "clerk_code"?, "field"?}}`
//!   ([`ApiError`]).
//! - A write runs to its end in a task of its own once started, even when the client goes away,
//!   so Clerk's change always reaches the mirror (or is reported `mirror_pending` in the log).
//! - Metrics: `orgsync_api_requests_total{route,status}`, `orgsync_api_request_duration_seconds
//!   {route}` (and `orgsync_clerk_writes_total{operation,outcome}` from the Clerk client).
//!
//! To add a route: a handler in `src/api/<area>.rs` (listed in [`router`]) calling a function of
//! `src/manage/<area>.rs`.

pub mod access;
mod auth;
pub mod error;
pub mod hotels;
pub mod idempotency;
pub mod invitations;
pub mod json;
pub mod members;

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;

pub use error::ApiError;

use crate::manage::Manager;

/// The API's own settings (its address is `ServeConfig::api_listen`).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Largest request body, in bytes (413 above it).
    pub max_body: usize,
    /// How long one request may spend on Clerk (see [`crate::manage::WriteOptions`]).
    pub clerk_deadline: std::time::Duration,
}

/// Where the API listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8082";

/// Ok when the API may serve on `addr`: a loopback address, or any address once at least one
/// live API token exists (otherwise nobody could call it, and an open port with no credentials
/// invites guessing). Err says how to fix it.
pub async fn check_exposure(pool: &sqlx::PgPool, addr: SocketAddr) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || crate::tokens::any_live(pool).await? {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve the /v1 API on {addr} without any API token: create one with \
         `orgsync tokens create NAME`, or bind ORGSYNC_API_LISTEN to a loopback address"
    )
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_body: 256 * 1024,
            clerk_deadline: std::time::Duration::from_secs(10),
        }
    }
}

/// What every handler needs.
#[derive(Clone)]
pub struct ApiState {
    pub manager: Manager,
    pub max_body: usize,
}

/// The `/v1` router: every route behind the bearer-token check, counted and timed.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(hotels::routes())
        .merge(members::routes())
        .merge(invitations::routes())
        .merge(access::routes())
        .fallback(|| async { ApiError::NoRoute })
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Counts and times every request by its route pattern (never its ids) and status.
async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let route = format!("{method} {route}");
    metrics::counter!("orgsync_api_requests_total", "route" => route.clone(),
                      "status" => response.status().as_str().to_owned())
    .increment(1);
    metrics::histogram!("orgsync_api_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Runs `op` to its end in a task of its own (a client that disconnects does not cancel a write
/// Clerk may already have made), and returns its result.
pub(crate) async fn run_to_end<T, F>(op: F) -> Result<T, ApiError>
where
    F: std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::spawn(op).await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "API: a write task failed");
            Err(ApiError::Internal)
        }
    }
}

/// JSON answer with a status.
pub(crate) fn answer(status: http::StatusCode, body: &impl serde::Serialize) -> Response {
    (status, axum::Json(body)).into_response()
}
