//! Full resync from the Clerk Backend API (`orgsync resync` and the scheduled run), and the
//! self-heal of hotels that membership jobs wait for.
//!
//! A resync lists every organization, membership and user, compares them in memory with the
//! rows (loaded in bulk), and writes the difference in bulk, with exactly the rules of
//! [`crate::reconcile`]: `clerk_version` newer wins, tombstones are final, a hotel or user delete
//! ends its memberships, a membership needs its hotel and brings a user stub when the user is
//! neither a row nor listed. Each bulk statement carries the same conditions as the per-event
//! SQL, so a webhook applied concurrently is never overwritten with older data.
//!
//! Safety rails, in order:
//! 1. Deletes are considered only when every listing completed. A failed listing still applies
//!    the creates and updates of what was listed (they are safe under newer-wins) and records
//!    the run as failed.
//! 2. A row missing from a listing is deleted only if Clerk, asked for it by id, does not have
//!    it: offset pagination skips items when others are deleted meanwhile, and a tombstone can
//!    never be undone.
//! 3. A row written after the listing began (`clerk_version` newer than its start) is kept.
//! 4. A run that would delete more than `mass_delete_threshold` of the live hotels writes
//!    nothing and is recorded as refused, unless `allow_mass_delete`.
//!
//! Every run (dry or not) holds a Postgres advisory lock, so one runs at a time across a fleet,
//! and is recorded in `resync_runs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::clerk::api::{ClerkApiError, ClerkClient, InvalidItem, Page, MAX_FILTER_IDS, PAGE_LIMIT};
use crate::clerk::events::Millis;
use crate::clerk::{HotelId, Membership, Organization, User, UserId};
use crate::cli::ResyncArgs;
use crate::reconcile::to_time;

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

/// Which listing a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListingKind {
    Organizations,
    Memberships,
    Users,
}

impl ListingKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Organizations => "organizations",
            Self::Memberships => "memberships",
            Self::Users => "users",
        }
    }
}

/// Receives progress while a resync runs (a progress bar, log lines).
pub trait Progress: Send + Sync {
    /// `fetched` objects of `what` listed so far, of `total` when Clerk announced it.
    fn listed(&self, what: ListingKind, fetched: u64, total: Option<u64>);
    /// A listing ended (completely or not).
    fn listing_done(&self, what: ListingKind);
    /// A new stage began.
    fn stage(&self, stage: &str);
}

/// The rows of one table a run created, updated and deleted (or, in a dry run, would have).
/// Membership ids read `org_.../user_...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }

    fn to_json(&self, with_ids: bool) -> serde_json::Value {
        let mut v = json!({
            "created": self.created.len(), "updated": self.updated.len(), "deleted": self.deleted.len(),
        });
        if with_ids {
            let sorted = |ids: &Vec<String>| {
                let mut ids = ids.clone();
                ids.sort();
                ids
            };
            v["ids"] = json!({
                "created": sorted(&self.created), "updated": sorted(&self.updated), "deleted": sorted(&self.deleted),
            });
        }
        v
    }
}

/// What the listings held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListedCounts {
    pub organizations: u64,
    pub memberships: u64,
    pub users: u64,
}

/// What a run left alone, and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Listed memberships whose organization is neither a row nor listed (created during the
    /// listing): the webhook, the self-heal or the next resync brings them.
    pub memberships_without_hotel: u64,
    /// Listed memberships whose hotel or user is a tombstone here.
    pub memberships_obsolete: u64,
    /// Listed objects without the shape orgsync needs: neither written nor deleted.
    pub invalid_items: u64,
    /// Rows missing from a listing that Clerk still has when asked by id: kept (and upserted).
    pub deletes_not_confirmed: u64,
    /// Rows missing from a listing but written after the listing began: kept.
    pub deletes_newer_than_listing: u64,
}

/// A run that would delete more than its share of hotels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MassDelete {
    pub hotels_to_delete: u64,
    pub live_hotels: u64,
    pub threshold: f64,
}

/// How a run ended, as recorded in `resync_runs.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Refused => "refused",
        }
    }
}

/// What one run did (or, dry, would do).
#[derive(Debug, Clone)]
pub struct ResyncReport {
    /// The `resync_runs` row.
    pub run_id: i64,
    pub dry_run: bool,
    /// When the listing began: deletes are dated then, and rows newer than it are not deleted.
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: Outcome,
    /// Every listing (and every delete confirmation) completed, so deletes were considered.
    pub complete: bool,
    pub listed: ListedCounts,
    pub hotels: Changes,
    pub users: Changes,
    pub memberships: Changes,
    /// Live memberships ended because their hotel or user was deleted (not in `memberships`).
    pub memberships_ended_by_deletes: u64,
    pub skipped: Skipped,
    /// Set when the deletes exceeded the threshold (refused unless allowed).
    pub mass_delete: Option<MassDelete>,
    /// Why the run did not succeed.
    pub error: Option<String>,
}

impl ResyncReport {
    fn new(run_id: i64, dry_run: bool, started_at: DateTime<Utc>) -> Self {
        Self {
            run_id,
            dry_run,
            started_at,
            finished_at: started_at,
            outcome: Outcome::Succeeded,
            complete: false,
            listed: ListedCounts::default(),
            hotels: Changes::default(),
            users: Changes::default(),
            memberships: Changes::default(),
            memberships_ended_by_deletes: 0,
            skipped: Skipped::default(),
            mass_delete: None,
            error: None,
        }
    }

    /// True when the run changed (or would change) no row.
    pub fn is_unchanged(&self) -> bool {
        self.hotels.is_empty() && self.users.is_empty() && self.memberships.is_empty()
    }

    /// The report as JSON; with `with_ids`, each table lists the ids it changed. Without ids it is
    /// what `resync_runs.counts` holds.
    pub fn to_json(&self, with_ids: bool) -> serde_json::Value {
        let s = &self.skipped;
        json!({
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "outcome": self.outcome.as_str(),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "complete": self.complete,
            "listed": {
                "organizations": self.listed.organizations,
                "memberships": self.listed.memberships,
                "users": self.listed.users,
            },
            "hotels": self.hotels.to_json(with_ids),
            "users": self.users.to_json(with_ids),
            "memberships": self.memberships.to_json(with_ids),
            "memberships_ended_by_deletes": self.memberships_ended_by_deletes,
            "skipped": {
                "memberships_without_hotel": s.memberships_without_hotel,
                "memberships_obsolete": s.memberships_obsolete,
                "invalid_items": s.invalid_items,
                "deletes_not_confirmed": s.deletes_not_confirmed,
                "deletes_newer_than_listing": s.deletes_newer_than_listing,
            },
            "mass_delete": self.mass_delete.map(|m| json!({
                "hotels_to_delete": m.hotels_to_delete, "live_hotels": m.live_hotels, "threshold": m.threshold,
            })),
            "error": self.error,
        })
    }
}

/// Why a resync did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// Another resync (in this or another process) holds the resync lock.
    #[error("another resync is running (it holds the resync advisory lock); try again when it has finished")]
    Busy,
    /// The deletes exceed the threshold: nothing was written; the run is recorded as refused.
    #[error("{}", mass_delete_message(.report))]
    MassDelete { report: Box<ResyncReport> },
    /// A listing or a delete confirmation failed: what was listed was applied (unless dry),
    /// nothing was deleted; the run is recorded as failed.
    #[error("resync incomplete, no row deleted: {source}")]
    Incomplete {
        source: ClerkApiError,
        report: Box<ResyncReport>,
    },
    /// The run was cancelled (shutdown); committed chunks stay, the rest rolled back.
    #[error("resync cancelled")]
    Cancelled,
    /// A database statement failed; chunks committed before it stay (each is atomic and
    /// newer-wins, so the next run converges).
    #[error("database error during resync: {0}")]
    Database(#[from] sqlx::Error),
}

impl ResyncError {
    /// The run's report, for the errors that have one.
    pub fn report(&self) -> Option<&ResyncReport> {
        match self {
            Self::MassDelete { report } | Self::Incomplete { report, .. } => Some(report),
            _ => None,
        }
    }
}

fn mass_delete_message(report: &ResyncReport) -> String {
    match report.mass_delete {
        Some(m) => format!(
            "refusing to delete {} of {} live hotels (more than {:.0}%): nothing was written. Check that \
             CLERK_SECRET_KEY is the right instance's key; if Clerk really lost them, run `orgsync resync \
             --allow-mass-delete`",
            m.hotels_to_delete,
            m.live_hotels,
            m.threshold * 100.0
        ),
        None => "refusing a mass delete".to_owned(),
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

/// The session-level advisory lock, on a connection of its own (detached from the pool so the
/// lock can never be handed to another task with a pooled connection). Closing the connection,
/// even by a crash, releases it.
struct ResyncLock {
    conn: PgConnection,
}

impl ResyncLock {
    async fn try_acquire(pool: &PgPool) -> Result<Option<Self>, sqlx::Error> {
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

    async fn release(mut self) {
        let _ = sqlx::query_scalar!(r#"select pg_advisory_unlock($1) as "released!""#, RESYNC_LOCK_KEY)
            .fetch_one(&mut self.conn)
            .await;
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

/// Runs and records one resync; the caller holds the lock.
async fn run_locked(
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
                for (table, c) in [
                    ("hotels", &report.hotels),
                    ("users", &report.users),
                    ("memberships", &report.memberships),
                ] {
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
// Listing

/// What a listing returned: its items, what did not parse, and the error that ended it early.
struct Listing<T> {
    items: Vec<T>,
    invalid: Vec<InvalidItem>,
    listed: u64,
    error: Option<ClerkApiError>,
}

impl<T> Listing<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            invalid: Vec::new(),
            listed: 0,
            error: None,
        }
    }

    fn absorb(&mut self, page: Page<T>) {
        self.listed += page.len as u64;
        self.items.extend(page.items);
        self.invalid.extend(page.invalid);
    }

    fn fail(&mut self, e: ClerkApiError) {
        // The first failure is the cause; later ones are usually the same.
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

/// Lists an offset-paginated endpoint: the first page announces `total_count`, the remaining
/// pages are fetched `concurrency` at a time, then the list is followed past the announced total
/// while it grew meanwhile. Every page is fetched even after a failure (its creates and updates
/// are still worth applying); the listing is complete only if none failed.
async fn list_by_offset<'a, T, F>(
    kind: ListingKind,
    concurrency: usize,
    progress: Option<&dyn Progress>,
    fetch: F,
) -> Listing<T>
where
    F: Fn(u32) -> BoxFuture<'a, Result<Page<T>, ClerkApiError>>,
{
    let page_size = PAGE_LIMIT as u64;
    let mut out = Listing::new();
    let first = match fetch(0).await {
        Ok(p) => p,
        Err(e) => {
            out.fail(e);
            return out;
        }
    };
    let announced = first.total_count.map(|t| t.max(0) as u64);
    let mut total = announced.unwrap_or(first.len as u64);
    let mut more = first.len as u64 >= page_size;
    out.absorb(first);
    report(progress, kind, out.listed, announced.map(|_| total));
    let mut next = page_size;
    if more && announced.is_some() {
        let offsets: Vec<u64> = (page_size..total).step_by(PAGE_LIMIT as usize).collect();
        next = offsets.last().map_or(page_size, |o| o + page_size);
        let mut pages = stream::iter(offsets)
            .map(|o| fetch(o as u32))
            .buffer_unordered(concurrency.max(1));
        while let Some(page) = pages.next().await {
            match page {
                Ok(p) => {
                    total = total.max(p.total_count.unwrap_or(0).max(0) as u64);
                    out.absorb(p);
                    report(progress, kind, out.listed, Some(total));
                }
                Err(e) => out.fail(e),
            }
        }
        more = next < total;
    }
    // Items created while the pages were fetched land after the announced end (the listing is
    // oldest first); without a total, walk until a short page.
    while more && out.error.is_none() && next <= u32::MAX as u64 {
        match fetch(next as u32).await {
            Ok(p) => {
                total = total.max(p.total_count.unwrap_or(0).max(0) as u64);
                more = p.len as u64 >= page_size && (announced.is_none() || next + page_size < total);
                out.absorb(p);
                report(progress, kind, out.listed, announced.map(|_| total));
                next += page_size;
            }
            Err(e) => out.fail(e),
        }
    }
    if let Some(p) = progress {
        p.listing_done(kind);
    }
    out
}

fn report(progress: Option<&dyn Progress>, kind: ListingKind, fetched: u64, total: Option<u64>) {
    if let Some(p) = progress {
        p.listed(kind, fetched, total);
    }
}

/// Lists users with Clerk's cursor, oldest first, until a short page.
async fn list_all_users(client: &ClerkClient, progress: Option<&dyn Progress>) -> Listing<User> {
    let mut out = Listing::new();
    // Only for the progress bar: `/v1/users` has no total_count.
    let total = client.count_users().await.ok().map(|t| t.max(0) as u64);
    let mut after: Option<String> = None;
    loop {
        match client.list_users(after.as_deref(), PAGE_LIMIT).await {
            Ok(page) => {
                let short = (page.len as u64) < PAGE_LIMIT as u64;
                let last = page.last_id.clone();
                out.absorb(page);
                report(
                    progress,
                    ListingKind::Users,
                    out.listed,
                    total.map(|t| t.max(out.listed)),
                );
                if short {
                    break;
                }
                match last {
                    Some(id) if after.as_deref() != Some(id.as_str()) => after = Some(id),
                    // A cursor that does not move would loop forever (or its item has no id).
                    _ => {
                        out.fail(ClerkApiError::Decode {
                            endpoint: "GET /v1/users".into(),
                            reason: "the listing did not advance past its starting_after cursor".into(),
                        });
                        break;
                    }
                }
            }
            Err(e) => {
                out.fail(e);
                break;
            }
        }
    }
    if let Some(p) = progress {
        p.listing_done(ListingKind::Users);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The rows, as the comparison needs them

#[derive(Debug, Clone, Copy)]
struct RowState {
    version: i64,
    deleted: bool,
}

#[derive(Debug, Clone)]
struct MembershipRow {
    clerk_membership_id: String,
    version: i64,
    deleted: bool,
}

type MembershipKey = (String, String);

/// Every row's id, version and liveness, loaded in three statements.
struct Snapshot {
    hotels: HashMap<String, RowState>,
    users: HashMap<String, RowState>,
    memberships: HashMap<MembershipKey, MembershipRow>,
}

impl Snapshot {
    async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let hotels = sqlx::query!(r#"select id, clerk_version, deleted_at is not null as "deleted!" from hotels"#)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                (
                    r.id,
                    RowState {
                        version: r.clerk_version,
                        deleted: r.deleted,
                    },
                )
            })
            .collect();
        let users = sqlx::query!(r#"select id, clerk_version, deleted_at is not null as "deleted!" from users"#)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                (
                    r.id,
                    RowState {
                        version: r.clerk_version,
                        deleted: r.deleted,
                    },
                )
            })
            .collect();
        let memberships = sqlx::query!(
            r#"select hotel_id, user_id, clerk_membership_id, clerk_version, deleted_at is not null as "deleted!"
               from memberships"#
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            let row = MembershipRow {
                clerk_membership_id: r.clerk_membership_id,
                version: r.clerk_version,
                deleted: r.deleted,
            };
            ((r.hotel_id, r.user_id), row)
        })
        .collect();
        Ok(Self {
            hotels,
            users,
            memberships,
        })
    }

    fn live_hotels(&self) -> u64 {
        self.hotels.values().filter(|r| !r.deleted).count() as u64
    }
}

/// Clerk's side: the listings deduplicated (offset pages can repeat an item when others are
/// created meanwhile; the newest version wins), and what must not be deleted.
#[derive(Default)]
struct Clerk {
    orgs: HashMap<String, Organization>,
    users: HashMap<String, User>,
    memberships: HashMap<MembershipKey, Membership>,
    /// Ids of listed objects that did not parse: they exist, so they are never deleted.
    protected_hotels: HashSet<String>,
    protected_users: HashSet<String>,
    protected_memberships: HashSet<MembershipKey>,
    /// Hotels with a listed membership whose user is unreadable: none of their memberships is
    /// deleted.
    protected_membership_hotels: HashSet<String>,
    /// An unparsable object without a readable id: no deletes of that kind this run.
    no_hotel_deletes: bool,
    no_user_deletes: bool,
    no_membership_deletes: bool,
    invalid: u64,
}

impl Clerk {
    fn add_org(&mut self, org: Organization) {
        let id = org.id.as_str().to_owned();
        match self.orgs.get(&id) {
            Some(have) if have.updated_at >= org.updated_at => {}
            _ => {
                self.orgs.insert(id, org);
            }
        }
    }

    fn add_user(&mut self, user: User) {
        let id = user.id.as_str().to_owned();
        match self.users.get(&id) {
            Some(have) if have.updated_at >= user.updated_at => {}
            _ => {
                self.users.insert(id, user);
            }
        }
    }

    fn add_membership(&mut self, m: Membership) {
        let key = (
            m.organization.id.as_str().to_owned(),
            m.public_user_data.user_id.as_str().to_owned(),
        );
        match self.memberships.get(&key) {
            Some(have) if have.updated_at >= m.updated_at => {}
            _ => {
                self.memberships.insert(key, m);
            }
        }
    }

    fn invalid_org(&mut self, item: InvalidItem) {
        self.note_invalid("organization", &item);
        match item.id {
            Some(id) => {
                self.protected_hotels.insert(id);
            }
            None => self.no_hotel_deletes = true,
        }
    }

    fn invalid_user(&mut self, item: InvalidItem) {
        self.note_invalid("user", &item);
        match item.id {
            Some(id) => {
                self.protected_users.insert(id);
            }
            None => self.no_user_deletes = true,
        }
    }

    fn invalid_membership(&mut self, item: InvalidItem) {
        self.note_invalid("membership", &item);
        match (item.organization_id, item.user_id) {
            (Some(h), Some(u)) => {
                self.protected_memberships.insert((h, u));
            }
            (Some(h), None) => {
                self.protected_membership_hotels.insert(h);
            }
            _ => self.no_membership_deletes = true,
        }
    }

    fn note_invalid(&mut self, what: &str, item: &InvalidItem) {
        self.invalid += 1;
        tracing::warn!(kind = what, id = item.id.as_deref().unwrap_or("?"), reason = %item.reason,
                       "a Clerk object does not have the expected shape; it is neither written nor deleted");
    }
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

    // The three listings and the rows load side by side. The rows are read as the listing begins:
    // a row a webhook creates meanwhile is not even a delete candidate.
    stage("listing");
    let (orgs, memberships, users, snapshot) = tokio::join!(
        list_by_offset(ListingKind::Organizations, concurrency, progress, |o| {
            client.list_organizations(o, PAGE_LIMIT).boxed()
        }),
        list_by_offset(ListingKind::Memberships, concurrency, progress, |o| {
            client.list_memberships(o, PAGE_LIMIT).boxed()
        }),
        list_all_users(client, progress),
        Snapshot::load(pool),
    );
    let snapshot = snapshot?;
    report.listed = ListedCounts {
        organizations: orgs.listed,
        memberships: memberships.listed,
        users: users.listed,
    };

    let mut failure: Option<ClerkApiError> = None;
    let mut clerk = Clerk::default();
    orgs.items.into_iter().for_each(|o| clerk.add_org(o));
    orgs.invalid.into_iter().for_each(|i| clerk.invalid_org(i));
    failure = failure.or(orgs.error);
    users.items.into_iter().for_each(|u| clerk.add_user(u));
    users.invalid.into_iter().for_each(|i| clerk.invalid_user(i));
    failure = failure.or(users.error);
    memberships.items.into_iter().for_each(|m| clerk.add_membership(m));
    memberships
        .invalid
        .into_iter()
        .for_each(|i| clerk.invalid_membership(i));
    failure = failure.or(memberships.error);

    // Deletes: only after complete listings, and only what Clerk confirms it no longer has.
    let mut deletes = Deletes::default();
    if failure.is_none() {
        stage("confirming deletes");
        match confirm_deletes(
            client,
            &snapshot,
            &mut clerk,
            started_ms,
            concurrency,
            &mut report.skipped,
        )
        .await
        {
            Ok(d) => deletes = d,
            Err(e) => failure = Some(e),
        }
    }
    report.complete = failure.is_none();
    fetch_missing_users(client, &snapshot, &mut clerk, concurrency).await;
    report.skipped.invalid_items = clerk.invalid;

    let plan = plan_upserts(&snapshot, &clerk, &mut report.skipped);

    let live = snapshot.live_hotels();
    let to_delete = deletes.hotels.len() as u64;
    let refused = to_delete > 0 && to_delete as f64 > options.mass_delete_threshold * live as f64;
    if refused {
        report.mass_delete = Some(MassDelete {
            hotels_to_delete: to_delete,
            live_hotels: live,
            threshold: options.mass_delete_threshold,
        });
    }

    if options.dry_run || (refused && !options.allow_mass_delete) {
        // Report what would change.
        plan.describe(&mut report);
        report.hotels.deleted = deletes.hotels.clone();
        report.users.deleted = deletes.users.clone();
        report.memberships.deleted = deletes.memberships.iter().map(|(h, u, _)| format!("{h}/{u}")).collect();
        let hotels: HashSet<&str> = deletes.hotels.iter().map(String::as_str).collect();
        let users: HashSet<&str> = deletes.users.iter().map(String::as_str).collect();
        report.memberships_ended_by_deletes = snapshot
            .memberships
            .iter()
            .filter(|((h, u), r)| !r.deleted && (hotels.contains(h.as_str()) || users.contains(u.as_str())))
            .count() as u64;
    } else {
        apply(pool, &snapshot, &plan, &deletes, started_ms, options, &mut report).await?;
    }

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

/// Rows to tombstone, confirmed absent from Clerk.
#[derive(Default)]
struct Deletes {
    hotels: Vec<String>,
    users: Vec<String>,
    /// (hotel, user, clerk membership id): only that very membership is ended.
    memberships: Vec<(String, String, String)>,
}

/// Finds the live rows the listings lack, keeps those written after the listing began, and asks
/// Clerk for the others by id: what it still has is kept (and joins the upserts, since the
/// listing skipped it); what it lacks is returned. Err when a confirmation request fails.
async fn confirm_deletes(
    client: &ClerkClient,
    snapshot: &Snapshot,
    clerk: &mut Clerk,
    started_ms: Millis,
    concurrency: usize,
    skipped: &mut Skipped,
) -> Result<Deletes, ClerkApiError> {
    let mut newer = 0u64;
    let mut candidates = |rows: &HashMap<String, RowState>, listed: &dyn Fn(&str) -> bool, off: bool| -> Vec<String> {
        if off {
            return Vec::new();
        }
        let mut out: Vec<String> = rows
            .iter()
            .filter(|(id, r)| !r.deleted && !listed(id))
            .filter(|(_, r)| {
                // Written after the listing began (by a webhook): not this run's to delete.
                let keep = r.version > started_ms;
                newer += keep as u64;
                !keep
            })
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    };
    let hotel_candidates = candidates(
        &snapshot.hotels,
        &|id| clerk.orgs.contains_key(id) || clerk.protected_hotels.contains(id),
        clerk.no_hotel_deletes,
    );
    let user_candidates = candidates(
        &snapshot.users,
        &|id| clerk.users.contains_key(id) || clerk.protected_users.contains(id),
        clerk.no_user_deletes,
    );

    // Ask by id, 100 per request.
    let hotel_ids: Vec<HotelId> = hotel_candidates
        .iter()
        .filter_map(|id| HotelId::parse(id).ok())
        .collect();
    let user_ids: Vec<UserId> = user_candidates.iter().filter_map(|id| UserId::parse(id).ok()).collect();
    // Owned chunks and clients: futures that borrow into a stream trip the compiler's Send
    // inference once the whole run is spawned.
    let hotel_chunks: Vec<Vec<HotelId>> = hotel_ids.chunks(MAX_FILTER_IDS).map(<[_]>::to_vec).collect();
    let user_chunks: Vec<Vec<UserId>> = user_ids.chunks(MAX_FILTER_IDS).map(<[_]>::to_vec).collect();
    let (found_orgs, found_users) = tokio::try_join!(
        stream::iter(hotel_chunks)
            .map(|chunk| {
                let client = client.clone();
                async move { client.organizations_by_id(&chunk).await }.boxed()
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<_>>(),
        stream::iter(user_chunks)
            .map(|chunk| {
                let client = client.clone();
                async move { client.users_by_id(&chunk).await }.boxed()
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<_>>(),
    )?;
    for page in found_orgs {
        page.items.into_iter().for_each(|o| clerk.add_org(o));
        page.invalid.into_iter().for_each(|i| clerk.invalid_org(i));
    }
    for page in found_users {
        page.items.into_iter().for_each(|u| clerk.add_user(u));
        page.invalid.into_iter().for_each(|i| clerk.invalid_user(i));
    }
    // An id Postgres holds but Clerk could never have issued (not org_/user_ shaped) cannot be
    // asked about, so it is kept too.
    let gone_hotels: Vec<String> = hotel_ids
        .iter()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !clerk.orgs.contains_key(id) && !clerk.protected_hotels.contains(id))
        .collect();
    let gone_users: Vec<String> = user_ids
        .iter()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !clerk.users.contains_key(id) && !clerk.protected_users.contains(id))
        .collect();
    let mut still_there =
        (hotel_candidates.len() - gone_hotels.len()) as u64 + (user_candidates.len() - gone_users.len()) as u64;

    // Memberships the listing lacks, except those a hotel or user delete ends anyway.
    let gone_hotel_set: HashSet<&str> = gone_hotels.iter().map(String::as_str).collect();
    let gone_user_set: HashSet<&str> = gone_users.iter().map(String::as_str).collect();
    let mut by_hotel: HashMap<String, Vec<(UserId, String)>> = HashMap::new();
    if !clerk.no_membership_deletes {
        for ((h, u), row) in &snapshot.memberships {
            let key = (h.clone(), u.clone());
            if row.deleted
                || clerk.memberships.contains_key(&key)
                || clerk.protected_memberships.contains(&key)
                || clerk.protected_membership_hotels.contains(h)
                || gone_hotel_set.contains(h.as_str())
                || gone_user_set.contains(u.as_str())
                || snapshot.hotels.get(h).is_none_or(|r| r.deleted)
                || snapshot.users.get(u).is_none_or(|r| r.deleted)
            {
                continue;
            }
            if row.version > started_ms {
                newer += 1;
                continue;
            }
            if let (Ok(_), Ok(user)) = (HotelId::parse(h), UserId::parse(u)) {
                by_hotel
                    .entry(h.clone())
                    .or_default()
                    .push((user, row.clerk_membership_id.clone()));
            }
        }
    }
    let mut requests = Vec::new();
    for (hotel, members) in &by_hotel {
        let hotel_id = HotelId::parse(hotel).expect("checked above");
        for chunk in members.chunks(MAX_FILTER_IDS) {
            requests.push((hotel_id.clone(), chunk.to_vec()));
        }
    }
    let answers: Vec<_> = stream::iter(requests)
        .map(|(hotel, members)| {
            let client = client.clone();
            async move {
                let users: Vec<UserId> = members.iter().map(|(u, _)| u.clone()).collect();
                let page = client
                    .list_organization_memberships(&hotel, &users, 0, PAGE_LIMIT)
                    .await?;
                Ok::<_, ClerkApiError>((hotel, members, page))
            }
            .boxed()
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let mut gone_memberships = Vec::new();
    for (hotel, members, page) in answers {
        let Some(page) = page else {
            // The organization itself vanished after it was listed: leave its memberships to
            // the hotel's own delete (next run or webhook).
            still_there += members.len() as u64;
            continue;
        };
        let mut present: HashSet<String> = HashSet::new();
        for m in page.items {
            present.insert(m.public_user_data.user_id.as_str().to_owned());
            clerk.add_membership(m);
        }
        for i in page.invalid {
            if let Some(u) = &i.user_id {
                present.insert(u.clone());
            }
            clerk.invalid_membership(i);
        }
        for (user, membership_id) in members {
            if present.contains(user.as_str()) || clerk.protected_membership_hotels.contains(hotel.as_str()) {
                still_there += 1;
            } else {
                gone_memberships.push((hotel.as_str().to_owned(), user.as_str().to_owned(), membership_id));
            }
        }
    }
    gone_memberships.sort();
    skipped.deletes_newer_than_listing += newer;
    skipped.deletes_not_confirmed += still_there;
    Ok(Deletes {
        hotels: gone_hotels,
        users: gone_users,
        memberships: gone_memberships,
    })
}

/// Members whose user is neither a row nor listed (created while the users were listed) are
/// asked for by id, so they arrive whole instead of as `public_user_data` stubs. A failure only
/// costs the stubs (version 0, outranked by any later user data), so it is logged, not fatal.
async fn fetch_missing_users(client: &ClerkClient, snapshot: &Snapshot, clerk: &mut Clerk, concurrency: usize) {
    let mut missing: Vec<UserId> = clerk
        .memberships
        .keys()
        .filter(|(_, u)| !snapshot.users.contains_key(u) && !clerk.users.contains_key(u))
        .filter_map(|(_, u)| UserId::parse(u).ok())
        .collect();
    if missing.is_empty() {
        return;
    }
    missing.sort();
    missing.dedup();
    let chunks: Vec<Vec<UserId>> = missing.chunks(MAX_FILTER_IDS).map(<[_]>::to_vec).collect();
    let pages: Result<Vec<_>, _> = stream::iter(chunks)
        .map(|chunk| {
            let client = client.clone();
            async move { client.users_by_id(&chunk).await }.boxed()
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await;
    match pages {
        Ok(pages) => {
            for page in pages {
                page.items.into_iter().for_each(|u| clerk.add_user(u));
                page.invalid.into_iter().for_each(|i| clerk.invalid_user(i));
            }
        }
        Err(e) => tracing::warn!(error = %e, users = missing.len(), "fetching unlisted members failed; they get stubs"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Create,
    Update,
}

/// The creates and updates, decided exactly as the per-event SQL decides them: a row is
/// written when it is missing, or live and older than Clerk's object (memberships: or a
/// tombstone of a *different*, older membership, i.e. the person was invited again).
#[derive(Default)]
struct Plan<'a> {
    hotels: Vec<(&'a Organization, Change)>,
    users: Vec<(&'a User, Change)>,
    /// Memberships whose user is neither a row nor listed: a version-0 stub from
    /// `public_user_data`, which any `user.*` event outranks.
    stubs: Vec<&'a Membership>,
    memberships: Vec<(&'a Membership, Change)>,
}

fn plan_upserts<'a>(snapshot: &Snapshot, clerk: &'a Clerk, skipped: &mut Skipped) -> Plan<'a> {
    let mut plan = Plan::default();
    for org in clerk.orgs.values() {
        match snapshot.hotels.get(org.id.as_str()) {
            None => plan.hotels.push((org, Change::Create)),
            Some(r) if !r.deleted && r.version < org.updated_at => plan.hotels.push((org, Change::Update)),
            Some(_) => {}
        }
    }
    for user in clerk.users.values() {
        match snapshot.users.get(user.id.as_str()) {
            None => plan.users.push((user, Change::Create)),
            Some(r) if !r.deleted && r.version < user.updated_at => plan.users.push((user, Change::Update)),
            Some(_) => {}
        }
    }
    let mut stubbed: HashSet<&str> = HashSet::new();
    for ((hotel, user), m) in &clerk.memberships {
        match snapshot.hotels.get(hotel) {
            Some(r) if r.deleted => {
                skipped.memberships_obsolete += 1;
                continue;
            }
            Some(_) => {}
            None if clerk.orgs.contains_key(hotel) => {}
            None => {
                skipped.memberships_without_hotel += 1;
                continue;
            }
        }
        match snapshot.users.get(user) {
            Some(r) if r.deleted => {
                skipped.memberships_obsolete += 1;
                continue;
            }
            Some(_) => {}
            None if clerk.users.contains_key(user) => {}
            None => {
                if stubbed.insert(user.as_str()) {
                    plan.stubs.push(m);
                }
            }
        }
        let row = snapshot.memberships.get(&(hotel.clone(), user.clone()));
        match row {
            None => plan.memberships.push((m, Change::Create)),
            Some(r) if r.version < m.updated_at && (!r.deleted || r.clerk_membership_id != m.id) => {
                // Reviving a removed membership (a new invitation) creates it, as far as the
                // application can tell.
                plan.memberships
                    .push((m, if r.deleted { Change::Create } else { Change::Update }))
            }
            Some(_) => {}
        }
    }
    plan
}

fn membership_id(m: &Membership) -> String {
    format!("{}/{}", m.organization.id, m.public_user_data.user_id)
}

impl Plan<'_> {
    /// Fills the report with the planned (not applied) creates and updates.
    fn describe(&self, report: &mut ResyncReport) {
        for (org, change) in &self.hotels {
            push_change(&mut report.hotels, *change, org.id.to_string());
        }
        for (user, change) in &self.users {
            push_change(&mut report.users, *change, user.id.to_string());
        }
        for m in &self.stubs {
            report.users.created.push(m.public_user_data.user_id.to_string());
        }
        for (m, change) in &self.memberships {
            push_change(&mut report.memberships, *change, membership_id(m));
        }
    }
}

fn push_change(changes: &mut Changes, change: Change, id: String) {
    match change {
        Change::Create => changes.created.push(id),
        Change::Update => changes.updated.push(id),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing, in bulk

/// Runs `f` (one transaction) again when Postgres aborted it for a deadlock or a serialization
/// failure: a bulk statement can cross a worker's batch that locks the same rows in another
/// order, and Postgres then aborts one of the two. Other errors return at once.
async fn retry_transient<'a, T, F>(mut f: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> BoxFuture<'a, Result<T, sqlx::Error>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("40P01" | "40001")) && attempt < 5 => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "resync chunk aborted by Postgres; retrying");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

async fn apply(
    pool: &PgPool,
    snapshot: &Snapshot,
    plan: &Plan<'_>,
    deletes: &Deletes,
    started_ms: Millis,
    options: &ResyncOptions,
    report: &mut ResyncReport,
) -> Result<(), sqlx::Error> {
    let progress = options.progress.as_deref();
    let stage = |s: &str| {
        if let Some(p) = progress {
            p.stage(s)
        }
    };
    let chunk = options.chunk_size.max(1);

    // Parents first: hotels and users, then the stubs and memberships that need them.
    let mut hotels: Vec<&Organization> = plan.hotels.iter().map(|(o, _)| *o).collect();
    hotels.sort_by(|a, b| a.id.cmp(&b.id));
    if !hotels.is_empty() {
        stage("writing hotels");
    }
    for rows in hotels.chunks(chunk) {
        let written = retry_transient(|| {
            async {
                let mut tx = pool.begin().await?;
                crate::changes::set_source(&mut tx, crate::changes::Source::Resync).await?;
                let ids = upsert_hotels(&mut tx, rows).await?;
                tx.commit().await?;
                Ok(ids)
            }
            .boxed()
        })
        .await?;
        for id in written {
            let change = if snapshot.hotels.contains_key(&id) {
                Change::Update
            } else {
                Change::Create
            };
            push_change(&mut report.hotels, change, id);
        }
    }

    let mut users: Vec<&User> = plan.users.iter().map(|(u, _)| *u).collect();
    users.sort_by(|a, b| a.id.cmp(&b.id));
    if !users.is_empty() {
        stage("writing users");
    }
    for rows in users.chunks(chunk) {
        let written = retry_transient(|| {
            async {
                let mut tx = pool.begin().await?;
                crate::changes::set_source(&mut tx, crate::changes::Source::Resync).await?;
                let ids = upsert_users(&mut tx, rows).await?;
                tx.commit().await?;
                Ok(ids)
            }
            .boxed()
        })
        .await?;
        for id in written {
            let change = if snapshot.users.contains_key(&id) {
                Change::Update
            } else {
                Change::Create
            };
            push_change(&mut report.users, change, id);
        }
    }
    for rows in plan.stubs.chunks(chunk) {
        let written = retry_transient(|| {
            async {
                let mut tx = pool.begin().await?;
                crate::changes::set_source(&mut tx, crate::changes::Source::Resync).await?;
                let ids = insert_user_stubs(&mut tx, rows).await?;
                tx.commit().await?;
                Ok(ids)
            }
            .boxed()
        })
        .await?;
        report.users.created.extend(written);
    }

    let mut memberships: Vec<&Membership> = plan.memberships.iter().map(|(m, _)| *m).collect();
    memberships.sort_by(|a, b| {
        (&a.organization.id, &a.public_user_data.user_id).cmp(&(&b.organization.id, &b.public_user_data.user_id))
    });
    if !memberships.is_empty() {
        stage("writing memberships");
    }
    for rows in memberships.chunks(chunk) {
        let (written, obsolete) = retry_transient(|| {
            async {
                let mut tx = pool.begin().await?;
                crate::changes::set_source(&mut tx, crate::changes::Source::Resync).await?;
                let out = upsert_memberships(&mut tx, rows).await?;
                tx.commit().await?;
                Ok(out)
            }
            .boxed()
        })
        .await?;
        report.skipped.memberships_obsolete += obsolete;
        for (h, u) in written {
            let created = snapshot
                .memberships
                .get(&(h.clone(), u.clone()))
                .is_none_or(|r| r.deleted);
            push_change(
                &mut report.memberships,
                if created { Change::Create } else { Change::Update },
                format!("{h}/{u}"),
            );
        }
    }

    // Deletes, dated when the listing began.
    if !(deletes.hotels.is_empty() && deletes.users.is_empty() && deletes.memberships.is_empty()) {
        stage("writing deletes");
    }
    for ids in deletes.hotels.chunks(chunk) {
        let gone = retry_transient(|| {
            async {
                let mut tx = pool.begin().await?;
                crate::changes::set_source(&mut tx, crate::changes::Source::Resync).await?;
                let gone = tombstone_hotels(&mut tx, ids, started_ms).await?;
                tx.commit().await?;
                Ok(gone)
            }
            .boxed()
        })
        .await?;
        report.hotels.deleted.extend(gone.0);
        report.memberships_ended_by_deletes += gone.1;
    }
    for ids in deletes.users.chunks(chunk) {
        let gone = retry_transient(|| {
            async {
                let mut tx = pool.begin().await?;
                crate::changes::set_source(&mut tx, crate::changes::Source::Resync).await?;
                let gone = tombstone_users(&mut tx, ids, started_ms).await?;
                tx.commit().await?;
                Ok(gone)
            }
            .boxed()
        })
        .await?;
        report.users.deleted.extend(gone.0);
        report.memberships_ended_by_deletes += gone.1;
    }
    for keys in deletes.memberships.chunks(chunk) {
        let gone = retry_transient(|| {
            async {
                let mut tx = pool.begin().await?;
                crate::changes::set_source(&mut tx, crate::changes::Source::Resync).await?;
                let gone = tombstone_memberships(&mut tx, keys, started_ms).await?;
                tx.commit().await?;
                Ok(gone)
            }
            .boxed()
        })
        .await?;
        report.memberships.deleted.extend(gone);
    }
    Ok(())
}

/// [`crate::reconcile::upsert_hotel`] for many organizations in one statement: same condition
/// (live and older), and the jobs waiting for a written hotel are made due. Returns the ids
/// written.
async fn upsert_hotels(conn: &mut PgConnection, orgs: &[&Organization]) -> Result<Vec<String>, sqlx::Error> {
    let ids: Vec<String> = orgs.iter().map(|o| o.id.as_str().to_owned()).collect();
    let names: Vec<String> = orgs.iter().map(|o| o.name.clone()).collect();
    let slugs: Vec<Option<String>> = orgs.iter().map(|o| o.slug.clone()).collect();
    let images: Vec<Option<String>> = orgs.iter().map(|o| o.image_url.clone()).collect();
    let metadata: Vec<serde_json::Value> = orgs.iter().map(|o| o.public_metadata.clone()).collect();
    let created: Vec<DateTime<Utc>> = orgs.iter().map(|o| to_time(o.created_at)).collect();
    let updated: Vec<DateTime<Utc>> = orgs.iter().map(|o| to_time(o.updated_at)).collect();
    let versions: Vec<i64> = orgs.iter().map(|o| o.updated_at).collect();
    let written = sqlx::query_scalar!(
        r#"
        insert into hotels (id, name, slug, image_url, public_metadata, created_at, updated_at, clerk_version)
        select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                             $6::timestamptz[], $7::timestamptz[], $8::int8[])
        on conflict (id) do update set
            name = excluded.name, slug = excluded.slug, image_url = excluded.image_url,
            public_metadata = excluded.public_metadata, created_at = excluded.created_at,
            updated_at = excluded.updated_at, clerk_version = excluded.clerk_version, last_job_id = null
        where hotels.deleted_at is null and hotels.clerk_version < excluded.clerk_version
        returning id
        "#,
        &ids,
        &names,
        &slugs as &[Option<String>],
        &images as &[Option<String>],
        &metadata,
        &created,
        &updated,
        &versions,
    )
    .fetch_all(&mut *conn)
    .await?;
    wake_jobs_waiting_for(conn, &written).await?;
    Ok(written)
}

/// [`crate::reconcile::upsert_user`] for many users in one statement. Returns the ids written.
async fn upsert_users(conn: &mut PgConnection, users: &[&User]) -> Result<Vec<String>, sqlx::Error> {
    let ids: Vec<String> = users.iter().map(|u| u.id.as_str().to_owned()).collect();
    let emails: Vec<Option<String>> = users.iter().map(|u| u.primary_email().map(str::to_owned)).collect();
    let first: Vec<Option<String>> = users.iter().map(|u| u.first_name.clone()).collect();
    let last: Vec<Option<String>> = users.iter().map(|u| u.last_name.clone()).collect();
    let images: Vec<Option<String>> = users.iter().map(|u| u.image_url.clone()).collect();
    let created: Vec<DateTime<Utc>> = users.iter().map(|u| to_time(u.created_at)).collect();
    let updated: Vec<DateTime<Utc>> = users.iter().map(|u| to_time(u.updated_at)).collect();
    let versions: Vec<i64> = users.iter().map(|u| u.updated_at).collect();
    sqlx::query_scalar!(
        r#"
        insert into users (id, email, first_name, last_name, image_url, created_at, updated_at, clerk_version)
        select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::timestamptz[], $7::timestamptz[], $8::int8[])
        on conflict (id) do update set
            email = excluded.email, first_name = excluded.first_name, last_name = excluded.last_name,
            image_url = excluded.image_url, created_at = excluded.created_at,
            updated_at = excluded.updated_at, clerk_version = excluded.clerk_version, last_job_id = null
        where users.deleted_at is null and users.clerk_version < excluded.clerk_version
        returning id
        "#,
        &ids,
        &emails as &[Option<String>],
        &first as &[Option<String>],
        &last as &[Option<String>],
        &images as &[Option<String>],
        &created,
        &updated,
        &versions,
    )
    .fetch_all(conn)
    .await
}

/// The user stubs of `ensure_user` in [`crate::reconcile`], for many memberships: version 0,
/// from `public_user_data`, never over an existing row. Returns the ids inserted.
async fn insert_user_stubs(conn: &mut PgConnection, memberships: &[&Membership]) -> Result<Vec<String>, sqlx::Error> {
    let ids: Vec<String> = memberships
        .iter()
        .map(|m| m.public_user_data.user_id.as_str().to_owned())
        .collect();
    let emails: Vec<Option<String>> = memberships
        .iter()
        .map(|m| m.public_user_data.identifier.clone())
        .collect();
    let first: Vec<Option<String>> = memberships
        .iter()
        .map(|m| m.public_user_data.first_name.clone())
        .collect();
    let last: Vec<Option<String>> = memberships
        .iter()
        .map(|m| m.public_user_data.last_name.clone())
        .collect();
    let images: Vec<Option<String>> = memberships
        .iter()
        .map(|m| m.public_user_data.image_url.clone())
        .collect();
    let at: Vec<DateTime<Utc>> = memberships.iter().map(|m| to_time(m.created_at)).collect();
    sqlx::query_scalar!(
        r#"
        insert into users (id, email, first_name, last_name, image_url, created_at, updated_at, clerk_version)
        select s.id, s.email, s.first_name, s.last_name, s.image_url, s.at, s.at, 0
        from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
             as s(id, email, first_name, last_name, image_url, at)
        on conflict (id) do nothing
        returning id
        "#,
        &ids,
        &emails as &[Option<String>],
        &first as &[Option<String>],
        &last as &[Option<String>],
        &images as &[Option<String>],
        &at,
    )
    .fetch_all(conn)
    .await
}

/// [`crate::reconcile::upsert_membership`] (for live memberships) in bulk: the hotels and users
/// are locked `FOR KEY SHARE` first (deletes take `FOR UPDATE`), so a concurrent delete cannot
/// slip its cascade past these inserts; memberships whose hotel or user is missing or a tombstone are left out. Returns
/// the (hotel, user) pairs written and how many were obsolete.
async fn upsert_memberships(
    conn: &mut PgConnection,
    memberships: &[&Membership],
) -> Result<(Vec<(String, String)>, u64), sqlx::Error> {
    let mut hotel_ids: Vec<String> = memberships
        .iter()
        .map(|m| m.organization.id.as_str().to_owned())
        .collect();
    hotel_ids.sort();
    hotel_ids.dedup();
    let mut user_ids: Vec<String> = memberships
        .iter()
        .map(|m| m.public_user_data.user_id.as_str().to_owned())
        .collect();
    user_ids.sort();
    user_ids.dedup();
    let live_hotels: HashSet<String> = sqlx::query!(
        r#"select id, deleted_at is not null as "deleted!" from hotels where id = any($1) order by id for key share"#,
        &hotel_ids
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .filter(|r| !r.deleted)
    .map(|r| r.id)
    .collect();
    let live_users: HashSet<String> = sqlx::query!(
        r#"select id, deleted_at is not null as "deleted!" from users where id = any($1) order by id for key share"#,
        &user_ids
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .filter(|r| !r.deleted)
    .map(|r| r.id)
    .collect();
    let rows: Vec<&&Membership> = memberships
        .iter()
        .filter(|m| {
            live_hotels.contains(m.organization.id.as_str()) && live_users.contains(m.public_user_data.user_id.as_str())
        })
        .collect();
    let obsolete = (memberships.len() - rows.len()) as u64;
    if rows.is_empty() {
        return Ok((Vec::new(), obsolete));
    }
    let hotels: Vec<String> = rows.iter().map(|m| m.organization.id.as_str().to_owned()).collect();
    let users: Vec<String> = rows
        .iter()
        .map(|m| m.public_user_data.user_id.as_str().to_owned())
        .collect();
    let ids: Vec<String> = rows.iter().map(|m| m.id.clone()).collect();
    let roles: Vec<String> = rows.iter().map(|m| m.role.clone()).collect();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|m| to_time(m.created_at)).collect();
    let updated: Vec<DateTime<Utc>> = rows.iter().map(|m| to_time(m.updated_at)).collect();
    let versions: Vec<i64> = rows.iter().map(|m| m.updated_at).collect();
    // The conflict clause is upsert_membership's, verbatim (with deleted_at = null: a listed
    // membership is live), so both paths decide identically under concurrency.
    let written = sqlx::query!(
        r#"
        insert into memberships
            (hotel_id, user_id, clerk_membership_id, role, created_at, updated_at, deleted_at, clerk_version)
        select m.hotel_id, m.user_id, m.clerk_membership_id, m.role, m.created_at, m.updated_at,
               null::timestamptz, m.clerk_version
        from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::int8[])
             as m(hotel_id, user_id, clerk_membership_id, role, created_at, updated_at, clerk_version)
        on conflict (hotel_id, user_id) do update set
            last_job_id = null,
            clerk_membership_id = excluded.clerk_membership_id,
            role = excluded.role,
            created_at = excluded.created_at,
            updated_at = excluded.updated_at,
            deleted_at = case
                when excluded.deleted_at is null then null
                when memberships.clerk_membership_id = excluded.clerk_membership_id
                    then least(coalesce(memberships.deleted_at, excluded.deleted_at), excluded.deleted_at)
                else excluded.deleted_at end,
            clerk_version = greatest(memberships.clerk_version, excluded.clerk_version)
        where
            (memberships.clerk_version < excluded.clerk_version
                and (memberships.deleted_at is null
                     or memberships.clerk_membership_id <> excluded.clerk_membership_id))
            or (excluded.deleted_at is not null
                and memberships.clerk_membership_id = excluded.clerk_membership_id
                and memberships.deleted_at is distinct from
                    least(coalesce(memberships.deleted_at, excluded.deleted_at), excluded.deleted_at))
        returning hotel_id, user_id
        "#,
        &hotels,
        &users,
        &ids,
        &roles,
        &created,
        &updated,
        &versions,
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| (r.hotel_id, r.user_id))
    .collect();
    Ok((written, obsolete))
}

/// Tombstones live hotels not written since `at` and ends their memberships, as
/// [`crate::reconcile::delete_hotel`] does. The cascade is a separate statement on purpose: it
/// must see memberships committed while the `FOR UPDATE` below waited for their `KEY SHARE`
/// locks, which one statement's snapshot would not. Returns the ids tombstoned and how many
/// memberships ended with them.
async fn tombstone_hotels(
    conn: &mut PgConnection,
    ids: &[String],
    at: Millis,
) -> Result<(Vec<String>, u64), sqlx::Error> {
    // FOR UPDATE is the lock that conflicts with the KEY SHARE a membership being written holds
    // on its hotel (see crate::reconcile): wait for those, and make new ones wait for us.
    sqlx::query!("select id from hotels where id = any($1) order by id for update", ids)
        .fetch_all(&mut *conn)
        .await?;
    let gone = sqlx::query_scalar!(
        r#"
        update hotels set deleted_at = $2, clerk_version = greatest(clerk_version, $3), last_job_id = null
        where id = any($1) and deleted_at is null and clerk_version <= $3
        returning id
        "#,
        ids,
        to_time(at),
        at,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut ended = 0;
    if !gone.is_empty() {
        ended = sqlx::query!(
            "update memberships set deleted_at = $2, last_job_id = null where hotel_id = any($1) and deleted_at is null",
            &gone,
            to_time(at)
        )
        .execute(&mut *conn)
        .await?
        .rows_affected();
        // Memberships waiting for these hotels are obsolete now: let them finish promptly.
        wake_jobs_waiting_for(conn, &gone).await?;
    }
    Ok((gone, ended))
}

/// Tombstones live users not written since `at` and ends their memberships, as
/// [`crate::reconcile::delete_user`] does (cascade in a second statement, see
/// [`tombstone_hotels`]). Returns the ids tombstoned and how many memberships ended with them.
async fn tombstone_users(
    conn: &mut PgConnection,
    ids: &[String],
    at: Millis,
) -> Result<(Vec<String>, u64), sqlx::Error> {
    // As for hotels: serialise with memberships being written for these users.
    sqlx::query!("select id from users where id = any($1) order by id for update", ids)
        .fetch_all(&mut *conn)
        .await?;
    let gone = sqlx::query_scalar!(
        r#"
        update users set deleted_at = $2, clerk_version = greatest(clerk_version, $3), last_job_id = null
        where id = any($1) and deleted_at is null and clerk_version <= $3
        returning id
        "#,
        ids,
        to_time(at),
        at,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut ended = 0;
    if !gone.is_empty() {
        ended = sqlx::query!(
            "update memberships set deleted_at = $2, last_job_id = null where user_id = any($1) and deleted_at is null",
            &gone,
            to_time(at)
        )
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok((gone, ended))
}

/// Ends these very memberships (same Clerk membership id, still live, not written since `at`).
/// Returns `hotel/user` for each one ended.
async fn tombstone_memberships(
    conn: &mut PgConnection,
    keys: &[(String, String, String)],
    at: Millis,
) -> Result<Vec<String>, sqlx::Error> {
    let hotels: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
    let users: Vec<String> = keys.iter().map(|k| k.1.clone()).collect();
    let ids: Vec<String> = keys.iter().map(|k| k.2.clone()).collect();
    let gone = sqlx::query!(
        r#"
        update memberships m set deleted_at = $4, clerk_version = greatest(m.clerk_version, $5), last_job_id = null
        from unnest($1::text[], $2::text[], $3::text[]) as k(hotel_id, user_id, clerk_membership_id)
        where m.hotel_id = k.hotel_id and m.user_id = k.user_id and m.clerk_membership_id = k.clerk_membership_id
          and m.deleted_at is null and m.clerk_version <= $5
        returning m.hotel_id, m.user_id
        "#,
        &hotels,
        &users,
        &ids,
        to_time(at),
        at,
    )
    .fetch_all(conn)
    .await?;
    Ok(gone
        .into_iter()
        .map(|r| format!("{}/{}", r.hotel_id, r.user_id))
        .collect())
}

/// Makes the membership jobs waiting for any of `hotels` due now (skipping those a worker holds).
async fn wake_jobs_waiting_for(conn: &mut PgConnection, hotels: &[String]) -> Result<(), sqlx::Error> {
    if hotels.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"
        update jobs set run_at = now()
        where id in (select id from jobs
                     where state = 'available' and waiting_for = any($1) and run_at > now()
                     for update skip locked)
        "#,
        hotels
    )
    .execute(conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Schedule

/// Runs the resync about every `interval` until `cancel` fires, one process of a fleet at a
/// time: every replica looks each minute (or each `interval`, if shorter) whether a run is due
/// according to `resync_runs` (the last success is `interval` old, and the last failed or
/// refused run is at least `min(interval, 15 min)` old), takes the advisory lock without
/// waiting, looks again under the lock (another replica may have just finished), and only then
/// runs. A run in progress when `cancel` fires is abandoned (its open chunk rolls back) and
/// recorded as failed.
pub async fn schedule(
    pool: PgPool,
    client: ClerkClient,
    interval: Duration,
    options: ResyncOptions,
    cancel: CancellationToken,
) {
    let check_every = interval.min(Duration::from_secs(60)).max(Duration::from_millis(10));
    let retry_after = interval.min(Duration::from_secs(15 * 60));
    tracing::info!(interval_s = interval.as_secs_f64(), "scheduled resync enabled");
    while !cancel.is_cancelled() {
        match scheduled_tick(&pool, &client, interval, retry_after, &options, &cancel).await {
            Ok(Some(report)) => tracing::debug!(run_id = report.run_id, "scheduled resync succeeded"),
            Ok(None) => {}
            // run_locked has logged and recorded it; the next look retries after `retry_after`.
            Err(ResyncError::MassDelete { .. } | ResyncError::Incomplete { .. } | ResyncError::Cancelled) => {}
            Err(e) => tracing::warn!(error = %e, "scheduled resync failed"),
        }
        // A little jitter keeps replicas that started together from looking in lockstep.
        let jitter = Duration::from_millis(rand::random_range(0..=check_every.as_millis().min(5000) as u64 / 10));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(check_every + jitter) => {}
        }
    }
}

/// One look: Ok(None) when not due or another replica runs it.
async fn scheduled_tick(
    pool: &PgPool,
    client: &ClerkClient,
    interval: Duration,
    retry_after: Duration,
    options: &ResyncOptions,
    cancel: &CancellationToken,
) -> Result<Option<ResyncReport>, ResyncError> {
    if !is_due(pool, interval, retry_after).await? {
        return Ok(None);
    }
    let Some(lock) = ResyncLock::try_acquire(pool).await? else {
        return Ok(None);
    };
    let result = match is_due(pool, interval, retry_after).await {
        Ok(true) => run_locked(pool, client, options, Some(cancel)).await.map(Some),
        Ok(false) => Ok(None),
        Err(e) => Err(e.into()),
    };
    lock.release().await;
    result
}

/// Whether the fleet owes a run, by the database clock (replicas' clocks may differ). Dry runs
/// do not count: they converge nothing.
async fn is_due(pool: &PgPool, interval: Duration, retry_after: Duration) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        select coalesce((select max(finished_at) from resync_runs where outcome = 'succeeded' and not dry_run)
                        <= now() - make_interval(secs => $1), true)
           and coalesce((select max(finished_at) from resync_runs where outcome in ('failed', 'refused') and not dry_run)
                        <= now() - make_interval(secs => $2), true)
           as "due!"
        "#,
        interval.as_secs_f64(),
        retry_after.as_secs_f64(),
    )
    .fetch_one(pool)
    .await
}

// ---------------------------------------------------------------------------------------------
// Self-heal

/// Fetches hotels that membership jobs wait for, so a lost `organization.created` heals in
/// seconds instead of at the next resync.
///
/// The worker calls [`crate::queue::runner::Heal::heal`] after each batch with each missing
/// hotel and the attempts so far. From `after_attempts` on, the hotel is fetched from Clerk in
/// the background (the worker never waits on Clerk): found → upserted with the consumer's own
/// rules (which wakes the waiting jobs); 404 → tombstoned as of now (the jobs then finish as
/// obsolete). A hotel is fetched at most once per `cooldown` (default 30 s) however many jobs
/// wait for it; a failed fetch is logged and retried after the cooldown.
#[derive(Clone)]
pub struct SelfHeal {
    inner: Arc<HealInner>,
}

struct HealInner {
    pool: PgPool,
    client: ClerkClient,
    after_attempts: i32,
    cooldown: Duration,
    recent: Mutex<HashMap<HotelId, Instant>>,
}

/// What one self-heal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Healed {
    /// Clerk has the organization: the hotel was upserted (`true` if a row was written).
    Upserted(bool),
    /// Clerk has no such organization: the hotel was tombstoned (`true` if a row was written).
    Tombstoned(bool),
}

/// Why a self-heal did nothing.
#[derive(Debug, thiserror::Error)]
pub enum HealError {
    #[error(transparent)]
    Clerk(#[from] ClerkApiError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Clerk answered for {asked} with organization {got}")]
    Mismatch { asked: String, got: String },
}

impl SelfHeal {
    pub fn new(pool: PgPool, client: ClerkClient, after_attempts: i32) -> Self {
        Self {
            inner: Arc::new(HealInner {
                pool,
                client,
                after_attempts: after_attempts.max(1),
                cooldown: Duration::from_secs(30),
                recent: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The same, fetching one hotel at most once per `cooldown`.
    pub fn with_cooldown(self, cooldown: Duration) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(HealInner {
                pool: inner.pool.clone(),
                client: inner.client.clone(),
                after_attempts: inner.after_attempts,
                cooldown,
                recent: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Fetches `hotel` from Clerk now and applies the answer (no attempt threshold, no
    /// cooldown). Ok says what was written; Err when Clerk or the database failed.
    pub async fn heal_now(&self, hotel: &HotelId) -> Result<Healed, HealError> {
        self.inner.heal_now(hotel).await
    }

    /// True when `hotel` may be fetched now; records the fetch.
    fn claim(&self, hotel: &HotelId) -> bool {
        let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if recent.len() > 10_000 {
            let cooldown = self.inner.cooldown;
            recent.retain(|_, at| now.duration_since(*at) < cooldown);
        }
        match recent.get(hotel) {
            Some(at) if now.duration_since(*at) < self.inner.cooldown => false,
            _ => {
                recent.insert(hotel.clone(), now);
                true
            }
        }
    }
}

impl HealInner {
    async fn heal_now(&self, hotel: &HotelId) -> Result<Healed, HealError> {
        match self.client.get_organization(hotel).await? {
            Some(org) if &org.id == hotel => {
                let mut tx = self.pool.begin().await?;
                crate::changes::set_source(&mut tx, crate::changes::Source::SelfHeal).await?;
                let applied = crate::reconcile::upsert_hotel(&mut tx, &org, None).await?;
                tx.commit().await?;
                Ok(Healed::Upserted(applied == crate::reconcile::Applied::Written))
            }
            // GET /organizations/{id} also matches slugs: an org whose slug is this id is not it.
            Some(org) => Err(HealError::Mismatch {
                asked: hotel.to_string(),
                got: org.id.to_string(),
            }),
            None => {
                let mut tx = self.pool.begin().await?;
                crate::changes::set_source(&mut tx, crate::changes::Source::SelfHeal).await?;
                let applied =
                    crate::reconcile::delete_hotel(&mut tx, hotel, Utc::now().timestamp_millis(), None).await?;
                tx.commit().await?;
                Ok(Healed::Tombstoned(applied == crate::reconcile::Applied::Written))
            }
        }
    }
}

impl crate::queue::runner::Heal for SelfHeal {
    fn heal(&self, hotel: HotelId, attempts: i32) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if attempts < self.inner.after_attempts || !self.claim(&hotel) {
                return;
            }
            let inner = self.inner.clone();
            // In the background: the worker goes on with its next batch while Clerk answers.
            tokio::spawn(async move {
                match inner.heal_now(&hotel).await {
                    Ok(outcome) => {
                        metrics::counter!("orgsync_self_heal_total", "outcome" => match outcome {
                            Healed::Upserted(_) => "upserted",
                            Healed::Tombstoned(_) => "tombstoned",
                        })
                        .increment(1);
                        tracing::info!(hotel = %hotel, ?outcome, "self-heal fetched a missing hotel from Clerk");
                    }
                    Err(e) => {
                        metrics::counter!("orgsync_self_heal_total", "outcome" => "failed").increment(1);
                        tracing::warn!(hotel = %hotel, error = %e, "self-heal of a missing hotel failed");
                    }
                }
            });
        })
    }
}

// ---------------------------------------------------------------------------------------------
// `orgsync resync`

/// `orgsync resync`: Ok(0) converged (or dry run done), Ok(1) incomplete (a listing failed:
/// what was listed was applied, nothing deleted), Ok(2) refused as a mass delete. Err for
/// configuration, database and lock problems.
pub async fn command(args: ResyncArgs) -> anyhow::Result<i32> {
    use anyhow::Context;
    if !(0.0..=1.0).contains(&args.mass_delete_threshold) {
        anyhow::bail!("--mass-delete-threshold must be between 0 and 1 (a share: 0.10 is 10%)");
    }
    let client = ClerkClient::from_config(&args.clerk.config())?;
    let database = &args.database;
    let options = crate::db::connect_options(&database.database_url, &database.schema)
        .context("DATABASE_URL is not a Postgres URL")?;
    let pool = crate::db::lazy_pool(options, &crate::db::PoolSettings::default());
    crate::db::prepare(&database.database_url, &database.schema, &pool)
        .await
        .context("preparing the database (is Postgres reachable at DATABASE_URL?)")?;

    use std::io::IsTerminal;
    let progress: Arc<dyn Progress> = if std::io::stderr().is_terminal() {
        Arc::new(cli_progress::Bars::new())
    } else {
        Arc::new(cli_progress::Lines::default())
    };
    let options = ResyncOptions {
        dry_run: args.dry_run,
        allow_mass_delete: args.allow_mass_delete,
        mass_delete_threshold: args.mass_delete_threshold,
        progress: Some(progress.clone()),
        ..ResyncOptions::default()
    };
    let result = resync(&pool, &client, &options).await;
    progress.stage("");
    let print = |report: &ResyncReport| {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report.to_json(args.verbose)).expect("JSON")
            );
        } else {
            print!("{}", render_text(report, args.verbose));
        }
    };
    match result {
        Ok(report) => {
            print(&report);
            Ok(0)
        }
        Err(e @ ResyncError::MassDelete { .. }) => {
            print(e.report().expect("has a report"));
            eprintln!("orgsync: {e}");
            Ok(2)
        }
        Err(e @ ResyncError::Incomplete { .. }) => {
            print(e.report().expect("has a report"));
            eprintln!("orgsync: {e}");
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}

/// The report for people.
pub fn render_text(report: &ResyncReport, verbose: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let took = (report.finished_at - report.started_at).num_milliseconds() as f64 / 1000.0;
    let head = match (report.dry_run, report.outcome) {
        (true, _) => "dry run (nothing written); a real run would make these changes",
        (false, Outcome::Succeeded) => "resync succeeded",
        (false, Outcome::Failed) => "resync incomplete (nothing deleted)",
        (false, Outcome::Refused) => "resync refused (nothing written); it would make these changes",
    };
    let _ = writeln!(out, "{head} [run {}, {took:.1}s]", report.run_id);
    let l = &report.listed;
    let _ = writeln!(
        out,
        "listed: {} organizations, {} memberships, {} users",
        l.organizations, l.memberships, l.users
    );
    let _ = writeln!(out, "{:<12} {:>9} {:>9} {:>9}", "", "created", "updated", "deleted");
    for (name, c) in [
        ("hotels", &report.hotels),
        ("users", &report.users),
        ("memberships", &report.memberships),
    ] {
        let _ = writeln!(
            out,
            "{name:<12} {:>9} {:>9} {:>9}",
            c.created.len(),
            c.updated.len(),
            c.deleted.len()
        );
    }
    if report.memberships_ended_by_deletes > 0 {
        let _ = writeln!(
            out,
            "{} more memberships end with their deleted hotel or user",
            report.memberships_ended_by_deletes
        );
    }
    let s = &report.skipped;
    if s.deletes_not_confirmed + s.deletes_newer_than_listing > 0 {
        let _ = writeln!(
            out,
            "kept: {} rows missing from a listing that Clerk still has, {} written after the listing began",
            s.deletes_not_confirmed, s.deletes_newer_than_listing
        );
    }
    if s.memberships_without_hotel + s.memberships_obsolete + s.invalid_items > 0 {
        let _ = writeln!(
            out,
            "skipped: {} memberships of unlisted organizations, {} of deleted hotels or users, {} objects of an unexpected shape",
            s.memberships_without_hotel, s.memberships_obsolete, s.invalid_items
        );
    }
    if !report.complete {
        let _ = writeln!(out, "deletes were not considered: a listing did not complete");
    }
    if let Some(m) = report.mass_delete {
        let _ = writeln!(
            out,
            "mass delete: {} of {} live hotels (threshold {:.0}%){}",
            m.hotels_to_delete,
            m.live_hotels,
            m.threshold * 100.0,
            if report.dry_run {
                "; a real run would refuse without --allow-mass-delete"
            } else {
                ""
            }
        );
    }
    if verbose {
        for (name, c) in [
            ("hotel", &report.hotels),
            ("user", &report.users),
            ("membership", &report.memberships),
        ] {
            for (sign, ids) in [("+", &c.created), ("~", &c.updated), ("-", &c.deleted)] {
                let mut ids = ids.clone();
                ids.sort();
                for id in ids {
                    let _ = writeln!(out, "  {sign} {name} {id}");
                }
            }
        }
    }
    out
}

mod cli_progress {
    //! Progress for `orgsync resync`: bars on a terminal, a few plain lines otherwise.

    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

    use super::{ListingKind, Progress};

    pub struct Bars {
        multi: MultiProgress,
        bars: HashMap<ListingKind, ProgressBar>,
        stage: ProgressBar,
    }

    impl Bars {
        pub fn new() -> Self {
            let multi = MultiProgress::new();
            let style = ProgressStyle::with_template("{prefix:>13} [{bar:32}] {pos}/{len} {per_sec}")
                .expect("valid template")
                .progress_chars("=> ");
            let bars = [ListingKind::Organizations, ListingKind::Memberships, ListingKind::Users]
                .into_iter()
                .map(|k| {
                    let bar = multi.add(ProgressBar::new(0).with_style(style.clone()).with_prefix(k.name()));
                    (k, bar)
                })
                .collect();
            let stage = multi.add(ProgressBar::new_spinner());
            stage.enable_steady_tick(Duration::from_millis(120));
            Self { multi, bars, stage }
        }
    }

    impl Progress for Bars {
        fn listed(&self, what: ListingKind, fetched: u64, total: Option<u64>) {
            let bar = &self.bars[&what];
            bar.set_length(total.unwrap_or(fetched).max(fetched));
            bar.set_position(fetched);
        }
        fn listing_done(&self, what: ListingKind) {
            self.bars[&what].finish();
        }
        fn stage(&self, stage: &str) {
            if stage.is_empty() {
                self.stage.finish_and_clear();
                let _ = self.multi.clear();
            } else {
                self.stage.set_message(stage.to_owned());
            }
        }
    }

    /// One line per listing every few seconds, and one per stage, on stderr.
    #[derive(Default)]
    pub struct Lines {
        last: Mutex<HashMap<ListingKind, Instant>>,
    }

    impl Progress for Lines {
        fn listed(&self, what: ListingKind, fetched: u64, total: Option<u64>) {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if last
                .get(&what)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(5))
            {
                return;
            }
            last.insert(what, now);
            match total {
                Some(t) => eprintln!("listing {}: {fetched}/{t}", what.name()),
                None => eprintln!("listing {}: {fetched}", what.name()),
            }
        }
        fn listing_done(&self, what: ListingKind) {
            eprintln!("listing {}: done", what.name());
        }
        fn stage(&self, stage: &str) {
            if !stage.is_empty() && stage != "listing" {
                eprintln!("{stage}");
            }
        }
    }
}
