//! Connecting to Postgres: pool options, creating the database and orgsync's schema, embedded
//! migrations, and the settings the service keeps for itself.
//!
//! Everything orgsync creates lives in one Postgres schema ([`Schema`], `orgsync` by default):
//! every connection's `search_path` is that schema alone, so the unqualified names in the
//! migrations and queries (tables, sequences, functions, triggers, sqlx's `_sqlx_migrations`)
//! all resolve there, and nothing is created in `public` unless `public` is the schema chosen.

use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{PgPool, Postgres};

use crate::clerk::signature::generate_secret;

pub mod upgrade;

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

/// The Postgres schema orgsync keeps everything in: a lowercase SQL identifier (letters, digits,
/// `_`, not starting with a digit, at most 63 bytes), so it never needs quoting. `public` is
/// allowed (the layout of releases before the schema existed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schema(String);

/// The schema used when `ORGSYNC_SCHEMA` is not set.
pub const DEFAULT_SCHEMA: &str = "orgsync";

impl Schema {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Schema {
    fn default() -> Self {
        Self(DEFAULT_SCHEMA.to_owned())
    }
}

impl std::fmt::Display for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Schema {
    type Err = String;

    /// Ok for a lowercase identifier such as `orgsync`, `orgsync_staging` or `public`; Err
    /// (explaining why) for anything that would need quoting or is reserved by Postgres.
    fn from_str(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !s.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(format!(
                "{s:?} is not a schema name orgsync accepts: use lowercase letters, digits and _ (not first), at most 63 characters"
            ));
        }
        if s.starts_with("pg_") || s == "information_schema" {
            return Err(format!("{s:?} is reserved by Postgres"));
        }
        Ok(Self(s.to_owned()))
    }
}

/// Parses `url` into connect options whose `search_path` is `schema` alone. Err when it is not
/// a Postgres URL.
///
/// TLS: a URL with `sslmode=...` (or the `PGSSLMODE` variable) decides. Without either, a
/// server on this machine (`localhost`, a loopback address, a Unix socket) is reached without
/// TLS, since encrypting loopback traffic protects nothing and costs CPU on every round trip;
/// any other host keeps libpq's and sqlx's default `prefer` (TLS when the server offers it).
pub fn connect_options(url: &str, schema: &Schema) -> Result<PgConnectOptions, sqlx::Error> {
    let explicit_tls = url.contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    url.parse::<PgConnectOptions>().map(|o| {
        let o = if !explicit_tls && is_local(&o) {
            o.ssl_mode(PgSslMode::Disable)
        } else {
            o
        };
        o.application_name("orgsync")
            // A worker whose client died mid-statement (kill -9) is noticed within a second
            // and rolled back, instead of holding its job locks until the statement ends.
            .options([
                ("client_connection_check_interval", "1000"),
                ("search_path", schema.as_str()),
            ])
    })
}

/// True when the options point at a server on this machine.
fn is_local(options: &PgConnectOptions) -> bool {
    if options.get_socket().is_some() {
        return true;
    }
    let host = options.get_host().trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.starts_with('/') || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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

/// Creates the database named in `url` when it does not exist, then `schema` in it, then applies
/// the migrations there. `pool` must come from [`connect_options`] with the same schema.
///
/// Ok means the schema is current. Err carries the cause: unreachable server, failed migration,
/// or orgsync's tables still in `public` from an earlier release (the message names
/// `orgsync migrate`, which moves them: [`prepare_and_upgrade`]).
pub async fn prepare(url: &str, schema: &Schema, pool: &PgPool) -> anyhow::Result<()> {
    prepare_with(url, schema, pool, false).await
}

/// As [`prepare`], and first moves orgsync's tables from `public` into `schema` when an earlier
/// release laid them out there (see [`crate::db::upgrade`]). What `orgsync migrate` runs.
pub async fn prepare_and_upgrade(url: &str, schema: &Schema, pool: &PgPool) -> anyhow::Result<()> {
    prepare_with(url, schema, pool, true).await
}

async fn prepare_with(url: &str, schema: &Schema, pool: &PgPool, upgrade: bool) -> anyhow::Result<()> {
    if !Postgres::database_exists(url).await? {
        tracing::info!("creating the database named in DATABASE_URL");
        if let Err(e) = Postgres::create_database(url).await {
            // Two replicas starting at once: the loser sees "already exists", which is fine.
            if !Postgres::database_exists(url).await? {
                return Err(e.into());
            }
        }
    }
    if schema.as_str() != "public" {
        upgrade::from_public(pool, schema, upgrade).await?;
    }
    create_schema(pool, schema).await?;
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// `create schema if not exists`, tolerating a concurrent creator (two replicas starting).
async fn create_schema(pool: &PgPool, schema: &Schema) -> Result<(), sqlx::Error> {
    let create = format!("create schema if not exists {schema}");
    if let Err(e) = sqlx::query(&create).execute(pool).await {
        let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_namespace where nspname = $1)")
            .bind(schema.as_str())
            .fetch_one(pool)
            .await?;
        if !exists {
            return Err(e);
        }
    }
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

/// Most rows one pruning statement deletes: short statements keep locks and WAL bursts small.
pub const PRUNE_BATCH: i64 = 5000;

/// Runs `delete` (a statement deleting at most [`PRUNE_BATCH`] rows and returning how many)
/// until it deletes fewer; returns the total.
pub async fn delete_in_batches<F, Fut>(mut delete: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, sqlx::Error>>,
{
    let mut total = 0;
    loop {
        let n = delete().await?;
        total += n;
        if n < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    /// The TLS mode the options ended up with, read back through their `Debug` form (sqlx has
    /// no getter for it).
    fn ssl(url: &str) -> String {
        let debug = format!("{:?}", connect_options(url, &Schema::default()).unwrap());
        let start = debug.find("ssl_mode: ").unwrap() + "ssl_mode: ".len();
        debug[start..].split([',', ' ']).next().unwrap().to_owned()
    }

    #[test]
    fn loopback_goes_without_tls_unless_the_url_asks() {
        if std::env::var_os("PGSSLMODE").is_some() {
            return; // the variable decides; nothing to check here
        }
        assert_eq!(ssl("postgres://postgres@127.0.0.1:5432/x"), "Disable");
        assert_eq!(ssl("postgres://postgres@localhost/x"), "Disable");
        assert_eq!(ssl("postgres://postgres@[::1]:5432/x"), "Disable");
        assert_eq!(ssl("postgres://postgres@127.0.0.1/x?sslmode=require"), "Require");
        assert_eq!(ssl("postgres://postgres@db.example.com/x"), "Prefer");
    }
}
