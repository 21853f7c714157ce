//! The change feed: the `changes` table, one row per effective change to a hotel, user,
//! membership, role, permission or invitation row (migrations `20261125000020_changes.sql`
//! and `20261203000010_change_feed_sequencer.sql`).
//!
//! Writers do not number their changes: triggers insert them into `pending_changes` in the
//! writing statement, with no lock and no NOTIFY, and the [`sequencer`] moves the committed
//! ones into `changes` a few milliseconds later, numbering them contiguously.
//!
//! Guarantees, for any reader of `id > cursor order by id` (this module, `orgsync changes`, or
//! plain SQL): the ids a reader can see always form a prefix of the feed, contiguous (ids of
//! releases before the sequencer may have gaps, where a transaction rolled back), so a reader that stores the last id it handled after
//! handling it sees every change at least once, in the order the sequencer numbered them;
//! exactly once when it stores the cursor atomically with its effect. Two changes of one row
//! are in the order they were made. The readers in this module first make every change
//! committed before the call readable ([`sequence_now`]); a plain-SQL reader sees a change
//! once a sequencer has ticked (every `orgsync serve` runs one, every ~20 ms).
//!
//! Writers name their source for the feed with [`crate::reconcile::begin`] inside each writing
//! transaction; the job id of a webhook change is the row's `last_job_id`.

pub mod sequencer;

pub use sequencer::{sequence_now, SequencerSettings};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// The channel `NOTIFY`ed when a sequencer tick made changes readable (payload
/// `{"schema": …, "id": the tick's last id}`). Database-wide: instances in other schemas notify
/// it too, so it is only a wake-up.
pub const NOTIFY_CHANNEL: &str = "orgsync_changes";

/// The entities the feed reports.
pub const ENTITIES: &[&str] = &["hotel", "user", "membership", "role", "permission", "invitation", "role_set"];

/// One row of the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Change {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `hotel`, `user`, `membership`, `role`, `permission`, `invitation` or `role_set`.
    pub entity: String,
    /// The hotel id, the user id, the Clerk membership id, or the role, permission, invitation
    /// or role set id.
    pub entity_id: String,
    /// The hotel of a hotel, membership or invitation change.
    pub hotel_id: Option<String>,
    /// The user of a user or membership change, or the user who accepted an invitation.
    pub user_id: Option<String>,
    /// `created`, `updated` or `deleted` (an invitation is never `deleted`: its end is a status,
    /// or its hotel's deletion).
    pub op: String,
    pub clerk_version: i64,
    /// `webhook`, `resync` or `self_heal` (null for a writer that named none).
    pub source: Option<String>,
    /// The job of a webhook change.
    pub job_id: Option<i64>,
}

/// Up to `limit` changes with `id > after`, in id order, of `entity` when given, every change
/// committed before the call included ([`sequence_now`] first). Safe to call while changes
/// commit concurrently: never returns a change after one that is not yet readable.
pub async fn read_after(
    pool: &PgPool,
    after: i64,
    entity: Option<&str>,
    limit: i64,
) -> Result<Vec<Change>, sqlx::Error> {
    sequence_now(pool).await?;
    sqlx::query_as!(
        Change,
        r#"
        select id, at, entity, entity_id, hotel_id, user_id, op, clerk_version, source, job_id
        from changes
        where id > $1 and ($2::text is null or entity = $2)
        order by id
        limit $3
        "#,
        after,
        entity,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// The feed's last id, every change committed before the call included (0 for a new feed):
/// where a consumer starting "from now" begins.
pub async fn last_id(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sequence_now(pool).await?;
    sqlx::query_scalar!("select last_id from changes_sequencer")
        .fetch_one(pool)
        .await
}

/// Deletes changes older than `retention`, in small batches; returns how many. (Pending changes
/// are never pruned: they are moved first.)
pub async fn prune(pool: &PgPool, retention: std::time::Duration) -> Result<u64, sqlx::Error> {
    let secs = retention.as_secs_f64();
    crate::db::delete_in_batches(|| async {
        Ok(sqlx::query!(
            r#"
            delete from changes where id in (
                select id from changes where at < now() - make_interval(secs => $1) limit $2)
            "#,
            secs,
            crate::db::PRUNE_BATCH,
        )
        .execute(pool)
        .await?
        .rows_affected())
    })
    .await
}
