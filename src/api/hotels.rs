//! `/v1/hotels`: create (with `Idempotency-Key`), read, update, delete.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};

use super::idempotency::{self, Claim, IdempotencyKey};
use super::json::{parse, read_body};
use super::{answer, run_to_end, ApiError, ApiState};
use crate::clerk::HotelId;
use crate::manage::hotels::{CreatePlan, HotelChanges, NewHotel};
use crate::manage::input::Slug;
use crate::manage::view::HotelView;
use crate::tokens::Caller;

/// How long a repeat waits for a running request with the same key before it gets 409.
const IDEMPOTENT_WAIT: Duration = Duration::from_secs(10);

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/hotels", post(create))
        .route("/v1/hotels/{hotel_id}", get(read).patch(update).delete(delete))
}

/// A hotel id from the path: 422 naming `hotel_id` when malformed.
pub(super) fn hotel_id(raw: &str) -> Result<HotelId, ApiError> {
    HotelId::parse(raw).map_err(|e| ApiError::Invalid {
        field: "hotel_id".into(),
        message: e.to_string(),
    })
}

/// `POST /v1/hotels` → 201 with the hotel and its members, as the mirror now holds them.
async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_body).await?;
    let hotel: NewHotel = parse(&bytes)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(IdempotencyKey::parse)
                .ok_or(ApiError::BadIdempotencyKey)?,
        ),
    };
    let Some(key) = key else {
        let manager = state.manager.clone();
        let view = run_to_end(async move {
            let plan = CreatePlan::first(&hotel);
            Ok(manager.create_hotel(&hotel, &plan).await?)
        })
        .await?;
        return Ok(answer(StatusCode::CREATED, &view));
    };

    let pool = state.manager.pool().clone();
    let proposed = CreatePlan::first(&hotel).slug;
    let claim = idempotency::claim(
        &pool,
        &caller.name,
        &key,
        &idempotency::fingerprint(&bytes),
        &proposed,
        IDEMPOTENT_WAIT,
    )
    .await?;
    let plan = match claim {
        Claim::Replay { status, body } => {
            let mut resp = answer(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), &body);
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(resp);
        }
        Claim::Mismatch => return Err(ApiError::IdempotencyKeyReused),
        Claim::Busy => return Err(ApiError::IdempotencyInProgress),
        Claim::Fresh { slug } => plan_with(&slug, false)?,
        Claim::Resume { slug } => plan_with(&slug, true)?,
    };
    let manager = state.manager.clone();
    let token = caller.name.clone();
    // The create and the bookkeeping of its key run to their end together.
    run_to_end(async move {
        let result: Result<HotelView, ApiError> = manager.create_hotel(&hotel, &plan).await.map_err(ApiError::from);
        let (status, body) = match &result {
            Ok(view) => (
                StatusCode::CREATED,
                serde_json::to_value(view).expect("views serialize"),
            ),
            Err(e) => (e.status_code(), e.body()),
        };
        let stored = if status.is_server_error() {
            idempotency::release(&pool, &token, &key).await
        } else {
            idempotency::finish(&pool, &token, &key, status.as_u16(), &body).await
        };
        if let Err(e) = stored {
            // The lease runs out and a repeat resumes with the same slug: still no duplicate.
            tracing::warn!(error = %e, "storing the answer of an Idempotency-Key failed");
        }
        result.map(|view| answer(StatusCode::CREATED, &view))
    })
    .await
}

fn plan_with(slug: &str, look_up_first: bool) -> Result<CreatePlan, ApiError> {
    let slug: Slug = slug.parse().map_err(|_| ApiError::Internal)?;
    Ok(CreatePlan { slug, look_up_first })
}

/// `GET /v1/hotels/{id}` → the hotel and its live members; 404 when the mirror has no row, 410
/// once it is deleted.
async fn read(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = hotel_id(&id)?;
    let view = state.manager.get_hotel(&id).await?;
    if view.deleted_at.is_some() {
        return Err(ApiError::HotelDeleted(id.to_string()));
    }
    Ok(answer(StatusCode::OK, &view))
}

/// `PATCH /v1/hotels/{id}` `{name?, slug?, max_allowed_memberships?, public_metadata?,
/// private_metadata?}` → the hotel as the mirror now holds it.
async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = hotel_id(&id)?;
    let changes: HotelChanges = parse(&read_body(&headers, body, state.max_body).await?)?;
    let manager = state.manager.clone();
    let view = run_to_end(async move { Ok(manager.update_hotel(&id, &changes).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}

/// `DELETE /v1/hotels/{id}` → the tombstoned hotel (`deleted_at` set, no members): its
/// memberships and invitations ended with it, in the mirror and the change feed.
async fn delete(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = hotel_id(&id)?;
    let manager = state.manager.clone();
    let view = run_to_end(async move { Ok(manager.delete_hotel(&id).await?) }).await?;
    Ok(answer(StatusCode::OK, &view))
}
