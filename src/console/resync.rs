//! The resync page: the last runs and their reports (`resync_runs`), a dry run started from
//! here with its difference (what would be created, changed and tombstoned, by id), and a real
//! run. Both go through [`crate::resync`] exactly as `orgsync resync [--dry-run]` does, under
//! the same fleet-wide lock and mass-delete threshold: a run that would delete more hotels than
//! the threshold writes nothing and is recorded as refused, and the console offers no override
//! (that stays a deliberate `orgsync resync --allow-mass-delete` at a terminal).
//!
//! Starting either needs a read-write token: a dry run writes no row, but it holds the resync
//! lock (the scheduled run waits) and spends the Clerk API's rate budget. A run started here
//! runs in the background; the page follows it. Its report, ids included, is kept in memory
//! until the next run started here (the table keeps every run's counts).

use std::sync::Mutex;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::Operator;
use super::layout::{self, Section};
use super::overview::counts_line;
use super::{ConsoleError, ConsoleResult, ConsoleState};
use crate::resync::{ResyncError, ResyncOptions, ResyncReport};

/// Ids listed per kind of change on the page (the report keeps up to 1,000; the counts are exact).
const IDS_SHOWN: usize = 200;

/// The run started from this console, if any.
#[derive(Default)]
pub struct Slot {
    current: Mutex<Option<ConsoleRun>>,
}

/// A run started from the console.
#[derive(Debug, Clone)]
pub struct ConsoleRun {
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    /// The name of the token that started it.
    pub by: String,
    /// None while it runs.
    pub outcome: Option<RunOutcome>,
}

#[derive(Debug, Clone)]
pub enum RunOutcome {
    Succeeded(Box<ResyncReport>),
    /// Refused (mass delete), incomplete, busy, cancelled or failed: the message is the CLI's.
    NotDone {
        message: String,
        report: Option<Box<ResyncReport>>,
    },
}

impl Slot {
    /// The run started here, as it is now.
    pub fn current(&self) -> Option<ConsoleRun> {
        self.current.lock().expect("not poisoned").clone()
    }

    /// Records a new run unless one started here still runs; Err(()) when one does.
    fn begin(&self, run: ConsoleRun) -> Result<(), ()> {
        let mut current = self.current.lock().expect("not poisoned");
        if current.as_ref().is_some_and(|r| r.outcome.is_none()) {
            return Err(());
        }
        *current = Some(run);
        Ok(())
    }

    fn finish(&self, outcome: RunOutcome) {
        if let Some(run) = self.current.lock().expect("not poisoned").as_mut() {
            run.outcome = Some(outcome);
        }
    }
}

/// One row of `resync_runs`.
struct RunRow {
    id: i64,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: String,
    dry_run: bool,
    counts: serde_json::Value,
    error: Option<String>,
}

/// `GET /console/resync`.
pub async fn page(State(state): State<ConsoleState>, operator: Operator) -> ConsoleResult<Markup> {
    let runs = sqlx::query_as!(
        RunRow,
        r#"
        select id, started_at, finished_at, outcome, dry_run, counts, error
        from resync_runs order by started_at desc, id desc limit 20
        "#
    )
    .fetch_all(&state.pool)
    .await?;
    let configured = state.clerk.is_some();
    Ok(layout::page(
        "Resync",
        Section::Resync,
        &operator,
        html! {
            h1 { "Resync" }
            p.note { "A resync lists every organization, user, membership, role, permission and invitation from the "
                "Clerk Backend API and converges the rows to it (as " code { "orgsync resync" } "). "
                "A run that would delete more than " (format!("{:.0}%", state.mass_delete_threshold * 100.0))
                " of the live hotels is refused and writes nothing." }
            div.actions {
                @for (mode, label, class) in [("dry", "Dry run now", "secondary"), ("real", "Run for real", "danger")] {
                    form.inline method="post" action="/console/resync/start" {
                        input type="hidden" name="csrf" value=(operator.csrf());
                        input type="hidden" name="mode" value=(mode);
                        button id=(format!("resync-{mode}")) class=(class) type="submit"
                            disabled[!configured || !operator.can_write] { (label) }
                    }
                }
                @if !configured { span.note { "Resync is off: CLERK_SECRET_KEY is not set." } }
                @else if !operator.can_write { span.note { "Your token is read-only: it cannot start a resync." } }
            }
            div #console-run data-refresh-url="/console/resync/live" data-refresh-ms="1000" {
                (console_run(state.resync.current().as_ref()))
            }
            h2 { "Last runs" }
            @if runs.is_empty() {
                p.note { "No resync has run yet." }
            } @else {
                table #runs {
                    thead { tr { th { "run" } th { "started" } th { "took" } th { "kind" } th { "outcome" } th { "changes" } th { "error" } } }
                    tbody {
                        @for r in &runs {
                            tr {
                                td { a href=(format!("/console/resync/runs/{}", r.id)) { "#" (r.id) } }
                                td { (layout::when(r.started_at)) }
                                td { @if let Some(f) = r.finished_at { (took(r.started_at, f)) } @else { "running" } }
                                td { @if r.dry_run { "dry run" } @else { "applied" } }
                                td class=(format!("outcome-{}", r.outcome)) { (r.outcome) }
                                td { (counts_line(&r.counts)) }
                                td { (r.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// `GET /console/resync/live`: the run started here, for the page's refresh.
pub async fn live(State(state): State<ConsoleState>, _operator: Operator) -> Markup {
    console_run(state.resync.current().as_ref())
}

fn took(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    format!("{:.1} s", (to - from).num_milliseconds() as f64 / 1000.0)
}

fn console_run(run: Option<&ConsoleRun>) -> Markup {
    let Some(run) = run else {
        return html! {};
    };
    let kind = if run.dry_run { "Dry run" } else { "Resync" };
    html! {
        h2 { (kind) " started here by " (run.by) " at " (layout::when(run.started_at)) }
        @match &run.outcome {
            None => p #run-state { "Running… (this part of the page follows it)" },
            Some(RunOutcome::Succeeded(report)) => {
                p #run-state.ok {
                    @if report.dry_run { "Dry run finished: nothing was written. A real run would make these changes." }
                    @else { "Resync succeeded." }
                }
                (diff(report))
            }
            Some(RunOutcome::NotDone { message, report }) => {
                p #run-state.problem role="alert" { (message) }
                @if let Some(report) = report { (diff(report)) }
            }
        }
    }
}

/// A report's difference: counts per table and the ids of what changes.
fn diff(report: &ResyncReport) -> Markup {
    let l = &report.listed;
    html! {
        p.note { "Run #" (report.run_id) ": listed " (l.organizations) " organizations, " (l.memberships) " memberships, "
            (l.users) " users, " (l.roles) " roles, " (l.permissions) " permissions, " (l.invitations) " invitations."
            @if !report.complete { " A listing did not complete, so deletes were not considered." } }
        @if let Some(m) = report.mass_delete {
            p.problem #mass-delete { "Mass delete: " (m.hotels_to_delete) " of " (m.live_hotels) " live hotels (threshold "
                (format!("{:.0}%", m.threshold * 100.0)) ")." }
        }
        table #diff {
            thead { tr { th { "table" } th.num { "created" } th.num { "changed" } th.num { "tombstoned" } } }
            tbody {
                @for (name, c) in report.tables() {
                    tr { td { (name) } td.num { (c.created.len()) } td.num { (c.updated.len()) } td.num { (c.deleted.len()) } }
                }
            }
        }
        @if report.memberships_ended_by_deletes > 0 {
            p.note { (report.memberships_ended_by_deletes) " more memberships end with their deleted hotel or user." }
        }
        @for (name, c) in report.tables() {
            @for (what, ids) in [("created", &c.created), ("changed", &c.updated), ("tombstoned", &c.deleted)] {
                @if !ids.is_empty() {
                    details open[ids.len() <= 20] {
                        summary { (name) " " (what) ": " (ids.len()) }
                        ul.mono data-diff=(format!("{name}-{what}")) {
                            @for id in sorted(ids.ids()).iter().take(IDS_SHOWN) { li { (id_link(name, id)) } }
                        }
                        @if ids.len() > IDS_SHOWN.min(ids.ids().len()) {
                            p.note { "… and " (ids.len() - IDS_SHOWN.min(ids.ids().len())) " more (" code { "orgsync resync --dry-run --verbose" } " lists up to 1,000)." }
                        }
                    }
                }
            }
        }
    }
}

fn sorted(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids
}

fn id_link(table: &str, id: &str) -> Markup {
    let href = match table {
        "hotels" => Some(format!("/console/access?hotel={}", layout::query_value(id))),
        "users" => Some(format!("/console/access?user={}", layout::query_value(id))),
        _ => None,
    };
    html! { @match href { Some(h) => a href=(h) { (id) }, None => (id) } }
}

#[derive(Deserialize)]
pub struct StartForm {
    csrf: String,
    mode: String,
}

/// `POST /console/resync/start`: starts a dry run (`mode=dry`) or a real run (`mode=real`) in the
/// background and returns to the page, which follows it.
pub async fn start(
    State(state): State<ConsoleState>,
    operator: Operator,
    Form(form): Form<StartForm>,
) -> ConsoleResult<Response> {
    operator.verify_csrf(&form.csrf)?;
    operator.require_write()?;
    let dry_run = match form.mode.as_str() {
        "dry" => true,
        "real" => false,
        other => return Err(ConsoleError::BadRequest(format!("unknown mode {other:?}"))),
    };
    let Some(client) = state.clerk.clone() else {
        return Err(ConsoleError::BadRequest(
            "resync is off: CLERK_SECRET_KEY is not set for this process".into(),
        ));
    };
    let run = ConsoleRun {
        dry_run,
        started_at: Utc::now(),
        by: operator.token_name.clone(),
        outcome: None,
    };
    if state.resync.begin(run).is_err() {
        return Err(ConsoleError::BadRequest(
            "a resync started from this console is still running; wait for it to finish".into(),
        ));
    }
    tracing::info!(token = %operator.token_name, dry_run, "console resync started");
    let options = ResyncOptions {
        dry_run,
        allow_mass_delete: false,
        mass_delete_threshold: state.mass_delete_threshold,
        ..ResyncOptions::default()
    };
    let slot = state.resync.clone();
    tokio::spawn(async move {
        let result = crate::resync::resync_until(&state.pool, &client, &options, &state.cancel).await;
        slot.finish(match result {
            Ok(report) => RunOutcome::Succeeded(Box::new(report)),
            Err(e) => {
                let report = e.report().cloned().map(Box::new);
                let message = match &e {
                    ResyncError::MassDelete { .. } => {
                        format!("Refused: {e}")
                    }
                    _ => e.to_string(),
                };
                RunOutcome::NotDone { message, report }
            }
        });
    });
    Ok(Redirect::to("/console/resync").into_response())
}

/// `GET /console/resync/runs/{id}`: one recorded run and its report's counts.
pub async fn run_page(
    State(state): State<ConsoleState>,
    operator: Operator,
    Path(id): Path<i64>,
) -> ConsoleResult<Markup> {
    let r = sqlx::query_as!(
        RunRow,
        "select id, started_at, finished_at, outcome, dry_run, counts, error from resync_runs where id = $1",
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ConsoleError::NotFound)?;
    let c = &r.counts;
    let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let tables = ["hotels", "users", "memberships", "roles", "permissions", "invitations"];
    Ok(layout::page(
        &format!("Resync run {id}"),
        Section::Resync,
        &operator,
        html! {
            h1 { "Resync run #" (r.id) " " span.badge { @if r.dry_run { "dry run" } @else { "applied" } } }
            dl.facts {
                dt { "outcome" } dd #outcome { (r.outcome) }
                dt { "started" } dd { (layout::when(r.started_at)) }
                dt { "finished" } dd { @match r.finished_at { Some(f) => { (layout::when(f)) " (" (took(r.started_at, f)) ")" }, None => "still running" } }
                @if let Some(e) = &r.error { dt { "error" } dd.problem { (e) } }
                @if let Some(listed) = c.get("listed") {
                    dt { "listed" } dd { @for (k, v) in listed.as_object().into_iter().flatten() { (k) " " (v) " · " } }
                }
            }
            @if c.get("hotels").is_some() {
                h2 { "Changes" }
                table #run-counts {
                    thead { tr { th { "table" } th.num { "created" } th.num { "changed" } th.num { "tombstoned" } } }
                    tbody {
                        @for t in tables {
                            @let v = c.get(t).cloned().unwrap_or_default();
                            tr { td { (t) } td.num { (num(&v, "created")) } td.num { (num(&v, "updated")) } td.num { (num(&v, "deleted")) } }
                        }
                    }
                }
                @if let Some(skipped) = c.get("skipped").and_then(|s| s.as_object()) {
                    h2 { "Left alone" }
                    dl.facts { @for (k, v) in skipped { dt { (k.replace('_', " ")) } dd { (v) } } }
                }
                p.note { "The table keeps each run's counts; the ids of a dry run started here are on the "
                    a href="/console/resync" { "resync page" } " until the next run." }
            }
        },
    ))
}
