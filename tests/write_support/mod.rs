//! What the write-path tests share: the real application (receiver, workers and the `/v1` API)
//! pointed at the fake Clerk, which sends its webhooks back to it; an API token; requests; and
//! probes of the mirror and the change feed.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orgsync::app::ServeConfig;
use orgsync::tokens::{self, Access, TokenName};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::common::{config, TestApp, SECRET};
use crate::fake_clerk::{user, FakeClerk};

/// A fixed past for the users the tests put in the fake.
pub const BASE: i64 = 1_764_000_000_000;

/// The application with its API, the fake Clerk it writes to, and a read-write token.
pub struct WriteApp {
    pub app: TestApp,
    pub api: SocketAddr,
    pub fake: FakeClerk,
    pub token: String,
    pub http: reqwest::Client,
}

/// The service's configuration against `fake`: receiver, workers and the API on port 0.
pub fn write_config(fake: &FakeClerk) -> ServeConfig {
    let mut c = config(Some(SECRET), true);
    c.clerk = Some(fake.clerk_config());
    c
}

impl WriteApp {
    /// A fake Clerk holding users `user_maria` and `user_tom`, the app on `pool`, webhooks from
    /// the fake to the app's receiver (prompt, in order, unless reconfigured), a read-write token.
    pub async fn start(pool: PgPool) -> Self {
        let fake = FakeClerk::start().await;
        Self::start_with(pool, fake, |_| {}).await
    }

    pub async fn start_with(pool: PgPool, fake: FakeClerk, edit: impl FnOnce(&mut ServeConfig)) -> Self {
        put_people(&fake);
        let mut cfg = write_config(&fake);
        edit(&mut cfg);
        let token = tokens::create(&pool, &TokenName::parse("app").unwrap(), Access::ReadWrite)
            .await
            .unwrap()
            .token;
        let app = TestApp::spawn(pool, cfg).await;
        let api = app.api_addr.expect("the API serves");
        fake.set_webhook_receiver(&app.url("/webhooks/clerk"), SECRET);
        Self {
            app,
            api,
            fake,
            token,
            http: reqwest::Client::new(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.app.pool
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    /// `method path` with the token and `body` (JSON, when given).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body, &[]).await
    }

    pub async fn call_with(&self, method: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the API answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// `POST /v1/hotels` for `name` with `user_maria` as its admin; panics unless 201.
    pub async fn create_hotel(&self, name: &str) -> Value {
        let (status, body) = self
            .call("POST", "/v1/hotels", Some(json!({"name": name, "created_by": "user_maria"})))
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }
}

/// Puts the tests' people in the fake.
pub fn put_people(fake: &FakeClerk) {
    fake.put_user(&user("user_maria", "maria@example.com", "Maria", "Rossi", BASE, BASE));
    fake.put_user(&user("user_tom", "tom@example.com", "Tom", "Berg", BASE, BASE));
    fake.put_user(&user("user_ana", "ana@example.com", "Ana", "Lind", BASE, BASE));
}

/// The mirror's rows, every column that carries Clerk's data, as one JSON value: equal values
/// mean identical rows.
pub async fn rows(pool: &PgPool) -> Value {
    sqlx::query_scalar(
        r#"select json_build_object(
             'hotels', (select coalesce(json_agg(h order by id), '[]') from
                 (select id, name, slug, image_url, public_metadata, created_at, updated_at, deleted_at, clerk_version
                  from hotels) h),
             'users', (select coalesce(json_agg(u order by id), '[]') from
                 (select id, email, first_name, last_name, created_at, updated_at, deleted_at, clerk_version
                  from users) u),
             'memberships', (select coalesce(json_agg(m order by hotel_id, user_id), '[]') from
                 (select hotel_id, user_id, clerk_membership_id, role, role_name, permissions, created_at,
                         updated_at, deleted_at, clerk_version from memberships) m),
             'invitations', (select coalesce(json_agg(i order by id), '[]') from
                 (select id, hotel_id, email_address, role, status, created_at, updated_at, deleted_at,
                         clerk_version from invitations) i),
             'member_permissions', (select coalesce(json_agg(p order by hotel_id, user_id, permission), '[]')
                 from member_permissions p))"#,
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The change feed, `(entity, entity_id, op, source)` in id order.
pub async fn feed(pool: &PgPool) -> Vec<(String, String, String, Option<String>)> {
    sqlx::query_as("select entity, entity_id, op, source from changes order by id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Waits until every job is finished (done or skipped); panics on a dead job or after 20 s.
pub async fn jobs_settled(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (open, dead): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where state = 'available'), count(*) filter (where state = 'dead') from jobs",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(dead, 0, "a job is dead");
        if open == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{open} jobs still open after 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Delivers every webhook the fake emitted and waits until the app has applied them.
pub async fn settle(w: &WriteApp) {
    let deliveries = w.fake.drain_webhooks().await;
    assert!(deliveries.iter().all(|d| d.succeeded()), "{deliveries:?}");
    jobs_settled(w.pool()).await;
}

/// A TCP proxy in front of Postgres that a test can cut (every connection closed, new ones
/// refused) and restore: "Postgres unreachable" for one process only.
#[derive(Clone)]
pub struct PgProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl PgProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (c, cs) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                cs.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { addr, cut, conns }
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
