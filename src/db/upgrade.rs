//! The upgrade from the layout of releases before orgsync had a schema of its own: its tables,
//! sequences, function and `_sqlx_migrations` in `public`.
//!
//! Such a layout is recognised precisely: `public._sqlx_migrations` exists and every row in it is
//! one of orgsync's own migrations (same version *and* checksum), so an application that uses
//! sqlx itself (its own `public._sqlx_migrations`) is never mistaken for orgsync. Only the objects
//! those migrations created are moved (`alter … set schema`, which carries indexes, constraints,
//! triggers and owned sequences along, and keeps every row and every foreign key pointing at the
//! tables), in one transaction: either all move or none does.

use anyhow::{bail, Context};
use sqlx::PgPool;

use super::{Schema, MIGRATOR};

/// Tables created by the migrations of releases that laid orgsync out in `public`.
pub const LEGACY_TABLES: &[&str] = &[
    "hotels",
    "users",
    "memberships",
    "jobs",
    "settings",
    "resync_runs",
    "_sqlx_migrations",
];
/// Functions created by those migrations (the trigger of `jobs` uses it).
pub const LEGACY_FUNCTIONS: &[&str] = &["jobs_notify()"];
/// The migrations of those releases: the only ones whose objects this module knows how to move.
/// A `public._sqlx_migrations` holding any other orgsync migration is refused (never moved by
/// halves).
const LEGACY_VERSIONS: &[i64] = &[20261125000001, 20261125000002];

/// An advisory-lock key (class, key) serialising concurrent upgrades (two replicas starting).
const UPGRADE_LOCK: (i32, i32) = (0x6f72_6773, 0x7363_686d); // "orgs", "schm"

/// What `public` holds, as far as orgsync is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicLayout {
    /// No `_sqlx_migrations` in `public`, or one that is not orgsync's.
    NotOrgsync,
    /// orgsync's tables from an earlier release.
    Orgsync,
}

/// Whether `public` holds orgsync's tables from an earlier release.
pub async fn public_layout(conn: &mut sqlx::PgConnection) -> Result<PublicLayout, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("select to_regclass('public._sqlx_migrations') is not null")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(PublicLayout::NotOrgsync);
    }
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("select version, checksum from public._sqlx_migrations")
        .fetch_all(&mut *conn)
        .await?;
    let ours = |(version, checksum): &(i64, Vec<u8>)| {
        MIGRATOR
            .iter()
            .any(|m| m.version == *version && m.checksum.as_ref() == checksum.as_slice())
    };
    if !rows.is_empty() && rows.iter().all(ours) {
        Ok(PublicLayout::Orgsync)
    } else {
        Ok(PublicLayout::NotOrgsync)
    }
}

/// Checks for (and with `apply`, performs) the move of an earlier release's tables from `public`
/// into `schema`. Ok when there is nothing to move (no orgsync layout in `public`, or `schema`
/// already migrated) or when it moved everything; Err without `apply` when there is something
/// to move (naming `orgsync migrate`), or when the move is impossible (an unknown orgsync
/// migration in `public`, or a name already taken in `schema`) — then nothing changed.
pub async fn from_public(pool: &PgPool, schema: &Schema, apply: bool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    if apply {
        sqlx::query("select pg_advisory_xact_lock($1, $2)")
            .bind(UPGRADE_LOCK.0)
            .bind(UPGRADE_LOCK.1)
            .execute(&mut *tx)
            .await?;
    }
    let migrated: bool = sqlx::query_scalar("select to_regclass(format('%I._sqlx_migrations', $1::text)) is not null")
        .bind(schema.as_str())
        .fetch_one(&mut *tx)
        .await?;
    if migrated || public_layout(&mut tx).await? == PublicLayout::NotOrgsync {
        return Ok(());
    }
    if !apply {
        bail!(
            "orgsync's tables are in schema public, where an earlier release created them; run \
             `orgsync migrate` once to move them into schema {schema} (the application's queries \
             then name {schema}.hotels etc.), or set ORGSYNC_SCHEMA=public to keep them where they are"
        );
    }
    let versions: Vec<i64> = sqlx::query_scalar("select version from public._sqlx_migrations")
        .fetch_all(&mut *tx)
        .await?;
    if let Some(v) = versions.iter().find(|v| !LEGACY_VERSIONS.contains(v)) {
        bail!(
            "public._sqlx_migrations holds orgsync migration {v}, whose objects this release cannot \
             move; nothing was changed"
        );
    }
    sqlx::query(&format!("create schema if not exists {schema}"))
        .execute(&mut *tx)
        .await?;
    let mut moved = 0;
    for table in LEGACY_TABLES {
        let exists: bool = sqlx::query_scalar("select to_regclass(format('public.%I', $1::text)) is not null")
            .bind(table)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            continue;
        }
        sqlx::query(&format!("alter table public.{table} set schema {schema}"))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("moving public.{table} into schema {schema} (nothing was changed)"))?;
        moved += 1;
    }
    for function in LEGACY_FUNCTIONS {
        let exists: bool = sqlx::query_scalar("select to_regprocedure(format('public.%s', $1::text)) is not null")
            .bind(function)
            .fetch_one(&mut *tx)
            .await?;
        if exists {
            sqlx::query(&format!("alter function public.{function} set schema {schema}"))
                .execute(&mut *tx)
                .await
                .with_context(|| format!("moving public.{function} into schema {schema} (nothing was changed)"))?;
        }
    }
    tx.commit().await?;
    tracing::info!(%schema, tables = moved, "moved orgsync's tables from schema public");
    Ok(())
}
