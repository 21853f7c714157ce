//! The consumer. Workers claim batches of due jobs with `FOR UPDATE SKIP LOCKED` and apply them
//! inside the transaction that holds the lock:
//!
//! - the batch is applied through the rule book ([`crate::reconcile`]) a kind at a time, a few
//!   statements per batch; a database error reruns it with one savepoint per job, so a failing
//!   job rolls back only its own effect;
//! - membership jobs and user deletes never share a batch (the younger kind is left for the next
//!   one, see [`deferred_kind`]), and batches that delete run one at a time ([`DELETES_LOCK`]):
//!   otherwise two workers could deadlock;
//! - success marks the job `done`, failure writes its retry bookkeeping (attempts, next run,
//!   error, the hotel it waits for), in one statement of that same transaction, so the effect and
//!   the bookkeeping commit together;
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
    /// Claimed but left untouched for a later batch (see [`deferred_kind`]): still `available`,
    /// attempts unchanged.
    pub deferred: usize,
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
/// The batch is applied set-based through [`reconcile::apply_events`]: a few statements for the
/// whole batch, then one statement of bookkeeping. A database error aborts that transaction; the
/// batch is then rolled back and run again with each job under a savepoint of its own, so a job
/// whose content Postgres refuses (e.g. a NUL in a name) ends `dead` alone and a transient error
/// (deadlock, serialization) retries only the jobs it hit.
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
    /// A statement failed in a batch applied as a whole.
    Aborted,
    Database(sqlx::Error),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

/// A claimed job: its payload stays text until decoded into the event it claims to be.
struct Claimed {
    id: i64,
    event_id: String,
    event_type: String,
    payload: String,
    attempts: i32,
}

/// What became of one job.
enum Fate {
    Applied(reconcile::Outcome),
    /// A type orgsync does not handle.
    Skipped,
    /// Can never apply (undecodable payload, content Postgres refuses): dead at once.
    Permanent(String),
    /// May apply later.
    Retry(ApplyError),
    /// Left for a later batch, untouched (see [`deferred_kind`]).
    Deferred,
}

/// The advisory lock (class "orgd", key 0) a batch that deletes hotels or users holds, waiting
/// for it, from before its first write to its end: such batches run one at a time.
///
/// Why: a user delete ends that user's memberships in every hotel, a hotel delete every
/// membership of that hotel. Two such batches meeting on the same memberships lock those rows in
/// whatever order their scans reach them, and each may hold a row the other waits for; or a
/// hotel delete holds a membership row the user delete waits for while its own batch waits for
/// that user (`FOR KEY SHARE`, for its memberships). Either is a deadlock, broken by Postgres
/// only after `deadlock_timeout` (1 s) by aborting a batch. Deletes are rare, so waiting for the
/// one batch ahead costs little. The wait cannot close a cycle: the holder never waits for what a
/// waiter holds (its advisory entity locks, the job rows it claimed).
const DELETES_LOCK: (i32, i32) = (0x6f72_6764, 0);

/// True for the events whose batches take [`DELETES_LOCK`].
fn deletes(event: &ClerkEvent) -> bool {
    matches!(
        event,
        ClerkEvent::UserDeleted { .. } | ClerkEvent::OrganizationDeleted { .. }
    )
}

/// The kinds of job that must not share a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conflicting {
    UserDelete,
    Membership,
}

impl Conflicting {
    fn of(event: &ClerkEvent) -> Option<Self> {
        match event {
            ClerkEvent::UserDeleted { .. } => Some(Self::UserDelete),
            ClerkEvent::MembershipUpserted(_) | ClerkEvent::MembershipDeleted { .. } => Some(Self::Membership),
            _ => None,
        }
    }
}

/// Membership jobs and user deletes never share a batch; this names the kind a batch leaves for
/// later, if any. `events` are in claim order (oldest first).
///
/// Why: a batch with a user delete first locks `FOR UPDATE`, in one ordered statement, every
/// user it names, the users of its memberships included. Those are not the batch's own entities
/// (a membership job belongs to its hotel), so another worker may hold one of them — `FOR KEY
/// SHARE` for its own memberships, or updated by its own user events — while it waits for a user
/// this batch has already locked: a deadlock, which Postgres breaks only after `deadlock_timeout`
/// (1 s) by aborting one of the batches. Without memberships, a batch with user deletes locks only
/// users whose jobs it holds (their advisory locks keep every other worker off them), and every
/// other locker takes its user locks in id order in one statement, so no cycle can form.
///
/// When a claim holds both kinds, the kind of the oldest of them is applied and the other is left
/// untouched, claimable again once this transaction ends. The oldest job always applies, so
/// neither kind starves.
fn deferred_kind<'a>(events: impl IntoIterator<Item = &'a ClerkEvent>) -> Option<Conflicting> {
    let mut first: Option<Conflicting> = None;
    for kind in events.into_iter().filter_map(Conflicting::of) {
        match first {
            None => first = Some(kind),
            Some(f) if f != kind => return Some(kind),
            Some(_) => {}
        }
    }
    None
}

async fn run_batch_with(pool: &PgPool, settings: &WorkerSettings, isolated: bool) -> Result<BatchReport, BatchError> {
    let mut tx = pool.begin().await?;
    // The lease: a worker silent this long inside its transaction is disconnected by the
    // server, which rolls back and so releases its jobs.
    let lease_ms = settings.lease.as_millis().to_string();
    sqlx::query("select set_config('idle_in_transaction_session_timeout', $1, true)")
        .bind(&lease_ms)
        .execute(&mut *tx)
        .await?;
    // One entity (hotel or user) per worker at a time: a job is claimable only when no other
    // transaction holds its entity's advisory lock, so concurrent batches touch disjoint rows and
    // neither wait for nor deadlock with each other. The lock is reentrant within a transaction
    // and released at its end. The payload is read as text (whatever the column's JSON type) and
    // decoded per job, so a payload that does not decode only fails its own job.
    let jobs: Vec<Claimed> = sqlx::query_as!(
        Claimed,
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
    let started = std::time::Instant::now();
    let mut fates: Vec<Option<Fate>> = Vec::with_capacity(jobs.len());
    let mut events: Vec<(usize, ClerkEvent)> = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        match ClerkEvent::parse_str(&job.event_type, &job.payload) {
            Ok(Some(event)) => {
                fates.push(None);
                events.push((i, event));
            }
            Ok(None) => fates.push(Some(Fate::Skipped)),
            Err(e) => fates.push(Some(Fate::Permanent(e.to_string()))),
        }
    }
    if let Some(later) = deferred_kind(events.iter().map(|(_, e)| e)) {
        events.retain(|(i, e)| {
            let defer = Conflicting::of(e) == Some(later);
            if defer {
                fates[*i] = Some(Fate::Deferred);
            }
            !defer
        });
    }
    if events.iter().any(|(_, e)| deletes(e)) {
        sqlx::query("select pg_advisory_xact_lock($1, $2)")
            .bind(DELETES_LOCK.0)
            .bind(DELETES_LOCK.1)
            .execute(&mut *tx)
            .await?;
    }
    reconcile::begin(&mut tx, reconcile::Source::Webhook).await?;
    if !isolated {
        let items: Vec<_> = events
            .iter()
            .map(|(i, e)| reconcile::Item {
                job: Some(jobs[*i].id),
                value: e,
            })
            .collect();
        match reconcile::apply_events(&mut tx, reconcile::Source::Webhook, &items).await {
            Ok(outcomes) => {
                for ((i, _), outcome) in events.iter().zip(outcomes) {
                    fates[*i] = Some(Fate::Applied(outcome));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "batch aborted by a database error; rerunning it job by job");
                let _ = tx.rollback().await;
                return Err(BatchError::Aborted);
            }
        }
    } else {
        for (i, event) in &events {
            let job = &jobs[*i];
            let span =
                tracing::info_span!("job", job_id = job.id, event_id = %job.event_id, event_type = %job.event_type);
            fates[*i] = Some(apply_alone(&mut tx, job.id, event).instrument(span).await);
        }
    }
    let elapsed = started.elapsed().as_secs_f64() / jobs.len() as f64;

    let mut book = Bookkeeping::default();
    for (job, fate) in jobs.iter().zip(fates) {
        if matches!(fate, Some(Fate::Deferred)) {
            report.deferred += 1;
            continue;
        }
        let attempt = job.attempts + 1;
        let span = tracing::info_span!("job", job_id = job.id, event_id = %job.event_id, event_type = %job.event_type, attempt);
        let _enter = span.enter();
        let kind = job.event_type.as_str();
        metrics::histogram!("orgsync_job_duration_seconds", "type" => kind.to_owned()).record(elapsed);
        let fate = match fate.expect("every job has a fate") {
            Fate::Applied(reconcile::Outcome::WaitingForHotel(h)) => Fate::Retry(ApplyError::MissingHotel(h)),
            Fate::Applied(reconcile::Outcome::UserBusy(u)) => Fate::Retry(ApplyError::UserBusy(u)),
            Fate::Applied(reconcile::Outcome::RoleKeyTaken(k)) => Fate::Retry(ApplyError::RoleKeyTaken(k)),
            other => other,
        };
        let outcome = match fate {
            Fate::Deferred => unreachable!("deferred jobs are passed over above"),
            Fate::Applied(applied) => {
                tracing::debug!(?applied, "applied");
                book.push(job.id, "done", None, None, None);
                report.done += 1;
                "done"
            }
            Fate::Skipped => {
                book.push(job.id, "skipped", None, None, None);
                "skipped"
            }
            Fate::Permanent(error) => {
                tracing::warn!(%error, "permanent failure; job is dead");
                book.push(job.id, "dead", Some(error), None, None);
                report.dead += 1;
                "dead"
            }
            Fate::Retry(error) => {
                let message = error.to_string();
                let waiting_for = error.waiting_for().cloned();
                if attempt >= settings.max_attempts {
                    tracing::warn!(error = %message, "attempts exhausted; job is dead");
                    book.push(job.id, "dead", Some(message), None, None);
                    report.dead += 1;
                    "dead"
                } else {
                    let delay = match &error {
                        // Another batch holds the user for the moment: ready again when it
                        // commits, whatever this job's attempt count says.
                        ApplyError::UserBusy(_) => busy_delay(settings),
                        _ => retry_delay(settings, attempt),
                    };
                    tracing::info!(error = %message, retry_in_ms = delay.as_millis() as u64, "retryable failure");
                    book.push(
                        job.id,
                        "available",
                        Some(message),
                        Some(delay),
                        waiting_for.as_ref().map(|h| h.as_str().to_owned()),
                    );
                    report.retried += 1;
                    if let Some(hotel) = waiting_for {
                        report.missing_hotels.push((hotel, attempt));
                    }
                    "retry"
                }
            }
        };
        metrics::counter!("orgsync_jobs_processed_total", "type" => kind.to_owned(), "outcome" => outcome).increment(1);
    }
    book.write(&mut tx).await?;
    tx.commit().await?;
    Ok(report)
}

/// Applies one event under a savepoint: a database error rolls back only this job. An error in
/// the data class (22xxx: a value Postgres refuses) can never succeed, so the job is dead; any
/// other is retried.
async fn apply_alone(tx: &mut PgConnection, job: i64, event: &ClerkEvent) -> Fate {
    let mut sp = match tx.begin().await {
        Ok(sp) => sp,
        Err(e) => return Fate::Retry(ApplyError::Database(e)),
    };
    let item = [reconcile::Item {
        job: Some(job),
        value: event,
    }];
    match reconcile::apply_events(&mut sp, reconcile::Source::Webhook, &item).await {
        Ok(mut outcomes) => match sp.commit().await {
            Ok(()) => Fate::Applied(outcomes.pop().expect("one outcome")),
            Err(e) => Fate::Retry(ApplyError::Database(e)),
        },
        Err(e) => {
            let _ = sp.rollback().await;
            let refused = matches!(&e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22")));
            if refused {
                Fate::Permanent(format!("Postgres refuses the event's content: {e}"))
            } else {
                Fate::Retry(ApplyError::Database(e))
            }
        }
    }
}

/// The batch's per-job bookkeeping, written in one statement.
#[derive(Default)]
struct Bookkeeping {
    ids: Vec<i64>,
    states: Vec<&'static str>,
    errors: Vec<Option<String>>,
    retry_ms: Vec<Option<i64>>,
    waiting_for: Vec<Option<String>>,
}

impl Bookkeeping {
    fn push(
        &mut self,
        id: i64,
        state: &'static str,
        error: Option<String>,
        retry_in: Option<Duration>,
        waiting_for: Option<String>,
    ) {
        self.ids.push(id);
        self.states.push(state);
        self.errors.push(error);
        self.retry_ms.push(retry_in.map(|d| d.as_millis() as i64));
        self.waiting_for.push(waiting_for);
    }

    /// Counts the attempt of every job; `done`/`skipped` finish it, `dead` ends it with its error,
    /// `available` schedules the retry (with the hotel it waits for); every error joins the job's
    /// history.
    async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query!(
            r#"
            update jobs j set
                attempts = j.attempts + 1,
                state = x.state,
                done_at = case when x.state in ('done', 'skipped') then now() else j.done_at end,
                run_at = case when x.state = 'available'
                              then now() + make_interval(secs => x.retry_ms / 1000.0) else j.run_at end,
                last_error = coalesce(x.error, j.last_error),
                waiting_for = x.waiting_for,
                errors = case when x.error is null then j.errors
                              else j.errors || jsonb_build_array(jsonb_build_object(
                                  'attempt', j.attempts + 1, 'at', now(), 'error', x.error)) end,
                updated_at = now()
            from unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::text[])
                 as x(id, state, error, retry_ms, waiting_for)
            where j.id = x.id
            "#,
            &self.ids,
            &self.states as &[&str],
            &self.errors as &[Option<String>],
            &self.retry_ms as &[Option<i64>],
            &self.waiting_for as &[Option<String>],
        )
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// The delay before retry number `attempt` (1-based): "full jitter", uniform in
/// `[0, min(cap, base * 2^(attempt-1))]`, so retries of many jobs failing together spread out.
pub fn retry_delay(settings: &WorkerSettings, attempt: i32) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 30) as u32;
    let ceiling = settings.retry_base.saturating_mul(1u32 << exp).min(settings.retry_cap);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(if ms == 0 { 0 } else { rand::rng().random_range(0..=ms) })
}

/// Most a job waits after finding its user being written by another batch ([`busy_delay`]).
const BUSY_RETRY_CAP: Duration = Duration::from_millis(200);

/// The delay before retrying a job whose user another batch was writing: uniform in
/// `[0, min(retry_base, 200 ms)]`, not growing with the attempts. The other batch commits
/// within a batch's time, and a job that found its user busy has no wake-up of its own, so a
/// growing backoff would only leave it idle: in a burst, up to 30 s after its user was written.
pub fn busy_delay(settings: &WorkerSettings) -> Duration {
    let ms = settings.retry_base.min(BUSY_RETRY_CAP).as_millis() as u64;
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

/// Deletes `done` and `skipped` jobs older than `retention`, and the API's Idempotency-Keys
/// older than it (at least 24 hours), in small batches, hourly.
async fn prune_loop(pool: PgPool, retention: Duration, cancel: CancellationToken) {
    loop {
        match prune(&pool, retention).await {
            Ok(n) if n > 0 => tracing::info!(pruned = n, "pruned old jobs"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning old jobs failed"),
        }
        // The API's Idempotency-Keys: the same retention, never under 24 hours.
        match crate::api::idempotency::prune(&pool, retention).await {
            Ok(n) if n > 0 => tracing::info!(pruned = n, "pruned old idempotency keys"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning old idempotency keys failed"),
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
    crate::db::delete_in_batches(|| async {
        Ok(sqlx::query!(
            r#"
            delete from jobs where id in (
                select id from jobs
                where state in ('done', 'skipped') and done_at < now() - make_interval(secs => $1)
                limit $2)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_user_is_retried_within_200_ms_whatever_the_attempt_unlike_a_missing_parent() {
        let settings = WorkerSettings::default();
        assert!((0..1000).all(|_| busy_delay(&settings) <= BUSY_RETRY_CAP));
        // The ordinary backoff of a tenth attempt reaches minutes.
        let longest = (0..1000).map(|_| retry_delay(&settings, 10)).max().unwrap();
        assert!(longest > Duration::from_secs(60), "{longest:?}");
        // A test's fast settings stay fast.
        let fast = WorkerSettings {
            retry_base: Duration::from_millis(5),
            ..WorkerSettings::default()
        };
        assert!((0..100).all(|_| busy_delay(&fast) <= Duration::from_millis(5)));
    }
}
