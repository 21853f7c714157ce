//! `GET /v1/access?user_id=&hotel_id=[&permission=]`: what a user may do in a hotel and why, the
//! same answer as `orgsync access --json` ([`crate::ops::access`]).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::{answer, ApiError, ApiState};
use crate::clerk::{HotelId, UserId};
use crate::ops::access::check_access;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/v1/access", get(access))
}

/// 200 with the answer (`held` says whether the permission asked about is held); 422 naming a
/// missing or malformed parameter.
async fn access(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let param = |name: &'static str| {
        params.get(name).ok_or_else(|| ApiError::Invalid {
            field: name.into(),
            message: "is required".into(),
        })
    };
    let invalid = |name: &'static str| {
        move |e: crate::clerk::IdError| ApiError::Invalid {
            field: name.into(),
            message: e.to_string(),
        }
    };
    let user = UserId::parse(param("user_id")?).map_err(invalid("user_id"))?;
    let hotel = HotelId::parse(param("hotel_id")?).map_err(invalid("hotel_id"))?;
    let permission = params.get("permission").map(String::as_str);
    if permission.is_some_and(|p| p.is_empty() || p.len() > 256) {
        return Err(ApiError::Invalid {
            field: "permission".into(),
            message: "must hold 1-256 characters".into(),
        });
    }
    let found = check_access(state.manager.pool(), user.as_str(), hotel.as_str(), permission).await?;
    Ok(answer(StatusCode::OK, &found))
}
