//! One throw-away database per test, on the local Postgres server.
//!
//! `cargo test` needs no exported variable: the server is `ORGSYNC_TEST_SERVER` when set, else
//! `postgres://postgres@127.0.0.1:5432` (the one the README documents). Each [`TestDb`] creates
//! a fresh database named `orgsync_test_<pid>_<n>`, migrates it exactly as `orgsync serve`
//! does, and drops it when the test passes (a failed test's database is kept for a look, and
//! dropped by the first test of a later run once its process is gone).

use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::migrate::MigrateDatabase;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::OnceCell;

const PREFIX: &str = "orgsync_test_";

/// The server the tests create their databases on, without a database name.
pub fn test_server() -> String {
    let url = std::env::var("ORGSYNC_TEST_SERVER").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    url.trim_end_matches('/').to_owned()
}

/// The URL of database `name` on [`test_server`].
pub fn database_on_server(name: &str) -> String {
    format!("{}/{name}", test_server())
}

/// A migrated database of this test's own, and a pool on it.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// Creates and migrates a fresh database. Panics when the server cannot be reached.
    pub async fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        static SWEPT: OnceCell<()> = OnceCell::const_new();
        SWEPT.get_or_init(drop_databases_of_finished_runs).await;
        let name = format!(
            "{PREFIX}{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let url = database_on_server(&name);
        Postgres::create_database(&url)
            .await
            .unwrap_or_else(|e| panic!("creating {name} on {} (is Postgres running?): {e}", test_server()));
        // The test's own sessions are named apart from the service's (`orgsync`), which tests
        // look for in pg_stat_activity.
        let options = orgsync::db::connect_options(&url)
            .unwrap()
            .application_name("orgsync-test");
        let settings = orgsync::db::PoolSettings {
            max_connections: 20,
            ..Default::default()
        };
        let pool = orgsync::db::lazy_pool(options, &settings);
        orgsync::db::prepare(&url, &pool)
            .await
            .expect("migrating the test database");
        Self { name, url, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test database kept for inspection: {}", self.url);
            return;
        }
        let url = self.url.clone();
        // Drop runs inside the test's runtime, which cannot block on a future: a short-lived
        // thread with a runtime of its own drops the database (terminating any connection).
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async { Postgres::force_drop_database(&url).await })
        })
        .join();
    }
}

/// Drops `orgsync_test_<pid>_*` databases whose process is gone (earlier runs that failed or
/// were interrupted).
async fn drop_databases_of_finished_runs() {
    let Ok(mut conn) = PgConnection::connect(&database_on_server("postgres")).await else {
        return;
    };
    let names: Vec<String> = sqlx::query_scalar("select datname from pg_database where datname like $1")
        .bind(format!("{PREFIX}%"))
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    for name in names {
        let pid = name[PREFIX.len()..].split('_').next().unwrap_or_default();
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
                .execute(&mut conn)
                .await;
        }
    }
}
