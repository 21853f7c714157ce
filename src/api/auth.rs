//! Bearer-token authentication of every `/v1` request ([`crate::tokens`]).

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::tokens;

/// 401 without a valid live token, 403 for a read-only token on anything but `GET`/`HEAD`;
/// otherwise the request goes on with its [`tokens::Caller`] in the extensions. The token itself
/// is never logged (only the caller's name is, by the handlers that need it).
pub(super) async fn authenticate(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let Some(presented) = tokens::bearer(request.headers()) else {
        return ApiError::Unauthorized.into_response();
    };
    let caller = match tokens::authenticate(state.manager.pool(), presented).await {
        Ok(Some(caller)) => caller,
        Ok(None) => return ApiError::Unauthorized.into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reads && !caller.can_write() {
        return ApiError::ReadOnly.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}
