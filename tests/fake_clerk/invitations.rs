//! Invitation writes: `POST /v1/organizations/{id}/invitations` `{email_address, role,
//! inviter_user_id?, public_metadata?, private_metadata?, redirect_url?, expires_in_days?,
//! notify?}`, `POST .../invitations/bulk` (an array of those, 1 to 10; answers `{data,
//! total_count}`), `POST .../invitations/{invitation_id}/revoke` `{requesting_user_id?}`.
//!
//! As Clerk: a second pending invitation of one email to one organization is 400
//! `organization_invitation_not_unique`; more than 10 in a bulk call is 400
//! `bulk_size_exceeded`; a bulk call is all or nothing; only a pending invitation can be
//! revoked. Webhooks: `organizationInvitation.created`, `organizationInvitation.revoked`
//! (`organizationInvitation.accepted` comes from [`super::FakeClerk::accept_invitation`]).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Map, Value};

use super::admission::{
    admit_write, clerk_error, format_invalid, invalid, json_value, not_found, object, opt_object, opt_str,
    org_not_found, req_str,
};
use super::{access, Entry, Shared, World};

pub(super) fn routes(app: Router<Shared>) -> Router<Shared> {
    app.route("/v1/organizations/{org}/invitations", post(create))
        .route("/v1/organizations/{org}/invitations/bulk", post(create_bulk))
        .route("/v1/organizations/{org}/invitations/{id}/revoke", post(revoke))
}

type Answer = Result<Response, Response>;

async fn create(State(world): State<Shared>, Path(org): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let path = format!("/v1/organizations/{org}/invitations");
    let body = match admit_write(&world, "POST", &path, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut w = world.lock().unwrap();
    let made = object(&body)
        .and_then(|b| invite_all(&mut w, &org, &[b]))
        .map(|mut all| json_value(&all.remove(0)));
    made.unwrap_or_else(|e| e)
}

async fn create_bulk(
    State(world): State<Shared>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/organizations/{org}/invitations/bulk");
    let body = match admit_write(&world, "POST", &path, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut w = world.lock().unwrap();
    either(bulk_in(&mut w, &org, &body))
}

async fn revoke(
    State(world): State<Shared>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/organizations/{org}/invitations/{id}/revoke");
    let body = match admit_write(&world, "POST", &path, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut w = world.lock().unwrap();
    either(revoke_in(&mut w, &org, &id, &body))
}

fn either(a: Answer) -> Response {
    a.unwrap_or_else(|e| e)
}

fn bulk_in(w: &mut World, org: &str, body: &Value) -> Answer {
    let Some(items) = body.as_array() else {
        return Err(super::admission::body_invalid());
    };
    if items.is_empty() {
        return Err(invalid("invitations", "at least one invitation must be given"));
    }
    if items.len() > 10 {
        return Err(clerk_error(
            StatusCode::BAD_REQUEST,
            "bulk size exceeded",
            "Parameters exceed the maximum allowed bulk processing size of 10.",
            "bulk_size_exceeded",
        ));
    }
    let objects = items.iter().map(object).collect::<Result<Vec<_>, _>>()?;
    let made = invite_all(w, org, &objects)?;
    let total = made.len();
    Ok(json_value(&json!({"data": made, "total_count": total})))
}

struct Request {
    email: String,
    role: String,
    inviter: Option<Value>,
    public: Value,
    private: Value,
    days: i64,
}

fn read_request(w: &World, org: &Value, body: &Map<String, Value>) -> Result<(Request, String), Response> {
    let email = req_str(body, "email_address")?;
    if !email.contains('@') || email.starts_with('@') || email.ends_with('@') {
        return Err(format_invalid(
            "email_address",
            "email_address must be a valid email address.",
        ));
    }
    let role_key = req_str(body, "role")?;
    let role = w.role_for_org(org, role_key)?;
    let inviter = match opt_str(body, "inviter_user_id")? {
        None => None,
        Some(u) => Some(
            w.users
                .get(u)
                .map(Entry::value)
                .ok_or_else(|| not_found(&format!("No user was found with id {u}")))?,
        ),
    };
    let days = match body.get("expires_in_days") {
        None | Some(Value::Null) => 30,
        Some(v) => match v.as_i64() {
            Some(d) if (1..=365).contains(&d) => d,
            _ => return Err(invalid("expires_in_days", "expires_in_days must be between 1 and 365")),
        },
    };
    Ok((
        Request {
            email: email.to_lowercase(),
            role: role.key,
            inviter,
            public: opt_object(body, "public_metadata")?.unwrap_or_else(|| json!({})),
            private: opt_object(body, "private_metadata")?.unwrap_or_else(|| json!({})),
            days,
        },
        role.name,
    ))
}

fn not_unique() -> Response {
    clerk_error(
        StatusCode::BAD_REQUEST,
        "organization invitation not unique",
        "Organizations cannot have duplicate pending invitations for an email address.",
        "organization_invitation_not_unique",
    )
}

/// Validates every request, then creates them all (each with its webhook).
fn invite_all(w: &mut World, org_id: &str, bodies: &[&Map<String, Value>]) -> Result<Vec<Value>, Response> {
    let org = w.orgs.get(org_id).map(Entry::value).ok_or_else(org_not_found)?;
    let mut requests = Vec::new();
    for body in bodies {
        let (request, role_name) = read_request(w, &org, body)?;
        let pending = w.invitations.ordered.values().any(|e| {
            e.secondary.as_deref() == Some(org_id) && {
                let v = e.value();
                v["status"] == "pending" && v["email_address"] == request.email.as_str()
            }
        });
        if pending
            || requests
                .iter()
                .any(|(r, _): &(Request, String)| r.email == request.email)
        {
            return Err(not_unique());
        }
        requests.push((request, role_name));
    }
    let mut made = Vec::new();
    for (r, role_name) in requests {
        let at = w.clock.tick();
        let id = w.new_id("orginv");
        let mut inv = access::invitation(&id, org_id, &r.email, &r.role, "pending", at, at);
        inv["role_name"] = json!(role_name);
        inv["public_metadata"] = r.public;
        inv["private_metadata"] = r.private;
        inv["expires_at"] = json!(at + r.days * 86_400_000);
        inv["inviter_id"] = r.inviter.as_ref().map(|u| u["id"].clone()).unwrap_or(Value::Null);
        inv["public_inviter_data"] = r.inviter.as_ref().map(public_user_data).unwrap_or(Value::Null);
        inv["public_organization_data"] = json!({
            "id": org["id"], "name": org["name"], "slug": org["slug"],
            "image_url": org["image_url"], "has_image": org["has_image"],
        });
        w.put_invitation_value(&inv);
        w.emit("organizationInvitation.created", &inv, at);
        made.push(inv);
    }
    w.refresh_org(org_id);
    Ok(made)
}

fn public_user_data(u: &Value) -> Value {
    json!({
        "user_id": u["id"],
        "first_name": u["first_name"],
        "last_name": u["last_name"],
        "image_url": u["image_url"],
        "has_image": u["has_image"],
        "identifier": u["email_addresses"][0]["email_address"],
    })
}

fn revoke_in(w: &mut World, org_id: &str, id: &str, body: &Value) -> Answer {
    let body = object(body)?;
    if let Some(u) = opt_str(body, "requesting_user_id")? {
        if w.users.get(u).is_none() {
            return Err(not_found(&format!("No user was found with id {u}")));
        }
    }
    if w.orgs.get(org_id).is_none() {
        return Err(org_not_found());
    }
    let mut inv = w
        .invitations
        .get(id)
        .filter(|e| e.secondary.as_deref() == Some(org_id))
        .map(Entry::value)
        .ok_or_else(|| not_found(&format!("No invitation was found with id {id}.")))?;
    if inv["status"] != "pending" {
        return Err(clerk_error(
            StatusCode::BAD_REQUEST,
            "invitation not pending",
            "Only pending organization invitations can be revoked.",
            "organization_invitation_not_pending",
        ));
    }
    let at = w.clock.tick();
    inv["status"] = json!("revoked");
    inv["updated_at"] = json!(at);
    w.put_invitation_value(&inv);
    w.refresh_org(org_id);
    w.emit("organizationInvitation.revoked", &inv, at);
    Ok(json_value(&inv))
}
