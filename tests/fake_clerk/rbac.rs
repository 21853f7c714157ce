//! Instance RBAC writes: permissions (`POST /v1/organization_permissions` `{name, key,
//! description?}`, `PATCH|DELETE /v1/organization_permissions/{id}`), roles (`POST
//! /v1/organization_roles` `{name, key, description?, permissions? (ids),
//! include_in_initial_role_set?}`, `PATCH|DELETE /v1/organization_roles/{id}`), and a role's
//! permissions (`POST|DELETE /v1/organization_roles/{id}/permissions/{permission_id}`).
//!
//! As Clerk: keys are `org:feature:action` (permissions, never `org:sys_`) and `org:name`
//! (roles), unique (422 `form_identifier_exists`); system permissions cannot be changed (403);
//! a role held by members or pending invitations, or a default or creator role of a role set,
//! cannot be deleted (422); assigning a permission a role has is 409. Members' `permissions`
//! follow their role's (without a membership `updated_at` or webhook, as Clerk derives them).
//! Webhooks: `permission.created|updated|deleted`, `role.created|updated|deleted` (an assign or
//! remove is a `role.updated`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{patch, post};
use axum::Router;
use serde_json::{json, Map, Value};

use super::admission::{
    admit_write, clerk_error, format_invalid, identifier_exists, json_value, not_found, object, only, opt_str, req_str,
    wrong_type,
};
use super::state::{role_info, Kind};
use super::{Entry, Shared, World};

pub(super) fn routes(app: Router<Shared>) -> Router<Shared> {
    app.route("/v1/organization_permissions", post(create_permission))
        .route(
            "/v1/organization_permissions/{id}",
            patch(update_permission).delete(delete_permission),
        )
        .route("/v1/organization_roles", post(create_role))
        .route("/v1/organization_roles/{id}", patch(update_role).delete(delete_role))
        .route(
            "/v1/organization_roles/{id}/permissions/{permission_id}",
            post(assign_permission).delete(remove_permission),
        )
}

type Answer = Result<Response, Response>;

/// Admits a write, then runs `op` on the locked world.
async fn write(
    world: &Shared,
    method: &str,
    path: String,
    headers: &HeaderMap,
    body: &[u8],
    op: impl FnOnce(&mut World, &Value) -> Answer,
) -> Response {
    let body = match admit_write(world, method, &path, headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut w = world.lock().unwrap();
    op(&mut w, &body).unwrap_or_else(|e| e)
}

async fn create_permission(State(world): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let path = "/v1/organization_permissions".to_owned();
    write(&world, "POST", path, &headers, &body, create_permission_in).await
}

async fn update_permission(
    State(world): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/organization_permissions/{id}");
    write(&world, "PATCH", path, &headers, &body, |w, b| {
        update_permission_in(w, &id, b)
    })
    .await
}

async fn delete_permission(
    State(world): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/organization_permissions/{id}");
    write(&world, "DELETE", path, &headers, &body, |w, _| {
        delete_permission_in(w, &id)
    })
    .await
}

async fn create_role(State(world): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let path = "/v1/organization_roles".to_owned();
    write(&world, "POST", path, &headers, &body, create_role_in).await
}

async fn update_role(State(world): State<Shared>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let path = format!("/v1/organization_roles/{id}");
    write(&world, "PATCH", path, &headers, &body, |w, b| update_role_in(w, &id, b)).await
}

async fn delete_role(State(world): State<Shared>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let path = format!("/v1/organization_roles/{id}");
    write(&world, "DELETE", path, &headers, &body, |w, _| delete_role_in(w, &id)).await
}

async fn assign_permission(
    State(world): State<Shared>,
    Path((role, perm)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/organization_roles/{role}/permissions/{perm}");
    write(&world, "POST", path, &headers, &body, |w, _| {
        grant_in(w, &role, &perm, true)
    })
    .await
}

async fn remove_permission(
    State(world): State<Shared>,
    Path((role, perm)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/organization_roles/{role}/permissions/{perm}");
    write(&world, "DELETE", path, &headers, &body, |w, _| {
        grant_in(w, &role, &perm, false)
    })
    .await
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn permission_key_ok(key: &str) -> bool {
    let parts: Vec<&str> = key.split(':').collect();
    parts.len() == 3
        && parts[0] == "org"
        && segment_ok(parts[1])
        && segment_ok(parts[2])
        && !parts[1].starts_with("sys_")
}

fn role_key_ok(key: &str) -> bool {
    key.strip_prefix("org:").is_some_and(segment_ok)
}

fn permission_not_found(id: &str) -> Response {
    not_found(&format!("No permission was found with id {id}"))
}

fn role_missing(id: &str) -> Response {
    not_found(&format!("No organization role was found with id {id}"))
}

fn key_taken(w: &World, kind: Kind, key: &str, except: Option<&str>) -> bool {
    let c = match kind {
        Kind::Role => &w.roles,
        Kind::Permission => &w.permissions,
    };
    c.ordered
        .values()
        .any(|e| Some(e.id.as_str()) != except && e.value()["key"] == key)
}

fn system_refusal() -> Response {
    clerk_error(
        StatusCode::FORBIDDEN,
        "system permission",
        "System permissions cannot be modified or deleted.",
        "system_permission_update_not_allowed",
    )
}

fn create_permission_in(w: &mut World, body: &Value) -> Answer {
    let body = object(body)?;
    let name = req_str(body, "name")?;
    let key = req_str(body, "key")?;
    if !permission_key_ok(key) {
        return Err(format_invalid(
            "key",
            "key must have the format \"org:feature:action\" (lowercase letters, digits or underscores) and cannot begin with \"org:sys_\".",
        ));
    }
    if key_taken(w, Kind::Permission, key, None) {
        return Err(identifier_exists("key", "That key is taken. Please try another."));
    }
    let description = opt_str(body, "description")?.unwrap_or("");
    let at = w.clock.tick();
    let id = w.new_id("perm");
    let p = json!({
        "object": "permission", "id": id, "name": name, "key": key, "description": description,
        "type": "user", "created_at": at, "updated_at": at,
    });
    w.put_simple(Kind::Permission, &p);
    w.emit("permission.created", &p, at);
    Ok(json_value(&p))
}

fn update_permission_in(w: &mut World, id: &str, body: &Value) -> Answer {
    let body = object(body)?;
    let mut p = w
        .permissions
        .get(id)
        .map(Entry::value)
        .ok_or_else(|| permission_not_found(id))?;
    if p["type"] == "system" {
        return Err(system_refusal());
    }
    if let Some(name) = opt_str(body, "name")? {
        p["name"] = json!(name);
    }
    if let Some(key) = opt_str(body, "key")? {
        if !permission_key_ok(key) {
            return Err(format_invalid(
                "key",
                "key must have the format \"org:feature:action\".",
            ));
        }
        if key_taken(w, Kind::Permission, key, Some(id)) {
            return Err(identifier_exists("key", "That key is taken. Please try another."));
        }
        p["key"] = json!(key);
    }
    if let Some(d) = opt_str(body, "description")? {
        p["description"] = json!(d);
    }
    let at = w.clock.tick();
    p["updated_at"] = json!(at);
    w.put_simple(Kind::Permission, &p);
    // Roles embed their permissions; their holders carry the keys.
    rewrite_roles(w, |r| {
        let mut changed = false;
        if let Some(ps) = r["permissions"].as_array_mut() {
            for q in ps.iter_mut().filter(|q| q["id"] == id) {
                *q = p.clone();
                changed = true;
            }
        }
        changed
    });
    w.emit("permission.updated", &p, at);
    Ok(json_value(&p))
}

fn delete_permission_in(w: &mut World, id: &str) -> Answer {
    let p = w
        .permissions
        .get(id)
        .map(Entry::value)
        .ok_or_else(|| permission_not_found(id))?;
    if p["type"] == "system" {
        return Err(system_refusal());
    }
    w.permissions.remove(id);
    rewrite_roles(w, |r| {
        let Some(ps) = r["permissions"].as_array_mut() else {
            return false;
        };
        let before = ps.len();
        ps.retain(|q| q["id"] != id);
        ps.len() != before
    });
    let at = w.clock.tick();
    let deleted = json!({"object": "permission", "id": id, "deleted": true});
    w.emit("permission.deleted", &deleted, at);
    Ok(json_value(&deleted))
}

/// Applies `edit` to every stored role (keeping their `updated_at`) and re-derives the holders
/// of each role it changed.
fn rewrite_roles(w: &mut World, mut edit: impl FnMut(&mut Value) -> bool) {
    let roles: Vec<Value> = w.roles.ordered.values().map(Entry::value).collect();
    for mut r in roles {
        if edit(&mut r) {
            w.put_simple(Kind::Role, &r);
            let info = role_info(&r);
            w.refresh_role_holders(&info.key.clone(), &info);
        }
    }
}

/// Permission objects for ids, in the given order; Err is Clerk's 404 for an unknown one.
fn permissions_for(w: &World, body: &Map<String, Value>) -> Result<Option<Vec<Value>>, Response> {
    match body.get("permissions") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|id| {
                let id = id
                    .as_str()
                    .ok_or_else(|| wrong_type("permissions", "array of strings"))?;
                w.permissions
                    .get(id)
                    .map(Entry::value)
                    .ok_or_else(|| permission_not_found(id))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(wrong_type("permissions", "array")),
    }
}

fn create_role_in(w: &mut World, body: &Value) -> Answer {
    let body = object(body)?;
    only(
        body,
        &[
            "name",
            "key",
            "description",
            "permissions",
            "include_in_initial_role_set",
        ],
    )?;
    let name = req_str(body, "name")?;
    let key = req_str(body, "key")?;
    if !role_key_ok(key) {
        return Err(format_invalid(
            "key",
            "key must start with 'org:' and contain only lowercase alphanumeric characters and underscores.",
        ));
    }
    if key_taken(w, Kind::Role, key, None) {
        return Err(identifier_exists("key", "That key is taken. Please try another."));
    }
    let permissions = permissions_for(w, body)?.unwrap_or_default();
    let initial = match body.get("include_in_initial_role_set") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(wrong_type("include_in_initial_role_set", "boolean")),
    };
    let at = w.clock.tick();
    let id = w.new_id("role");
    let r = json!({
        "object": "role", "id": id, "name": name, "key": key,
        "description": opt_str(body, "description")?,
        "is_creator_eligible": permissions.iter().any(|p| p["key"] == "org:sys_memberships:manage"),
        "permissions": permissions, "created_at": at, "updated_at": at,
    });
    w.put_simple(Kind::Role, &r);
    if initial {
        if let Some(set) = w.role_sets.iter_mut().find(|s| s.kind == "initial") {
            set.role_ids.push(id.clone());
            set.updated_at = at;
        }
    }
    w.emit("role.created", &r, at);
    Ok(json_value(&r))
}

fn update_role_in(w: &mut World, id: &str, body: &Value) -> Answer {
    let body = object(body)?;
    let mut r = w.roles.get(id).map(Entry::value).ok_or_else(|| role_missing(id))?;
    let old_key = r["key"].as_str().unwrap().to_owned();
    if let Some(name) = opt_str(body, "name")? {
        r["name"] = json!(name);
    }
    if let Some(key) = opt_str(body, "key")? {
        if !role_key_ok(key) {
            return Err(format_invalid("key", "key must start with 'org:'."));
        }
        if key_taken(w, Kind::Role, key, Some(id)) {
            return Err(identifier_exists("key", "That key is taken. Please try another."));
        }
        r["key"] = json!(key);
    }
    if body.contains_key("description") {
        r["description"] = json!(opt_str(body, "description")?);
    }
    if let Some(ps) = permissions_for(w, body)? {
        r["permissions"] = json!(ps);
    }
    Ok(save_role(w, r, &old_key))
}

/// Stores a changed role with a fresh `updated_at`, re-derives its holders (and invitations,
/// when its key changed) and emits `role.updated`.
fn save_role(w: &mut World, mut r: Value, old_key: &str) -> Response {
    let at = w.clock.tick();
    r["updated_at"] = json!(at);
    w.put_simple(Kind::Role, &r);
    let info = role_info(&r);
    w.refresh_role_holders(old_key, &info);
    if info.key != old_key {
        let invitations: Vec<Value> = w
            .invitations
            .ordered
            .values()
            .map(Entry::value)
            .filter(|i| i["role"] == old_key)
            .collect();
        for mut i in invitations {
            i["role"] = json!(info.key);
            w.put_invitation_value(&i);
        }
    }
    w.emit("role.updated", &r, at);
    json_value(&r)
}

fn delete_role_in(w: &mut World, id: &str) -> Answer {
    let r = w.roles.get(id).map(Entry::value).ok_or_else(|| role_missing(id))?;
    let key = r["key"].clone();
    let held = w.memberships.ordered.values().any(|e| e.value()["role"] == key);
    let invited = w.invitations.ordered.values().any(|e| {
        let i = e.value();
        i["role"] == key && i["status"] == "pending"
    });
    let anchors = w
        .role_sets
        .iter()
        .any(|s| s.default_role_id.as_deref() == Some(id) || s.creator_role_id.as_deref() == Some(id));
    if held || invited || anchors {
        return Err(clerk_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "role in use",
            "The role cannot be deleted because it is used as a default or creator role, assigned to members, or exists in invitations.",
            "organization_role_in_use",
        ));
    }
    w.roles.remove(id);
    let at = w.clock.tick();
    for set in w.role_sets.iter_mut().filter(|s| s.role_ids.iter().any(|r| r == id)) {
        set.role_ids.retain(|r| r != id);
        set.updated_at = at;
    }
    let deleted = json!({"object": "role", "id": id, "slug": null, "deleted": true});
    w.emit("role.deleted", &deleted, at);
    Ok(json_value(&deleted))
}

fn grant_in(w: &mut World, role_id: &str, perm_id: &str, grant: bool) -> Answer {
    let mut r = w
        .roles
        .get(role_id)
        .map(Entry::value)
        .ok_or_else(|| role_missing(role_id))?;
    let p = w
        .permissions
        .get(perm_id)
        .map(Entry::value)
        .ok_or_else(|| permission_not_found(perm_id))?;
    let old_key = r["key"].as_str().unwrap().to_owned();
    let ps = r["permissions"].as_array_mut().expect("a role's permissions");
    let has = ps.iter().any(|q| q["id"] == perm_id);
    match (grant, has) {
        (true, true) => {
            return Err(clerk_error(
                StatusCode::CONFLICT,
                "permission already assigned",
                "The permission is already assigned to this role.",
                "duplicate_record",
            ))
        }
        (false, false) => {
            return Err(clerk_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "permission not assigned",
                "The permission is not assigned to this role.",
                "form_param_value_invalid",
            ))
        }
        (true, false) => ps.push(p),
        (false, true) => ps.retain(|q| q["id"] != perm_id),
    }
    Ok(save_role(w, r, &old_key))
}
