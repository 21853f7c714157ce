//! A fake Clerk Backend API for tests and benchmarks: an axum app holding objects shaped like
//! Clerk's (the `data` of `fixtures/webhooks/*.json`, which are the API's objects), with the
//! read endpoints orgsync lists and the write endpoints of `bapi-2026-05-12.yml`, which change
//! its state and, like Clerk (through Svix), emit signed webhooks ([`webhooks`]).
//!
//! Reads ([`reads`], [`access`], [`role_sets`]):
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
//!   `/v1/organizations/{id}/invitations/{id}`; `GET /v1/organizations/{id}/invitations`
//!   (`status`, paging)
//! - `GET /v1/role_sets` (paging, `order_by`) and `GET /v1/role_sets/{key_or_id}`
//!
//! Writes (each answers Clerk's object with a fresh `updated_at` from the fake's clock, and
//! emits the events Clerk emits):
//! - [`orgs`]: `POST /v1/organizations`, `PATCH|DELETE /v1/organizations/{id}`,
//!   `PATCH|PUT /v1/organizations/{id}/metadata`
//! - [`memberships`]: `POST /v1/organizations/{id}/memberships`,
//!   `PATCH|DELETE /v1/organizations/{id}/memberships/{user_id}`
//! - [`invitations`]: `POST /v1/organizations/{id}/invitations`, `POST .../invitations/bulk`,
//!   `POST .../invitations/{invitation_id}/revoke`
//! - [`rbac`]: `POST /v1/organization_permissions`, `PATCH|DELETE
//!   /v1/organization_permissions/{id}`, `POST /v1/organization_roles`, `PATCH|DELETE
//!   /v1/organization_roles/{id}`, `POST|DELETE /v1/organization_roles/{id}/permissions/{id}`
//! - [`role_sets`]: `POST /v1/role_sets`, `PATCH /v1/role_sets/{key_or_id}`, `POST
//!   .../roles`, `POST .../replace`, `POST .../roles/replace` (these move members; Clerk sends
//!   no webhook for role sets themselves)
//!
//! Every answer carries a `Date` header from the fake's clock ([`FakeClerk::set_clock_offset`])
//! and `x-fake-clerk-elapsed-us` (the fake's own time, latency included). Requests need
//! `Authorization: Bearer <key>` (401 otherwise). Failures can be injected per method, path and
//! offset (429 with `Retry-After`, 5xx, ...) before anything happens, or after a write happened
//! ([`LostAnswer`]: the connection is dropped unanswered, the answer comes late, or a 5xx
//! replaces it); a fixed latency can be added to every request; requests can be held at a gate
//! until the test releases them; and every request is logged with its body.
//!
//! It depends only on axum, tokio, serde_json, reqwest and the orgsync crate (and the crates
//! orgsync itself uses: hyper, chrono, rand), so a bench can include it with
//! `#[path = "../../tests/fake_clerk/mod.rs"] mod fake_clerk;` and run it in a child process
//! with [`serve_standalone`].
#![allow(dead_code)]
// A refused write's `Err` is the very answer (a `Response`), built once per request.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orgsync::clerk::api::ClerkConfig;
use orgsync::clerk::api::{ClerkClient, RetryPolicy};
use serde_json::Value;

mod access;
mod admission;
mod builders;
mod invitations;
mod memberships;
mod orgs;
mod params;
mod rbac;
mod reads;
mod role_sets;
mod server;
mod state;
mod webhooks;

#[allow(unused_imports)]
pub use access::{invitation, permission, role};
pub use builders::{membership, org, user};
#[allow(unused_imports)]
pub use role_sets::{role_set, RoleSetSeed};
#[allow(unused_imports)]
pub use server::{serve_standalone, Standalone};
#[allow(unused_imports)]
pub use webhooks::{Delivery, WebhookEvent, WebhookSettings};

use state::{Clock, RoleSetRecord};

/// The secret key the fake accepts.
pub const KEY: &str = "sk_test_fakeclerk0000000000000000";

/// One stored object: its ordering key, lookup keys and its JSON text (serialized once, so a
/// page of 500 costs a string join, not 500 serializations).
#[derive(Clone)]
struct Entry {
    id: String,
    created_at: i64,
    /// Organizations: the slug. Memberships and invitations: the organization id.
    secondary: Option<String>,
    /// Memberships: the user id.
    user_id: Option<String>,
    json: Arc<str>,
}

impl Entry {
    fn value(&self) -> Value {
        serde_json::from_str(&self.json).expect("stored objects are JSON")
    }
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

/// An injected failure: requests to `path` (with `method`, and at `offset`, when set) answer
/// `status` before anything happens, `times` times (forever when `None`).
#[derive(Debug, Clone)]
pub struct Failure {
    pub path: String,
    pub method: Option<String>,
    pub offset: Option<u32>,
    pub status: u16,
    pub retry_after: Option<String>,
    pub times: Option<usize>,
}

impl Failure {
    pub fn new(path: &str, status: u16) -> Self {
        Self {
            path: path.to_owned(),
            method: None,
            offset: None,
            status,
            retry_after: None,
            times: None,
        }
    }
    /// Only requests with this method (`"GET"`, `"POST"`, ...) fail.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
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

/// What happens to the answer of a write that succeeded (Clerk performed it).
#[derive(Debug, Clone)]
pub enum LostMode {
    /// The connection is closed without an answer (a reset after sending).
    Drop,
    /// The answer comes after this long (set it beyond the client's timeout).
    Late(Duration),
    /// This status (a Clerk error body) replaces the answer: a 5xx after the write.
    Status(u16),
    /// The answer waits until the gate is opened: the moment between Clerk's write and its
    /// answer, held for a test (see [`FakeClerk::hold_answers`]).
    Hold(GateHandle),
}

/// The answers of `times` successful requests `method path` are lost ([`LostMode`]); the write
/// itself, its state change and its webhooks, happened.
#[derive(Debug, Clone)]
pub struct LostAnswer {
    pub method: String,
    pub path: String,
    pub mode: LostMode,
    pub times: Option<usize>,
}

impl LostAnswer {
    /// Drops the connection after the write, once.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            mode: LostMode::Drop,
            times: Some(1),
        }
    }
    pub fn mode(mut self, mode: LostMode) -> Self {
        self.mode = mode;
        self
    }
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
    pub fn always(mut self) -> Self {
        self.times = None;
        self
    }
}

/// A logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The JSON body of a write (`None` for reads and bodies that are not JSON).
    pub body: Option<Value>,
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

struct World {
    orgs: Collection,
    users: Collection,
    memberships: Collection,
    roles: Collection,
    permissions: Collection,
    /// Invitations: `secondary` is the organization id.
    invitations: Collection,
    role_sets: Vec<RoleSetRecord>,
    /// Left out of the list endpoints but still found by id or filter: what an offset listing
    /// misses when other objects are deleted meanwhile.
    hidden_from_listings: HashSet<String>,
    failures: Vec<Failure>,
    lost_answers: Vec<LostAnswer>,
    gates: Vec<Gate>,
    log: Vec<Logged>,
    key: String,
    clock: Clock,
    latency: Duration,
    next_id: u64,
    hooks: Arc<webhooks::Hub>,
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
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts the server on `addr`, accepting [`KEY`].
    pub async fn start_on(addr: SocketAddr) -> Self {
        let world = Arc::new(Mutex::new(World {
            orgs: Collection::default(),
            users: Collection::default(),
            memberships: Collection::default(),
            roles: Collection::default(),
            permissions: Collection::default(),
            invitations: Collection::default(),
            role_sets: Vec::new(),
            hidden_from_listings: HashSet::new(),
            failures: Vec::new(),
            lost_answers: Vec::new(),
            gates: Vec::new(),
            log: Vec::new(),
            key: KEY.to_owned(),
            clock: Clock::default(),
            latency: Duration::ZERO,
            next_id: 0,
            hooks: webhooks::Hub::start(),
        }));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the fake Clerk API");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server::serve(listener, server::router(world.clone())));
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

    /// Every request waits this long before it is handled (a Clerk region's round trip).
    pub fn set_latency(&self, latency: Duration) {
        self.world().latency = latency;
    }

    /// Moves the fake's clock (which stamps `updated_at`, webhook timestamps and `Date`)
    /// `offset_ms` away from this machine's.
    pub fn set_clock_offset(&self, offset_ms: i64) {
        self.world().clock.offset_ms = offset_ms;
    }

    /// The fake's clock now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.world().clock.now()
    }

    /// Adds or replaces an organization (an [`org`] value).
    pub fn put_org(&self, org: &Value) {
        self.world().put_org_value(org);
    }

    /// Adds or replaces a user (a [`user`] value).
    pub fn put_user(&self, user: &Value) {
        self.world().put_user_value(user);
    }

    /// Adds or replaces a membership (a [`membership`] value).
    pub fn put_membership(&self, m: &Value) {
        self.world().put_membership_value(m);
    }

    /// Deletes an organization and its memberships, as Clerk does (no webhook: a test's hand).
    pub fn delete_org(&self, id: &str) {
        let mut w = self.world();
        w.orgs.remove(id);
        let gone = w.memberships_where(|e| e.secondary.as_deref() == Some(id));
        for m in gone {
            w.memberships.remove(&m);
        }
    }

    /// Deletes a user and their memberships, as Clerk does.
    pub fn delete_user(&self, id: &str) {
        let mut w = self.world();
        w.users.remove(id);
        let gone = w.memberships_where(|e| e.user_id.as_deref() == Some(id));
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

    /// The answers of matching successful writes are lost after the write happened.
    pub fn lose_answer(&self, lost: LostAnswer) {
        self.world().lost_answers.push(lost);
    }

    /// Holds the answers of successful `method path` writes (performed, webhooks emitted) until
    /// the returned gate is opened.
    pub fn hold_answers(&self, method: &str, path: &str) -> GateHandle {
        let gate = GateHandle {
            open: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        self.lose_answer(
            LostAnswer::new(method, path)
                .mode(LostMode::Hold(gate.clone()))
                .always(),
        );
        gate
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

    /// How many `method` requests went to exactly `path`.
    pub fn requests_with(&self, method: &str, path: &str) -> usize {
        let w = self.world();
        w.log.iter().filter(|l| l.path == path && l.method == method).count()
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

    /// The stored organization with this id or slug, as the API would answer it.
    pub fn org(&self, id_or_slug: &str) -> Option<Value> {
        let w = self.world();
        w.org_entry(id_or_slug).map(Entry::value)
    }

    /// The organization's memberships, oldest first.
    pub fn memberships_of(&self, org_id: &str) -> Vec<Value> {
        let w = self.world();
        let ids = w.memberships_where(|e| e.secondary.as_deref() == Some(org_id));
        ids.iter()
            .filter_map(|id| w.memberships.get(id))
            .map(Entry::value)
            .collect()
    }

    /// Every stored organization, oldest first.
    pub fn orgs(&self) -> Vec<Value> {
        self.world().orgs.ordered.values().map(Entry::value).collect()
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

#[derive(Debug, Clone)]
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

type Shared = Arc<Mutex<World>>;
