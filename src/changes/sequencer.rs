//! The sequencer: what makes committed changes readable (migration
//! `20261203000010_change_feed_sequencer.sql` explains the design).
//!
//! Writers only insert into `pending_changes` (no lock, no NOTIFY). A *tick* is one short
//! transaction: it takes the per-schema sequencer lock, then, in one statement, moves the pending
//! changes it can see (committed ones) into `changes`, numbering them `id` = the last id + 1, + 2,
//! … in insert order, and notifies [`super::NOTIFY_CHANNEL`] once. Because the lock is taken
//! before that statement's snapshot and released only once the tick's commit is visible, every
//! tick sees every earlier one: ids are contiguous and visible as a prefix, whatever order the
//! writers commit in. A tick that dies rolls back (nothing moved, nothing numbered); two ticks
//! never run at once.
//!
//! Who ticks: every `orgsync serve` runs [`run`] (whichever replica gets the lock does the tick,
//! the others skip it), `orgsync changes --follow` runs it too, and every reader in this crate
//! calls [`sequence_now`] before it reads, so none of them depends on a running server.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// Advisory-lock class of the sequencer ("orgc"); the key is `hashtext(current_schema())`, so
/// instances in other schemas of the same database sequence their own feeds.
pub const LOCK_CLASS: i32 = 0x6f72_6763;

/// Most changes one tick moves: a backlog is moved in ticks of this size, one after the other.
pub const BATCH: i64 = 10_000;

/// A tick whose transaction stays idle this long (its process frozen) is cut off by the server,
/// which releases the lock for the other sequencers.
const IDLE_TIMEOUT_MS: &str = "10000";

/// How the background sequencer runs.
#[derive(Debug, Clone)]
pub struct SequencerSettings {
    /// Pause between ticks (a tick that moved a full [`BATCH`] is followed at once by the next).
    pub tick: Duration,
}

impl Default for SequencerSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(20),
        }
    }
}

/// What one tick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing committed was waiting.
    Idle,
    /// Another sequencer holds the lock (it is moving them now).
    Busy,
    /// Moved this many changes; the feed's last id is now `last_id`.
    Moved { changes: u64, last_id: i64 },
}

/// Makes every change committed before the call readable: after it returns, a reader of
/// `changes` sees them all. Ok(how many changes this call moved; 0 when another sequencer had
/// moved them). Cheap when nothing is waiting (one read). Write paths that promise "the feed
/// already shows it" call it after their commit and before answering.
///
/// It never queues on the sequencer's lock: every change committed before the call has a `seq`
/// no higher than the sequence's value read first (`upto`); while any of those is still
/// pending, it ticks, or, when another sequencer holds the lock, waits a millisecond for that
/// tick to commit and looks again. So concurrent callers (the API's writes, readers, the
/// background ticks) share one tick instead of running one each, one after the other, and a
/// stream of later commits never keeps it waiting.
pub async fn sequence_now(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let upto = sqlx::query_scalar!(
        r#"select case when is_called then last_value else 0 end as "upto!" from pending_changes_seq"#
    )
    .fetch_one(pool)
    .await?;
    let mut total = 0;
    while pending_up_to(pool, upto).await? {
        let mut conn = pool.acquire().await?;
        match move_pending(&mut conn, BATCH).await? {
            Some((changes, _)) => total += changes,
            None => {
                drop(conn);
                tokio::time::sleep(BUSY_WAIT).await;
            }
        }
    }
    Ok(total)
}

/// How long [`sequence_now`] waits for another sequencer's tick before looking again.
const BUSY_WAIT: Duration = Duration::from_millis(1);

/// True while a committed change with `seq <= upto` is not yet in the feed.
async fn pending_up_to(pool: &PgPool, upto: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from pending_changes
                          where seq > (select floor_seq from changes_sequencer) and seq <= $1) as "pending!""#,
        upto
    )
    .fetch_one(pool)
    .await
}

/// One tick, skipped when another sequencer holds the lock. Err when the database cannot be
/// written (nothing moved then).
pub async fn tick(pool: &PgPool) -> Result<Tick, sqlx::Error> {
    if !anything_pending(pool).await? {
        return Ok(Tick::Idle);
    }
    let mut conn = pool.acquire().await?;
    Ok(match move_pending(&mut conn, BATCH).await? {
        None => Tick::Busy,
        Some((0, _)) => Tick::Idle,
        Some((changes, last_id)) => Tick::Moved { changes, last_id },
    })
}

/// Ticks every `settings.tick` until `cancel` fires (a full batch is followed at once by the
/// next). Errors are logged and retried at the next tick.
pub async fn run(pool: PgPool, settings: SequencerSettings, cancel: CancellationToken) {
    tracing::debug!(
        tick_ms = settings.tick.as_millis() as u64,
        "change feed sequencer started"
    );
    while !cancel.is_cancelled() {
        match tick(&pool).await {
            Ok(Tick::Moved { changes, .. }) if changes as i64 >= BATCH => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sequencing the change feed failed; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(settings.tick) => {}
        }
    }
    tracing::debug!("change feed sequencer stopped");
}

/// True when a committed change waits for a tick.
async fn anything_pending(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from pending_changes
                          where seq > (select floor_seq from changes_sequencer)) as "pending!""#
    )
    .fetch_one(pool)
    .await
}

/// One tick's transaction. Ok(None) when another sequencer holds the lock; Ok(Some((moved,
/// last id))) otherwise.
async fn move_pending(conn: &mut PgConnection, batch: i64) -> Result<Option<(u64, i64)>, sqlx::Error> {
    let mut tx = sqlx::Acquire::begin(conn).await?;
    // The lock first, in a statement of its own: the moving statement's snapshot must be taken
    // after it, to see the ticks before. `drawn`, the last seq handed out before that snapshot,
    // is the scan floor this tick proposes (see the migration). JIT off: the planner's guesses
    // about the tiny sequencer table would otherwise make it compile the statement.
    let row = sqlx::query!(
        r#"select pg_try_advisory_xact_lock($1, hashtext(current_schema())) as "got!",
                  set_config('jit', 'off', true) as jit,
                  set_config('idle_in_transaction_session_timeout', $2, true) as idle,
                  (select case when is_called then last_value else 0 end from pending_changes_seq)
                      as "drawn!""#,
        LOCK_CLASS,
        IDLE_TIMEOUT_MS,
    )
    .fetch_one(&mut *tx)
    .await?;
    let (got, drawn) = (row.got, row.drawn);
    if !got {
        tx.rollback().await?;
        return Ok(None);
    }
    let moved = sqlx::query!(
        r#"
        with head as (
            select s.*, pg_snapshot_xmin(pg_current_snapshot()) as xmin
            from changes_sequencer s
        ), upper as (
            -- The batch: the first $1 visible pending changes above the floor, in seq order.
            select max(b.seq) as top, count(*) as n
            from (select p.seq from pending_changes p, head
                  where p.seq > head.floor_seq order by p.seq limit $1) b
        ), moved as (
            -- Every visible pending change in (floor, top] is in the batch.
            delete from pending_changes p using head, upper u
            where p.seq > head.floor_seq and p.seq <= u.top
            returning p.*
        ), numbered as (
            insert into changes (id, at, entity, entity_id, hotel_id, user_id, op, clerk_version, source, job_id)
            select h.last_id + row_number() over (order by m.seq), m.at, m.entity, m.entity_id, m.hotel_id,
                   m.user_id, m.op, m.clerk_version, m.source, m.job_id
            from moved m, head h
            returning id
        ), tally as (
            select count(*) as n from numbered
        ), proof as (
            -- The proposed floor holds once every transaction that could have drawn a seq up
            -- to it has ended (xmin reached the id of the tick that proposed it) and this tick
            -- moved everything visible up to it.
            select h.candidate_seq is not null and h.xmin >= h.candidate_xid
                   and (u.n < $1 or u.top >= h.candidate_seq) as proven
            from head h, upper u
        )
        update changes_sequencer s set
            last_id = s.last_id + t.n,
            sequenced_at = case when t.n > 0 then now() else s.sequenced_at end,
            floor_seq = case when p.proven then h.candidate_seq else s.floor_seq end,
            candidate_seq = case when p.proven or h.candidate_seq is null then $2 else h.candidate_seq end,
            -- This tick's own transaction id, assigned now, after $2 was read: above every
            -- writer's that drew a seq up to $2.
            candidate_xid = case when p.proven or h.candidate_seq is null then pg_current_xact_id()
                                 else h.candidate_xid end
        from head h, tally t, proof p
        where t.n > 0 or p.proven or h.candidate_seq is null
        returning s.last_id, t.n as "moved!"
        "#,
        batch,
        drawn,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (changes, last_id) = match moved {
        Some(row) => (row.moved as u64, row.last_id),
        None => (0, 0),
    };
    if changes > 0 {
        // A wake-up for readers, delivered at this commit. Channels are database-wide: the
        // payload names the schema, and a reader treats it as a hint only and reads the table.
        sqlx::query!(
            "select pg_notify($1, json_build_object('schema', current_schema(), 'id', $2::int8)::text)",
            super::NOTIFY_CHANNEL,
            last_id,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if changes > 0 {
        metrics::counter!("orgsync_changes_sequenced_total").increment(changes);
    }
    Ok(Some((changes, last_id)))
}
