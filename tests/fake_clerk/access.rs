//! Roles, permissions and invitations in the fake: the three instance-wide listings (real
//! `limit`/`offset` paging, `order_by`, `total_count`), the by-id endpoints with Clerk's 404
//! body, and builders of the objects in Clerk's shapes (`Role`, `Permission`,
//! `OrganizationInvitation`). Injected failures and gates apply as to every endpoint.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::admission::{admit, clerk_error, json_response, ordered, page_json, unprocessable};
use super::state::Kind;
use super::{Collection, Entry, FakeClerk, Shared, World};

pub(super) fn routes(app: Router<Shared>) -> Router<Shared> {
    app.route("/v1/organization_roles", get(list_roles))
        .route("/v1/organization_roles/{id}", get(get_role))
        .route("/v1/organization_permissions", get(list_permissions))
        .route("/v1/organization_permissions/{id}", get(get_permission))
        .route("/v1/organization_invitations", get(list_invitations))
        .route("/v1/organizations/{org}/invitations/{id}", get(get_invitation))
        .route("/v1/organizations/{org}/invitations", get(list_org_invitations))
}

impl FakeClerk {
    /// Adds or replaces a role (a [`role`] value).
    pub fn put_role(&self, r: &Value) {
        self.world().put_simple(Kind::Role, r);
    }

    /// Adds or replaces a permission (a [`permission`] value).
    pub fn put_permission(&self, p: &Value) {
        self.world().put_simple(Kind::Permission, p);
    }

    /// Adds or replaces an invitation (an [`invitation`] value).
    pub fn put_invitation(&self, i: &Value) {
        self.world().put_invitation_value(i);
    }

    pub fn delete_role(&self, id: &str) {
        self.world().roles.remove(id);
    }

    pub fn delete_permission(&self, id: &str) {
        self.world().permissions.remove(id);
    }

    pub fn delete_invitation(&self, id: &str) {
        self.world().invitations.remove(id);
    }

    /// The stored role with this key.
    pub fn role_by_key(&self, key: &str) -> Option<Value> {
        let w = self.world();
        let found = w.roles.ordered.values().map(Entry::value).find(|r| r["key"] == key);
        found
    }

    /// The stored invitation with this id.
    pub fn invitation_by_id(&self, id: &str) -> Option<Value> {
        self.world().invitations.get(id).map(Entry::value)
    }
}

/// A Permission object.
pub fn permission(id: &str, key: &str, created_at: i64, updated_at: i64) -> Value {
    json!({
        "object": "permission",
        "id": id,
        "name": key.rsplit(':').next().unwrap_or(key),
        "key": key,
        "description": format!("may {key}"),
        "type": if key.starts_with("org:sys_") { "system" } else { "user" },
        "created_at": created_at,
        "updated_at": updated_at
    })
}

/// A Role object embedding its permission set (`permissions`: [`permission`] values).
pub fn role(id: &str, key: &str, permissions: &[Value], created_at: i64, updated_at: i64) -> Value {
    json!({
        "object": "role",
        "id": id,
        "name": key.trim_start_matches("org:"),
        "key": key,
        "description": format!("the {key} role"),
        "is_creator_eligible": key == "org:admin",
        "permissions": permissions,
        "created_at": created_at,
        "updated_at": updated_at
    })
}

/// An OrganizationInvitation object (with the `url` Clerk sends, which orgsync never stores).
pub fn invitation(
    id: &str,
    org_id: &str,
    email: &str,
    role: &str,
    status: &str,
    created_at: i64,
    updated_at: i64,
) -> Value {
    json!({
        "object": "organization_invitation",
        "id": id,
        "email_address": email,
        "role": role,
        "role_name": role.trim_start_matches("org:"),
        "organization_id": org_id,
        "status": status,
        "public_metadata": {},
        "private_metadata": {},
        "url": format!("https://accounts.example.com/accept?__clerk_ticket=secret_{id}"),
        "expires_at": created_at + 30 * 86_400_000,
        "created_at": created_at,
        "updated_at": updated_at
    })
}

/// A listing of one collection: `{data, total_count}`, paged by `limit`/`offset`, ordered by
/// `order_by` (newest first by default).
async fn list_of(
    world: &Shared,
    path: &str,
    headers: &HeaderMap,
    q: Option<String>,
    pick: fn(&World) -> &Collection,
) -> Response {
    let params = match admit(world, path, headers, q).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ((limit, offset), ascending) = match (params.paging(), params.ascending(true)) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(m), _) | (_, Err(m)) => return unprocessable(m),
    };
    let w = world.lock().unwrap();
    let c = pick(&w);
    let filter = |e: &&Entry| !w.hidden_from_listings.contains(&e.id);
    let total = ordered(c, ascending).filter(filter).count();
    let data = page_json(ordered(c, ascending).filter(filter), offset, limit);
    json_response(format!(r#"{{"data":{data},"total_count":{total}}}"#))
}

/// One object of a collection by id, or Clerk's 404.
async fn by_id(
    world: &Shared,
    path: &str,
    headers: &HeaderMap,
    q: Option<String>,
    id: &str,
    pick: fn(&World) -> &Collection,
    org: Option<&str>,
) -> Response {
    if let Err(r) = admit(world, path, headers, q).await {
        return r;
    }
    let w = world.lock().unwrap();
    match pick(&w)
        .get(id)
        .filter(|e| org.is_none() || e.secondary.as_deref() == org)
    {
        Some(e) => json_response(e.json.to_string()),
        None => clerk_error(
            StatusCode::NOT_FOUND,
            "not found",
            "Resource not found",
            "resource_not_found",
        ),
    }
}

async fn list_roles(State(world): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    list_of(&world, "/v1/organization_roles", &headers, q, |w| &w.roles).await
}

async fn list_permissions(State(world): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    list_of(&world, "/v1/organization_permissions", &headers, q, |w| &w.permissions).await
}

async fn list_invitations(State(world): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    list_of(&world, "/v1/organization_invitations", &headers, q, |w| &w.invitations).await
}

async fn get_role(
    State(world): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let path = format!("/v1/organization_roles/{id}");
    by_id(&world, &path, &headers, q, &id, |w| &w.roles, None).await
}

async fn get_permission(
    State(world): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let path = format!("/v1/organization_permissions/{id}");
    by_id(&world, &path, &headers, q, &id, |w| &w.permissions, None).await
}

async fn get_invitation(
    State(world): State<Shared>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let path = format!("/v1/organizations/{org}/invitations/{id}");
    by_id(&world, &path, &headers, q, &id, |w| &w.invitations, Some(&org)).await
}

/// `GET /v1/organizations/{id}/invitations`: `status` filters, newest first by default.
async fn list_org_invitations(
    State(world): State<Shared>,
    Path(org): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let path = format!("/v1/organizations/{org}/invitations");
    let params = match admit(&world, &path, &headers, q).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ((limit, offset), ascending) = match (params.paging(), params.ascending(true)) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(m), _) | (_, Err(m)) => return unprocessable(m),
    };
    let status = params.one("status").map(str::to_owned);
    let w = world.lock().unwrap();
    if w.orgs.get(&org).is_none() {
        return super::admission::org_not_found();
    }
    let filter = |e: &&Entry| {
        e.secondary.as_deref() == Some(org.as_str())
            && status.as_ref().is_none_or(|s| e.value()["status"] == s.as_str())
    };
    let total = ordered(&w.invitations, ascending).filter(filter).count();
    let data = page_json(ordered(&w.invitations, ascending).filter(filter), offset, limit);
    json_response(format!(r#"{{"data":{data},"total_count":{total}}}"#))
}
