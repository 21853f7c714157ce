//! The one error type of the `/v1` API: every refusal and failure, its status and its JSON
//! shape `{"error": {"code", "message", "clerk_code"?, "field"?}}`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::clerk::api::ClerkWriteError;
use crate::manage::ManageError;

/// Why a `/v1` request was not answered with what it asked for.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer`, or a token that is malformed, unknown or revoked.
    #[error("a valid API token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    /// A read-only token on a write.
    #[error("this token is read-only; writes need a read-write token")]
    ReadOnly,
    /// The body is not JSON (or empty).
    #[error("the body is not JSON: {0}")]
    MalformedJson(String),
    /// A field (or a path or query parameter) holds what Clerk cannot take.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("no {what} {id}")]
    NotFound { what: &'static str, id: String },
    #[error("hotel {0} was deleted")]
    HotelDeleted(String),
    #[error("no such route")]
    NoRoute,
    #[error("the Idempotency-Key header must be 1-255 visible ASCII characters")]
    BadIdempotencyKey,
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still running; retry in a moment")]
    IdempotencyInProgress,
    #[error(transparent)]
    Manage(#[from] ManageError),
    /// The database could not be read (before anything was sent to Clerk).
    #[error("the database is unavailable")]
    DatabaseUnavailable,
    #[error("internal error")]
    Internal,
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "API: database error");
        Self::DatabaseUnavailable
    }
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::ReadOnly => StatusCode::FORBIDDEN,
            Self::MalformedJson(_) | Self::BadIdempotencyKey => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound { .. } | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::HotelDeleted(_) => StatusCode::GONE,
            Self::IdempotencyInProgress => StatusCode::CONFLICT,
            Self::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Manage(m) => match m {
                ManageError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ManageError::SlugTaken(_) => StatusCode::CONFLICT,
                ManageError::MirrorPending { .. } => StatusCode::BAD_GATEWAY,
                ManageError::NotFound { .. } => StatusCode::NOT_FOUND,
                ManageError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
                ManageError::Clerk(c) => match c {
                    // Clerk's own 4xx, passed on with its status.
                    ClerkWriteError::Rejected { status, .. } => {
                        StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
                    }
                    ClerkWriteError::NotFound { .. } => StatusCode::NOT_FOUND,
                    ClerkWriteError::RateLimited { .. } | ClerkWriteError::Unavailable { .. } => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    ClerkWriteError::Auth { .. } | ClerkWriteError::Unknown { .. } | ClerkWriteError::Decode { .. } => {
                        StatusCode::BAD_GATEWAY
                    }
                },
            },
        }
    }

    /// The stable, machine-readable `code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::ReadOnly => "read_only_token",
            Self::MalformedJson(_) => "malformed_json",
            Self::Invalid { .. } => "invalid_field",
            Self::TooLarge(_) => "body_too_large",
            Self::NotFound { .. } => "not_found",
            Self::HotelDeleted(_) => "hotel_deleted",
            Self::NoRoute => "no_route",
            Self::BadIdempotencyKey => "invalid_idempotency_key",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::IdempotencyInProgress => "idempotency_in_progress",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::Internal => "internal",
            Self::Manage(m) => match m {
                ManageError::Invalid { .. } => "invalid_field",
                ManageError::SlugTaken(_) => "slug_taken",
                ManageError::MirrorPending { .. } => "mirror_pending",
                ManageError::NotFound { .. } => "not_found",
                ManageError::Database(_) => "database_unavailable",
                ManageError::Clerk(c) => match c {
                    ClerkWriteError::Rejected { .. } => "clerk_rejected",
                    ClerkWriteError::NotFound { .. } => "not_found",
                    ClerkWriteError::RateLimited { .. } => "rate_limited",
                    ClerkWriteError::Unavailable { .. } => "clerk_unavailable",
                    ClerkWriteError::Auth { .. } => "clerk_auth",
                    ClerkWriteError::Unknown { .. } => "clerk_outcome_unknown",
                    ClerkWriteError::Decode { .. } => "clerk_bad_answer",
                },
            },
        }
    }

    /// The message shown: what went wrong and what to do, never a token, a key or a database
    /// error's text.
    fn message(&self) -> String {
        match self {
            Self::Manage(ManageError::MirrorPending { .. }) => "Clerk made the change, but orgsync could not write it to \
                 the database yet; the webhook or the resync will bring it (retrying with the same Idempotency-Key is safe)"
                .to_owned(),
            Self::Manage(ManageError::Database(_)) => "the database is unavailable".to_owned(),
            Self::Manage(ManageError::Clerk(ClerkWriteError::Auth { .. })) => {
                "Clerk refused orgsync's CLERK_SECRET_KEY; an operator must fix it".to_owned()
            }
            other => other.to_string(),
        }
    }

    /// Clerk's own error code, when Clerk refused.
    fn clerk_code(&self) -> Option<&str> {
        match self {
            Self::Manage(ManageError::Clerk(
                ClerkWriteError::Rejected { code, .. } | ClerkWriteError::NotFound { code, .. },
            )) => code.as_deref(),
            _ => None,
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } | Self::Manage(ManageError::Invalid { field, .. }) => Some(field),
            _ => None,
        }
    }

    /// How long to wait before retrying, for the answers that say so.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Manage(ManageError::Clerk(ClerkWriteError::RateLimited { retry_after })) => {
                Some((*retry_after).max(Duration::from_secs(1)))
            }
            Self::Manage(ManageError::Clerk(ClerkWriteError::Unavailable { .. }))
            | Self::IdempotencyInProgress
            | Self::DatabaseUnavailable => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({ "code": self.code(), "message": self.message() });
        if let Some(c) = self.clerk_code() {
            error["clerk_code"] = c.into();
        }
        if let Some(f) = self.field() {
            error["field"] = f.into();
        }
        serde_json::json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "API request failed");
        } else {
            tracing::debug!(code = self.code(), "API request refused");
        }
        let mut resp = (status, Json(self.body())).into_response();
        if let Some(wait) = self.retry_after() {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clerk_refusals_keep_their_status_and_code() {
        let e = ApiError::Manage(ManageError::Clerk(ClerkWriteError::Rejected {
            status: 422,
            code: Some("form_identifier_exists".into()),
            message: "That slug is taken".into(),
        }));
        assert_eq!(e.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = e.body();
        assert_eq!(body["error"]["code"], "clerk_rejected");
        assert_eq!(body["error"]["clerk_code"], "form_identifier_exists");
    }

    #[test]
    fn rate_limits_answer_503_with_retry_after() {
        let e = ApiError::Manage(ManageError::Clerk(ClerkWriteError::RateLimited {
            retry_after: Duration::from_millis(2500),
        }));
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn mirror_pending_is_502_and_names_no_database_error() {
        let e = ApiError::Manage(ManageError::MirrorPending {
            operation: "create_hotel",
            reason: "connection refused to 10.0.0.5".into(),
        });
        assert_eq!(e.status_code(), StatusCode::BAD_GATEWAY);
        let body = e.body();
        assert_eq!(body["error"]["code"], "mirror_pending");
        assert!(!body.to_string().contains("10.0.0.5"));
    }
}
