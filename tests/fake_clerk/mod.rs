//! A fake Clerk Backend API for tests and benchmarks: an axum app serving objects shaped like
//! Clerk's (the `data` of `fixtures/webhooks/*.json`, which are the API's Organization, User and
//! OrganizationMembership objects), with the list endpoints orgsync uses:
//!
//! - `GET /v1/organizations` (`limit` 1..=500, `offset`, `order_by` `[+|-]created_at`,
//!   repeated `organization_id`) → `{data, total_count}`
//! - `GET /v1/organizations/{id_or_slug}` → the organization, or 404 `{errors: [...]}`
//! - `GET /v1/organization_memberships` (instance-wide; `limit`, `offset`, `order_by`)
//! - `GET /v1/organizations/{id}/memberships` (`limit`, `offset`, repeated `user_id`)
//! - `GET /v1/users` (`limit`, `offset` or `starting_after`, `order_by`, repeated `user_id`) → a
//!   bare array; `GET /v1/users/count` → `{object: "total_count", total_count}`
//! - `GET /v1/organization_roles`, `/v1/organization_permissions`, `/v1/organization_invitations`
//!   (`limit`, `offset`, `order_by`) → `{data, total_count}`; by id:
//!   `/v1/organization_roles/{id}`, `/v1/organization_permissions/{id}`,
//!   `/v1/organizations/{id}/invitations/{id}` → the object, or 404 (see [`access`])
//!
//! Requests need `Authorization: Bearer <key>` (401 otherwise). Failures can be injected per
//! path and offset (429 with `Retry-After`, 5xx, 401, ...), requests can be held at a gate until
//! the test releases them, and every request is logged.
//!
//! It depends only on axum, tokio, serde_json and the orgsync crate, so a bench can include it
//! with `#[path = "../tests/fake_clerk/mod.rs"] mod fake_clerk;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use orgsync::clerk::api::ClerkConfig;
use orgsync::clerk::api::{ClerkClient, RetryPolicy};
use serde_json::{json, Value};

use params::Params;

/// The secret key the fake accepts.
pub const KEY: &str = "sk_test_fakeclerk0000000000000000";

mod access;
mod builders;
mod params;
#[allow(unused_imports)]
pub use access::{invitation, permission, role};
pub use builders::{membership, org, user};

/// One stored object: its ordering key, lookup keys and its JSON text (serialized once, so a
/// page of 500 costs a string join, not 500 serializations).
#[derive(Clone)]
struct Entry {
    id: String,
    created_at: i64,
    /// Organizations: the slug. Memberships: the organization id.
    secondary: Option<String>,
    /// Memberships: the user id.
    user_id: Option<String>,
    json: Arc<str>,
}

/// Objects of one kind, kept ordered by (created_at, id) like Clerk's `created_at` ordering
/// (the id breaks ties so pages never overlap).
#[derive(Default)]
struct Collection {
    ordered: BTreeMap<(i64, String), Entry>,
    by_id: HashMap<String, i64>,
}

impl Collection {
    fn put(&mut self, entry: Entry) {
        if let Some(old) = self.by_id.insert(entry.id.clone(), entry.created_at) {
            self.ordered.remove(&(old, entry.id.clone()));
        }
        self.ordered.insert((entry.created_at, entry.id.clone()), entry);
    }

    fn remove(&mut self, id: &str) -> bool {
        match self.by_id.remove(id) {
            Some(at) => self.ordered.remove(&(at, id.to_owned())).is_some(),
            None => false,
        }
    }

    fn get(&self, id: &str) -> Option<&Entry> {
        let at = self.by_id.get(id)?;
        self.ordered.get(&(*at, id.to_owned()))
    }

    fn len(&self) -> usize {
        self.ordered.len()
    }
}

/// An injected failure: requests to `path` (and, if set, at `offset`) answer `status`, `times`
/// times (forever when `None`).
#[derive(Debug, Clone)]
pub struct Failure {
    pub path: String,
    pub offset: Option<u32>,
    pub status: u16,
    pub retry_after: Option<String>,
    pub times: Option<usize>,
}

impl Failure {
    pub fn new(path: &str, status: u16) -> Self {
        Self {
            path: path.to_owned(),
            offset: None,
            status,
            retry_after: None,
            times: None,
        }
    }
    pub fn at_offset(mut self, offset: u32) -> Self {
        self.offset = Some(offset);
        self
    }
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_owned());
        self
    }
}

/// A logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    pub query: Vec<(String, String)>,
    pub status: u16,
}

impl Logged {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

struct Gate {
    path: String,
    open: Arc<tokio::sync::Semaphore>,
}

#[derive(Default)]
struct World {
    orgs: Collection,
    users: Collection,
    memberships: Collection,
    roles: Collection,
    permissions: Collection,
    /// Invitations: `secondary` is the organization id.
    invitations: Collection,
    /// Left out of the list endpoints but still found by id or filter: what an offset listing
    /// misses when other objects are deleted meanwhile.
    hidden_from_listings: HashSet<String>,
    failures: Vec<Failure>,
    gates: Vec<Gate>,
    log: Vec<Logged>,
    key: String,
}

/// A running fake Clerk API.
#[derive(Clone)]
pub struct FakeClerk {
    pub addr: SocketAddr,
    world: Arc<Mutex<World>>,
}

impl FakeClerk {
    /// Starts the server on a free local port, accepting [`KEY`].
    pub async fn start() -> Self {
        let world = Arc::new(Mutex::new(World {
            key: KEY.to_owned(),
            ..World::default()
        }));
        let app: Router<Shared> = Router::new()
            .route("/v1/organizations", get(list_organizations))
            .route("/v1/organizations/{id}", get(get_organization))
            .route("/v1/organizations/{id}/memberships", get(list_organization_memberships))
            .route("/v1/organization_memberships", get(list_memberships))
            .route("/v1/users", get(list_users))
            .route("/v1/users/count", get(count_users));
        let app = access::routes(app).with_state(world.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Clerk API");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake Clerk API serves");
        });
        Self { addr, world }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client for this fake: a large budget, short timeouts and fast retries.
    pub fn client(&self) -> ClerkClient {
        ClerkClient::new(&self.url(), KEY, 100_000, Duration::from_secs(10))
            .unwrap()
            .with_retry_policy(fast_retries())
    }

    /// The Clerk configuration of a service pointed at this fake.
    pub fn clerk_config(&self) -> ClerkConfig {
        ClerkConfig {
            api_url: self.url(),
            secret_key: Some(KEY.to_owned()),
            rate_limit: Some(100_000),
            timeout: Duration::from_secs(10),
        }
    }

    /// Makes the fake accept only `key` from now on.
    pub fn set_key(&self, key: &str) {
        self.world().key = key.to_owned();
    }

    /// Adds or replaces an organization (an [`org`] value).
    pub fn put_org(&self, org: &Value) {
        let entry = Entry {
            id: str_field(org, "id"),
            created_at: org["created_at"].as_i64().unwrap(),
            secondary: org["slug"].as_str().map(str::to_owned),
            user_id: None,
            json: org.to_string().into(),
        };
        self.world().orgs.put(entry);
    }

    /// Adds or replaces a user (a [`user`] value).
    pub fn put_user(&self, user: &Value) {
        let entry = Entry {
            id: str_field(user, "id"),
            created_at: user["created_at"].as_i64().unwrap(),
            secondary: None,
            user_id: None,
            json: user.to_string().into(),
        };
        self.world().users.put(entry);
    }

    /// Adds or replaces a membership (a [`membership`] value).
    pub fn put_membership(&self, m: &Value) {
        let entry = Entry {
            id: str_field(m, "id"),
            created_at: m["created_at"].as_i64().unwrap(),
            secondary: m["organization"]["id"].as_str().map(str::to_owned),
            user_id: m["public_user_data"]["user_id"].as_str().map(str::to_owned),
            json: m.to_string().into(),
        };
        self.world().memberships.put(entry);
    }

    /// Deletes an organization and its memberships, as Clerk does.
    pub fn delete_org(&self, id: &str) {
        let mut w = self.world();
        w.orgs.remove(id);
        let gone: Vec<String> = w
            .memberships
            .ordered
            .values()
            .filter(|e| e.secondary.as_deref() == Some(id))
            .map(|e| e.id.clone())
            .collect();
        for m in gone {
            w.memberships.remove(&m);
        }
    }

    /// Deletes a user and their memberships, as Clerk does.
    pub fn delete_user(&self, id: &str) {
        let mut w = self.world();
        w.users.remove(id);
        let gone: Vec<String> = w
            .memberships
            .ordered
            .values()
            .filter(|e| e.user_id.as_deref() == Some(id))
            .map(|e| e.id.clone())
            .collect();
        for m in gone {
            w.memberships.remove(&m);
        }
    }

    pub fn delete_membership(&self, id: &str) {
        self.world().memberships.remove(id);
    }

    /// Leaves the object with this id (organization, user or membership) out of the list
    /// endpoints, while lookups by id or filter still find it.
    pub fn hide_from_listings(&self, id: &str) {
        self.world().hidden_from_listings.insert(id.to_owned());
    }

    pub fn fail(&self, failure: Failure) {
        self.world().failures.push(failure);
    }

    /// Holds every request to `path` until the returned gate is opened.
    pub fn gate(&self, path: &str) -> GateHandle {
        let open = Arc::new(tokio::sync::Semaphore::new(0));
        self.world().gates.push(Gate {
            path: path.to_owned(),
            open: open.clone(),
        });
        GateHandle { open }
    }

    /// Every request answered (or being answered) so far.
    pub fn log(&self) -> Vec<Logged> {
        self.world().log.clone()
    }

    /// How many requests went to exactly `path`.
    pub fn requests(&self, path: &str) -> usize {
        self.world().log.iter().filter(|l| l.path == path).count()
    }

    /// Waits until `n` requests went to `path` (panics after 10 s).
    pub async fn wait_for_requests(&self, path: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.requests(path) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} requests to {path}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        let w = self.world();
        (w.orgs.len(), w.memberships.len(), w.users.len())
    }

    /// Fills the fake with `orgs` organizations, `users` users and `memberships` memberships
    /// (organization `i % orgs` gets members in turn), all created before `base_ms`. Ids:
    /// `org_s{i}`, `user_s{i}`, `orgmem_s{i}`.
    pub fn seed(&self, orgs: usize, users: usize, memberships: usize, base_ms: i64) {
        assert!(memberships == 0 || (orgs > 0 && users > 0 && memberships.div_ceil(orgs) <= users));
        let org_values: Vec<Value> = (0..orgs)
            .map(|i| {
                org(
                    &format!("org_s{i:07}"),
                    &format!("Hotel {i}"),
                    base_ms + i as i64,
                    base_ms + i as i64,
                )
            })
            .collect();
        let user_values: Vec<Value> = (0..users)
            .map(|i| {
                user(
                    &format!("user_s{i:07}"),
                    &format!("person{i}@example.com"),
                    "Person",
                    &format!("{i}"),
                    base_ms + i as i64,
                    base_ms + i as i64,
                )
            })
            .collect();
        for o in &org_values {
            self.put_org(o);
        }
        for u in &user_values {
            self.put_user(u);
        }
        for m in 0..memberships {
            let o = m % orgs;
            let u = (o * 7 + m / orgs) % users;
            let at = base_ms + m as i64;
            let role = if m / orgs == 0 { "org:admin" } else { "org:member" };
            self.put_membership(&membership(
                &format!("orgmem_s{m:07}"),
                &org_values[o],
                &user_values[u],
                role,
                at,
                at,
            ));
        }
    }
}

pub struct GateHandle {
    open: Arc<tokio::sync::Semaphore>,
}

impl GateHandle {
    /// Lets every held and future request through.
    pub fn open(&self) {
        self.open.add_permits(1 << 20);
    }
}

/// Retries fast enough for tests (a few ms), still bounded.
pub fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_secs(2),
        max_retries: 4,
    }
}

fn str_field(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("object without a string {field}"))
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// Handlers

type Shared = Arc<Mutex<World>>;

fn clerk_error(status: StatusCode, message: &str, long: &str, code: &str) -> Response {
    let body = json!({"errors": [{"message": message, "long_message": long, "code": code}],
                      "clerk_trace_id": "trace_fake"});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn unprocessable(long: &str) -> Response {
    clerk_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid request parameters",
        long,
        "form_param_invalid",
    )
}

fn json_response(body: String) -> Response {
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

/// Authentication, logging, injected failures and gates, common to every endpoint. Ok gives
/// the parsed parameters.
async fn admit(world: &Shared, path: &str, headers: &HeaderMap, raw: Option<String>) -> Result<Params, Response> {
    let pairs = params::parse_query(raw.as_deref());
    let offset = pairs
        .iter()
        .find(|(k, _)| k == "offset")
        .and_then(|(_, v)| v.parse::<u32>().ok())
        .unwrap_or(0);
    let (gate, outcome) = {
        let mut w = world.lock().unwrap();
        let expected = format!("Bearer {}", w.key);
        let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
        let mut outcome: Option<Response> = None;
        let mut status = 200;
        if !authorized {
            status = 401;
            outcome = Some(clerk_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized request",
                "The provided Clerk Secret Key is invalid. Make sure that your Clerk Secret Key is correct.",
                "authentication_invalid",
            ));
        } else if let Some(i) = w
            .failures
            .iter()
            .position(|f| f.path == path && f.offset.is_none_or(|o| o == offset) && f.times != Some(0))
        {
            let f = &mut w.failures[i];
            if let Some(n) = f.times.as_mut() {
                *n -= 1;
            }
            status = f.status;
            let code = StatusCode::from_u16(f.status).unwrap();
            let mut resp = clerk_error(
                code,
                "injected failure",
                "The fake Clerk API was told to fail here",
                "injected",
            );
            if let Some(ra) = &f.retry_after {
                resp.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            outcome = Some(resp);
        }
        w.log.push(Logged {
            path: path.to_owned(),
            query: pairs.clone(),
            status,
        });
        let gate = w.gates.iter().find(|g| g.path == path).map(|g| g.open.clone());
        (gate, outcome)
    };
    if let Some(gate) = gate {
        let _permit = gate.acquire().await.expect("gate semaphore is never closed");
    }
    match outcome {
        Some(resp) => Err(resp),
        None => Ok(Params::new(pairs)),
    }
}

/// Pages `entries` (already filtered and ordered) into a JSON array string.
fn page_json<'a>(entries: impl Iterator<Item = &'a Entry>, offset: usize, limit: usize) -> String {
    let mut out = String::from("[");
    for (i, e) in entries.skip(offset).take(limit).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&e.json);
    }
    out.push(']');
    out
}

fn ordered<'a>(c: &'a Collection, ascending: bool) -> Box<dyn Iterator<Item = &'a Entry> + 'a> {
    if ascending {
        Box::new(c.ordered.values())
    } else {
        Box::new(c.ordered.values().rev())
    }
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
    let found = w.orgs.get(&id).or_else(|| {
        w.orgs
            .ordered
            .values()
            .find(|e| e.secondary.as_deref() == Some(id.as_str()))
    });
    match found {
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
