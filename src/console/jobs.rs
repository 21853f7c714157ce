//! The jobs pages: `/console/jobs` lists jobs newest first with the selectors of `orgsync jobs
//! list` and `replay` (state, type, received since/until, event id, entity id), paged by keyset
//! on `(received_at, id)`; `/console/jobs/{id}` shows one job as `orgsync jobs show` does
//! ([`crate::ops::show_job`]): its attempts and every recorded error, and its payload with
//! secrets and `unsafe_metadata` shown only as their size ([`super::redact`]).
//!
//! Each combination of selectors is its own statement, so Postgres plans it for the index that
//! serves it: by type `jobs_type_received`, by entity `jobs_entity_received`, by event id the
//! unique index, by state `jobs_state_received`; with none of these, one backward scan of
//! `jobs_state_received` per state, merged.

use axum::extract::{Path, Query, State};
use chrono::{DateTime, TimeZone, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::auth::Operator;
use super::layout::{self, Section};
use super::redact;
use super::{ConsoleError, ConsoleResult, ConsoleState};
use crate::ops::jobs::{JobDetail, JobFilter, JobSummary, Selection};
use crate::queue::STATES;

/// Jobs per page.
pub const PAGE_SIZE: i64 = 50;

/// The selectors as the filter form sends them (empty fields mean "any").
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FilterParams {
    #[serde(default)]
    pub state: String,
    #[serde(default, rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub event_id: String,
    #[serde(default)]
    pub entity_id: String,
    /// The keyset cursor: jobs received before this one (`<micros>.<id>`).
    #[serde(default)]
    pub before: String,
}

/// Parsed selectors: the CLI's [`Selection`], and the page's cursor.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub selection: Selection,
    pub before: Option<(DateTime<Utc>, i64)>,
}

fn given(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

impl FilterParams {
    /// Err(BadRequest) for an unknown state, an unreadable time or cursor, or an empty window.
    pub fn parse(&self) -> ConsoleResult<Filters> {
        let time = |name: &str, s: &str| -> ConsoleResult<Option<DateTime<Utc>>> {
            given(s)
                .map(|s| {
                    parse_time(&s).ok_or_else(|| bad(format!("{name}: {s:?} is neither a time nor a duration like 2h")))
                })
                .transpose()
        };
        let selection = Selection {
            ids: Vec::new(),
            event_id: given(&self.event_id),
            filter: JobFilter {
                state: given(&self.state),
                event_type: given(&self.event_type),
                since: time("since", &self.since)?,
                until: time("until", &self.until)?,
                entity_id: given(&self.entity_id),
                limit: None,
            },
        };
        selection.validate().map_err(|e| bad(e.to_string()))?;
        let before = match given(&self.before) {
            None => None,
            Some(c) => Some(parse_cursor(&c).ok_or_else(|| bad(format!("before: {c:?} is not a page cursor")))?),
        };
        Ok(Filters { selection, before })
    }

    /// These selectors as a query string (without the cursor), e.g. for the next page's link.
    pub fn query(&self) -> String {
        let pairs = [
            ("state", &self.state),
            ("type", &self.event_type),
            ("since", &self.since),
            ("until", &self.until),
            ("event_id", &self.event_id),
            ("entity_id", &self.entity_id),
        ];
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            if !v.trim().is_empty() {
                out.append_pair(k, v.trim());
            }
        }
        out.finish()
    }
}

fn bad(message: String) -> ConsoleError {
    ConsoleError::BadRequest(message)
}

/// RFC 3339; a browser's `datetime-local` (`2026-12-03T10:00`, read as UTC); or a duration such
/// as `2h`, meaning that long ago (as the CLI's `--since`).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    let ago = humantime::parse_duration(s).ok()?;
    Some(Utc::now() - chrono::Duration::from_std(ago).ok()?)
}

fn cursor(job: &JobSummary) -> String {
    format!("{}.{}", job.received_at.timestamp_micros(), job.id)
}

fn parse_cursor(s: &str) -> Option<(DateTime<Utc>, i64)> {
    let (micros, id) = s.split_once('.')?;
    Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, id.parse().ok()?))
}

const COLUMNS: &str =
    "id, event_id, event_type, state, attempts, received_at, run_at, updated_at, done_at, last_error, waiting_for";

/// One page of jobs matching `filters`, newest first, and whether there are more. Every
/// combination of selectors reads through an index (see the module's doc).
pub async fn list_page(pool: &PgPool, filters: &Filters) -> Result<(Vec<JobSummary>, bool), sqlx::Error> {
    let s = &filters.selection;
    let f = &s.filter;
    let selective = f.state.is_some() || f.event_type.is_some() || f.entity_id.is_some() || s.event_id.is_some();
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new("");
    if selective {
        q.push(format!("select {COLUMNS} from jobs where true"));
        push_conditions(&mut q, filters, f.state.as_deref());
    } else {
        // No selector an index leads with: one backward scan of (state, received_at) per state.
        q.push(format!("select {COLUMNS} from ("));
        for (i, state) in STATES.iter().enumerate() {
            if i > 0 {
                q.push(" union all ");
            }
            q.push(format!("(select {COLUMNS} from jobs where true"));
            push_conditions(&mut q, filters, Some(state));
            q.push(" order by received_at desc, id desc limit ");
            q.push_bind(PAGE_SIZE + 1);
            q.push(")");
        }
        q.push(") j where true");
    }
    q.push(" order by received_at desc, id desc limit ");
    q.push_bind(PAGE_SIZE + 1);
    let mut jobs: Vec<JobSummary> = q.build_query_as().fetch_all(pool).await?;
    let more = jobs.len() as i64 > PAGE_SIZE;
    jobs.truncate(PAGE_SIZE as usize);
    Ok((jobs, more))
}

fn push_conditions(q: &mut QueryBuilder<'_, Postgres>, filters: &Filters, state: Option<&str>) {
    let s = &filters.selection;
    let f = &s.filter;
    if let Some(state) = state {
        q.push(" and state = ").push_bind(state.to_owned());
    }
    if let Some(t) = &f.event_type {
        q.push(" and event_type = ").push_bind(t.clone());
    }
    if let Some(e) = &f.entity_id {
        q.push(" and entity_key = ").push_bind(e.clone());
    }
    if let Some(e) = &s.event_id {
        q.push(" and event_id = ").push_bind(e.clone());
    }
    if let Some(t) = f.since {
        q.push(" and received_at >= ").push_bind(t);
    }
    if let Some(t) = f.until {
        q.push(" and received_at < ").push_bind(t);
    }
    if let Some((t, id)) = filters.before {
        q.push(" and (received_at, id) < (")
            .push_bind(t)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
}

/// `GET /console/jobs`: the filter form and one page of jobs.
pub async fn list(
    State(state): State<ConsoleState>,
    operator: Operator,
    Query(params): Query<FilterParams>,
) -> ConsoleResult<Markup> {
    let filters = params.parse()?;
    let (jobs, more) = list_page(&state.pool, &filters).await?;
    let query = params.query();
    let dead_only = filters.selection.filter.state.as_deref() == Some("dead");
    Ok(layout::page(
        "Jobs",
        Section::Jobs,
        &operator,
        html! {
            h1 { "Jobs" }
            (filter_form(&params))
            @if dead_only && !jobs.is_empty() {
                div.actions {
                    a #replay-matching href=(format!("/console/replay?{query}")) { "Replay every dead job matching this filter…" }
                }
            }
            (table(&jobs))
            div.pager {
                @if filters.before.is_some() { a href=(format!("/console/jobs?{query}")) { "← newest" } }
                @if more {
                    @if let Some(last) = jobs.last() {
                        a #older rel="next" href=(format!("/console/jobs?{}{}before={}", query, if query.is_empty() { "" } else { "&" }, cursor(last))) { "older →" }
                    }
                }
            }
        },
    ))
}

/// The filter form, filled with the current selectors.
pub fn filter_form(p: &FilterParams) -> Markup {
    html! {
        form.filters method="get" action="/console/jobs" {
            label { "state"
                select name="state" {
                    option value="" selected[p.state.is_empty()] { "any" }
                    @for s in STATES { option value=(s) selected[p.state == s] { (s) } }
                }
            }
            label { "type" input name="type" value=(p.event_type) placeholder="user.created" size="26"; }
            label { "received since" input name="since" value=(p.since) placeholder="2h or 2026-12-03T10:00Z" size="20"; }
            label { "received until" input name="until" value=(p.until) placeholder="30m or a time" size="20"; }
            label { "event id (svix-id)" input name="event_id" value=(p.event_id) placeholder="msg_…" size="22"; }
            label { "entity id (hotel or user)" input name="entity_id" value=(p.entity_id) placeholder="org_… or user_…" size="26"; }
            button type="submit" { "Filter" }
            a href="/console/jobs" { "clear" }
        }
    }
}

/// Jobs as a table (or a line saying there are none).
pub fn table(jobs: &[JobSummary]) -> Markup {
    html! {
        @if jobs.is_empty() {
            p #no-jobs { "No jobs match." }
        } @else {
            table #jobs {
                thead { tr { th { "id" } th { "state" } th.num { "attempts" } th { "type" } th { "received" } th { "event id" } th { "last error" } } }
                tbody {
                    @for j in jobs {
                        tr data-job-id=(j.id) {
                            td { a href=(format!("/console/jobs/{}", j.id)) { (j.id) } }
                            td { span class=(format!("state-{}", j.state)) { (j.state) } }
                            td.num { (j.attempts) }
                            td { (j.event_type) }
                            td { (layout::when(j.received_at)) }
                            td.mono { (j.event_id) }
                            td { (j.last_error.as_deref().map(one_line).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    }
}

fn one_line(s: &str) -> String {
    const MAX: usize = 120;
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= MAX {
        flat
    } else {
        format!("{}…", flat.chars().take(MAX - 1).collect::<String>())
    }
}

/// `GET /console/jobs/{id}`: one job in full.
pub async fn show(State(state): State<ConsoleState>, operator: Operator, Path(id): Path<i64>) -> ConsoleResult<Markup> {
    let job = crate::ops::show_job(&state.pool, id)
        .await?
        .ok_or(ConsoleError::NotFound)?;
    let j = &job.summary;
    Ok(layout::page(
        &format!("Job {}", j.id),
        Section::Jobs,
        &operator,
        html! {
            h1 { "Job " (j.id) " " span.badge { (j.event_type) } }
            div #job-live data-refresh-url=(format!("/console/jobs/{}/live", j.id)) data-refresh-ms="1000" {
                (live_part(&job))
            }
            @if j.state != "available" {
                div.actions {
                    form method="post" action=(format!("/console/jobs/{}/replay", j.id)) {
                        input type="hidden" name="csrf" value=(operator.csrf());
                        button #replay type="submit" disabled[!operator.can_write] class=(if j.state == "dead" { "" } else { "secondary" }) {
                            @if j.state == "dead" { "Replay this job" } @else { "Run this job again" }
                        }
                    }
                    @if !operator.can_write { span.note { "Your token is read-only: it cannot replay." } }
                    span.note { "A replay runs the job again at once with a fresh attempt budget (as "
                        code { "orgsync replay --job " (j.id) } ")." }
                }
            }
            h2 { "Payload" }
            (payload(&job))
        },
    ))
}

/// `GET /console/jobs/{id}/live`: the job's state and history, for the page's refresh.
pub async fn live(
    State(state): State<ConsoleState>,
    _operator: Operator,
    Path(id): Path<i64>,
) -> ConsoleResult<Markup> {
    let job = crate::ops::show_job(&state.pool, id)
        .await?
        .ok_or(ConsoleError::NotFound)?;
    Ok(live_part(&job))
}

fn live_part(job: &JobDetail) -> Markup {
    let j = &job.summary;
    let opt = |t: Option<DateTime<Utc>>| html! { @match t { Some(t) => (layout::when(t)), None => "—" } };
    let history = job.errors.as_array().map(Vec::as_slice).unwrap_or_default();
    html! {
        dl.facts {
            dt { "state" } dd #job-state { span class=(format!("state-{}", j.state)) { (j.state) } }
            dt { "attempts" } dd { (j.attempts) }
            dt { "event id" } dd.mono { (j.event_id) }
            dt { "received" } dd { (layout::when(j.received_at)) }
            dt { "run at" } dd { (layout::when(j.run_at)) }
            dt { "updated" } dd { (layout::when(j.updated_at)) }
            dt { "done" } dd { (opt(j.done_at)) }
            dt { "waiting for" } dd {
                @match &j.waiting_for {
                    Some(h) => a href=(format!("/console/access?hotel={}", layout::query_value(h))) { (h) },
                    None => "—",
                }
            }
            dt { "last error" } dd #last-error { (j.last_error.as_deref().unwrap_or("—")) }
        }
        h2 { "Attempts and replays (" (history.len()) ")" }
        @if history.is_empty() {
            p.note { "No failed attempt recorded." }
        } @else {
            table #history {
                thead { tr { th { "when" } th { "what" } th { "error" } } }
                tbody { @for entry in history { (history_row(entry)) } }
            }
        }
    }
}

/// One entry of `jobs.errors`: a failed attempt or a replay marker (anything else as it is).
fn history_row(entry: &serde_json::Value) -> Markup {
    let text = |key: &str| {
        entry
            .get(key)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    if let Some(at) = text("replayed_at") {
        return html! { tr.replay {
            td { (at) }
            td { "replayed (was " (text("previous_state").unwrap_or_default()) " after "
                 (text("previous_attempts").unwrap_or_default()) " attempts)" }
            td {}
        } };
    }
    match (text("attempt"), text("at"), text("error")) {
        (Some(attempt), Some(at), Some(error)) => html! { tr.failure {
            td { (at) } td { "attempt " (attempt) " failed" } td.error { (error) }
        } },
        _ => html! { tr { td {} td { "unrecognised entry" } td.mono { (entry.to_string()) } } },
    }
}

fn payload(job: &JobDetail) -> Markup {
    match &job.payload {
        // Not representable by serde_json (lone surrogates, huge numbers): it cannot be
        // redacted key by key, so it is not shown.
        serde_json::Value::String(raw) => html! {
            p.note #payload-hidden {
                "The payload (" (layout::bytes(raw.len())) ") holds JSON that cannot be shown key by key "
                "(a lone surrogate or a number beyond 64-bit floats), so it is not shown here: it may "
                "hold secrets. " code { "orgsync jobs show " (job.summary.id) } " prints it."
            }
        },
        p => {
            let shown = serde_json::to_string_pretty(&redact::redact(p)).unwrap_or_default();
            html! {
                p.note { (layout::bytes(redact::json_len(p))) "; secrets, " code { "private_metadata" } ", "
                    code { "unsafe_metadata" } " and invitation links are shown only as their size." }
                pre #payload { (shown) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_like_the_cli_and_like_a_browser() {
        assert_eq!(
            parse_time("2026-12-03T10:00:00Z").unwrap().to_rfc3339(),
            "2026-12-03T10:00:00+00:00"
        );
        assert_eq!(
            parse_time("2026-12-03T10:00").unwrap().to_rfc3339(),
            "2026-12-03T10:00:00+00:00"
        );
        let two_hours_ago = parse_time("2h").unwrap();
        assert!(
            (Utc::now() - two_hours_ago - chrono::Duration::hours(2))
                .num_seconds()
                .abs()
                < 5
        );
        assert_eq!(parse_time("yesterday-ish"), None);
    }

    #[test]
    fn cursors_round_trip() {
        let t = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        assert_eq!(parse_cursor("1764000000123456.42"), Some((t, 42)));
        assert_eq!(parse_cursor("x.1"), None);
        assert_eq!(parse_cursor("17"), None);
    }

    #[test]
    fn filters_are_validated_as_the_cli_validates_them() {
        let p = FilterParams {
            state: "failed".into(),
            ..FilterParams::default()
        };
        assert!(matches!(p.parse(), Err(ConsoleError::BadRequest(_))));
        let p = FilterParams {
            state: "dead".into(),
            event_type: " user.created ".into(),
            ..FilterParams::default()
        };
        let f = p.parse().unwrap();
        assert_eq!(f.selection.filter.event_type.as_deref(), Some("user.created"));
        assert_eq!(p.query(), "state=dead&type=user.created");
    }
}
