//! The write path: changes the app makes *through* orgsync. Each operation performs the change in
//! Clerk through the Backend API ([`crate::clerk::api`]'s writes), then applies Clerk's answer to
//! the mirror through the rule book ([`crate::reconcile`], [`Source::Api`]) in one transaction,
//! and only then answers, so the caller reads its own write in `hotels`, `users`,
//! `memberships`, `invitations`, `member_permissions` and the change feed at once.
//!
//! The rules every operation follows:
//! - **Versions are Clerk's.** An answer is applied with its own `updated_at`; a delete with the
//!   `Date` of Clerk's answer to it (its clock at the answer, like the resync's T). The webhook
//!   Clerk sends later for the same change carries the same version, so the rule book treats it
//!   as a duplicate: no second change row, no row changed. A webhook of a *newer* change still
//!   wins, before or after the write's own.
//! - **Snapshot marks and stub locks** ([`Source::Api`]): the marks do not apply to an answer (it
//!   is Clerk's state when it answered, later than any recorded listing's start), and a user stub
//!   waits for a worker inserting the same user instead of skipping (this transaction holds no
//!   entity locks, and a deadlock is retried here).
//! - **Clerk succeeded, the mirror did not** (Postgres unreachable, a statement refused): the
//!   operation fails with [`ManageError::MirrorPending`], logged, and the transaction is rolled
//!   back, so nothing is half-applied; the webhook (or the resync) converges the rows.
//! - **No duplicates.** Creates are never re-sent blindly ([`crate::clerk::api::ClerkWriteError::Unknown`]):
//!   a hotel is looked up by its slug (always sent, generated when the caller gave none), a
//!   membership by its user, before creating again.
//!
//! One file per area, one function per operation: [`hotels`], [`members`], [`invitations`].
//! The API (`crate::api`) and the command line call the same functions.

pub mod hotels;
pub mod input;
pub mod invitations;
pub mod members;
pub mod view;

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;

use crate::clerk::api::{ClerkClient, ClerkWriteError};
use crate::clerk::ClerkEvent;
use crate::reconcile::{self, Item, Outcome, Source};

/// How the write path talks to Clerk.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// The longest one operation may spend on Clerk (waiting for the request budget, 429s and
    /// retries included); beyond it the operation fails (503 with `Retry-After` when the rate
    /// limit was the reason). Keep it well below the listener's request deadline.
    pub clerk_deadline: Duration,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            clerk_deadline: Duration::from_secs(10),
        }
    }
}

/// The write path: a pool, a Clerk client (share the process's one: its request budget is the
/// process's) and the options. Cheap to clone.
#[derive(Clone)]
pub struct Manager {
    pool: PgPool,
    clerk: ClerkClient,
    options: WriteOptions,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// The input is not something Clerk can take; nothing was sent.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Clerk refused, or could not be asked; the mirror is unchanged.
    #[error(transparent)]
    Clerk(#[from] ClerkWriteError),
    /// The slug the create would use belongs to another organization.
    #[error("slug {0} is taken by another organization")]
    SlugTaken(String),
    /// Clerk made the change, but the mirror could not be written: it converges from the webhook
    /// or the resync. Nothing of it was written.
    #[error("Clerk made the change ({operation}) but the mirror write failed: {reason}")]
    MirrorPending { operation: &'static str, reason: String },
    /// A read of something the mirror has no row for.
    #[error("no {what} {id} in the mirror")]
    NotFound { what: &'static str, id: String },
    /// A read failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl ManageError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A mirror read run after the writes, in their transaction.
pub(crate) type Readback<T> =
    Box<dyn for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send + Sync>;

/// Boxes a mirror read for [`Manager::commit`] (the bound gives the closure its signature).
pub(crate) fn readback<T, F>(f: F) -> Readback<T>
where
    F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send + Sync + 'static,
{
    Box::new(f)
}

impl Manager {
    pub fn new(pool: PgPool, clerk: ClerkClient, options: WriteOptions) -> Self {
        Self { pool, clerk, options }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn clerk(&self) -> &ClerkClient {
        &self.clerk
    }

    /// When an operation starting now must be done with Clerk.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.options.clerk_deadline
    }

    /// Applies Clerk's answers (`events`) through the rule book as [`Source::Api`] in one
    /// transaction, reads the answer back with `read` in it, commits, and makes the change feed
    /// show it ([`crate::changes::sequence_now`]). A deadlock or serialization failure is retried; any other database failure is
    /// [`ManageError::MirrorPending`] (logged), with everything rolled back.
    pub(crate) async fn commit<T>(
        &self,
        operation: &'static str,
        events: &[ClerkEvent],
        read: Readback<T>,
    ) -> Result<T, ManageError> {
        let mut attempt = 0u32;
        let answer = loop {
            match self.commit_once(events, &read).await {
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("40P01" | "40001")) && attempt < 5 =>
                {
                    attempt += 1;
                    tracing::debug!(operation, attempt, error = %e, "write path transaction aborted by Postgres; retrying");
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                }
                other => break other,
            }
        };
        let answer =
            answer.map_err(|e| self.mirror_pending(operation, format!("the database could not be written: {e}")))?;
        // The feed shows the change before the answer (readers of `changes` see it at once).
        if let Err(e) = crate::changes::sequence_now(&self.pool).await {
            // Committed: the rows show it; the background sequencer numbers it in a moment.
            tracing::warn!(operation, error = %e, "the write is committed but the change feed could not be sequenced now");
        }
        Ok(answer)
    }

    async fn commit_once<T>(&self, events: &[ClerkEvent], read: &Readback<T>) -> Result<T, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        reconcile::begin(&mut tx, Source::Api).await?;
        let items: Vec<Item<&ClerkEvent>> = events.iter().map(|e| Item { job: None, value: e }).collect();
        let outcomes = reconcile::apply_events(&mut tx, Source::Api, &items).await?;
        for (event, outcome) in events.iter().zip(&outcomes) {
            if !outcome.is_final() {
                // Only a membership or invitation of a hotel with no row: the operations write
                // the hotel first, so this is a hotel deleted and purged meanwhile.
                tracing::warn!(
                    ?outcome,
                    kind = event_kind(event),
                    "an answer of the write path could not be applied now"
                );
            }
            debug_assert!(
                !matches!(outcome, Outcome::UserBusy(_)),
                "Source::Api waits for stub locks"
            );
        }
        let answer = read(&mut tx).await?;
        tx.commit().await?;
        Ok(answer)
    }
}

fn event_kind(e: &ClerkEvent) -> &'static str {
    match e {
        ClerkEvent::OrganizationUpserted(_) | ClerkEvent::OrganizationDeleted { .. } => "organization",
        ClerkEvent::UserUpserted(_) | ClerkEvent::UserDeleted { .. } => "user",
        ClerkEvent::MembershipUpserted(_) | ClerkEvent::MembershipDeleted { .. } => "membership",
        ClerkEvent::RoleUpserted(_) | ClerkEvent::RoleDeleted { .. } => "role",
        ClerkEvent::PermissionUpserted(_) | ClerkEvent::PermissionDeleted { .. } => "permission",
        ClerkEvent::InvitationWritten { .. } => "invitation",
    }
}

/// Now by orgsync's clock, in ms: only for a delete whose answer carried no readable `Date`.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
