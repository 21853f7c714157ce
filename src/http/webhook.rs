//! `POST /webhooks/clerk`: verify, store durably, then acknowledge.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::WebhookState;
use crate::clerk::events::is_handled;
use crate::clerk::signature::{svix_headers, VerifyError};
use crate::clerk::{Envelope, EnvelopeError};
use crate::queue::{Enqueued, IngestError, NewJob};

/// Every way the receiver refuses a delivery. Nothing is stored for any of them.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("body could not be read")]
    BodyRead,
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl ReceiveError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Verify(VerifyError::BadHeaders | VerifyError::BodyNotUtf8) => StatusCode::BAD_REQUEST,
            Self::Verify(VerifyError::BadSignature) => StatusCode::UNAUTHORIZED,
            Self::Envelope(_) | Self::BodyRead => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            // Never reached for what the envelope check passes; a safety net, about this
            // delivery only (see `queue::ingest`).
            Self::Ingest(IngestError::Unstorable(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            // Only infrastructure trouble (database unreachable, commit timeout, shutdown).
            Self::Ingest(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short label for logs and the `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Verify(VerifyError::BadHeaders) => "bad_headers",
            Self::Verify(VerifyError::BodyNotUtf8) => "bad_body",
            Self::Verify(VerifyError::BadSignature) => "bad_signature",
            Self::Envelope(EnvelopeError::TooDeep) => "too_deep",
            Self::Envelope(_) => "not_an_event",
            Self::TooLarge(_) => "too_large",
            Self::BodyRead => "bad_body",
            Self::Ingest(IngestError::Unstorable(_)) => "unstorable",
            Self::Ingest(_) => "unavailable",
        }
    }
}

impl IntoResponse for ReceiveError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        metrics::counter!("orgsync_webhook_deliveries_total", "outcome" => "rejected", "reason" => self.reason())
            .increment(1);
        if status.is_server_error() {
            tracing::warn!(reason = self.reason(), error = %self, "delivery not stored");
        } else {
            tracing::info!(reason = self.reason(), error = %self, "delivery refused");
        }
        // The message never quotes the body: errors here are built without it.
        (
            status,
            Json(serde_json::json!({ "error": self.reason(), "message": self.to_string() })),
        )
            .into_response()
    }
}

/// Verifies the Svix signature over the raw body, checks the Clerk envelope, and answers 2xx
/// only once the event is committed (or was already stored under the same `svix-id`).
#[tracing::instrument(name = "webhook", skip_all, fields(event_id, event_type))]
pub async fn receive(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ReceiveError> {
    let announced = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > state.max_body as u64) {
        // Refuse on the announced length: no need to read megabytes to say no.
        return Err(ReceiveError::TooLarge(state.max_body));
    }
    // A body without Content-Length (chunked) is cut off as soon as it passes the limit.
    let body = Limited::new(body, state.max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ReceiveError::TooLarge(state.max_body)
            } else {
                ReceiveError::BodyRead
            }
        })?
        .to_bytes();
    let event_id = svix_headers(&headers)?.to_owned();
    tracing::Span::current().record("event_id", event_id.as_str());
    state.verifier.verify(&headers, &body)?;
    let envelope = Envelope::parse(&body)?;
    tracing::Span::current().record("event_type", envelope.event_type.as_str());

    let skipped = !is_handled(&envelope.event_type);
    // The verifier checked UTF-8; converting the collected buffer does not copy it.
    let payload = String::from_utf8(Vec::from(body)).map_err(|_| VerifyError::BodyNotUtf8)?;
    let outcome = state
        .ingest
        .enqueue(NewJob {
            event_id,
            event_type: envelope.event_type,
            payload,
            entity_key: envelope.entity_key,
            skipped,
        })
        .await?;
    let label = match (outcome, skipped) {
        (Enqueued::Duplicate, _) => "duplicate",
        (Enqueued::New, true) => "skipped",
        (Enqueued::New, false) => "accepted",
    };
    metrics::counter!("orgsync_webhook_deliveries_total", "outcome" => label).increment(1);
    tracing::debug!(outcome = label, "delivery stored");
    let status = if outcome == Enqueued::New {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(serde_json::json!({ "status": label }))).into_response())
}
