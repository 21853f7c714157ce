//! Organization writes: `POST /v1/organizations`, `PATCH|DELETE /v1/organizations/{id}`,
//! `PATCH|PUT /v1/organizations/{id}/metadata`.
//!
//! As Clerk: a create without `slug` gets one made from the name (`-2`, `-3`, ... appended
//! while taken); an explicit slug already taken is 422 `form_identifier_exists`; `created_by`
//! becomes a member with the role set's creator role (`org:admin` by default) and an unknown
//! one is 400 `organization_creator_not_found`; `PATCH` takes no metadata (422
//! `form_param_unknown`, since API version 2026-05-12: use `/metadata`); a delete removes the
//! organization's memberships and invitations and answers Clerk's deleted object. Webhooks:
//! `organization.created` (then `organizationMembership.created` for the creator),
//! `organization.updated`, `organization.deleted` (Clerk sends no membership events for the
//! memberships an organization delete removes).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{patch, post};
use axum::Router;
use serde_json::{json, Map, Value};

use super::admission::{
    admit_write, clerk_error, clerk_error_meta, format_invalid, identifier_exists, invalid, json_value, object, only,
    opt_object, opt_str, org_not_found, wrong_type,
};
use super::state::apply_role;
use super::{builders, Entry, Shared, World};

pub(super) fn routes(app: Router<Shared>) -> Router<Shared> {
    app.route("/v1/organizations", post(create))
        .route("/v1/organizations/{id}", patch(update).delete(delete))
        .route(
            "/v1/organizations/{id}/metadata",
            patch(merge_metadata).put(replace_metadata),
        )
}

type Answer = Result<Response, Response>;

fn either(a: Answer) -> Response {
    a.unwrap_or_else(|e| e)
}

async fn create(State(world): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body = match admit_write(&world, "POST", "/v1/organizations", &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut w = world.lock().unwrap();
    either(create_in(&mut w, &body))
}

async fn update(State(world): State<Shared>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let path = format!("/v1/organizations/{id}");
    let body = match admit_write(&world, "PATCH", &path, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut w = world.lock().unwrap();
    either(update_in(&mut w, &id, &body))
}

async fn delete(State(world): State<Shared>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let path = format!("/v1/organizations/{id}");
    if let Err(r) = admit_write(&world, "DELETE", &path, &headers, &body).await {
        return r;
    }
    let mut w = world.lock().unwrap();
    either(delete_in(&mut w, &id))
}

async fn merge_metadata(
    State(world): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/organizations/{id}/metadata");
    let body = match admit_write(&world, "PATCH", &path, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut w = world.lock().unwrap();
    either(metadata_in(&mut w, &id, &body, true))
}

async fn replace_metadata(
    State(world): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/organizations/{id}/metadata");
    let body = match admit_write(&world, "PUT", &path, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut w = world.lock().unwrap();
    either(metadata_in(&mut w, &id, &body, false))
}

fn slug_taken() -> Response {
    identifier_exists("slug", "That slug is taken. Please try another.")
}

fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_slug(w: &World, slug: &str, except: Option<&str>) -> Result<(), Response> {
    if !valid_slug(slug) {
        return Err(format_invalid(
            "slug",
            "slug can contain only lowercase alphanumeric characters and the dash \"-\".",
        ));
    }
    if w.slug_taken(slug, except) {
        return Err(slug_taken());
    }
    Ok(())
}

/// Clerk's slug from a name: lowercase ASCII letters and digits, other runs become `-`.
pub(super) fn slug_from(name: &str) -> String {
    let mut slug = String::new();
    for c in name.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-').to_owned();
    if slug.is_empty() {
        "organization".to_owned()
    } else {
        slug
    }
}

fn generated_slug(w: &World, name: &str) -> String {
    let base = slug_from(name);
    let mut slug = base.clone();
    let mut n = 2;
    while w.slug_taken(&slug, None) {
        slug = format!("{base}-{n}");
        n += 1;
    }
    slug
}

fn name_param(body: &Map<String, Value>) -> Result<Option<&str>, Response> {
    let Some(name) = opt_str(body, "name")? else {
        return Ok(None);
    };
    if name.trim().is_empty() {
        return Err(super::admission::missing("name"));
    }
    if name.chars().count() > 256 || name.contains("://") || name.contains('<') {
        return Err(invalid("name", &format!("The organization name {name:?} is invalid")));
    }
    Ok(Some(name))
}

fn max_memberships(body: &Map<String, Value>) -> Result<Option<i64>, Response> {
    match body.get("max_allowed_memberships") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n)),
            _ => Err(invalid(
                "max_allowed_memberships",
                "max_allowed_memberships must be an integer greater or equal to zero",
            )),
        },
    }
}

/// `created_at` given as RFC 3339, in Unix milliseconds.
fn created_at_param(body: &Map<String, Value>) -> Result<Option<i64>, Response> {
    let Some(at) = opt_str(body, "created_at")? else {
        return Ok(None);
    };
    chrono::DateTime::parse_from_rfc3339(at)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            clerk_error_meta(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid format",
                "created_at must contain a datetime specified in RFC3339 format (e.g. `2022-10-20T10:00:27.645Z`).",
                "form_param_invalid_time",
                Some(json!({"param_name": "created_at"})),
            )
        })
}

fn role_set_param(w: &World, body: &Map<String, Value>) -> Result<Option<String>, Response> {
    match opt_str(body, "role_set_key")? {
        None => Ok(None),
        Some(k) => match w.role_set(k) {
            Some(set) => Ok(Some(set.key.clone())),
            None => Err(invalid("role_set_key", &format!("No role set was found with key {k}."))),
        },
    }
}

fn create_in(w: &mut World, body: &Value) -> Answer {
    let body = object(body)?;
    let name = name_param(body)?.ok_or_else(|| super::admission::missing("name"))?;
    let slug = match opt_str(body, "slug")? {
        Some(s) => {
            check_slug(w, s, None)?;
            s.to_owned()
        }
        None => generated_slug(w, name),
    };
    let creator = match opt_str(body, "created_by")? {
        Some(u) => Some(w.users.get(u).map(Entry::value).ok_or_else(|| {
            clerk_error(
                StatusCode::BAD_REQUEST,
                "creator not found",
                &format!("No users found with id {u}."),
                "organization_creator_not_found",
            )
        })?),
        None => None,
    };
    let public = opt_object(body, "public_metadata")?.unwrap_or_else(|| json!({}));
    let private = opt_object(body, "private_metadata")?.unwrap_or_else(|| json!({}));
    let max = max_memberships(body)?.unwrap_or(5);
    let role_set_key = match role_set_param(w, body)? {
        Some(k) => Some(k),
        None => w.role_sets.iter().find(|s| s.kind == "initial").map(|s| s.key.clone()),
    };
    let created_at = created_at_param(body)?;
    let now = w.clock.tick();
    let id = w.new_id("org");
    let org = json!({
        "object": "organization",
        "id": id,
        "name": name,
        "slug": slug,
        "image_url": format!("https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCJ9?org={id}"),
        "has_image": false,
        "members_count": 0,
        "missing_member_with_elevated_permissions": false,
        "pending_invitations_count": 0,
        "max_allowed_memberships": max,
        "admin_delete_enabled": true,
        "public_metadata": public,
        "private_metadata": private,
        "created_by": creator.as_ref().map(|u| u["id"].clone()).unwrap_or(json!("")),
        "role_set_key": role_set_key,
        "created_at": created_at.unwrap_or(now),
        "updated_at": now,
    });
    w.put_org_value(&org);
    let mut member = None;
    if let Some(user) = &creator {
        let creator_key = role_set_key
            .as_deref()
            .and_then(|k| w.role_set(k))
            .and_then(|s| s.creator_role_id.clone())
            .and_then(|rid| {
                w.roles
                    .get(&rid)
                    .map(|e| e.value()["key"].as_str().unwrap_or("").to_owned())
            })
            .unwrap_or_else(|| "org:admin".to_owned());
        let role = w.role_by_key(&creator_key).or_else(|| w.role_by_key("org:admin"));
        let at = w.clock.tick();
        let mid = w.new_id("orgmem");
        let mut m = builders::membership(&mid, &org, user, &creator_key, at, at);
        if let Some(role) = role {
            apply_role(&mut m, &role);
        }
        m["public_metadata"] = json!({});
        m["private_metadata"] = json!({});
        w.put_membership_value(&m);
        member = Some((mid, at));
    }
    w.refresh_org(&id);
    let org = w.orgs.get(&id).unwrap().value();
    w.emit("organization.created", &org, now);
    if let Some((mid, at)) = member {
        let m = w.memberships.get(&mid).unwrap().value();
        w.emit("organizationMembership.created", &m, at);
    }
    Ok(json_value(&org))
}

fn update_in(w: &mut World, id: &str, body: &Value) -> Answer {
    let body = object(body)?;
    only(
        body,
        &[
            "name",
            "slug",
            "max_allowed_memberships",
            "admin_delete_enabled",
            "created_at",
            "role_set_key",
        ],
    )?;
    let mut org = w.orgs.get(id).map(Entry::value).ok_or_else(org_not_found)?;
    if let Some(name) = name_param(body)? {
        org["name"] = json!(name);
    }
    if let Some(slug) = opt_str(body, "slug")? {
        check_slug(w, slug, Some(id))?;
        org["slug"] = json!(slug);
    }
    if let Some(max) = max_memberships(body)? {
        org["max_allowed_memberships"] = json!(max);
    }
    match body.get("admin_delete_enabled") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => org["admin_delete_enabled"] = json!(b),
        Some(_) => return Err(wrong_type("admin_delete_enabled", "boolean")),
    }
    if let Some(at) = created_at_param(body)? {
        org["created_at"] = json!(at);
    }
    if let Some(key) = role_set_param(w, body)? {
        org["role_set_key"] = json!(key);
    }
    let now = w.clock.tick();
    org["updated_at"] = json!(now);
    // A changed created_at moves the organization in the listing order.
    w.orgs.remove(id);
    w.put_org_value(&org);
    w.refresh_org(id);
    let org = w.orgs.get(id).unwrap().value();
    w.emit("organization.updated", &org, now);
    Ok(json_value(&org))
}

fn delete_in(w: &mut World, id: &str) -> Answer {
    let org = w.orgs.get(id).map(Entry::value).ok_or_else(org_not_found)?;
    w.orgs.remove(id);
    for m in w.memberships_where(|e| e.secondary.as_deref() == Some(id)) {
        w.memberships.remove(&m);
    }
    let invitations: Vec<String> = w
        .invitations
        .ordered
        .values()
        .filter(|e| e.secondary.as_deref() == Some(id))
        .map(|e| e.id.clone())
        .collect();
    for i in invitations {
        w.invitations.remove(&i);
    }
    let now = w.clock.tick();
    let deleted = json!({"object": "organization", "id": id, "slug": org["slug"], "deleted": true});
    w.emit("organization.deleted", &deleted, now);
    Ok(json_value(&deleted))
}

/// Clerk's deep merge: objects merge key by key, `null` removes a key, anything else replaces.
fn deep_merge(into: &mut Value, patch: &Value) {
    match (into.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (k, v) in patch {
                if v.is_null() {
                    target.remove(k);
                } else if v.is_object() && target.get(k).is_some_and(Value::is_object) {
                    deep_merge(target.get_mut(k).unwrap(), v);
                } else {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
        _ => *into = patch.clone(),
    }
}

fn metadata_in(w: &mut World, id: &str, body: &Value, merge: bool) -> Answer {
    let body = object(body)?;
    only(body, &["public_metadata", "private_metadata"])?;
    let mut org = w.orgs.get(id).map(Entry::value).ok_or_else(org_not_found)?;
    for field in ["public_metadata", "private_metadata"] {
        let Some(given) = opt_object(body, field)? else {
            continue;
        };
        if merge {
            if !org[field].is_object() {
                org[field] = json!({});
            }
            deep_merge(&mut org[field], &given);
        } else {
            org[field] = given;
        }
    }
    let now = w.clock.tick();
    org["updated_at"] = json!(now);
    w.put_org_value(&org);
    w.refresh_org(id);
    let org = w.orgs.get(id).unwrap().value();
    w.emit("organization.updated", &org, now);
    Ok(json_value(&org))
}
