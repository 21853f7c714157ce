//! The fake's state beyond the stored objects: its clock, ids, role lookups, the derived
//! fields Clerk computes (member counts, a membership's permissions, the organization embedded
//! in a membership), and the one way a write emits a webhook.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;
use serde_json::{json, Value};

use super::{str_field, Entry, World};

/// Clerk's clock as the fake keeps it: this machine's, moved by `offset_ms`, and strictly
/// increasing across writes (two writes in one millisecond still get distinct `updated_at`).
#[derive(Default)]
pub(super) struct Clock {
    pub(super) offset_ms: i64,
    last_ms: i64,
}

fn system_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

impl Clock {
    /// The time of a write: later than every earlier one.
    pub(super) fn tick(&mut self) -> i64 {
        let t = (system_ms() + self.offset_ms).max(self.last_ms + 1);
        self.last_ms = t;
        t
    }

    /// Now, never before the last write.
    pub(super) fn now(&self) -> i64 {
        (system_ms() + self.offset_ms).max(self.last_ms)
    }

    /// `Date` as Clerk sends it: whole seconds (truncated), IMF-fixdate.
    pub(super) fn http_date(&self) -> HeaderValue {
        let at = chrono::DateTime::from_timestamp_millis(self.now()).expect("a representable time");
        HeaderValue::from_str(&at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).unwrap()
    }
}

/// A role set as stored: its roles by role id (keys can change), rendered on read.
#[derive(Debug, Clone)]
pub(super) struct RoleSetRecord {
    pub(super) id: String,
    pub(super) key: String,
    pub(super) name: String,
    pub(super) description: Option<String>,
    /// `initial` or `custom`.
    pub(super) kind: String,
    pub(super) role_ids: Vec<String>,
    pub(super) default_role_id: Option<String>,
    pub(super) creator_role_id: Option<String>,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
}

/// What a membership takes from its role.
#[derive(Debug, Clone)]
pub(super) struct RoleInfo {
    /// `None` for the built-in `org:admin` / `org:member` of an instance whose roles the test
    /// did not seed.
    pub(super) id: Option<String>,
    pub(super) key: String,
    pub(super) name: String,
    pub(super) permissions: Vec<String>,
}

/// The system permissions Clerk gives its default roles.
const ADMIN_PERMISSIONS: [&str; 6] = [
    "org:sys_profile:manage",
    "org:sys_profile:delete",
    "org:sys_memberships:read",
    "org:sys_memberships:manage",
    "org:sys_domains:read",
    "org:sys_domains:manage",
];

impl World {
    /// A fresh id with Clerk's prefix (`org`, `orgmem`, ...): ASCII letters and digits.
    pub(super) fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_3fake{:022}", self.next_id)
    }

    pub(super) fn put_org_value(&mut self, org: &Value) {
        let entry = Entry {
            id: str_field(org, "id"),
            created_at: org["created_at"].as_i64().unwrap(),
            secondary: org["slug"].as_str().map(str::to_owned),
            user_id: None,
            json: org.to_string().into(),
        };
        self.orgs.put(entry);
    }

    pub(super) fn put_user_value(&mut self, user: &Value) {
        let entry = Entry {
            id: str_field(user, "id"),
            created_at: user["created_at"].as_i64().unwrap(),
            secondary: None,
            user_id: None,
            json: user.to_string().into(),
        };
        self.users.put(entry);
    }

    pub(super) fn put_membership_value(&mut self, m: &Value) {
        let entry = Entry {
            id: str_field(m, "id"),
            created_at: m["created_at"].as_i64().unwrap(),
            secondary: m["organization"]["id"].as_str().map(str::to_owned),
            user_id: m["public_user_data"]["user_id"].as_str().map(str::to_owned),
            json: m.to_string().into(),
        };
        self.memberships.put(entry);
    }

    pub(super) fn put_invitation_value(&mut self, i: &Value) {
        let entry = Entry {
            id: str_field(i, "id"),
            created_at: i["created_at"].as_i64().unwrap(),
            secondary: i["organization_id"].as_str().map(str::to_owned),
            user_id: None,
            json: i.to_string().into(),
        };
        self.invitations.put(entry);
    }

    pub(super) fn put_simple(&mut self, kind: Kind, v: &Value) {
        let entry = Entry {
            id: str_field(v, "id"),
            created_at: v["created_at"].as_i64().unwrap(),
            secondary: None,
            user_id: None,
            json: v.to_string().into(),
        };
        match kind {
            Kind::Role => self.roles.put(entry),
            Kind::Permission => self.permissions.put(entry),
        }
    }

    /// An organization by id, or else by slug (as `GET /v1/organizations/{id_or_slug}`).
    pub(super) fn org_entry(&self, id_or_slug: &str) -> Option<&Entry> {
        self.orgs.get(id_or_slug).or_else(|| {
            self.orgs
                .ordered
                .values()
                .find(|e| e.secondary.as_deref() == Some(id_or_slug))
        })
    }

    pub(super) fn slug_taken(&self, slug: &str, except_id: Option<&str>) -> bool {
        self.orgs
            .ordered
            .values()
            .any(|e| e.secondary.as_deref() == Some(slug) && Some(e.id.as_str()) != except_id)
    }

    /// Ids of the memberships matching `keep`, oldest first.
    pub(super) fn memberships_where(&self, keep: impl Fn(&Entry) -> bool) -> Vec<String> {
        self.memberships
            .ordered
            .values()
            .filter(|e| keep(e))
            .map(|e| e.id.clone())
            .collect()
    }

    /// The membership of `user_id` in `org_id`.
    pub(super) fn membership_of(&self, org_id: &str, user_id: &str) -> Option<Value> {
        self.memberships
            .ordered
            .values()
            .find(|e| e.secondary.as_deref() == Some(org_id) && e.user_id.as_deref() == Some(user_id))
            .map(Entry::value)
    }

    /// A role by key: a stored role, else Clerk's default `org:admin` / `org:member` when the
    /// test stored no role with that key.
    pub(super) fn role_by_key(&self, key: &str) -> Option<RoleInfo> {
        let stored = self.roles.ordered.values().map(Entry::value).find(|r| r["key"] == key);
        if let Some(r) = stored {
            return Some(role_info(&r));
        }
        let (name, permissions): (&str, Vec<String>) = match key {
            "org:admin" => ("Admin", ADMIN_PERMISSIONS.iter().map(|p| p.to_string()).collect()),
            "org:member" => ("Member", vec!["org:sys_memberships:read".to_owned()]),
            _ => return None,
        };
        Some(RoleInfo {
            id: None,
            key: key.to_owned(),
            name: name.to_owned(),
            permissions,
        })
    }

    /// The role `key` as organization `org` may use it: Err is Clerk's refusal.
    pub(super) fn role_for_org(&self, org: &Value, key: &str) -> Result<RoleInfo, axum::response::Response> {
        let not_found = || super::admission::role_not_found("role");
        let info = self.role_by_key(key).ok_or_else(not_found)?;
        if let Some(set) = org["role_set_key"].as_str().and_then(|k| self.role_set(k)) {
            let in_set = info.id.as_ref().is_some_and(|id| set.role_ids.contains(id));
            if !in_set {
                return Err(not_found());
            }
        }
        Ok(info)
    }

    pub(super) fn role_set(&self, key_or_id: &str) -> Option<&super::RoleSetRecord> {
        self.role_sets.iter().find(|s| s.key == key_or_id || s.id == key_or_id)
    }

    /// Recomputes the counts Clerk derives on an organization (no `updated_at` change, as in
    /// Clerk's own payloads) and the copy of it every membership embeds.
    pub(super) fn refresh_org(&mut self, org_id: &str) {
        let Some(mut org) = self.orgs.get(org_id).map(Entry::value) else {
            return;
        };
        let members = self.memberships_where(|e| e.secondary.as_deref() == Some(org_id));
        let pending = self
            .invitations
            .ordered
            .values()
            .filter(|e| e.secondary.as_deref() == Some(org_id))
            .filter(|e| e.value()["status"] == "pending")
            .count();
        org["members_count"] = json!(members.len());
        org["pending_invitations_count"] = json!(pending);
        self.put_org_value(&org);
        for id in members {
            let mut m = self.memberships.get(&id).unwrap().value();
            m["organization"] = org.clone();
            self.put_membership_value(&m);
        }
    }

    /// Rewrites the memberships holding role `old_key` from `role` (its key, name and
    /// permissions may have changed), without touching their `updated_at`, as Clerk derives
    /// them.
    pub(super) fn refresh_role_holders(&mut self, old_key: &str, role: &RoleInfo) {
        let holders: Vec<Value> = self
            .memberships
            .ordered
            .values()
            .map(Entry::value)
            .filter(|m| m["role"] == old_key)
            .collect();
        for mut m in holders {
            apply_role(&mut m, role);
            self.put_membership_value(&m);
        }
    }

    /// Queues the webhook Clerk sends for this change.
    pub(super) fn emit(&self, event_type: &str, data: &Value, at_ms: i64) {
        self.hooks.emit(event_type, data, at_ms);
    }
}

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Role,
    Permission,
}

/// A stored Role object read as what its holders get.
pub(super) fn role_info(r: &Value) -> RoleInfo {
    RoleInfo {
        id: r["id"].as_str().map(str::to_owned),
        key: str_field(r, "key"),
        name: str_field(r, "name"),
        permissions: r["permissions"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["key"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
    }
}

/// Sets a membership's role fields from its role.
pub(super) fn apply_role(m: &mut Value, role: &RoleInfo) {
    m["role"] = json!(role.key);
    m["role_name"] = json!(role.name);
    m["permissions"] = json!(role.permissions);
}
