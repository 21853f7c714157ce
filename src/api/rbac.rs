//! `/v1/permissions`, `/v1/roles`, `/v1/role_sets`: the instance's RBAC, administered through
//! Clerk with the mirror (and `member_permissions`) showing the change at the answer
//! ([`crate::manage::rbac`]).
//!
//! - `POST /v1/permissions` `{name, key, description?}` → 201; `PATCH|DELETE
//!   /v1/permissions/{id}` → 200 (a deleted one has `deleted_at`)
//! - `POST /v1/roles` `{name, key, description?, permissions?, include_in_initial_role_set?}` →
//!   201; `PATCH|DELETE /v1/roles/{id}` → 200; `POST|DELETE
//!   /v1/roles/{id}/permissions/{permission_id}` → 200 with the role (and how many members hold it)
//! - `GET /v1/role_sets` → `{"role_sets": [...]}`, `GET /v1/role_sets/{key_or_id}` (from the
//!   mirror); `POST /v1/role_sets` → 201; `PATCH /v1/role_sets/{key}`; `POST
//!   /v1/role_sets/{key}/roles` `{role_keys, default_role_key?, creator_role_key?}`; `POST
//!   /v1/role_sets/{key}/replace` `{dest_role_set_key, reassignment_mappings?}`; `POST
//!   /v1/role_sets/{key}/roles/replace` `{role_key, to_role_key}`

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, patch, post};
use axum::Router;
use serde::de::DeserializeOwned;

use super::json::{parse, read_body};
use super::{answer, run_to_end, ApiError, ApiState};
use crate::clerk::{PermissionId, RoleId};
use crate::manage::rbac_input::{
    NewPermissionInput, NewRoleInput, NewRoleSetInput, PermissionUpdate, RoleReplacement, RoleSetAddition,
    RoleSetReplacement, RoleSetUpdate, RoleUpdate,
};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/permissions", post(create_permission))
        .route(
            "/v1/permissions/{permission_id}",
            patch(update_permission).delete(delete_permission),
        )
        .route("/v1/roles", post(create_role))
        .route("/v1/roles/{role_id}", patch(update_role).delete(delete_role))
        .route(
            "/v1/roles/{role_id}/permissions/{permission_id}",
            post(grant).delete(revoke),
        )
        .route("/v1/role_sets", get(list_role_sets).post(create_role_set))
        .route("/v1/role_sets/{key}", get(read_role_set).patch(update_role_set))
        .route("/v1/role_sets/{key}/roles", post(add_roles))
        .route("/v1/role_sets/{key}/replace", post(replace_role_set))
        .route("/v1/role_sets/{key}/roles/replace", post(replace_role))
}

fn permission_id(raw: &str) -> Result<PermissionId, ApiError> {
    PermissionId::parse(raw).map_err(|e| ApiError::Invalid {
        field: "permission_id".into(),
        message: e.to_string(),
    })
}

fn role_id(raw: &str) -> Result<RoleId, ApiError> {
    RoleId::parse(raw).map_err(|e| ApiError::Invalid {
        field: "role_id".into(),
        message: e.to_string(),
    })
}

/// A role set key or id from the path: what could name one (letters, digits, `_`, `:`).
fn role_set_ref(raw: &str) -> Result<String, ApiError> {
    let plain =
        !raw.is_empty() && raw.len() <= 256 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    if plain {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::Invalid {
            field: "key".into(),
            message: "must be a role set key (role_set:…) or id".into(),
        })
    }
}

async fn body<T: DeserializeOwned>(state: &ApiState, headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    parse(&read_body(headers, body, state.max_body).await?)
}

async fn create_permission(State(state): State<ApiState>, headers: HeaderMap, b: Body) -> Result<Response, ApiError> {
    let input: NewPermissionInput = body(&state, &headers, b).await?;
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.create_permission(&input).await?) }).await?;
    Ok(answer(StatusCode::CREATED, &view))
}

async fn update_permission(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let id = permission_id(&id)?;
    let changes: PermissionUpdate = body(&state, &headers, b).await?;
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.update_permission(&id, &changes).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}

async fn delete_permission(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = permission_id(&id)?;
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.delete_permission(&id).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}

async fn create_role(State(state): State<ApiState>, headers: HeaderMap, b: Body) -> Result<Response, ApiError> {
    let input: NewRoleInput = body(&state, &headers, b).await?;
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.create_role(&input).await?) }).await?;
    Ok(answer(StatusCode::CREATED, &view))
}

async fn update_role(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let id = role_id(&id)?;
    let changes: RoleUpdate = body(&state, &headers, b).await?;
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.update_role(&id, &changes).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}

async fn delete_role(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = role_id(&id)?;
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.delete_role(&id).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}

async fn grant(
    State(state): State<ApiState>,
    Path((role, perm)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    set_permission(state, &role, &perm, true).await
}

async fn revoke(
    State(state): State<ApiState>,
    Path((role, perm)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    set_permission(state, &role, &perm, false).await
}

async fn set_permission(state: ApiState, role: &str, perm: &str, grant: bool) -> Result<Response, ApiError> {
    let (role, perm) = (role_id(role)?, permission_id(perm)?);
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.set_role_permission(&role, &perm, grant).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}

async fn list_role_sets(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let sets = state.manager.list_role_sets().await?;
    Ok(answer(StatusCode::OK, &serde_json::json!({ "role_sets": sets })))
}

async fn read_role_set(State(state): State<ApiState>, Path(key): Path<String>) -> Result<Response, ApiError> {
    let key = role_set_ref(&key)?;
    Ok(answer(StatusCode::OK, &state.manager.get_role_set(&key).await?))
}

async fn create_role_set(State(state): State<ApiState>, headers: HeaderMap, b: Body) -> Result<Response, ApiError> {
    let input: NewRoleSetInput = body(&state, &headers, b).await?;
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.create_role_set(&input).await?) }).await?;
    Ok(answer(StatusCode::CREATED, &view))
}

async fn update_role_set(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let key = role_set_ref(&key)?;
    let changes: RoleSetUpdate = body(&state, &headers, b).await?;
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.update_role_set(&key, &changes).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}

async fn add_roles(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let key = role_set_ref(&key)?;
    let addition: RoleSetAddition = body(&state, &headers, b).await?;
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.add_role_set_roles(&key, &addition).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}

async fn replace_role_set(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let key = role_set_ref(&key)?;
    let replacement: RoleSetReplacement = body(&state, &headers, b).await?;
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.replace_role_set(&key, &replacement).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}

async fn replace_role(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let key = role_set_ref(&key)?;
    let replacement: RoleReplacement = body(&state, &headers, b).await?;
    let m = state.manager.clone();
    let view = run_to_end(async move { Ok(m.replace_role_set_role(&key, &replacement).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}
