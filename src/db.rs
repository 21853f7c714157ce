//! Connecting to Postgres: pool options, creating the database, embedded migrations, and the
//! settings the service keeps for itself.

use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::clerk::signature::generate_secret;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Pool settings for one process.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a request waits for a connection before failing (and the receiver answers 503).
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// Parses `url` into connect options. Err when it is not a Postgres URL.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    url.parse::<PgConnectOptions>().map(|o| {
        o.application_name("orgsync")
            // A worker whose client died mid-statement (kill -9) is noticed within a second
            // and rolled back, instead of holding its job locks until the statement ends.
            .options([("client_connection_check_interval", "1000")])
    })
}

/// A pool that connects lazily: the process starts, and `/readyz` tells when the database is
/// there.
pub fn lazy_pool(options: PgConnectOptions, settings: &PoolSettings) -> PgPool {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        // No ping before every acquire: it costs a round trip per batch on the hot paths. A
        // connection the server dropped fails its next statement instead, which every caller
        // already handles (503 to Svix, or a job retried), and is then discarded by the pool.
        .test_before_acquire(false)
        .connect_lazy_with(options)
}

/// Creates the database named in `url` when it does not exist, then applies the migrations.
/// Ok means the schema is current; Err carries the cause (unreachable server, failed migration).
pub async fn prepare(url: &str, pool: &PgPool) -> anyhow::Result<()> {
    if !Postgres::database_exists(url).await? {
        tracing::info!("creating the database named in DATABASE_URL");
        if let Err(e) = Postgres::create_database(url).await {
            // Two replicas starting at once: the loser sees "already exists", which is fine.
            if !Postgres::database_exists(url).await? {
                return Err(e.into());
            }
        }
    }
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Ok(true) when the database answers and every embedded migration is applied.
pub async fn is_ready(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> = sqlx::query_scalar("select max(version) from _sqlx_migrations where success")
        .fetch_one(pool)
        .await?;
    Ok(applied.unwrap_or(0) >= latest)
}

/// The webhook secret kept in the database for a service started without one. Returns the
/// secret and whether this call generated it (so the caller prints it exactly once).
pub async fn stored_webhook_secret(pool: &PgPool) -> Result<(String, bool), sqlx::Error> {
    let candidate = generate_secret();
    let inserted = sqlx::query!(
        "insert into settings (key, value) values ('webhook_secret', $1) on conflict (key) do nothing",
        candidate
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    let value = sqlx::query_scalar!("select value from settings where key = 'webhook_secret'")
        .fetch_one(pool)
        .await?;
    Ok((value, inserted))
}
