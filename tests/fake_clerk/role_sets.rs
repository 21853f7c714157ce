//! Role sets: `GET /v1/role_sets` (`limit`, `offset`, `order_by` `[+|-]created_at`, `query`;
//! newest first) and `GET /v1/role_sets/{key_or_id}`; `POST /v1/role_sets` `{name, key?,
//! description?, default_role_key, creator_role_key, type?, roles}`, `PATCH
//! /v1/role_sets/{key_or_id}`, `POST .../roles` `{role_keys, default_role_key?,
//! creator_role_key?}`, `POST .../replace` `{dest_role_set_key, reassignment_mappings?}`
//! (answers the deleted object), `POST .../roles/replace` `{role_key, to_role_key}`.
//!
//! Objects are Clerk's `RoleSet` with `RoleSetItem`s (their `members_count` counted over the
//! organizations using the set). Clerk sends no webhook for role sets; the members a replace
//! moves get `organizationMembership.updated`, and organizations moved to another set get a
//! new `role_set_key` and `updated_at` (without a webhook).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};

use super::admission::{
    admit, admit_write, clerk_error, format_invalid, identifier_exists, invalid, json_response, json_value, missing,
    not_found, object, only, opt_str, req_str, role_not_found, unprocessable, wrong_type,
};
use super::memberships::move_member;
use super::{Entry, FakeClerk, RoleSetRecord, Shared, World};

pub(super) fn routes(app: Router<Shared>) -> Router<Shared> {
    app.route("/v1/role_sets", get(list).post(create))
        .route("/v1/role_sets/{key}", get(get_one).patch(update))
        .route("/v1/role_sets/{key}/roles", post(add_roles))
        .route("/v1/role_sets/{key}/replace", post(replace_set))
        .route("/v1/role_sets/{key}/roles/replace", post(replace_role))
}

/// A role set for [`FakeClerk::put_role_set`]: roles by key (stored roles), the first the
/// creator role and the last the default role unless changed.
#[derive(Debug, Clone)]
pub struct RoleSetSeed {
    pub id: String,
    pub key: String,
    pub name: String,
    pub roles: Vec<String>,
    pub default_role: String,
    pub creator_role: String,
    pub initial: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

pub fn role_set(id: &str, key: &str, roles: &[&str], at: i64) -> RoleSetSeed {
    RoleSetSeed {
        id: id.to_owned(),
        key: key.to_owned(),
        name: key.trim_start_matches("role_set:").replace('_', " "),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        default_role: roles.last().expect("a role").to_string(),
        creator_role: roles[0].to_owned(),
        initial: false,
        created_at: at,
        updated_at: at,
    }
}

impl FakeClerk {
    /// Adds or replaces a role set; its roles must be stored ([`FakeClerk::put_role`]).
    pub fn put_role_set(&self, seed: &RoleSetSeed) {
        let mut w = self.world();
        let id_of = |w: &World, key: &str| w.stored_role(key).unwrap_or_else(|| panic!("no stored role {key}")).0;
        let record = RoleSetRecord {
            id: seed.id.clone(),
            key: seed.key.clone(),
            name: seed.name.clone(),
            description: None,
            kind: if seed.initial { "initial" } else { "custom" }.to_owned(),
            role_ids: seed.roles.iter().map(|k| id_of(&w, k)).collect(),
            default_role_id: Some(id_of(&w, &seed.default_role)),
            creator_role_id: Some(id_of(&w, &seed.creator_role)),
            created_at: seed.created_at,
            updated_at: seed.updated_at,
        };
        w.role_sets.retain(|s| s.id != record.id);
        w.role_sets.push(record);
        w.role_sets
            .sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    }

    /// The role set with this key or id, as the API answers it.
    pub fn role_set(&self, key_or_id: &str) -> Option<Value> {
        let w = self.world();
        w.role_set(key_or_id).map(|s| render(&w, s))
    }

    pub fn delete_role_set(&self, key_or_id: &str) {
        self.world()
            .role_sets
            .retain(|s| s.key != key_or_id && s.id != key_or_id);
    }
}

impl World {
    /// A stored role's id and key by key.
    fn stored_role(&self, key: &str) -> Option<(String, String)> {
        self.roles
            .ordered
            .values()
            .map(Entry::value)
            .find(|r| r["key"] == key)
            .map(|r| (r["id"].as_str().unwrap().to_owned(), key.to_owned()))
    }

    fn role_key_of(&self, id: &str) -> Option<String> {
        self.roles
            .get(id)
            .and_then(|e| e.value()["key"].as_str().map(str::to_owned))
    }
}

fn set_not_found() -> Response {
    not_found("Role set not found")
}

/// The `RoleSet` object, counting members per role over the organizations using it.
fn render(w: &World, s: &RoleSetRecord) -> Value {
    let orgs: Vec<String> = w
        .orgs
        .ordered
        .values()
        .map(Entry::value)
        .filter(|o| o["role_set_key"] == s.key.as_str())
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    let mut counts: HashMap<String, i64> = HashMap::new();
    for e in w.memberships.ordered.values() {
        if e.secondary.as_ref().is_some_and(|o| orgs.contains(o)) {
            let role = e.value()["role"].as_str().unwrap_or_default().to_owned();
            *counts.entry(role).or_default() += 1;
        }
    }
    let item = |rid: &str| -> Value {
        let Some(r) = w.roles.get(rid).map(Entry::value) else {
            return Value::Null;
        };
        let n = counts.get(r["key"].as_str().unwrap_or_default()).copied().unwrap_or(0);
        json!({
            "object": "role_set_item", "id": r["id"], "name": r["name"], "key": r["key"],
            "description": r["description"], "members_count": n, "has_members": n > 0,
            "created_at": r["created_at"], "updated_at": r["updated_at"],
        })
    };
    json!({
        "object": "role_set",
        "id": s.id,
        "name": s.name,
        "key": s.key,
        "description": s.description,
        "roles": s.role_ids.iter().map(|r| item(r)).collect::<Vec<_>>(),
        "default_role": s.default_role_id.as_deref().map(item),
        "creator_role": s.creator_role_id.as_deref().map(item),
        "type": s.kind,
        "role_set_migration": null,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    })
}

async fn list(State(world): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let params = match admit(&world, "/v1/role_sets", &headers, q).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ((limit, offset), ascending) = match (params.paging(), params.ascending(true)) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(m), _) | (_, Err(m)) => return unprocessable(m),
    };
    let query = params.one("query").map(str::to_lowercase);
    let w = world.lock().unwrap();
    let mut sets: Vec<&RoleSetRecord> = w
        .role_sets
        .iter()
        .filter(|s| !w.hidden_from_listings.contains(&s.id))
        .filter(|s| {
            query
                .as_ref()
                .is_none_or(|q| s.id == *q || s.key.to_lowercase().contains(q) || s.name.to_lowercase().contains(q))
        })
        .collect();
    if !ascending {
        sets.reverse();
    }
    let total = sets.len();
    let data: Vec<Value> = sets.iter().skip(offset).take(limit).map(|s| render(&w, s)).collect();
    json_response(json!({"data": data, "total_count": total}).to_string())
}

async fn get_one(
    State(world): State<Shared>,
    Path(key): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = admit(&world, &format!("/v1/role_sets/{key}"), &headers, q).await {
        return r;
    }
    let w = world.lock().unwrap();
    match w.role_set(&key) {
        Some(s) => json_value(&render(&w, s)),
        None => set_not_found(),
    }
}

type Answer = Result<Response, Response>;

async fn write(
    world: &Shared,
    path: String,
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
    op: impl FnOnce(&mut World, &Map<String, Value>) -> Answer,
) -> Response {
    let body = match admit_write(world, method, &path, headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut w = world.lock().unwrap();
    object(&body).and_then(|b| op(&mut w, b)).unwrap_or_else(|e| e)
}

async fn create(State(world): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    write(&world, "/v1/role_sets".into(), "POST", &headers, &body, create_in).await
}

async fn update(State(world): State<Shared>, Path(key): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let path = format!("/v1/role_sets/{key}");
    write(&world, path, "PATCH", &headers, &body, |w, b| update_in(w, &key, b)).await
}

async fn add_roles(State(world): State<Shared>, Path(key): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let path = format!("/v1/role_sets/{key}/roles");
    write(&world, path, "POST", &headers, &body, |w, b| add_roles_in(w, &key, b)).await
}

async fn replace_set(
    State(world): State<Shared>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/role_sets/{key}/replace");
    write(&world, path, "POST", &headers, &body, |w, b| replace_set_in(w, &key, b)).await
}

async fn replace_role(
    State(world): State<Shared>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/role_sets/{key}/roles/replace");
    write(&world, path, "POST", &headers, &body, |w, b| {
        replace_role_in(w, &key, b)
    })
    .await
}

fn key_ok(key: &str) -> bool {
    key.strip_prefix("role_set:").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// Role ids for `param`'s role keys (1 to 10, stored roles).
fn role_ids(w: &World, body: &Map<String, Value>, param: &str) -> Result<Vec<String>, Response> {
    let keys = match body.get(param) {
        None | Some(Value::Null) => return Err(missing(param)),
        Some(Value::Array(keys)) => keys,
        Some(_) => return Err(wrong_type(param, "array")),
    };
    if keys.is_empty() || keys.len() > 10 {
        return Err(invalid(param, &format!("{param} must contain between 1 and 10 roles")));
    }
    keys.iter()
        .map(|k| {
            let k = k.as_str().ok_or_else(|| wrong_type(param, "array of strings"))?;
            w.stored_role(k).map(|(id, _)| id).ok_or_else(|| role_not_found(param))
        })
        .collect()
}

/// The id of the role `param` names, which must be one of `in_set`.
fn member_role(
    w: &World,
    body: &Map<String, Value>,
    param: &str,
    in_set: &[String],
) -> Result<Option<String>, Response> {
    let Some(key) = opt_str(body, param)? else {
        return Ok(None);
    };
    match w.stored_role(key) {
        Some((id, _)) if in_set.contains(&id) => Ok(Some(id)),
        _ => Err(invalid(param, &format!("{param} must be one of the role set's roles"))),
    }
}

fn make_initial(w: &mut World, id: &str, at: i64) {
    for s in w.role_sets.iter_mut().filter(|s| s.kind == "initial" && s.id != id) {
        s.kind = "custom".into();
        s.updated_at = at;
    }
}

fn create_in(w: &mut World, body: &Map<String, Value>) -> Answer {
    only(
        body,
        &[
            "name",
            "key",
            "description",
            "default_role_key",
            "creator_role_key",
            "type",
            "roles",
        ],
    )?;
    let name = req_str(body, "name")?;
    let key = match opt_str(body, "key")? {
        Some(k) => k.to_owned(),
        None => format!("role_set:{}", super::orgs::slug_from(name).replace('-', "_")),
    };
    if !key_ok(&key) {
        return Err(format_invalid(
            "key",
            "key must start with 'role_set:' and contain only lowercase alphanumeric characters and underscores.",
        ));
    }
    if w.role_set(&key).is_some() {
        return Err(identifier_exists("key", "That key is taken. Please try another."));
    }
    let roles = role_ids(w, body, "roles")?;
    req_str(body, "default_role_key")?;
    req_str(body, "creator_role_key")?;
    let default = member_role(w, body, "default_role_key", &roles)?;
    let creator = member_role(w, body, "creator_role_key", &roles)?;
    let kind = match opt_str(body, "type")? {
        None | Some("custom") => "custom",
        Some("initial") => "initial",
        Some(_) => return Err(invalid("type", "type must be one of initial, custom")),
    };
    let at = w.clock.tick();
    let id = w.new_id("rs");
    if kind == "initial" {
        make_initial(w, &id, at);
    }
    let record = RoleSetRecord {
        id,
        key,
        name: name.to_owned(),
        description: opt_str(body, "description")?.map(str::to_owned),
        kind: kind.to_owned(),
        role_ids: roles,
        default_role_id: default,
        creator_role_id: creator,
        created_at: at,
        updated_at: at,
    };
    let answer = render(w, &record);
    w.role_sets.push(record);
    Ok(json_value(&answer))
}

fn index_of(w: &World, key_or_id: &str) -> Result<usize, Response> {
    w.role_sets
        .iter()
        .position(|s| s.key == key_or_id || s.id == key_or_id)
        .ok_or_else(set_not_found)
}

/// Moves every organization using set `from` to set `to` (new `updated_at`, no webhook).
fn move_orgs(w: &mut World, from: &str, to: &str) -> Vec<String> {
    let orgs: Vec<Value> = w
        .orgs
        .ordered
        .values()
        .map(Entry::value)
        .filter(|o| o["role_set_key"] == from)
        .collect();
    let mut ids = Vec::new();
    for mut o in orgs {
        let at = w.clock.tick();
        o["role_set_key"] = json!(to);
        o["updated_at"] = json!(at);
        w.put_org_value(&o);
        let id = o["id"].as_str().unwrap().to_owned();
        w.refresh_org(&id);
        ids.push(id);
    }
    ids
}

fn update_in(w: &mut World, key: &str, body: &Map<String, Value>) -> Answer {
    only(
        body,
        &[
            "name",
            "key",
            "description",
            "type",
            "default_role_key",
            "creator_role_key",
        ],
    )?;
    let i = index_of(w, key)?;
    let mut s = w.role_sets[i].clone();
    if let Some(name) = opt_str(body, "name")? {
        s.name = name.to_owned();
    }
    if body.contains_key("description") {
        s.description = opt_str(body, "description")?.map(str::to_owned);
    }
    if let Some(new_key) = opt_str(body, "key")? {
        if !key_ok(new_key) {
            return Err(format_invalid("key", "key must start with 'role_set:'."));
        }
        if w.role_set(new_key).is_some_and(|o| o.id != s.id) {
            return Err(identifier_exists("key", "That key is taken. Please try another."));
        }
        s.key = new_key.to_owned();
    }
    match opt_str(body, "type")? {
        None => {}
        Some("initial") => s.kind = "initial".into(),
        Some(_) => return Err(invalid("type", "type can only be set to initial")),
    }
    if let Some(d) = member_role(w, body, "default_role_key", &s.role_ids)? {
        s.default_role_id = Some(d);
    }
    if let Some(c) = member_role(w, body, "creator_role_key", &s.role_ids)? {
        s.creator_role_id = Some(c);
    }
    let at = w.clock.tick();
    s.updated_at = at;
    if s.kind == "initial" {
        make_initial(w, &s.id, at);
    }
    let old_key = w.role_sets[i].key.clone();
    if old_key != s.key {
        move_orgs(w, &old_key, &s.key);
    }
    let answer = render(w, &s);
    w.role_sets[i] = s;
    Ok(json_value(&answer))
}

fn add_roles_in(w: &mut World, key: &str, body: &Map<String, Value>) -> Answer {
    let i = index_of(w, key)?;
    let added = role_ids(w, body, "role_keys")?;
    let mut s = w.role_sets[i].clone();
    for id in added {
        if !s.role_ids.contains(&id) {
            s.role_ids.push(id);
        }
    }
    if let Some(d) = member_role(w, body, "default_role_key", &s.role_ids)? {
        s.default_role_id = Some(d);
    }
    if let Some(c) = member_role(w, body, "creator_role_key", &s.role_ids)? {
        s.creator_role_id = Some(c);
    }
    s.updated_at = w.clock.tick();
    let answer = render(w, &s);
    w.role_sets[i] = s;
    Ok(json_value(&answer))
}

/// Memberships (id, role key) of the organizations using set `key`.
fn members_of_set(w: &World, key: &str) -> Vec<(String, String)> {
    let orgs: Vec<String> = w
        .orgs
        .ordered
        .values()
        .map(Entry::value)
        .filter(|o| o["role_set_key"] == key)
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    w.memberships
        .ordered
        .values()
        .filter(|e| e.secondary.as_ref().is_some_and(|o| orgs.contains(o)))
        .map(|e| (e.id.clone(), e.value()["role"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

fn replace_set_in(w: &mut World, key: &str, body: &Map<String, Value>) -> Answer {
    only(body, &["dest_role_set_key", "reassignment_mappings"])?;
    let i = index_of(w, key)?;
    let dest_key = req_str(body, "dest_role_set_key")?;
    let dest = w.role_set(dest_key).cloned().ok_or_else(set_not_found)?;
    let source = w.role_sets[i].clone();
    if dest.id == source.id {
        return Err(invalid("dest_role_set_key", "the destination must be another role set"));
    }
    let mappings: HashMap<String, String> = match body.get("reassignment_mappings") {
        None | Some(Value::Null) => HashMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    v.as_str()
                        .ok_or_else(|| wrong_type("reassignment_mappings", "object of strings"))?
                        .to_owned(),
                ))
            })
            .collect::<Result<_, Response>>()?,
        Some(_) => return Err(wrong_type("reassignment_mappings", "object")),
    };
    let dest_keys: Vec<String> = dest.role_ids.iter().filter_map(|id| w.role_key_of(id)).collect();
    let mut moves = Vec::new();
    for (m, role) in members_of_set(w, &source.key) {
        if dest_keys.contains(&role) {
            continue;
        }
        match mappings.get(&role) {
            Some(to) if dest_keys.contains(to) => moves.push((m, to.clone())),
            _ => {
                return Err(clerk_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "missing reassignment mapping",
                    &format!(
                        "Members hold role {role}, which the destination role set lacks: map it to one of its roles."
                    ),
                    "form_param_missing",
                ))
            }
        }
    }
    move_orgs(w, &source.key, &dest.key);
    for (m, to) in moves {
        move_member(w, &m, &to);
    }
    if source.kind == "initial" {
        let at = w.clock.tick();
        if let Some(d) = w.role_sets.iter_mut().find(|s| s.id == dest.id) {
            d.kind = "initial".into();
            d.updated_at = at;
        }
    }
    w.role_sets.retain(|s| s.id != source.id);
    Ok(json_value(
        &json!({"object": "role_set", "id": source.id, "deleted": true}),
    ))
}

fn replace_role_in(w: &mut World, key: &str, body: &Map<String, Value>) -> Answer {
    only(body, &["role_key", "to_role_key"])?;
    let i = index_of(w, key)?;
    let from = req_str(body, "role_key")?;
    let to = req_str(body, "to_role_key")?;
    let s = w.role_sets[i].clone();
    let from_id = w
        .stored_role(from)
        .map(|(id, _)| id)
        .filter(|id| s.role_ids.contains(id))
        .ok_or_else(|| role_not_found("role_key"))?;
    let to_id = member_role(w, body, "to_role_key", &s.role_ids)?.expect("to_role_key is given");
    if from_id == to_id {
        return Err(invalid("to_role_key", "to_role_key must differ from role_key"));
    }
    for (m, role) in members_of_set(w, &s.key) {
        if role == from {
            move_member(w, &m, to);
        }
    }
    let mut s = s;
    s.role_ids.retain(|r| *r != from_id);
    for anchor in [&mut s.default_role_id, &mut s.creator_role_id] {
        if anchor.as_deref() == Some(from_id.as_str()) {
            *anchor = Some(to_id.clone());
        }
    }
    s.updated_at = w.clock.tick();
    let answer = render(w, &s);
    w.role_sets[i] = s;
    Ok(json_value(&answer))
}
