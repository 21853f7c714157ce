//! The HTTP surface: the Clerk webhook receiver, health probes and metrics, served under
//! deadlines and a connection cap that makes room by evicting stalled connections ([`server`]).

mod connections;
pub mod descriptors;
pub mod server;
mod tracked;
pub mod webhook;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::clerk::signature::WebhookVerifier;
use crate::queue::Ingest;

/// What the webhook handler needs.
#[derive(Clone)]
pub struct WebhookState {
    pub verifier: Arc<WebhookVerifier>,
    pub ingest: Ingest,
    /// Largest accepted body, in bytes.
    pub max_body: usize,
}

/// What the probes and the metrics endpoint need.
#[derive(Clone)]
pub struct AdminState {
    pub pool: PgPool,
    pub metrics: Option<PrometheusHandle>,
}

/// The public router: `POST /webhooks/clerk`, with bodies over `max_body` refused with 413.
pub fn webhook_router(state: WebhookState) -> Router {
    Router::new()
        .route("/webhooks/clerk", post(webhook::receive))
        // The handler enforces `max_body` itself, refusing on Content-Length before reading.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// The operator router: `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The process is alive.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 when the database answers and the schema is current, 503 otherwise.
async fn readyz(State(state): State<AdminState>) -> Response {
    match crate::db::is_ready(&state.pool).await {
        Ok(true) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Ok(false) => unavailable("migrations pending"),
        Err(_) => unavailable("database unreachable"),
    }
}

fn unavailable(reason: &'static str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "status": "unavailable", "reason": reason })),
    )
        .into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let Some(handle) = state.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled in this process").into_response();
    };
    crate::metrics::refresh_gauges(&state.pool).await;
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
