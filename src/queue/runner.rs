//! The consumer. Workers claim batches of due jobs with `FOR UPDATE SKIP LOCKED` and apply them
//! inside the transaction that holds the lock:
//!
//! - each job runs under a savepoint, so a failing job rolls back only its own effect;
//! - success marks the job `done`, failure writes its retry bookkeeping (attempts, next run,
//!   error), both in that same transaction, so the effect and the bookkeeping commit together;
//! - the lock *is* the lease: a worker that dies loses its connection and Postgres rolls the
//!   batch back, so its jobs are claimable again with nothing half-applied. A worker that stalls
//!   (idle in its transaction longer than the lease) is cut off by the server for the same result.
//!
//! No HTTP call is made while jobs are locked: the self-heal fetch runs after the commit.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::postgres::PgListener;
use sqlx::{Acquire, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::NOTIFY_CHANNEL;
use crate::clerk::{ClerkEvent, HotelId};
use crate::reconcile::{self, ApplyError, ENTITY_LOCK_CLASS};

/// Consumer knobs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Worker tasks in this process; each holds at most one batch at a time.
    pub concurrency: usize,
    /// Most jobs claimed (and committed) together.
    pub batch_size: i64,
    /// How long a claimed batch may stay locked while its worker is silent.
    pub lease: Duration,
    /// First retry delay ceiling; each attempt doubles it (full jitter), up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Attempts before a retryable job is dead-lettered.
    pub max_attempts: i32,
    /// How often an idle worker looks for due jobs when no notification arrives.
    pub poll_interval: Duration,
    /// How long `done` and `skipped` jobs are kept for audit and replay.
    pub retention: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            batch_size: 100,
            lease: Duration::from_secs(60),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(30 * 60),
            max_attempts: 20,
            poll_interval: Duration::from_secs(1),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub claimed: usize,
    pub done: usize,
    pub retried: usize,
    pub dead: usize,
    /// Hotels that retryable membership jobs are waiting for (candidates for self-heal).
    pub missing_hotels: Vec<(HotelId, i32)>,
}

/// Something that can fetch a missing hotel from elsewhere (the Clerk API) after a batch.
pub trait Heal: Send + Sync + 'static {
    /// Called with a hotel id that membership jobs have waited for over `attempts` attempts.
    fn heal(&self, hotel: HotelId, attempts: i32) -> futures::future::BoxFuture<'_, ()>;
}

/// Runs the workers of one process.
pub struct Runner {
    pool: PgPool,
    settings: WorkerSettings,
    heal: Option<Arc<dyn Heal>>,
}

impl Runner {
    pub fn new(pool: PgPool, settings: WorkerSettings) -> Self {
        Self {
            pool,
            settings,
            heal: None,
        }
    }

    /// Hands missing hotels to `heal` after each batch.
    pub fn with_heal(mut self, heal: Arc<dyn Heal>) -> Self {
        self.heal = Some(heal);
        self
    }

    /// Runs until `cancel` fires: then stops claiming, lets in-flight batches commit, and
    /// returns.
    pub async fn run(self, cancel: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(self.pool.clone(), wake.clone(), cancel.clone()));
        let pruner = tokio::spawn(prune_loop(self.pool.clone(), self.settings.retention, cancel.clone()));
        let this = Arc::new(self);
        let workers: Vec<_> = (0..this.settings.concurrency.max(1))
            .map(|n| {
                let this = this.clone();
                let wake = wake.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move { this.work(n, wake, cancel).await })
            })
            .collect();
        for w in workers {
            let _ = w.await;
        }
        let _ = listener.await;
        let _ = pruner.await;
    }

    async fn work(&self, n: usize, wake: Arc<Notify>, cancel: CancellationToken) {
        tracing::debug!(worker = n, "worker started");
        while !cancel.is_cancelled() {
            // Register for a wake-up before looking, so a notification that arrives while the
            // batch runs is not lost.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let report = match run_batch(&self.pool, &self.settings).await {
                Ok(report) => report,
                Err(e) => {
                    tracing::warn!(worker = n, error = %e, "claiming jobs failed; backing off");
                    BatchReport::default()
                }
            };
            if let Some(heal) = &self.heal {
                for (hotel, attempts) in &report.missing_hotels {
                    heal.heal(hotel.clone(), *attempts).await;
                }
            }
            if report.claimed as i64 >= self.settings.batch_size {
                continue; // more may be waiting
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = &mut notified => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        tracing::debug!(worker = n, "worker stopped");
    }
}

/// Claims one batch of due jobs, applies them, writes their bookkeeping and commits.
/// Ok reports what happened (an empty report when nothing was due). Err means the batch could
/// not be claimed or committed; then nothing of it took effect and its jobs stay claimable.
///
/// The batch first runs without savepoints (the common case: every job applies, or fails in a
/// way detected before writing, such as a missing hotel). A database error inside a job aborts
/// that transaction, so the batch is then rolled back and run again with one savepoint per job,
/// where a failing job rolls back only its own effect.
pub async fn run_batch(pool: &PgPool, settings: &WorkerSettings) -> Result<BatchReport, sqlx::Error> {
    match run_batch_with(pool, settings, false).await {
        Err(BatchError::Aborted) => match run_batch_with(pool, settings, true).await {
            Ok(report) => Ok(report),
            Err(BatchError::Database(e)) => Err(e),
            Err(BatchError::Aborted) => unreachable!("a batch with savepoints never aborts"),
        },
        Err(BatchError::Database(e)) => Err(e),
        Ok(report) => Ok(report),
    }
}

enum BatchError {
    /// A job failed with a database error in a batch without savepoints.
    Aborted,
    Database(sqlx::Error),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

async fn run_batch_with(pool: &PgPool, settings: &WorkerSettings, savepoints: bool) -> Result<BatchReport, BatchError> {
    let mut tx = pool.begin().await?;
    // The lease: a worker silent this long inside its transaction is disconnected by the
    // server, which rolls back and so releases its jobs.
    let lease_ms = settings.lease.as_millis().to_string();
    // The change feed names the source of this transaction's changes (see crate::changes).
    sqlx::query("select set_config('idle_in_transaction_session_timeout', $1, true), set_config('orgsync.source', 'webhook', true)")
        .bind(&lease_ms)
        .execute(&mut *tx)
        .await?;
    // One entity (hotel or user) per worker at a time: a job is claimable only when no other
    // transaction holds its entity's advisory lock, so concurrent batches touch disjoint rows and
    // neither wait for nor deadlock with each other. The lock is reentrant within a transaction
    // and released at its end. The payload comes as text: each job decodes it on its own
    // (`apply_job`), so nothing in one job's payload can fail the claim.
    let jobs = sqlx::query!(
        r#"
        select id, event_id, event_type, payload::text as "payload!", attempts
        from jobs
        where state = 'available' and run_at <= now()
          and pg_try_advisory_xact_lock($2, hashtext(coalesce(entity_key, event_id)))
        order by run_at, id
        limit $1
        for update skip locked
        "#,
        settings.batch_size,
        ENTITY_LOCK_CLASS,
    )
    .fetch_all(&mut *tx)
    .await?;

    let mut report = BatchReport {
        claimed: jobs.len(),
        ..Default::default()
    };
    if jobs.is_empty() {
        tx.commit().await?;
        return Ok(report);
    }
    let mut done = Vec::with_capacity(jobs.len());
    for job in jobs {
        let attempt = job.attempts + 1;
        let span = tracing::info_span!("job", job_id = job.id, event_id = %job.event_id, event_type = %job.event_type, attempt);
        let started = std::time::Instant::now();
        let outcome = apply_job(&mut tx, job.id, &job.event_type, &job.payload, savepoints)
            .instrument(span.clone())
            .await;
        let _enter = span.enter();
        let kind = job.event_type.as_str();
        metrics::histogram!("orgsync_job_duration_seconds", "type" => kind.to_owned())
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Done(applied) => {
                tracing::debug!(?applied, "applied");
                metrics::counter!("orgsync_jobs_processed_total", "type" => kind.to_owned(), "outcome" => "done")
                    .increment(1);
                done.push(job.id);
            }
            Outcome::Skipped => {
                metrics::counter!("orgsync_jobs_processed_total", "type" => kind.to_owned(), "outcome" => "skipped")
                    .increment(1);
                sqlx::query!(
                    "update jobs set state = 'skipped', attempts = attempts + 1, done_at = now(), updated_at = now() where id = $1",
                    job.id
                )
                .execute(&mut *tx)
                .await?;
            }
            Outcome::Retry(ApplyError::Database(e)) if is_content_error(&e) => {
                if !savepoints {
                    // The statement aborted the transaction: run the batch again with savepoints.
                    let _ = tx.rollback().await;
                    return Err(BatchError::Aborted);
                }
                // The rows cannot hold what this event carries: retrying cannot help.
                let error = format!("the database refused this event's values: {}", database_message(&e));
                tracing::warn!(%error, "permanent failure; job is dead");
                metrics::counter!("orgsync_jobs_processed_total", "type" => kind.to_owned(), "outcome" => "dead")
                    .increment(1);
                record_failure(&mut tx, job.id, attempt, &error, None, None).await?;
                report.dead += 1;
            }
            Outcome::Permanent(error) => {
                tracing::warn!(%error, "permanent failure; job is dead");
                metrics::counter!("orgsync_jobs_processed_total", "type" => kind.to_owned(), "outcome" => "dead")
                    .increment(1);
                record_failure(&mut tx, job.id, attempt, &error, None, None).await?;
                report.dead += 1;
            }
            Outcome::Retry(ApplyError::Database(e)) if !savepoints => {
                tracing::debug!(error = %e, "database error without savepoints; rerunning the batch with them");
                let _ = tx.rollback().await;
                return Err(BatchError::Aborted);
            }
            Outcome::Retry(error) => {
                let message = error.to_string();
                let waiting_for = error.waiting_for().cloned();
                let dead = attempt >= settings.max_attempts;
                let delay = (!dead).then(|| retry_delay(settings, attempt));
                if dead {
                    tracing::warn!(error = %message, "attempts exhausted; job is dead");
                    report.dead += 1;
                } else {
                    tracing::info!(error = %message, retry_in_ms = delay.map(|d| d.as_millis() as u64), "retryable failure");
                    report.retried += 1;
                }
                let outcome = if dead { "dead" } else { "retry" };
                metrics::counter!("orgsync_jobs_processed_total", "type" => kind.to_owned(), "outcome" => outcome)
                    .increment(1);
                record_failure(&mut tx, job.id, attempt, &message, delay, waiting_for.as_ref()).await?;
                if let (Some(hotel), false) = (waiting_for, dead) {
                    report.missing_hotels.push((hotel, attempt));
                }
            }
        }
    }
    if !done.is_empty() {
        sqlx::query!(
            r#"
            update jobs set state = 'done', attempts = attempts + 1, done_at = now(), updated_at = now(),
                            waiting_for = null
            where id = any($1)
            "#,
            &done
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    report.done = done.len();
    Ok(report)
}

/// True when Postgres refused a statement for the values in it (SQLSTATE class 22 data
/// exception, 54 program limit): the same event would fail the same way on every attempt.
fn is_content_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("54")))
}

/// Postgres's message for a database error (it names the problem, not the value).
fn database_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// Decodes and applies one job inside the batch transaction, under a savepoint when asked. A
/// payload that does not decode as its type is `Permanent` (the job is dead at once).
async fn apply_job(tx: &mut PgConnection, job_id: i64, event_type: &str, payload: &str, savepoint: bool) -> Outcome {
    let event = match ClerkEvent::parse_json(event_type, payload) {
        Ok(Some(event)) => event,
        Ok(None) => return Outcome::Skipped,
        Err(e) => return Outcome::Permanent(e.to_string()),
    };
    if !savepoint {
        return match reconcile::apply(tx, &event, Some(job_id)).await {
            Ok(applied) => Outcome::Done(applied),
            Err(e) => Outcome::Retry(e),
        };
    }
    let mut sp = match tx.begin().await {
        Ok(sp) => sp,
        Err(e) => return Outcome::Retry(ApplyError::Database(e)),
    };
    match reconcile::apply(&mut sp, &event, Some(job_id)).await {
        Ok(applied) => match sp.commit().await {
            Ok(()) => Outcome::Done(applied),
            Err(e) => Outcome::Retry(ApplyError::Database(e)),
        },
        Err(e) => {
            let _ = sp.rollback().await;
            Outcome::Retry(e)
        }
    }
}

enum Outcome {
    Done(reconcile::Applied),
    Skipped,
    Permanent(String),
    Retry(ApplyError),
}

/// Writes a failed attempt: the error joins the job's history; with `retry_in` the job is due
/// again then, without it the job is dead.
async fn record_failure(
    tx: &mut sqlx::PgConnection,
    id: i64,
    attempt: i32,
    error: &str,
    retry_in: Option<Duration>,
    waiting_for: Option<&HotelId>,
) -> Result<(), sqlx::Error> {
    let retry_ms = retry_in.map(|d| d.as_millis() as i64);
    sqlx::query!(
        r#"
        update jobs set
            attempts = $2::int,
            state = case when $4::bigint is null then 'dead' else 'available' end,
            run_at = case when $4::bigint is null then run_at
                          else now() + make_interval(secs => $4::bigint / 1000.0) end,
            last_error = $3,
            waiting_for = $5,
            errors = errors || jsonb_build_array(jsonb_build_object('attempt', $2::int, 'at', now(), 'error', $3::text)),
            updated_at = now()
        where id = $1
        "#,
        id,
        attempt,
        error,
        retry_ms,
        waiting_for.map(HotelId::as_str),
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// The delay before retry number `attempt` (1-based): "full jitter", uniform in
/// `[0, min(cap, base * 2^(attempt-1))]`, so retries of many jobs failing together spread out.
pub fn retry_delay(settings: &WorkerSettings, attempt: i32) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 30) as u32;
    let ceiling = settings.retry_base.saturating_mul(1u32 << exp).min(settings.retry_cap);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(if ms == 0 { 0 } else { rand::rng().random_range(0..=ms) })
}

/// Wakes the workers whenever a job is enqueued. When the listener connection drops, it
/// reconnects; meanwhile the workers' polling carries on.
async fn listen(pool: PgPool, wake: Arc<Notify>, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN connection failed; polling meanwhile");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::debug!(error = %e, "LISTEN failed; polling meanwhile");
            continue;
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                msg = listener.try_recv() => match msg {
                    Ok(Some(_)) => wake.notify_waiters(),
                    // The connection was lost (and notifications with it): wake everyone to look.
                    Ok(None) => wake.notify_waiters(),
                    Err(_) => break,
                },
            }
        }
    }
}

/// Deletes `done` and `skipped` jobs, and changes of the feed, older than `retention`, in small
/// batches, hourly.
async fn prune_loop(pool: PgPool, retention: Duration, cancel: CancellationToken) {
    loop {
        match prune(&pool, retention).await {
            Ok(n) if n > 0 => tracing::info!(pruned = n, "pruned old jobs"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning old jobs failed"),
        }
        match crate::changes::prune(&pool, retention).await {
            Ok(n) if n > 0 => tracing::info!(pruned = n, "pruned old changes"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning old changes failed"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// Deletes `done`/`skipped` jobs finished more than `retention` ago; returns how many.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let secs = retention.as_secs_f64();
    let mut total = 0;
    loop {
        let n = sqlx::query!(
            r#"
            delete from jobs where id in (
                select id from jobs
                where state in ('done', 'skipped') and done_at < now() - make_interval(secs => $1)
                limit 5000)
            "#,
            secs
        )
        .execute(pool)
        .await?
        .rows_affected();
        total += n;
        if n < 5000 {
            return Ok(total);
        }
    }
}
