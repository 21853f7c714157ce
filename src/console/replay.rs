//! Replaying from the console, through the function behind `orgsync replay`
//! ([`crate::ops::run_replay`]): one job from its page, or every dead job matching the jobs
//! page's selectors, after a page that shows how many match (a dry run of the same selection).
//! Needs a read-write token and the session's CSRF token.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::Operator;
use super::jobs::{self, FilterParams};
use super::layout::{self, Section};
use super::{ConsoleError, ConsoleResult, ConsoleState};
use crate::ops::jobs::Selection;
use crate::ops::replay::{ReplayOptions, ReplayReport, DEFAULT_CHUNK_SIZE};
use crate::ops::{run_replay, Progress};

/// Rows of the matching jobs shown before replaying them.
const SHOWN: usize = 50;

async fn replay(state: &ConsoleState, selection: &Selection, dry_run: bool) -> Result<ReplayReport, sqlx::Error> {
    let options = ReplayOptions {
        dry_run,
        chunk_size: DEFAULT_CHUNK_SIZE,
    };
    run_replay(&state.pool, selection, &options, |_| Progress::hidden()).await
}

#[derive(Deserialize)]
pub struct ReplayOneForm {
    csrf: String,
}

/// `POST /console/jobs/{id}/replay`: replays that job (as `orgsync replay --job ID`), then shows
/// its page, which follows it until it is done.
pub async fn replay_one(
    State(state): State<ConsoleState>,
    operator: Operator,
    Path(id): Path<i64>,
    Form(form): Form<ReplayOneForm>,
) -> ConsoleResult<Response> {
    operator.verify_csrf(&form.csrf)?;
    operator.require_write()?;
    let selection = Selection {
        ids: vec![id],
        ..Selection::default()
    };
    let report = replay(&state, &selection, false).await?;
    if report.matched == 0 {
        return Err(ConsoleError::NotFound);
    }
    tracing::info!(token = %operator.token_name, job = id, "console replay of one job");
    Ok(Redirect::to(&format!("/console/jobs/{id}")).into_response())
}

/// The selectors of "every dead job matching": the jobs page's, with the state fixed to dead.
fn dead_selection(params: &FilterParams) -> ConsoleResult<(FilterParams, Selection)> {
    if !params.state.trim().is_empty() && params.state.trim() != "dead" {
        return Err(ConsoleError::BadRequest(
            "only dead jobs are replayed from here; replay another job from its own page".into(),
        ));
    }
    let params = FilterParams {
        state: "dead".into(),
        before: String::new(),
        ..params.clone()
    };
    let selection = params.parse()?.selection;
    Ok((params, selection))
}

/// `GET /console/replay?…`: how many dead jobs match (and the first of them), and the button that
/// replays them.
pub async fn confirm(
    State(state): State<ConsoleState>,
    operator: Operator,
    Query(params): Query<FilterParams>,
) -> ConsoleResult<Markup> {
    let (params, selection) = dead_selection(&params)?;
    let report = replay(&state, &selection, true).await?;
    let n = report.matched;
    let shown = &report.jobs[..n.min(SHOWN)];
    Ok(layout::page(
        "Replay dead jobs",
        Section::Jobs,
        &operator,
        html! {
            h1 { "Replay dead jobs" }
            p #replay-count {
                strong { (layout::count(n as i64)) } " dead " (if n == 1 { "job matches" } else { "jobs match" })
                " this filter" @if n > SHOWN { " (the oldest " (SHOWN) " are listed)" } "."
            }
            (jobs::filter_form(&params))
            @if n > 0 {
                form.actions method="post" action="/console/replay" {
                    input type="hidden" name="csrf" value=(operator.csrf());
                    @for (name, value) in hidden_fields(&params) { input type="hidden" name=(name) value=(value); }
                    button #replay-all type="submit" disabled[!operator.can_write] {
                        "Replay " (if n == 1 { "this job".to_owned() } else { format!("these {n} jobs") })
                    }
                    @if !operator.can_write { span.note { "Your token is read-only: it cannot replay." } }
                    span.note { "Same as " code { "orgsync replay --state dead …" } ". Jobs that die meanwhile and match are replayed too." }
                }
            }
            (jobs::table(shown))
        },
    ))
}

fn hidden_fields(p: &FilterParams) -> Vec<(&'static str, String)> {
    [
        ("state", &p.state),
        ("type", &p.event_type),
        ("since", &p.since),
        ("until", &p.until),
        ("event_id", &p.event_id),
        ("entity_id", &p.entity_id),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k, v.clone()))
    .collect()
}

#[derive(Deserialize)]
pub struct ReplayMatchingForm {
    csrf: String,
    #[serde(flatten)]
    filters: FilterParams,
}

/// `POST /console/replay`: replays every dead job matching the selectors.
pub async fn replay_matching(
    State(state): State<ConsoleState>,
    operator: Operator,
    Form(form): Form<ReplayMatchingForm>,
) -> ConsoleResult<Markup> {
    operator.verify_csrf(&form.csrf)?;
    operator.require_write()?;
    let (params, selection) = dead_selection(&form.filters)?;
    let report = replay(&state, &selection, false).await?;
    tracing::info!(token = %operator.token_name, matched = report.matched, replayed = report.replayed, "console replay");
    let back = format!(
        "/console/jobs?{}",
        FilterParams {
            state: String::new(),
            ..params.clone()
        }
        .query()
    );
    Ok(layout::page(
        "Replayed",
        Section::Jobs,
        &operator,
        html! {
            h1 { "Replayed" }
            p #replayed.ok { "Replayed " (layout::count(report.replayed as i64)) " "
                (if report.replayed == 1 { "job" } else { "jobs" }) "; the workers run them now." }
            p { a href=(back) { "Follow them on the jobs page" } " or on the " a href="/console/" { "overview" } "." }
            (jobs::table(&report.jobs[..report.jobs.len().min(SHOWN)]))
        },
    ))
}
