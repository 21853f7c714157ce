//! The scheduled resync: one run per interval across a fleet.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{run_locked, ResyncError, ResyncLock, ResyncOptions, ResyncReport};
use crate::clerk::api::ClerkClient;

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
