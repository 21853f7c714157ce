//! Full resync from the Clerk Backend API (`orgsync resync` and the scheduled run), and the
//! self-heal of hotels that membership jobs wait for.
//!
//! A resync lists every organization, membership, user, role, permission, invitation and role
//! set ([`listing`]), streaming each page into temporary tables on a connection of its own
//! ([`staging`]); Postgres compares them with the rows ([`plan`], [`confirm`]; roles,
//! permissions and invitations in [`access`], role sets in [`role_sets`]), and the difference is read back in keyset chunks
//! and written through the rule book ([`crate::reconcile`], via [`apply`]): the very statements
//! the consumer uses, so a webhook applied concurrently is never overwritten with older data.
//! The process holds a few pages and one chunk at a time, however large the instance. A complete
//! run is a snapshot of hotels, users and memberships: it records when it listed (by
//! Clerk's clock), and the consumer then treats older events about what it covered as obsolete
//! ([`crate::reconcile::snapshot`]). The self-heal ([`self_heal`]) is the same for one hotel.
//!
//! Safety rails, in order:
//! 1. Deletes are considered only when every listing completed. A failed listing still applies
//!    the creates and updates of what was listed (they are safe under newer-wins) and records
//!    the run as failed.
//! 2. A row (of any of the seven kinds) missing from a listing is deleted (tombstoned) only if
//!    Clerk, asked for it by id, does not have it: offset pagination skips items when others are deleted meanwhile, and a tombstone can
//!    never be undone.
//! 3. A row written after the listing began (`clerk_version` newer than its start, or changed in
//!    the change feed since the feed's last id before the listing) is kept.
//! 4. A run that would delete more than `mass_delete_threshold` of the live hotels writes
//!    nothing (of any kind) and is recorded as refused, unless `allow_mass_delete`.
//!
//! Every run (dry or not) holds a Postgres advisory lock, so one runs at a time across a fleet,
//! and is recorded in `resync_runs`.

mod access;
mod apply;
mod command;
mod confirm;
mod listing;
mod plan;
pub mod progress;
mod report;
mod role_sets;
mod schedule;
mod self_heal;
mod staging;

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::future::FutureExt;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::clerk::api::{ClerkApiError, ClerkClient, PAGE_LIMIT};
use crate::clerk::events::Millis;
use crate::reconcile::to_time;

pub use command::{command, CommandConfig};
pub use listing::{ListingKind, Progress};
pub use report::{render_text, Changes, Ids, ListedCounts, MassDelete, Outcome, ResyncError, ResyncReport, Skipped};
pub use schedule::schedule;
pub use self_heal::{HealError, Healed, SelfHeal};

use listing::{list_all_users, list_by_offset, Sink};
use staging::Stage;

/// Listed pages encoded and waiting for the staging connection, at most.
const STAGED_PAGES_IN_FLIGHT: usize = 16;

/// The advisory lock every resync holds ("orgsync" in ASCII, then 1).
pub const RESYNC_LOCK_KEY: i64 = 0x6f72_6773_796e_6301;

/// How a resync runs.
#[derive(Clone)]
pub struct ResyncOptions {
    /// Compute and report the difference; write nothing (but the run record).
    pub dry_run: bool,
    /// Apply deletes even above `mass_delete_threshold`.
    pub allow_mass_delete: bool,
    /// Largest share (0..=1) of live hotels a run may delete without `allow_mass_delete`.
    pub mass_delete_threshold: f64,
    /// Most list requests in flight per listing (the client's budget still applies).
    pub concurrency: usize,
    /// Rows per bulk statement (and per transaction).
    pub chunk_size: usize,
    /// Told about listing progress and stages.
    pub progress: Option<Arc<dyn Progress>>,
}

impl Default for ResyncOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            allow_mass_delete: false,
            mass_delete_threshold: 0.10,
            concurrency: 8,
            chunk_size: 2000,
            progress: None,
        }
    }
}

impl std::fmt::Debug for ResyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResyncOptions")
            .field("dry_run", &self.dry_run)
            .field("allow_mass_delete", &self.allow_mass_delete)
            .field("mass_delete_threshold", &self.mass_delete_threshold)
            .field("concurrency", &self.concurrency)
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

/// Runs one resync under the resync lock and records it in `resync_runs`.
///
/// Ok: every listing completed and the difference was applied (or, dry, computed); the report
/// says what changed. Err([`ResyncError::Busy`]) when another resync runs; otherwise see
/// [`ResyncError`]: `MassDelete` and `Incomplete` carry the run's report.
pub async fn resync(pool: &PgPool, client: &ClerkClient, options: &ResyncOptions) -> Result<ResyncReport, ResyncError> {
    let lock = ResyncLock::try_acquire(pool).await?.ok_or(ResyncError::Busy)?;
    let result = run_locked(pool, client, options, None).await;
    lock.release().await;
    result
}

/// As [`resync`], but abandoned when `cancel` fires (its open chunk rolls back; the run is
/// recorded as failed), as the scheduled run is: for runs started by a long-lived process (the
/// console) that must not outlive its shutdown.
pub async fn resync_until(
    pool: &PgPool,
    client: &ClerkClient,
    options: &ResyncOptions,
    cancel: &CancellationToken,
) -> Result<ResyncReport, ResyncError> {
    let lock = ResyncLock::try_acquire(pool).await?.ok_or(ResyncError::Busy)?;
    let result = run_locked(pool, client, options, Some(cancel)).await;
    lock.release().await;
    result
}

/// The session-level advisory lock, on a connection of its own (detached from the pool so the
/// lock can never be handed to another task with a pooled connection). Closing the connection,
/// even by a crash, releases it.
pub(crate) struct ResyncLock {
    conn: PgConnection,
}

impl ResyncLock {
    pub(crate) async fn try_acquire(pool: &PgPool) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = pool.acquire().await?.detach();
        let got = sqlx::query_scalar!(r#"select pg_try_advisory_lock($1) as "got!""#, RESYNC_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(Self { conn }))
        } else {
            let _ = sqlx::Connection::close(conn).await;
            Ok(None)
        }
    }

    pub(crate) async fn release(mut self) {
        let _ = sqlx::query_scalar!(r#"select pg_advisory_unlock($1) as "released!""#, RESYNC_LOCK_KEY)
            .fetch_one(&mut self.conn)
            .await;
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

/// Runs and records one resync; the caller holds the lock.
pub(crate) async fn run_locked(
    pool: &PgPool,
    client: &ClerkClient,
    options: &ResyncOptions,
    cancel: Option<&CancellationToken>,
) -> Result<ResyncReport, ResyncError> {
    // Whoever holds the lock is the only runner, so a run still marked running was cut short.
    sqlx::query!(
        "update resync_runs set outcome = 'failed', finished_at = now(), \
         error = 'interrupted: the process running it stopped' where outcome = 'running'"
    )
    .execute(pool)
    .await?;
    // Milliseconds, like every clerk_version.
    let started_ms = Utc::now().timestamp_millis();
    let started_at = to_time(started_ms);
    let run_id = sqlx::query_scalar!(
        "insert into resync_runs (started_at, dry_run) values ($1, $2) returning id",
        started_at,
        options.dry_run
    )
    .fetch_one(pool)
    .await?;
    tracing::info!(run_id, dry_run = options.dry_run, "resync started");
    let timer = Instant::now();

    let work = execute(pool, client, options, run_id, started_ms);
    let mut result = match cancel {
        Some(cancel) => tokio::select! {
            r = work => r,
            _ = cancel.cancelled() => Err(ResyncError::Cancelled),
        },
        None => work.await,
    };

    // What the run wrote is readable in the change feed when it returns, server or not.
    if !options.dry_run {
        if let Err(e) = crate::changes::sequence_now(pool).await {
            tracing::warn!(run_id, error = %e, "sequencing the change feed after the resync failed");
        }
    }
    let finished_at = Utc::now();
    let (outcome, counts, error) = match &mut result {
        Ok(report) => {
            report.finished_at = finished_at;
            (Outcome::Succeeded, report.to_json(false), None)
        }
        Err(e @ (ResyncError::MassDelete { .. } | ResyncError::Incomplete { .. })) => {
            let message = e.to_string();
            let outcome = if matches!(e, ResyncError::MassDelete { .. }) {
                Outcome::Refused
            } else {
                Outcome::Failed
            };
            let report = match e {
                ResyncError::MassDelete { report } | ResyncError::Incomplete { report, .. } => report,
                _ => unreachable!(),
            };
            report.finished_at = finished_at;
            report.outcome = outcome;
            report.error = Some(message.clone());
            (outcome, report.to_json(false), Some(message))
        }
        Err(e) => (Outcome::Failed, json!({}), Some(e.to_string())),
    };
    let recorded = sqlx::query!(
        "update resync_runs set finished_at = $2, outcome = $3, counts = $4, error = $5 where id = $1",
        run_id,
        finished_at,
        outcome.as_str(),
        counts,
        error,
    )
    .execute(pool)
    .await;
    if let Err(e) = recorded {
        tracing::warn!(run_id, error = %e, "recording the resync run failed");
    }

    let elapsed = timer.elapsed().as_secs_f64();
    // orgsync_resync_runs_total is derived from resync_runs at scrape time (crate::metrics), so
    // every replica reports the fleet's runs; only what the table does not hold is counted here.
    metrics::histogram!("orgsync_resync_duration_seconds").record(elapsed);
    match &result {
        Ok(report) => {
            if !report.dry_run {
                for (table, c) in report.tables() {
                    for (action, n) in [
                        ("created", c.created.len()),
                        ("updated", c.updated.len()),
                        ("deleted", c.deleted.len()),
                    ] {
                        metrics::counter!("orgsync_resync_changes_total", "table" => table, "action" => action)
                            .increment(n as u64);
                    }
                }
            }
            tracing::info!(run_id, elapsed_s = elapsed, counts = %counts, "resync finished")
        }
        Err(e) => tracing::warn!(run_id, elapsed_s = elapsed, error = %e, "resync did not succeed"),
    }
    result
}

// ---------------------------------------------------------------------------------------------
// The run

async fn execute(
    pool: &PgPool,
    client: &ClerkClient,
    options: &ResyncOptions,
    run_id: i64,
    started_ms: Millis,
) -> Result<ResyncReport, ResyncError> {
    let progress = options.progress.as_deref();
    let concurrency = options.concurrency.max(1);
    let stage = |s: &str| {
        if let Some(p) = progress {
            p.stage(s)
        }
    };
    let mut report = ResyncReport::new(run_id, options.dry_run, to_time(started_ms));

    // T of this snapshot, by Clerk's clock: the Date of the users count, answered before the
    // first listing request (see crate::reconcile::snapshot). Without it the run writes as usual
    // but records no mark.
    let (user_total, listed_at) = match client.count_users_with_clock().await {
        Ok((total, date)) => {
            if date.is_none() {
                tracing::warn!("Clerk's answer carried no Date header: this run records no snapshot mark");
            }
            let t = date.map(|d| d.timestamp_millis() - crate::reconcile::snapshot::CLOCK_MARGIN_MS);
            (Some(total.max(0) as u64), t)
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading Clerk's clock failed: this run records no snapshot mark");
            (None, None)
        }
    };

    // The change feed's last id before the listing: rows changed after it are not this run's
    // to delete (see confirm::confirm_deletes).
    let feed_cursor: i64 = sqlx::query_scalar("select coalesce(max(id), 0)::int8 from changes")
        .fetch_one(pool)
        .await?;

    // The three listings stream into the staging area, on a connection of its own.
    stage("listing");
    let mut staged = Stage::open(pool).await?;
    confirm::create_tables(staged.conn()).await?;
    access::create_tables(staged.conn()).await?;
    role_sets::create_tables(staged.conn()).await?;
    let (sink, mut pages) = Sink::new(STAGED_PAGES_IN_FLIGHT);
    let listings = async {
        let sink = sink;
        tokio::join!(
            list_by_offset(ListingKind::Organizations, concurrency, progress, &sink, |o| {
                client.list_organizations(o, PAGE_LIMIT).boxed()
            }),
            list_by_offset(ListingKind::Memberships, concurrency, progress, &sink, |o| {
                client.list_memberships(o, PAGE_LIMIT).boxed()
            }),
            list_all_users(client, user_total, progress, &sink),
            list_by_offset(ListingKind::Roles, concurrency, progress, &sink, |o| {
                client.list_roles(o, PAGE_LIMIT).boxed()
            }),
            list_by_offset(ListingKind::Permissions, concurrency, progress, &sink, |o| {
                client.list_permissions(o, PAGE_LIMIT).boxed()
            }),
            list_by_offset(ListingKind::Invitations, concurrency, progress, &sink, |o| {
                client.list_invitations(o, PAGE_LIMIT).boxed()
            }),
            list_by_offset(ListingKind::RoleSets, concurrency, progress, &sink, |o| {
                client.list_role_sets(o, PAGE_LIMIT).boxed()
            }),
        )
    };
    let copying = async {
        while let Some(page) = pages.recv().await {
            staged.copy_page(&page).await?;
        }
        Ok::<_, sqlx::Error>(())
    };
    let ((orgs, memberships, users, roles, permissions, invitations, role_set_listing), copied) =
        tokio::join!(listings, copying);
    copied?;
    report.listed = ListedCounts {
        organizations: orgs.listed,
        memberships: memberships.listed,
        users: users.listed,
        roles: roles.listed,
        permissions: permissions.listed,
        invitations: invitations.listed,
        role_sets: role_set_listing.listed,
    };
    let mut failure: Option<ClerkApiError> = orgs
        .error
        .or(users.error)
        .or(memberships.error)
        .or(roles.error)
        .or(permissions.error)
        .or(invitations.error)
        .or(role_set_listing.error);
    staged.settle().await?;

    // Deletes: only after complete listings, and only what Clerk confirms it no longer has.
    if failure.is_none() {
        stage("confirming deletes");
        // Every change committed so far into the feed first: confirm_deletes reads the changes
        // after `feed_cursor`, and one still waiting for the sequencer has no id yet.
        crate::changes::sequence_now(pool).await?;
        let confirmed = confirm::confirm_deletes(
            &mut staged,
            client,
            started_ms,
            feed_cursor,
            concurrency,
            &mut report.skipped,
        )
        .await?;
        failure = confirmed;
    }
    if failure.is_none() {
        failure = access::confirm_deletes(&mut staged, client, started_ms, concurrency, &mut report.skipped).await?;
    }
    if failure.is_none() {
        failure = role_sets::confirm_deletes(&mut staged, client, started_ms, concurrency, &mut report.skipped).await?;
    }
    report.complete = failure.is_none();
    confirm::fetch_missing_users(&mut staged, client, concurrency).await?;
    report.skipped.invalid_items = staged.invalid();

    if !report.complete {
        // Nothing is deleted: forget what the confirmations found gone.
        for gone in [confirm::GONE_HOTELS, confirm::GONE_USERS, confirm::GONE_MEMBERSHIPS] {
            sqlx::query(&format!("truncate {gone}")).execute(staged.conn()).await?;
        }
        access::forget_deletes(staged.conn()).await?;
        role_sets::forget_deletes(staged.conn()).await?;
    }
    plan::plan(staged.conn(), &mut report).await?;
    access::plan(staged.conn()).await?;
    role_sets::plan(staged.conn()).await?;

    let (to_delete, live) = plan::hotel_deletes(staged.conn()).await?;
    let refused = to_delete > 0 && to_delete as f64 > options.mass_delete_threshold * live as f64;
    if refused {
        report.mass_delete = Some(MassDelete {
            hotels_to_delete: to_delete,
            live_hotels: live,
            threshold: options.mass_delete_threshold,
        });
    }

    let written = if options.dry_run || (refused && !options.allow_mass_delete) {
        // Report what would change.
        async {
            plan::describe(staged.conn(), &mut report).await?;
            access::describe(staged.conn(), &mut report).await?;
            role_sets::describe(staged.conn(), &mut report).await
        }
        .await
    } else {
        async {
            if report.complete {
                apply::record_marks(pool, listed_at).await?;
            }
            apply::apply(pool, staged.conn(), started_ms, options, &mut report).await?;
            let chunk = options.chunk_size.max(1) as i64;
            access::apply(pool, staged.conn(), started_ms, chunk, &mut report).await?;
            role_sets::apply(pool, staged.conn(), started_ms, chunk, &mut report).await
        }
        .await
    };
    staged.close().await;
    written?;

    if refused && !options.allow_mass_delete && !options.dry_run {
        return Err(ResyncError::MassDelete {
            report: Box::new(report),
        });
    }
    match failure {
        Some(source) => Err(ResyncError::Incomplete {
            source,
            report: Box::new(report),
        }),
        None => Ok(report),
    }
}
