//! The Clerk Backend API the resync phase lists, served by the bench process from memory, built
//! for scale: objects are serialized once and kept in creation order, so a page costs a slice
//! and a string join whatever its offset, and lookups by id are hash lookups. (The tests' fake,
//! `tests/fake_clerk`, filters and counts its whole collection per page, which would make
//! its own cost grow with the square of the dataset and hide the resync's.)
//!
//! Objects are the `data` of `fixtures/webhooks/*.created.json` (the API's Organization, User
//! and OrganizationMembership objects) with the bench's ids. Endpoints, as Clerk's OpenAPI
//! describes them (`limit` 1..=500, `offset`, `order_by` `[+|-]created_at`, newest first by
//! default; `Authorization: Bearer <key>` required; every answer carries a `Date`):
//!
//! - `GET /v1/organizations` (repeated `organization_id` filters) → `{data, total_count}`
//! - `GET /v1/organizations/{id_or_slug}` → the organization, or 404
//! - `GET /v1/organization_memberships` and `GET /v1/organizations/{id}/memberships`
//!   (repeated `user_id` filters) → `{data, total_count}`
//! - `GET /v1/users` (`offset` or `starting_after`, repeated `user_id`) → a bare array;
//!   `GET /v1/users/count` → `{object: "total_count", total_count}`
//! - `GET /v1/organization_roles`, `/v1/organization_permissions`,
//!   `/v1/organization_invitations`, `/v1/role_sets` → empty lists (the instance has none)
//!
//! Any other path answers 404 and is remembered ([`FakeClerk::unknown_paths`]), so the bench can
//! say what a newer resync asked for that this fake lacks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::history::fixture;

/// The secret key the fake accepts.
pub const KEY: &str = "sk_test_benchfakeclerk000000000000";

/// One kind of object, in creation order (oldest first).
#[derive(Default)]
struct Objects {
    json: Vec<Box<str>>,
    index: HashMap<String, usize>,
}

impl Objects {
    fn push(&mut self, id: String, value: &Value) -> usize {
        let n = self.json.len();
        self.json.push(value.to_string().into_boxed_str());
        self.index.insert(id, n);
        n
    }
}

struct World {
    orgs: Objects,
    slugs: HashMap<String, usize>,
    users: Objects,
    memberships: Objects,
    /// Organization id → its memberships (indexes into `memberships`), oldest first.
    members_of: HashMap<String, Vec<usize>>,
    /// Membership index → its user id.
    member_user: Vec<String>,
}

/// A running fake, serving until [`FakeClerk::stop`].
pub struct FakeClerk {
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    unknown: Arc<Mutex<Vec<String>>>,
    stop: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    world: Arc<World>,
    requests: Arc<AtomicU64>,
    unknown: Arc<Mutex<Vec<String>>>,
}

impl FakeClerk {
    /// Serves `orgs` organizations, `users` users and `memberships` memberships (organization
    /// `m % orgs` gets members in turn, each user at most once per organization when there are
    /// enough users), on a free loopback port.
    pub async fn start(orgs: usize, users: usize, memberships: usize) -> Self {
        let world = Arc::new(seed(orgs, users, memberships));
        let shared = Shared {
            world,
            requests: Arc::default(),
            unknown: Arc::default(),
        };
        let app = axum::Router::new().fallback(answer).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Clerk API");
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .expect("fake Clerk API serves")
            }
        });
        Self {
            addr,
            requests: shared.requests,
            unknown: shared.unknown,
            stop,
            server,
        }
    }

    /// Stops serving and frees the objects.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.await;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Paths requested that this fake does not serve (answered 404), without repeats (the first
    /// 20).
    pub fn unknown_paths(&self) -> Vec<String> {
        self.unknown.lock().unwrap().clone()
    }
}

fn seed(orgs: usize, users: usize, memberships: usize) -> World {
    let base_ms = 1_700_000_000_000i64;
    let template = |kind: &str| fixture(kind)["data"].take();
    let (org_t, user_t, member_t) = (
        template("organization.created"),
        template("user.created"),
        template("organizationMembership.created"),
    );
    let mut world = World {
        orgs: Objects::default(),
        slugs: HashMap::new(),
        users: Objects::default(),
        memberships: Objects::default(),
        members_of: HashMap::new(),
        member_user: Vec::with_capacity(memberships),
    };
    let mut org_values = Vec::with_capacity(orgs);
    for i in 0..orgs {
        let mut o = org_t.clone();
        let (id, slug, at) = (format!("org_s{i:09}"), format!("hotel-{i}"), base_ms + i as i64);
        o["id"] = json!(id);
        o["name"] = json!(format!("Hotel {i}"));
        o["slug"] = json!(slug);
        o["created_at"] = json!(at);
        o["updated_at"] = json!(at);
        let n = world.orgs.push(id, &o);
        world.slugs.insert(slug, n);
        org_values.push(o);
    }
    for i in 0..users {
        let mut u = user_t.clone();
        let (id, at) = (format!("user_s{i:09}"), base_ms + i as i64);
        u["id"] = json!(id);
        u["first_name"] = json!("Person");
        u["last_name"] = json!(format!("{i}"));
        u["email_addresses"][0]["email_address"] = json!(format!("person{i}@example.com"));
        u["created_at"] = json!(at);
        u["updated_at"] = json!(at);
        world.users.push(id, &u);
    }
    for m in 0..memberships {
        let o = m % orgs;
        let u = (o * 7 + m / orgs) % users;
        let mut v = member_t.clone();
        let (id, user, at) = (format!("orgmem_s{m:09}"), format!("user_s{u:09}"), base_ms + m as i64);
        v["id"] = json!(id);
        v["role"] = json!(if m / orgs == 0 { "org:admin" } else { "org:member" });
        v["organization"] = org_values[o].clone();
        v["public_user_data"]["user_id"] = json!(user);
        v["public_user_data"]["first_name"] = json!("Person");
        v["public_user_data"]["last_name"] = json!(format!("{u}"));
        v["public_user_data"]["identifier"] = json!(format!("person{u}@example.com"));
        v["created_at"] = json!(at);
        v["updated_at"] = json!(at);
        let n = world.memberships.push(id, &v);
        world.members_of.entry(format!("org_s{o:09}")).or_default().push(n);
        world.member_user.push(user);
    }
    world
}

fn error(status: StatusCode, message: &str, code: &str) -> Response {
    let body = json!({"errors": [{"message": message, "long_message": message, "code": code}],
                      "clerk_trace_id": "trace_bench"});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn body(text: String) -> Response {
    (StatusCode::OK, [("content-type", "application/json")], text).into_response()
}

/// Paging parameters, as the spec defines them.
struct Paging {
    limit: usize,
    offset: usize,
    ascending: bool,
}

/// Err is the answer to an invalid parameter.
fn paging(params: &[(String, String)]) -> Result<Paging, Box<Response>> {
    let one = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let invalid = |m: &str| {
        Err(Box::new(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            m,
            "form_param_invalid",
        )))
    };
    let limit = match one("limit").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if (1..=500).contains(&n) => n,
        Some(_) => return invalid("limit must be an integer between 1 and 500"),
    };
    let offset = match one("offset").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(_) => return invalid("offset must be an integer greater or equal to zero"),
    };
    let ascending = match one("order_by").map(str::trim) {
        None | Some("-created_at") => false,
        Some("created_at" | "+created_at") => true,
        Some(_) => return invalid("the bench's fake Clerk API orders by created_at only"),
    };
    Ok(Paging {
        limit,
        offset,
        ascending,
    })
}

/// The page of `members` (indexes, oldest first) that `p` asks for, as a JSON array.
fn page(objects: &Objects, members: impl DoubleEndedIterator<Item = usize> + ExactSizeIterator, p: &Paging) -> String {
    let picked: Vec<&str> = if p.ascending {
        members
            .skip(p.offset)
            .take(p.limit)
            .map(|i| &*objects.json[i])
            .collect()
    } else {
        members
            .rev()
            .skip(p.offset)
            .take(p.limit)
            .map(|i| &*objects.json[i])
            .collect()
    };
    format!("[{}]", picked.join(","))
}

/// The objects named by `ids` that exist, as a JSON array.
fn by_ids(objects: &Objects, ids: &[&str]) -> String {
    let found: Vec<&str> = ids
        .iter()
        .filter_map(|id| objects.index.get(*id))
        .map(|&i| &*objects.json[i])
        .collect();
    format!("[{}]", found.join(","))
}

async fn answer(State(s): State<Shared>, uri: Uri, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    s.requests.fetch_add(1, Ordering::Relaxed);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}")) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized request",
            "authentication_invalid",
        );
    }
    let params: Vec<(String, String)> = form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let all = |k: &str| -> Vec<&str> {
        params
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let w = &s.world;
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let listing = |objects: &Objects, members: Vec<usize>| -> Response {
        match paging(&params) {
            Ok(p) => body(format!(
                r#"{{"data":{},"total_count":{}}}"#,
                page(objects, members.iter().copied(), &p),
                members.len()
            )),
            Err(r) => *r,
        }
    };
    let not_found = || error(StatusCode::NOT_FOUND, "Resource not found", "resource_not_found");
    match segments.as_slice() {
        ["v1", "organizations"] => {
            let ids = all("organization_id");
            if ids.is_empty() {
                listing(&w.orgs, (0..w.orgs.json.len()).collect())
            } else {
                let data = by_ids(&w.orgs, &ids);
                let n = ids.iter().filter(|id| w.orgs.index.contains_key(**id)).count();
                body(format!(r#"{{"data":{data},"total_count":{n}}}"#))
            }
        }
        ["v1", "organizations", id] => match w.orgs.index.get(*id).or_else(|| w.slugs.get(*id)) {
            Some(&i) => body(w.orgs.json[i].to_string()),
            None => not_found(),
        },
        ["v1", "organizations", id, "memberships"] => {
            if !w.orgs.index.contains_key(*id) {
                return not_found();
            }
            let users = all("user_id");
            let members: Vec<usize> = w
                .members_of
                .get(*id)
                .map(|m| {
                    m.iter()
                        .copied()
                        .filter(|&i| users.is_empty() || users.contains(&w.member_user[i].as_str()))
                        .collect()
                })
                .unwrap_or_default();
            listing(&w.memberships, members)
        }
        ["v1", "organization_memberships"] => listing(&w.memberships, (0..w.memberships.json.len()).collect()),
        ["v1", "users", "count"] => {
            body(json!({"object": "total_count", "total_count": w.users.json.len()}).to_string())
        }
        ["v1", "users"] => {
            let ids = all("user_id");
            if !ids.is_empty() {
                return body(by_ids(&w.users, &ids));
            }
            let p = match paging(&params) {
                Ok(p) => p,
                Err(r) => return *r,
            };
            let after = params.iter().find(|(k, _)| k == "starting_after").map(|(_, v)| v);
            match after {
                None => body(page(&w.users, 0..w.users.json.len(), &p)),
                Some(cursor) => match w.users.index.get(cursor.as_str()) {
                    // Past the cursor in the listing's order.
                    Some(&at) if p.ascending => body(page(&w.users, at + 1..w.users.json.len(), &p)),
                    Some(&at) => body(page(&w.users, 0..at, &Paging { offset: 0, ..p })),
                    None => error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "starting_after must be the id of a user",
                        "form_param_invalid",
                    ),
                },
            }
        }
        ["v1", "organization_roles" | "organization_permissions" | "organization_invitations" | "role_sets"] => {
            body(r#"{"data":[],"total_count":0}"#.to_owned())
        }
        _ => {
            let mut unknown = s.unknown.lock().unwrap();
            if unknown.len() < 20 && !unknown.iter().any(|p| p == uri.path()) {
                unknown.push(uri.path().to_owned());
            }
            not_found()
        }
    }
}
