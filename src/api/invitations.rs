//! `/v1/hotels/{id}/invitations`: invite one, invite up to ten, revoke.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use super::hotels::hotel_id;
use super::json::{parse, read_body};
use super::{answer, run_to_end, ApiError, ApiState};
use crate::clerk::InvitationId;
use crate::manage::invitations::{NewInvite, Revocation};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/hotels/{hotel_id}/invitations", post(invite))
        .route("/v1/hotels/{hotel_id}/invitations/bulk", post(invite_many))
        .route("/v1/hotels/{hotel_id}/invitations/{invitation_id}/revoke", post(revoke))
}

/// `POST /v1/hotels/{id}/invitations` `{email_address, role, inviter_user_id?, redirect_url?,
/// expires_in_days?, notify?, public_metadata?, private_metadata?}` → 201 with the invitation.
async fn invite(
    State(state): State<ApiState>,
    Path(hotel): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let hotel = hotel_id(&hotel)?;
    let invite: NewInvite = parse(&read_body(&headers, body, state.max_body).await?)?;
    let manager = state.manager.clone();
    let view = run_to_end(async move { Ok(manager.invite(&hotel, &invite).await?) }).await?;
    Ok(answer(StatusCode::CREATED, &view))
}

/// `POST /v1/hotels/{id}/invitations/bulk` with an array of 1 to 10 invitations → 201
/// `{"invitations": [...]}`.
async fn invite_many(
    State(state): State<ApiState>,
    Path(hotel): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let hotel = hotel_id(&hotel)?;
    let invites: Vec<NewInvite> = parse(&read_body(&headers, body, state.max_body).await?)?;
    let manager = state.manager.clone();
    let views = run_to_end(async move { Ok(manager.invite_many(&hotel, &invites).await?) }).await?;
    Ok(answer(
        StatusCode::CREATED,
        &serde_json::json!({ "invitations": views }),
    ))
}

/// `POST /v1/hotels/{id}/invitations/{invitation_id}/revoke` `{requesting_user_id?}` (or no
/// body) → the revoked invitation.
async fn revoke(
    State(state): State<ApiState>,
    Path((hotel, invitation)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let hotel = hotel_id(&hotel)?;
    let invitation = InvitationId::parse(&invitation).map_err(|e| ApiError::Invalid {
        field: "invitation_id".into(),
        message: e.to_string(),
    })?;
    let bytes = read_body(&headers, body, state.max_body).await?;
    let revocation: Revocation = if bytes.iter().all(u8::is_ascii_whitespace) {
        Revocation::default()
    } else {
        parse(&bytes)?
    };
    let manager = state.manager.clone();
    let view =
        run_to_end(async move { Ok(manager.revoke_invitation(&hotel, &invitation, &revocation).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}
