//! `orgsync status`: the job queue and the last resync at a glance, and whether a person is
//! needed. The same [`QueueSnapshot`] feeds the `/metrics` gauges, so the command and the
//! dashboards never disagree on what "due" or "oldest" means.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::{EXIT_ATTENTION, EXIT_HEALTHY, EXIT_UNREACHABLE};

/// The job table and the resync history, read in one statement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueSnapshot {
    /// Jobs by state; every state is present (0 when none).
    pub jobs: BTreeMap<String, i64>,
    /// `available` jobs whose `run_at` has passed: work the workers should be doing now.
    pub due: i64,
    /// `available` jobs waiting for a later retry.
    pub scheduled: i64,
    /// `available` membership jobs waiting for their hotel to arrive.
    pub waiting_for_hotel: i64,
    /// How long the oldest due job has been due (0 jobs due: None).
    pub oldest_due_age_seconds: Option<f64>,
    /// When the newest delivery still in the table was received.
    pub last_webhook_received_at: Option<DateTime<Utc>>,
    /// Finished resync runs (dry runs excluded) by outcome: succeeded, failed, refused.
    pub resync_runs: BTreeMap<String, i64>,
    /// When the last applied (not dry-run) resync succeeded.
    pub last_resync_success_at: Option<DateTime<Utc>>,
    /// The change feed's lag: committed changes no sequencer tick has made readable yet.
    pub changes_pending: i64,
    /// How long ago the oldest of them was written (None when none waits). It counts from the
    /// writing statement, so a long transaction's changes look older than their commit.
    pub oldest_pending_change_age_seconds: Option<f64>,
    /// The feed's last id.
    pub changes_last_id: i64,
}

impl QueueSnapshot {
    pub fn dead(&self) -> i64 {
        self.jobs.get("dead").copied().unwrap_or(0)
    }
}

/// Reads the snapshot. Err when the database cannot be read.
pub async fn snapshot(pool: &PgPool) -> Result<QueueSnapshot, sqlx::Error> {
    // One scan of `jobs` for every count, plus small lookups in `resync_runs` and in the feed's
    // pending changes (those above the sequencer's floor: below it, all are gone).
    let row = sqlx::query!(
        r#"
        select
            count(*) filter (where state = 'available') as "available!",
            count(*) filter (where state = 'done') as "done!",
            count(*) filter (where state = 'dead') as "dead!",
            count(*) filter (where state = 'skipped') as "skipped!",
            count(*) filter (where state = 'available' and run_at <= now()) as "due!",
            count(*) filter (where state = 'available' and waiting_for is not null) as "waiting!",
            extract(epoch from now() - min(run_at) filter (where state = 'available' and run_at <= now()))::float8
                as oldest_due_age,
            max(received_at) as last_received,
            (select max(finished_at) from resync_runs where outcome = 'succeeded' and not dry_run)
                as last_resync_success,
            (select coalesce(jsonb_object_agg(outcome, n), '{}'::jsonb)
             from (select outcome, count(*) as n from resync_runs
                   where not dry_run and outcome <> 'running' group by outcome) r) as "resync_runs!",
            (select count(*) from pending_changes
             where seq > (select floor_seq from changes_sequencer)) as "changes_pending!",
            extract(epoch from now() - (select min(at) from pending_changes
                                        where seq > (select floor_seq from changes_sequencer)))::float8
                as oldest_pending_change_age,
            (select last_id from changes_sequencer) as "changes_last_id!"
        from jobs
        "#
    )
    .fetch_one(pool)
    .await?;
    let jobs = [
        ("available", row.available),
        ("done", row.done),
        ("dead", row.dead),
        ("skipped", row.skipped),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_owned(), n))
    .collect();
    let mut resync_runs: BTreeMap<String, i64> = ["succeeded", "failed", "refused"]
        .into_iter()
        .map(|o| (o.to_owned(), 0))
        .collect();
    if let Some(map) = row.resync_runs.as_object() {
        for (outcome, n) in map {
            resync_runs.insert(outcome.clone(), n.as_i64().unwrap_or(0));
        }
    }
    Ok(QueueSnapshot {
        jobs,
        due: row.due,
        scheduled: row.available - row.due,
        waiting_for_hotel: row.waiting,
        oldest_due_age_seconds: row.oldest_due_age.map(|s| s.max(0.0)),
        last_webhook_received_at: row.last_received,
        resync_runs,
        last_resync_success_at: row.last_resync_success,
        changes_pending: row.changes_pending,
        oldest_pending_change_age_seconds: row.oldest_pending_change_age.map(|s| s.max(0.0)),
        changes_last_id: row.changes_last_id,
    })
}

/// One row of `resync_runs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResyncRun {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// running, succeeded, failed or refused (too many deletes without --allow-mass-delete).
    pub outcome: String,
    pub counts: serde_json::Value,
    pub error: Option<String>,
}

/// What `orgsync status` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// No problem found.
    pub healthy: bool,
    /// Why a person is needed, one sentence each, with the command that helps.
    pub problems: Vec<String>,
    #[serde(flatten)]
    pub queue: QueueSnapshot,
    /// The most recent resync that was not a dry run (it may still be running).
    pub last_resync: Option<ResyncRun>,
    /// The threshold the oldest due job was compared with.
    pub max_pending_age_seconds: f64,
}

impl Status {
    /// [`EXIT_HEALTHY`] or [`EXIT_ATTENTION`].
    pub fn exit_code(&self) -> i32 {
        if self.healthy {
            EXIT_HEALTHY
        } else {
            EXIT_ATTENTION
        }
    }
}

/// Reads the queue and the resync history and decides whether a person is needed (see
/// [`assess`]). Err when the database cannot be read.
pub async fn gather_status(pool: &PgPool, max_pending_age: Duration) -> Result<Status, sqlx::Error> {
    let queue = snapshot(pool).await?;
    let runs = recent_resync_runs(pool).await?;
    Ok(assess(queue, runs, max_pending_age))
}

/// The most recent resync run that was not a dry run (it may still be running), then the most
/// recent finished one: what [`assess`] needs. Both lookups are small (`resync_runs` holds a
/// row per run).
pub async fn recent_resync_runs(pool: &PgPool) -> Result<Vec<ResyncRun>, sqlx::Error> {
    sqlx::query_as!(
        ResyncRun,
        r#"
        (select id as "id!", started_at as "started_at!", finished_at, outcome as "outcome!",
                counts as "counts!", error
         from resync_runs where not dry_run order by started_at desc, id desc limit 1)
        union all
        (select id, started_at, finished_at, outcome, counts, error from resync_runs
         where not dry_run and outcome <> 'running' order by started_at desc, id desc limit 1)
        "#
    )
    .fetch_all(pool)
    .await
}

/// The verdict of `orgsync status` (and of the console's overview, which reads `queue` more
/// cheaply): a person is needed when dead jobs exist, the oldest due job has waited longer than
/// `max_pending_age` (workers down or far behind), a committed change has waited that long for
/// the feed's sequencer (no `orgsync serve` running), or the last finished resync failed or was
/// refused. `runs` is what [`recent_resync_runs`] returns.
pub fn assess(queue: QueueSnapshot, runs: Vec<ResyncRun>, max_pending_age: Duration) -> Status {
    let last_resync = runs.first().cloned();
    // Health goes by the last *finished* run: one in progress says nothing yet, and must not
    // hide that the one before it failed.
    let last_finished = runs.into_iter().find(|r| r.outcome != "running");

    let mut problems = Vec::new();
    let dead = queue.dead();
    if dead > 0 {
        problems.push(format!(
            "{dead} dead job{s}: see `orgsync jobs list --state dead`, then `orgsync replay --state dead`",
            s = if dead == 1 { "" } else { "s" }
        ));
    }
    if let Some(age) = queue
        .oldest_due_age_seconds
        .filter(|&a| a > max_pending_age.as_secs_f64())
    {
        problems.push(format!(
            "the oldest due job has waited {} (threshold {}): are the workers running?",
            human_secs(age),
            humantime::format_duration(max_pending_age)
        ));
    }
    if let Some(age) = queue
        .oldest_pending_change_age_seconds
        .filter(|&a| a > max_pending_age.as_secs_f64())
    {
        problems.push(format!(
            "{} committed change{s} not yet in the change feed, the oldest written {} ago (threshold {}): \
             is an `orgsync serve` running? (it sequences the feed)",
            queue.changes_pending,
            human_secs(age),
            humantime::format_duration(max_pending_age),
            s = if queue.changes_pending == 1 { "" } else { "s" }
        ));
    }
    if let Some(run) = last_finished
        .as_ref()
        .filter(|r| r.outcome == "failed" || r.outcome == "refused")
    {
        let why = match (&run.outcome[..], &run.error) {
            ("refused", _) => "it would have deleted more than the mass-delete threshold; \
                               check Clerk, then run `orgsync resync --allow-mass-delete` if intended"
                .to_owned(),
            (_, Some(e)) => e.clone(),
            _ => "no error recorded".to_owned(),
        };
        problems.push(format!("the last resync (#{}) {}: {why}", run.id, run.outcome));
    }
    Status {
        healthy: problems.is_empty(),
        problems,
        queue,
        last_resync,
        max_pending_age_seconds: max_pending_age.as_secs_f64(),
    }
}

/// Renders the status for a person.
pub fn write_status(out: &mut impl Write, status: &Status) -> io::Result<()> {
    let q = &status.queue;
    let n = |s: &str| q.jobs.get(s).copied().unwrap_or(0);
    writeln!(
        out,
        "jobs:          {} available ({} due, {} scheduled for retry, {} waiting for a hotel), \
         {} done, {} dead, {} skipped",
        n("available"),
        q.due,
        q.scheduled,
        q.waiting_for_hotel,
        n("done"),
        n("dead"),
        n("skipped")
    )?;
    match q.oldest_due_age_seconds {
        Some(age) => writeln!(out, "oldest due job: due for {}", human_secs(age))?,
        None => writeln!(out, "oldest due job: none due")?,
    }
    match q.last_webhook_received_at {
        Some(t) => writeln!(out, "last webhook:  {} ({} ago)", time(t), ago(t))?,
        None => writeln!(out, "last webhook:  none in the job table")?,
    }
    match q.oldest_pending_change_age_seconds {
        Some(age) => writeln!(
            out,
            "change feed:   last id {}; {} committed change{} waiting for the sequencer, the oldest written {} ago",
            q.changes_last_id,
            q.changes_pending,
            if q.changes_pending == 1 { "" } else { "s" },
            human_secs(age)
        )?,
        None => writeln!(out, "change feed:   last id {}; nothing waiting", q.changes_last_id)?,
    }
    match &status.last_resync {
        None => writeln!(out, "last resync:   never")?,
        Some(run) => {
            let when = run.finished_at.unwrap_or(run.started_at);
            let took = run
                .finished_at
                .map(|f| {
                    format!(
                        ", took {}",
                        human_secs((f - run.started_at).num_milliseconds() as f64 / 1000.0)
                    )
                })
                .unwrap_or_default();
            writeln!(
                out,
                "last resync:   #{} {} at {} ({} ago{took})",
                run.id,
                run.outcome,
                time(when),
                ago(when)
            )?;
            if run.counts.as_object().is_some_and(|o| !o.is_empty()) {
                // The resync's report can be long; the whole of it is in `--json`.
                const MAX: usize = 160;
                let counts = run.counts.to_string();
                if counts.chars().count() <= MAX {
                    writeln!(out, "               counts {counts}")?;
                } else {
                    let head: String = counts.chars().take(MAX).collect();
                    writeln!(out, "               counts {head}… (all of it with --json)")?;
                }
            }
            if let Some(e) = &run.error {
                writeln!(out, "               error: {e}")?;
            }
        }
    }
    if status.healthy {
        writeln!(out, "status:        healthy")
    } else {
        writeln!(out, "status:        needs attention")?;
        for p in &status.problems {
            writeln!(out, "  - {p}")?;
        }
        Ok(())
    }
}

/// Prints why the database could not be read and returns [`EXIT_UNREACHABLE`].
pub fn report_unreachable(out: &mut impl Write, error: &anyhow::Error, json: bool) -> i32 {
    // The error text of sqlx names host and database, never the password.
    let message = format!("{error:#}");
    if json {
        let body = serde_json::json!({ "healthy": false, "unreachable": true, "error": message });
        let _ = writeln!(out, "{body}");
    } else {
        let _ = writeln!(out, "status:        cannot read the database: {message}");
        let _ = writeln!(
            out,
            "               (is Postgres reachable at DATABASE_URL, and has `orgsync migrate` run?)"
        );
    }
    EXIT_UNREACHABLE
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn ago(t: DateTime<Utc>) -> String {
    human_secs((Utc::now() - t).num_milliseconds() as f64 / 1000.0)
}

/// Whole seconds as `1h 2m 3s` (sub-second amounts as `0s`).
pub fn human_secs(secs: f64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0.0) as u64)).to_string()
}
