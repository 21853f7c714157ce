//! Builders of Clerk's role, permission and invitation events (and of user status and
//! membership permissions), in the fixtures' exact shapes with the ids and times a test chooses.
//! `ts` is the envelope timestamp, passed through as given (seconds or milliseconds).

use serde_json::{json, Value};

use super::fixture_json;

fn envelope(kind: &str, ts: i64, edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = fixture_json(kind);
    v["timestamp"] = json!(ts);
    edit(&mut v["data"]);
    v
}

/// The permission object Clerk sends (alone or embedded in a role); its name carries the version.
pub fn permission_data(id: &str, key: &str, created: i64, updated: i64) -> Value {
    json!({"object": "permission", "id": id, "name": format!("{key} @{updated}"), "key": key,
           "description": format!("grants {key}"), "type": "custom", "created_at": created, "updated_at": updated})
}

pub fn permission(kind: &str, id: &str, key: &str, created: i64, updated: i64, ts: i64) -> Value {
    envelope(kind, ts, |d| *d = permission_data(id, key, created, updated))
}

pub fn permission_deleted(id: &str, ts: i64) -> Value {
    envelope("permission.deleted", ts, |d| d["id"] = json!(id))
}

/// A role embedding `permissions` (each already a [`permission_data`] object).
pub fn role(kind: &str, id: &str, key: &str, permissions: Vec<Value>, created: i64, updated: i64, ts: i64) -> Value {
    envelope(kind, ts, |d| {
        d["id"] = json!(id);
        d["key"] = json!(key);
        d["name"] = json!(format!("{key} @{updated}"));
        d["permissions"] = Value::Array(permissions);
        d["created_at"] = json!(created);
        d["updated_at"] = json!(updated);
    })
}

pub fn role_deleted(id: &str, ts: i64) -> Value {
    envelope("role.deleted", ts, |d| d["id"] = json!(id))
}

/// An invitation; `created`/`updated` None leaves the field out (as Clerk's revocation does).
#[allow(clippy::too_many_arguments)]
pub fn invitation(
    kind: &str,
    id: &str,
    org: &str,
    email: &str,
    role: &str,
    created: Option<i64>,
    updated: Option<i64>,
    ts: i64,
) -> Value {
    envelope(kind, ts, |d| {
        d["id"] = json!(id);
        d["organization_id"] = json!(org);
        d["email_address"] = json!(email);
        d["role"] = json!(role);
        let o = d.as_object_mut().unwrap();
        o.remove("created_at");
        o.remove("updated_at");
        o.remove("user_id");
        if let Some(c) = created {
            o.insert("created_at".into(), json!(c));
        }
        if let Some(u) = updated {
            o.insert("updated_at".into(), json!(u));
        }
    })
}

/// Sets a user event's `banned` and `locked`.
pub fn with_status(mut user_event: Value, banned: bool, locked: bool) -> Value {
    user_event["data"]["banned"] = json!(banned);
    user_event["data"]["locked"] = json!(locked);
    user_event
}

/// Sets a membership event's own permission keys.
pub fn with_permissions(mut membership_event: Value, keys: &[&str]) -> Value {
    membership_event["data"]["permissions"] = json!(keys);
    membership_event
}
