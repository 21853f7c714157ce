//! Shared test helpers: spawn the real application on port 0 against a per-test database, sign
//! fixture events like Svix does, and read rows back.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use orgsync::app::{Application, ServeConfig};
use orgsync::clerk::signature::WebhookVerifier;
use orgsync::db::PoolSettings;
use orgsync::http::server::HttpLimits;
use orgsync::queue::ingest::IngestSettings;
use orgsync::queue::WorkerSettings;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub mod access_events;
pub mod cli;
pub mod raw_clients;
pub mod test_db;
#[allow(unused_imports)]
pub use test_db::{database_on_server, test_server, TestDb};

pub const SECRET: &str = "whsec_dGVzdC1zZWNyZXQtZm9yLW9yZ3N5bmMtdGVzdHM=";
pub const OLD_SECRET: &str = "whsec_b2xkLXNlY3JldC1mb3Itb3Jnc3luYy10ZXN0cw==";

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The text of `fixtures/webhooks/<name>.json`.
pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures_dir().join("webhooks").join(format!("{name}.json")))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

pub fn fixture_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Worker settings small enough for tests: fast polling, short retries.
pub fn fast_workers() -> WorkerSettings {
    WorkerSettings {
        concurrency: 2,
        batch_size: 10,
        lease: Duration::from_secs(10),
        retry_base: Duration::from_millis(20),
        retry_cap: Duration::from_millis(200),
        max_attempts: 5,
        poll_interval: Duration::from_millis(50),
        retention: Duration::from_secs(3600),
    }
}

pub fn config(secrets: Option<&str>, worker: bool) -> ServeConfig {
    ServeConfig {
        database_url: String::new(),
        schema: orgsync::db::Schema::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
        webhook_secrets: secrets.map(str::to_owned),
        max_body: 64 * 1024,
        http: HttpLimits::default(),
        receiver: true,
        worker,
        pool: PoolSettings::default(),
        ingest: IngestSettings::default(),
        worker_settings: fast_workers(),
        clerk: None,
        resync_interval: None,
        self_heal_after: 3,
        mass_delete_threshold: 0.10,
        console: None,
        api_listen: Some("127.0.0.1:0".parse().unwrap()),
        api: orgsync::api::ApiSettings::default(),
        feed: orgsync::changes::SequencerSettings::default(),
    }
}

/// A running application and what a test needs to talk to it.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The separate admin listener, when the config has one.
    pub admin_addr: Option<SocketAddr>,
    /// The `/v1` API's listener, when it serves (a Clerk key is configured).
    pub api_addr: Option<SocketAddr>,
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub signer: WebhookVerifier,
    pub cancel: CancellationToken,
    pub handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Receiver only (no workers), verifying with [`SECRET`].
    pub async fn receiver(pool: PgPool) -> Self {
        Self::spawn(pool, config(Some(SECRET), false)).await
    }

    /// Receiver and workers.
    pub async fn full(pool: PgPool) -> Self {
        Self::spawn(pool, config(Some(SECRET), true)).await
    }

    pub async fn spawn(pool: PgPool, config: ServeConfig) -> Self {
        let app = Application::build_with_pool(config, pool.clone())
            .await
            .expect("app builds");
        let addr = SocketAddr::from(([127, 0, 0, 1], app.port()));
        let admin_addr = app.admin_port().map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        let api_addr = app.api_port().map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(app.run(cancel.clone()));
        Self {
            addr,
            admin_addr,
            api_addr,
            pool,
            client: reqwest::Client::new(),
            signer: WebhookVerifier::parse(SECRET).unwrap(),
            cancel,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Posts `body` signed with [`SECRET`] under `msg_id`, timestamped now.
    pub async fn deliver(&self, msg_id: &str, body: &str) -> reqwest::Response {
        self.deliver_signed(&self.signer, msg_id, now_secs(), body).await
    }

    pub async fn deliver_signed(
        &self,
        signer: &WebhookVerifier,
        msg_id: &str,
        timestamp: i64,
        body: &str,
    ) -> reqwest::Response {
        let headers = signer.sign(msg_id, timestamp, body.as_bytes());
        self.client
            .post(self.url("/webhooks/clerk"))
            .headers(headers)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request sent")
    }

    /// Stops the app gracefully and waits for it.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

pub async fn job_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until `sql` (a query returning one boolean) is true, or panics after `timeout`.
pub async fn wait_until(pool: &PgPool, sql: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ok: bool = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        if ok {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let jobs: Vec<(i64, String, String, i32, Option<String>)> =
                sqlx::query_as("select id, event_type, state, attempts, last_error from jobs order by id")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            panic!("timed out waiting for: {sql}\njobs: {jobs:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces the ids and times of a fixture so tests can make many distinct events.
pub fn with_data(fixture_name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v = fixture_json(fixture_name);
    edit(&mut v);
    v.to_string()
}

/// Builders of Clerk events in the fixtures' exact shapes, with the ids, names and times a test
/// chooses. `ts` is the envelope timestamp, passed through as given (seconds or milliseconds).
pub mod events {
    use super::fixture_json;
    use serde_json::{json, Value};

    fn envelope(kind: &str, ts: i64, edit: impl FnOnce(&mut Value)) -> Value {
        let mut v = fixture_json(kind);
        v["timestamp"] = json!(ts);
        edit(&mut v["data"]);
        v
    }

    pub fn organization(kind: &str, id: &str, name: &str, created: i64, updated: i64, ts: i64) -> Value {
        envelope(kind, ts, |d| {
            d["id"] = json!(id);
            d["name"] = json!(name);
            d["slug"] = json!(name.to_lowercase().replace(' ', "-"));
            d["created_at"] = json!(created);
            d["updated_at"] = json!(updated);
        })
    }

    pub fn organization_deleted(id: &str, ts: i64) -> Value {
        envelope("organization.deleted", ts, |d| d["id"] = json!(id))
    }

    pub fn user(kind: &str, id: &str, first_name: &str, email: &str, created: i64, updated: i64, ts: i64) -> Value {
        envelope(kind, ts, |d| {
            d["id"] = json!(id);
            d["first_name"] = json!(first_name);
            let email_id = format!("idn_{}", id.trim_start_matches("user_"));
            d["primary_email_address_id"] = json!(email_id);
            d["email_addresses"][0]["id"] = json!(email_id);
            d["email_addresses"][0]["email_address"] = json!(email);
            d["created_at"] = json!(created);
            d["updated_at"] = json!(updated);
        })
    }

    pub fn user_deleted(id: &str, ts: i64) -> Value {
        envelope("user.deleted", ts, |d| d["id"] = json!(id))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn membership(
        kind: &str,
        id: &str,
        org: &str,
        user: &str,
        role: &str,
        created: i64,
        updated: i64,
        ts: i64,
    ) -> Value {
        envelope(kind, ts, |d| {
            d["id"] = json!(id);
            d["role"] = json!(role);
            d["organization"]["id"] = json!(org);
            d["public_user_data"]["user_id"] = json!(user);
            d["public_user_data"]["first_name"] = json!(format!("stub-{user}"));
            d["public_user_data"]["identifier"] = json!(format!("{user}@stub.test"));
            d["created_at"] = json!(created);
            d["updated_at"] = json!(updated);
        })
    }

    pub fn kind(v: &Value) -> String {
        v["type"].as_str().unwrap().to_owned()
    }
}

/// Inserts a job directly, as the receiver would have stored it.
pub async fn insert_job(pool: &PgPool, event_id: &str, event: &serde_json::Value) -> i64 {
    sqlx::query_scalar("insert into jobs (event_id, event_type, payload) values ($1, $2, $3) returning id")
        .bind(event_id)
        .bind(event["type"].as_str().unwrap())
        .bind(event)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Runs batches until no job is due; panics if that takes more than `max_batches`.
pub async fn drain(pool: &PgPool, settings: &WorkerSettings, max_batches: usize) {
    for _ in 0..max_batches {
        let report = orgsync::queue::runner::run_batch(pool, settings).await.unwrap();
        if report.claimed == 0 {
            return;
        }
    }
    panic!("queue not drained after {max_batches} batches");
}

pub async fn job_state(pool: &PgPool, event_id: &str) -> (String, i32, Option<String>) {
    sqlx::query_as("select state, attempts, last_error from jobs where event_id = $1")
        .bind(event_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The URL of the per-test database behind `pool` (on [`test_server`]).
pub async fn test_database_url(pool: &PgPool) -> String {
    let db: String = sqlx::query_scalar("select current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    database_on_server(&db)
}

/// Locks hotel `id` in a transaction of its own, so a worker applying an event of that hotel
/// blocks mid-batch until the returned transaction ends.
pub async fn hold_hotel_row(pool: &PgPool, id: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("select 1 from hotels where id = $1 for update")
        .bind(id)
        .execute(&mut *blocker)
        .await
        .unwrap();
    blocker
}

/// Waits until `count` sessions of this test's database, whose `application_name` is like
/// `app`, are waiting for a lock.
pub async fn wait_for_lock_waiters(pool: &PgPool, app: &str, count: i64) {
    let sql = format!(
        "select count(*) = {count} from pg_stat_activity
         where datname = current_database() and application_name like '{app}' and wait_event_type = 'Lock'"
    );
    wait_until(pool, &sql, Duration::from_secs(30)).await;
}

/// Starts the real `orgsync serve --no-receiver` binary on `database_url` with `args` added.
pub fn spawn_worker_process(database_url: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_orgsync"))
        .args(["serve", "--no-receiver", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("ORGSYNC_RESYNC_INTERVAL", "off")
        .env("ORGSYNC_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
