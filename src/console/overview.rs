//! The overview (`/console/`): jobs by state and type, the oldest due job, dead jobs, the last
//! webhook, the last resync with its counts, and the verdict of `orgsync status` (the same
//! [`crate::ops::status::assess`]). The page re-renders itself every few seconds.
//!
//! **No count over the whole job table.** `orgsync status` counts every job in one scan, which
//! with millions of done jobs takes longer than a page should. Here the states a person acts on
//! are counted exactly through their indexes, up to [`EXACT_UP_TO`] (beyond, the page says "at
//! least"): `available` (with `due` and `waiting for a hotel`) and `dead`. `done` and `skipped`,
//! and the totals by type, are Postgres's planner estimates (the table's row count and the most
//! common values of `state` and `event_type` from its last `ANALYZE`, scaled to the table's
//! current size), and the page marks them "≈". The verdict needs only the exact ones.

use std::collections::BTreeMap;

use axum::extract::State;
use maud::{html, Markup};
use sqlx::PgPool;

use super::auth::Operator;
use super::layout::{self, count, Section};
use super::{ConsoleResult, ConsoleState};
use crate::ops::status::{self, QueueSnapshot, Status};

/// States and types are counted exactly up to this many jobs.
pub const EXACT_UP_TO: i64 = 10_000;

/// What the overview shows.
#[derive(Debug, Clone)]
pub struct Overview {
    /// The verdict, computed by `orgsync status`'s own rules from the counts below.
    pub status: Status,
    /// Which states' counts are estimates.
    pub estimated: Vec<&'static str>,
    /// Estimated jobs by type over all states (None: the table has no statistics yet).
    pub types_estimated: Option<BTreeMap<String, f64>>,
    /// Exact (up to [`EXACT_UP_TO`]) available and dead jobs by type: type -> (available, dead).
    pub types_exact: BTreeMap<String, (i64, i64)>,
}

/// Reads everything the overview shows, every lookup through an index. Err when the database
/// cannot be read.
pub async fn gather(pool: &PgPool, max_pending_age: std::time::Duration) -> Result<Overview, sqlx::Error> {
    let exact = sqlx::query!(
        r#"
        select
            (select count(*) from (select 1 from jobs where state = 'available' limit $1) j) as "available!",
            (select count(*) from (select 1 from jobs where state = 'dead' limit $1) j) as "dead!",
            (select count(*) from (select 1 from jobs where state = 'available' and run_at <= now() limit $1) j)
                as "due!",
            (select count(*) from (select 1 from jobs
                                   where state = 'available' and waiting_for is not null limit $1) j) as "waiting!",
            extract(epoch from now() - (select min(run_at) from jobs where state = 'available'))::float8
                as oldest_due_age,
            greatest((select max(received_at) from jobs where state = 'available'),
                     (select max(received_at) from jobs where state = 'done'),
                     (select max(received_at) from jobs where state = 'dead'),
                     (select max(received_at) from jobs where state = 'skipped')) as last_received,
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
        "#,
        EXACT_UP_TO
    )
    .fetch_one(pool)
    .await?;
    let (total, mcv) = statistics(pool).await?;
    let estimate = |column: &str, value: &str| -> Option<f64> {
        let total = total?;
        let freq = mcv
            .get(column)
            .and_then(|m| m.iter().find(|(v, _)| v == value))
            .map_or(0.0, |(_, f)| *f);
        Some(total * freq)
    };
    let mut jobs = BTreeMap::new();
    jobs.insert("available".to_owned(), exact.available);
    jobs.insert("dead".to_owned(), exact.dead);
    for state in ["done", "skipped"] {
        jobs.insert(
            state.to_owned(),
            estimate("state", state).map_or(0, |n| n.round() as i64),
        );
    }
    let mut resync_runs: BTreeMap<String, i64> = ["succeeded", "failed", "refused"]
        .into_iter()
        .map(|o| (o.to_owned(), 0))
        .collect();
    if let Some(map) = exact.resync_runs.as_object() {
        for (outcome, n) in map {
            resync_runs.insert(outcome.clone(), n.as_i64().unwrap_or(0));
        }
    }
    let queue = QueueSnapshot {
        jobs,
        due: exact.due,
        scheduled: (exact.available - exact.due).max(0),
        waiting_for_hotel: exact.waiting,
        // The oldest available job's due time is in the past only when a job is due.
        oldest_due_age_seconds: exact.oldest_due_age.filter(|&a| a >= 0.0),
        last_webhook_received_at: exact.last_received,
        resync_runs,
        last_resync_success_at: exact.last_resync_success,
        changes_pending: exact.changes_pending,
        oldest_pending_change_age_seconds: exact.oldest_pending_change_age.map(|s| s.max(0.0)),
        changes_last_id: exact.changes_last_id,
    };
    let runs = status::recent_resync_runs(pool).await?;
    let status = status::assess(queue, runs, max_pending_age);

    let types_estimated = total.map(|total| {
        mcv.get("event_type")
            .map(|m| m.iter().map(|(v, f)| (v.clone(), total * f)).collect())
            .unwrap_or_default()
    });
    let rows = sqlx::query!(
        r#"
        select state as "state!", event_type as "event_type!", count(*) as "n!" from (
            (select state, event_type from jobs where state = 'available' limit $1)
            union all
            (select state, event_type from jobs where state = 'dead' limit $1)) j
        group by 1, 2
        "#,
        EXACT_UP_TO
    )
    .fetch_all(pool)
    .await?;
    let mut types_exact: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in rows {
        let entry = types_exact.entry(r.event_type).or_default();
        if r.state == "dead" {
            entry.1 = r.n;
        } else {
            entry.0 = r.n;
        }
    }
    Ok(Overview {
        status,
        estimated: vec!["done", "skipped"],
        types_estimated,
        types_exact,
    })
}

/// Most common values of a column: (value, share of rows).
type Mcv = BTreeMap<String, Vec<(String, f64)>>;

/// The job table's estimated row count (None before its first `ANALYZE`) and the most common
/// values of `state` and `event_type`, from the planner's statistics: no row is read.
async fn statistics(pool: &PgPool) -> Result<(Option<f64>, Mcv), sqlx::Error> {
    let total = sqlx::query_scalar!(
        r#"
        select case when c.reltuples < 0 then null
                    when c.relpages = 0 then c.reltuples::float8
                    else c.reltuples::float8 / c.relpages
                         * (pg_relation_size(c.oid) / current_setting('block_size')::float8)
               end as total
        from pg_class c where c.oid = 'jobs'::regclass
        "#
    )
    .fetch_one(pool)
    .await?;
    let stats = sqlx::query!(
        r#"
        select attname::text as "column!", most_common_vals::text::text[] as vals,
               most_common_freqs::float8[] as freqs
        from pg_stats
        where schemaname = current_schema() and tablename = 'jobs' and attname in ('state', 'event_type')
        "#
    )
    .fetch_all(pool)
    .await?;
    let mcv = stats
        .into_iter()
        .map(|s| {
            let values = s.vals.unwrap_or_default();
            let freqs = s.freqs.unwrap_or_default();
            (s.column, values.into_iter().zip(freqs).collect())
        })
        .collect();
    Ok((total, mcv))
}

/// `GET /console/`: the overview page.
pub async fn page(State(state): State<ConsoleState>, operator: Operator) -> ConsoleResult<Markup> {
    let overview = gather(&state.pool, state.config.max_pending_age).await?;
    Ok(layout::page(
        "Overview",
        Section::Overview,
        &operator,
        html! {
            h1 { "Overview" }
            div #overview data-refresh-url="/console/overview/live" data-refresh-ms="5000" {
                (render(&overview))
            }
        },
    ))
}

/// `GET /console/overview/live`: the overview's body alone, for its periodic refresh.
pub async fn live(State(state): State<ConsoleState>, _operator: Operator) -> ConsoleResult<Markup> {
    let overview = gather(&state.pool, state.config.max_pending_age).await?;
    Ok(render(&overview))
}

fn at_least(n: i64) -> String {
    if n >= EXACT_UP_TO {
        format!("≥ {}", count(EXACT_UP_TO))
    } else {
        count(n)
    }
}

fn render(o: &Overview) -> Markup {
    let s = &o.status;
    let q = &s.queue;
    let n = |state: &str| q.jobs.get(state).copied().unwrap_or(0);
    let capped = n("available") >= EXACT_UP_TO;
    html! {
        @if s.healthy {
            div.verdict.healthy #verdict { strong { "Healthy" } " — nothing needs a person." }
        } @else {
            div.verdict.attention #verdict {
                strong { "Needs attention" }
                ul { @for p in &s.problems { li { (p) } } }
            }
        }
        div.cards {
            div.card #card-dead {
                div.label { "Dead jobs" }
                div.big { a href="/console/jobs?state=dead" { (at_least(n("dead"))) } }
                @if n("dead") > 0 { a href="/console/replay?state=dead" { "Replay…" } }
            }
            div.card #card-due {
                div.label { "Due now" }
                div.big { (at_least(q.due)) }
                div.note {
                    @match q.oldest_due_age_seconds {
                        Some(age) => { "oldest due for " (status::human_secs(age)) }
                        None => { "none due" }
                    }
                }
            }
            div.card {
                div.label { "Available" }
                div.big { a href="/console/jobs?state=available" { (at_least(n("available"))) } }
                div.note {
                    @if capped { "retries and waits not split (too many to count)" }
                    @else { (count(q.scheduled)) " scheduled for retry, " (at_least(q.waiting_for_hotel)) " waiting for a hotel" }
                }
            }
            div.card {
                div.label { "Done / skipped" }
                div.big { "≈ " (count(n("done"))) }
                div.note { "≈ " (count(n("skipped"))) " skipped (estimates)" }
            }
            div.card #card-webhook {
                div.label { "Last webhook" }
                @match q.last_webhook_received_at {
                    Some(t) => { div.big { (layout::ago(t)) " ago" } div.note { (layout::when(t)) } }
                    None => { div.big { "—" } div.note { "none in the job table" } }
                }
            }
            div.card #card-resync {
                div.label { "Last resync" }
                @match &s.last_resync {
                    None => { div.big { "never" } }
                    Some(run) => {
                        div.big { a href=(format!("/console/resync/runs/{}", run.id)) { "#" (run.id) " " (run.outcome) } }
                        div.note { (layout::when(run.finished_at.unwrap_or(run.started_at))) }
                        (counts_line(&run.counts))
                    }
                }
            }
        }
        h2 { "Jobs by type" }
        table #types {
            thead { tr { th { "type" } th.num { "≈ all states" } th.num { "available" } th.num { "dead" } } }
            tbody {
                @for t in type_names(o) {
                    @let (available, dead) = o.types_exact.get(&t).copied().unwrap_or((0, 0));
                    tr {
                        td { a href=(format!("/console/jobs?type={}", layout::query_value(&t))) { (t) } }
                        td.num {
                            @match o.types_estimated.as_ref().and_then(|m| m.get(&t)) {
                                Some(e) => { "≈ " (count(e.round() as i64)) }
                                None => { "—" }
                            }
                        }
                        td.num { (at_least(available)) }
                        td.num {
                            @if dead > 0 {
                                a.state-dead href=(format!("/console/jobs?state=dead&type={}", layout::query_value(&t))) { (at_least(dead)) }
                            } @else { "0" }
                        }
                    }
                }
            }
        }
        p.note #estimate-note {
            "Available and dead jobs are counted exactly (up to " (count(EXACT_UP_TO)) "). "
            "Counts marked ≈ are Postgres's planner estimates from the job table's statistics "
            "(its last ANALYZE, scaled to its current size), not a count of every row: "
            "the table holds millions of done jobs. "
            @if o.types_estimated.is_none() { "The table has no statistics yet, so there are no estimates. " }
            code { "orgsync status" } " counts them all."
        }
    }
}

/// Every type either estimated or counted, sorted.
fn type_names(o: &Overview) -> Vec<String> {
    let mut names: Vec<String> = o.types_exact.keys().cloned().collect();
    if let Some(est) = &o.types_estimated {
        names.extend(est.keys().cloned());
    }
    names.sort();
    names.dedup();
    names
}

/// A resync report's counts in one line: created/updated/deleted per table.
pub fn counts_line(counts: &serde_json::Value) -> Markup {
    let tables = ["hotels", "users", "memberships", "roles", "permissions", "invitations"];
    let parts: Vec<String> = tables
        .iter()
        .filter_map(|t| {
            let c = counts.get(*t)?;
            let n = |k: &str| c.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            Some(format!("{t} +{} ~{} −{}", n("created"), n("updated"), n("deleted")))
        })
        .collect();
    html! {
        @if !parts.is_empty() { div.note.mono { (parts.join(" · ")) } }
    }
}
