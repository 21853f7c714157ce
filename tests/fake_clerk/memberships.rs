//! Membership writes: `POST /v1/organizations/{id}/memberships` `{user_id, role,
//! public_metadata?, private_metadata?}`, `PATCH /v1/organizations/{id}/memberships/{user_id}`
//! `{role}`, `DELETE .../{user_id}` (answers the removed membership as it was). Also the test's hand for
//! a user accepting an invitation ([`FakeClerk::accept_invitation`]).
//!
//! As Clerk: an unknown organization or membership is 404; an unknown user is 404; a user
//! already a member is 400 `already_a_member_in_organization`; a role that does not exist, or
//! is not in the organization's role set, is 404 (`Organization role not found`); beyond
//! `max_allowed_memberships` (when not 0) is 403 `organization_membership_quota_exceeded`. A
//! membership's `role_name` and `permissions` come from its role, its `organization` is the
//! organization as it is now. Webhooks: `organizationMembership.created|updated|deleted`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{patch, post};
use axum::Router;
use serde_json::{json, Value};

use super::admission::{admit_write, clerk_error, json_value, not_found, object, opt_object, org_not_found, req_str};
use super::state::apply_role;
use super::{builders, Entry, FakeClerk, Shared, World};

pub(super) fn routes(app: Router<Shared>) -> Router<Shared> {
    app.route("/v1/organizations/{id}/memberships", post(create)).route(
        "/v1/organizations/{id}/memberships/{user_id}",
        patch(update).delete(delete),
    )
}

type Answer = Result<Response, Response>;

async fn create(State(world): State<Shared>, Path(org): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let path = format!("/v1/organizations/{org}/memberships");
    let body = match admit_write(&world, "POST", &path, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut w = world.lock().unwrap();
    create_in(&mut w, &org, &body)
        .map(|(m, _)| json_value(&m))
        .unwrap_or_else(|e| e)
}

async fn update(
    State(world): State<Shared>,
    Path((org, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/organizations/{org}/memberships/{user}");
    let body = match admit_write(&world, "PATCH", &path, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut w = world.lock().unwrap();
    update_in(&mut w, &org, &user, &body).unwrap_or_else(|e| e)
}

async fn delete(
    State(world): State<Shared>,
    Path((org, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/organizations/{org}/memberships/{user}");
    if let Err(r) = admit_write(&world, "DELETE", &path, &headers, &body).await {
        return r;
    }
    let mut w = world.lock().unwrap();
    delete_in(&mut w, &org, &user).unwrap_or_else(|e| e)
}

fn membership_not_found() -> Response {
    not_found("No organization membership was found for the given user.")
}

/// Adds `user_id` to `org_id`: the new membership and its time.
pub(super) fn add_member(
    w: &mut World,
    org_id: &str,
    user_id: &str,
    role_key: &str,
    public: Value,
    private: Value,
) -> Result<(Value, i64), Response> {
    let org = w.orgs.get(org_id).map(Entry::value).ok_or_else(org_not_found)?;
    let user = w
        .users
        .get(user_id)
        .map(Entry::value)
        .ok_or_else(|| not_found(&format!("No user was found with id {user_id}")))?;
    if w.membership_of(org_id, user_id).is_some() {
        return Err(clerk_error(
            StatusCode::BAD_REQUEST,
            "already a member",
            "User is already a member of the organization.",
            "already_a_member_in_organization",
        ));
    }
    let role = w.role_for_org(&org, role_key)?;
    let max = org["max_allowed_memberships"].as_i64().unwrap_or(0);
    let members = w.memberships_where(|e| e.secondary.as_deref() == Some(org_id)).len() as i64;
    if max > 0 && members >= max {
        return Err(clerk_error(
            StatusCode::FORBIDDEN,
            "organization membership quota exceeded",
            &format!(
                "You have reached your limit of {max} organization memberships, including outstanding invitations."
            ),
            "organization_membership_quota_exceeded",
        ));
    }
    let at = w.clock.tick();
    let id = w.new_id("orgmem");
    let mut m = builders::membership(&id, &org, &user, role_key, at, at);
    apply_role(&mut m, &role);
    m["public_metadata"] = public;
    m["private_metadata"] = private;
    w.put_membership_value(&m);
    w.refresh_org(org_id);
    let m = w.memberships.get(&id).unwrap().value();
    w.emit("organizationMembership.created", &m, at);
    Ok((m, at))
}

fn create_in(w: &mut World, org_id: &str, body: &Value) -> Result<(Value, i64), Response> {
    let body = object(body)?;
    if w.orgs.get(org_id).is_none() {
        return Err(org_not_found());
    }
    let user_id = req_str(body, "user_id")?;
    let role = req_str(body, "role")?;
    let public = opt_object(body, "public_metadata")?.unwrap_or_else(|| json!({}));
    let private = opt_object(body, "private_metadata")?.unwrap_or_else(|| json!({}));
    add_member(w, org_id, user_id, role, public, private)
}

fn update_in(w: &mut World, org_id: &str, user_id: &str, body: &Value) -> Answer {
    let body = object(body)?;
    let org = w.orgs.get(org_id).map(Entry::value).ok_or_else(org_not_found)?;
    let mut m = w.membership_of(org_id, user_id).ok_or_else(membership_not_found)?;
    let role_key = req_str(body, "role")?;
    let role = w.role_for_org(&org, role_key)?;
    let at = w.clock.tick();
    apply_role(&mut m, &role);
    m["updated_at"] = json!(at);
    w.put_membership_value(&m);
    w.emit("organizationMembership.updated", &m, at);
    Ok(json_value(&m))
}

fn delete_in(w: &mut World, org_id: &str, user_id: &str) -> Answer {
    if w.orgs.get(org_id).is_none() {
        return Err(org_not_found());
    }
    let mut m = w.membership_of(org_id, user_id).ok_or_else(membership_not_found)?;
    w.memberships.remove(m["id"].as_str().unwrap());
    w.refresh_org(org_id);
    let at = w.clock.tick();
    if let Some(org) = w.orgs.get(org_id) {
        m["organization"] = org.value();
    }
    // The membership as it was (its `updated_at` unchanged, as in Clerk's payloads); the
    // event's `timestamp` dates the removal.
    w.emit("organizationMembership.deleted", &m, at);
    Ok(json_value(&m))
}

/// Moves the membership to `role` (a role set migration): `updated_at` and the webhook as a
/// `PATCH` would.
pub(super) fn move_member(w: &mut World, membership_id: &str, role_key: &str) {
    let Some(mut m) = w.memberships.get(membership_id).map(Entry::value) else {
        return;
    };
    let Some(role) = w.role_by_key(role_key) else {
        return;
    };
    let at = w.clock.tick();
    apply_role(&mut m, &role);
    m["updated_at"] = json!(at);
    w.put_membership_value(&m);
    w.emit("organizationMembership.updated", &m, at);
}

impl FakeClerk {
    /// The user `user_id` accepts invitation `invitation_id`, as in Clerk's UI: the invitation
    /// becomes `accepted` (`organizationInvitation.accepted`) and the user a member with its
    /// role and metadata (`organizationMembership.created`). Err is Clerk's refusal body.
    pub fn accept_invitation(&self, invitation_id: &str, user_id: &str) -> Result<Value, String> {
        let mut w = self.world();
        let mut inv = w
            .invitations
            .get(invitation_id)
            .map(Entry::value)
            .ok_or("no such invitation")?;
        if inv["status"] != "pending" {
            return Err(format!("the invitation is {}", inv["status"]));
        }
        let org_id = inv["organization_id"].as_str().unwrap().to_owned();
        let role = inv["role"].as_str().unwrap().to_owned();
        let (public, private) = (inv["public_metadata"].clone(), inv["private_metadata"].clone());
        let at = w.clock.tick();
        inv["status"] = json!("accepted");
        inv["user_id"] = json!(user_id);
        inv["updated_at"] = json!(at);
        w.put_invitation_value(&inv);
        w.emit("organizationInvitation.accepted", &inv, at);
        let (m, _) = add_member(&mut w, &org_id, user_id, &role, public, private).map_err(|r| format!("{r:?}"))?;
        w.refresh_org(&org_id);
        Ok(m)
    }
}
