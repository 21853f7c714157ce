//! `orgsync replay`: make chosen jobs run again, promptly, with a fresh attempt budget.
//!
//! A replayed job becomes `available` and due now with `attempts = 0`; its error history is
//! kept and gains a `{replayed_at, previous_state, previous_attempts}` marker, so `jobs show`
//! tells the whole story. Replaying is safe to repeat: applying an event is idempotent
//! (newer-wins rows), so a job replayed twice, or a `done` job replayed, converges to the same
//! rows.

use std::io::{self, Write};

use serde::Serialize;
use sqlx::PgPool;

use super::jobs::{list_jobs, write_table, JobSummary, Selection};
use super::progress::Progress;
use crate::queue::NOTIFY_CHANNEL;

/// Jobs updated per transaction. Each chunk commits on its own so the workers start on the
/// first jobs while later ones are still being marked, and a failure midway leaves a clean
/// prefix replayed (running the same replay again finishes the rest, e.g. with `--state dead`).
pub const DEFAULT_CHUNK_SIZE: usize = 500;

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// List the selection and change nothing.
    pub dry_run: bool,
    /// Jobs per transaction (at least 1).
    pub chunk_size: usize,
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// How many jobs the selection matched.
    pub matched: usize,
    /// How many jobs were made available again (0 on a dry run). Lower than `matched` only
    /// when a job was deleted (pruned) between the selection and the update.
    pub replayed: u64,
    /// The selected jobs as they were before the replay.
    pub jobs: Vec<JobSummary>,
}

/// Selects the jobs and, unless `options.dry_run`, replays them chunk by chunk, reporting
/// progress through the reporter `progress(total)` builds (called only when there is work).
/// Ok carries what was selected and how many jobs were replayed. Err when the database fails;
/// chunks committed before the failure stay replayed. The caller validates the selection
/// ([`Selection::validate`], [`Selection::require_selector`]).
pub async fn run_replay(
    pool: &PgPool,
    selection: &Selection,
    options: &ReplayOptions,
    progress: impl FnOnce(u64) -> Progress,
) -> Result<ReplayReport, sqlx::Error> {
    let jobs = list_jobs(pool, selection).await?;
    let mut report = ReplayReport {
        dry_run: options.dry_run,
        matched: jobs.len(),
        replayed: 0,
        jobs,
    };
    if options.dry_run || report.jobs.is_empty() {
        return Ok(report);
    }
    let ids: Vec<i64> = report.jobs.iter().map(|j| j.id).collect();
    let mut progress = progress(ids.len() as u64);
    for chunk in ids.chunks(options.chunk_size.max(1)) {
        report.replayed += replay_jobs(pool, chunk).await?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    tracing::info!(matched = report.matched, replayed = report.replayed, "jobs replayed");
    Ok(report)
}

/// Replays the jobs with these ids in one transaction and wakes the workers. Ok(number of jobs
/// replayed; ids that do not exist are ignored). A job a worker is applying right now is
/// replayed once that worker's batch commits (the update waits for its row lock).
pub async fn replay_jobs(pool: &PgPool, ids: &[i64]) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // In SET, `state` and `attempts` on the right-hand side are the values before the update:
    // exactly what the history marker should record.
    let replayed = sqlx::query!(
        r#"
        update jobs set
            state = 'available',
            attempts = 0,
            run_at = now(),
            waiting_for = null,
            done_at = null,
            updated_at = now(),
            errors = errors || jsonb_build_array(jsonb_build_object(
                'replayed_at', now(), 'previous_state', state, 'previous_attempts', attempts))
        where id = any($1)
        "#,
        ids
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // Delivered at commit, so a woken worker finds the jobs already available.
    sqlx::query!("select pg_notify($1, '')", NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(replayed)
}

/// Renders the report: a dry run lists the jobs; a replay says how many it touched.
pub fn write_report(out: &mut impl Write, report: &ReplayReport) -> io::Result<()> {
    let plural = |n: u64| if n == 1 { "job" } else { "jobs" };
    if report.dry_run {
        write_table(out, &report.jobs)?;
        let n = report.matched as u64;
        return writeln!(out, "dry run: would replay {n} {}; nothing was changed", plural(n));
    }
    if report.matched == 0 {
        return writeln!(out, "no jobs match; nothing replayed");
    }
    writeln!(out, "replayed {} {}", report.replayed, plural(report.replayed))?;
    if report.jobs.len() <= 20 {
        let ids: Vec<String> = report.jobs.iter().map(|j| j.id.to_string()).collect();
        writeln!(out, "ids: {}", ids.join(" "))?;
    }
    writeln!(out, "follow them with `orgsync jobs show ID` or `orgsync status`")
}
