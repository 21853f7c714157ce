//! `/v1/hotels/{id}/members`: add, change the role of, remove, list.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, patch};
use axum::Router;
use serde::Deserialize;

use super::hotels::hotel_id;
use super::json::{parse, read_body};
use super::{answer, run_to_end, ApiError, ApiState};
use crate::clerk::UserId;
use crate::manage::members::{NewMember, RoleChange};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/hotels/{hotel_id}/members", get(list).post(add))
        .route(
            "/v1/hotels/{hotel_id}/members/{user_id}",
            patch(set_role).delete(remove),
        )
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::Invalid {
        field: "user_id".into(),
        message: e.to_string(),
    })
}

/// `POST /v1/hotels/{id}/members` `{user_id, role}` → 201 with the membership.
async fn add(
    State(state): State<ApiState>,
    Path(hotel): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let hotel = hotel_id(&hotel)?;
    let member: NewMember = parse(&read_body(&headers, body, state.max_body).await?)?;
    let manager = state.manager.clone();
    let view = run_to_end(async move { Ok(manager.add_member(&hotel, &member.user_id, &member.role).await?) }).await?;
    Ok(answer(StatusCode::CREATED, &view))
}

/// `PATCH /v1/hotels/{id}/members/{user_id}` `{role}` → the membership.
async fn set_role(
    State(state): State<ApiState>,
    Path((hotel, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let hotel = hotel_id(&hotel)?;
    let user = user_id(&user)?;
    let change: RoleChange = parse(&read_body(&headers, body, state.max_body).await?)?;
    let manager = state.manager.clone();
    let view = run_to_end(async move { Ok(manager.set_member_role(&hotel, &user, &change.role).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}

/// `DELETE /v1/hotels/{id}/members/{user_id}` → the ended membership (`removed_at` set); the
/// change feed already has its `deleted` row.
async fn remove(
    State(state): State<ApiState>,
    Path((hotel, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let hotel = hotel_id(&hotel)?;
    let user = user_id(&user)?;
    let manager = state.manager.clone();
    let view = run_to_end(async move { Ok(manager.remove_member(&hotel, &user).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    /// Also ended memberships.
    #[serde(default)]
    include_removed: bool,
}

/// `GET /v1/hotels/{id}/members[?include_removed=true]` → `{"members": [...]}` from the mirror.
async fn list(
    State(state): State<ApiState>,
    Path(hotel): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let hotel = hotel_id(&hotel)?;
    let Query(query) = query.map_err(|e| ApiError::Invalid {
        field: "include_removed".into(),
        message: e.body_text(),
    })?;
    let members = state.manager.list_members(&hotel, query.include_removed).await?;
    Ok(answer(StatusCode::OK, &serde_json::json!({ "members": members })))
}
