//! The read endpoints of organizations, memberships and users (see the module list in
//! `mod.rs`), paged and filtered as Clerk's OpenAPI spec defines them.

use std::collections::HashSet;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::admission::{admit, clerk_error, json_response, ordered, page_json, unprocessable};
use super::{Entry, Shared};

pub(super) fn routes(app: Router<Shared>) -> Router<Shared> {
    app.route("/v1/organizations", get(list_organizations))
        .route("/v1/organizations/{id}", get(get_organization))
        .route("/v1/organizations/{id}/memberships", get(list_organization_memberships))
        .route("/v1/organization_memberships", get(list_memberships))
        .route("/v1/users", get(list_users))
        .route("/v1/users/count", get(count_users))
}

async fn list_organizations(State(world): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let params = match admit(&world, "/v1/organizations", &headers, q).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ((limit, offset), ascending) = match (params.paging(), params.ascending(true)) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(m), _) | (_, Err(m)) => return unprocessable(m),
    };
    let ids: HashSet<String> = params.all("organization_id").into_iter().collect();
    if ids.len() > 100 {
        return unprocessable("organization_id accepts up to 100 ids");
    }
    let w = world.lock().unwrap();
    let filter = |e: &&Entry| {
        if ids.is_empty() {
            !w.hidden_from_listings.contains(&e.id)
        } else {
            ids.contains(&e.id)
        }
    };
    let total = ordered(&w.orgs, ascending).filter(filter).count();
    let data = page_json(ordered(&w.orgs, ascending).filter(filter), offset, limit);
    json_response(format!(r#"{{"data":{data},"total_count":{total}}}"#))
}

async fn get_organization(
    State(world): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = admit(&world, &format!("/v1/organizations/{id}"), &headers, q).await {
        return r;
    }
    let w = world.lock().unwrap();
    match w.org_entry(&id) {
        Some(e) => json_response(e.json.to_string()),
        None => clerk_error(
            StatusCode::NOT_FOUND,
            "not found",
            "Resource not found",
            "resource_not_found",
        ),
    }
}

async fn list_memberships(State(world): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let params = match admit(&world, "/v1/organization_memberships", &headers, q).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ((limit, offset), ascending) = match (params.paging(), params.ascending(true)) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(m), _) | (_, Err(m)) => return unprocessable(m),
    };
    let w = world.lock().unwrap();
    let filter = |e: &&Entry| !w.hidden_from_listings.contains(&e.id);
    let total = ordered(&w.memberships, ascending).filter(filter).count();
    let data = page_json(ordered(&w.memberships, ascending).filter(filter), offset, limit);
    json_response(format!(r#"{{"data":{data},"total_count":{total}}}"#))
}

async fn list_organization_memberships(
    State(world): State<Shared>,
    Path(org_id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let params = match admit(&world, &format!("/v1/organizations/{org_id}/memberships"), &headers, q).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ((limit, offset), ascending) = match (params.paging(), params.ascending(true)) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(m), _) | (_, Err(m)) => return unprocessable(m),
    };
    let users: HashSet<String> = params.all("user_id").into_iter().collect();
    if users.len() > 100 {
        return unprocessable("user_id accepts up to 100 ids");
    }
    let w = world.lock().unwrap();
    if w.orgs.get(&org_id).is_none() {
        return clerk_error(
            StatusCode::NOT_FOUND,
            "not found",
            "Resource not found",
            "resource_not_found",
        );
    }
    let filter = |e: &&Entry| {
        e.secondary.as_deref() == Some(org_id.as_str())
            && (users.is_empty() || e.user_id.as_ref().is_some_and(|u| users.contains(u)))
    };
    let total = ordered(&w.memberships, ascending).filter(filter).count();
    let data = page_json(ordered(&w.memberships, ascending).filter(filter), offset, limit);
    json_response(format!(r#"{{"data":{data},"total_count":{total}}}"#))
}

async fn list_users(State(world): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let params = match admit(&world, "/v1/users", &headers, q).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ((limit, offset), ascending) = match (params.paging(), params.ascending(true)) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(m), _) | (_, Err(m)) => return unprocessable(m),
    };
    let ids: HashSet<String> = params.all("user_id").into_iter().collect();
    if ids.len() > 100 {
        return unprocessable("user_id accepts up to 100 ids");
    }
    let w = world.lock().unwrap();
    let filter = |e: &&Entry| {
        if ids.is_empty() {
            !w.hidden_from_listings.contains(&e.id)
        } else {
            ids.contains(&e.id)
        }
    };
    let data = match params.one("starting_after") {
        None => page_json(ordered(&w.users, ascending).filter(filter), offset, limit),
        Some(_) if offset > 0 => return unprocessable("starting_after cannot be combined with a non-zero offset"),
        Some(cursor) => {
            let Some(at) = w.users.by_id.get(cursor).copied() else {
                return unprocessable("starting_after must be the id of a user");
            };
            let key = (at, cursor.to_owned());
            let rest: Box<dyn Iterator<Item = &Entry>> = if ascending {
                Box::new(
                    w.users
                        .ordered
                        .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
                        .map(|(_, e)| e),
                )
            } else {
                Box::new(w.users.ordered.range(..key).rev().map(|(_, e)| e))
            };
            page_json(rest.filter(filter), 0, limit)
        }
    };
    json_response(data)
}

async fn count_users(State(world): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = admit(&world, "/v1/users/count", &headers, q).await {
        return r;
    }
    let n = world.lock().unwrap().users.len();
    json_response(json!({"object": "total_count", "total_count": n}).to_string())
}
