//! Reading jobs: the selection shared by `jobs list` and `replay`, one job in full for
//! `jobs show`, and their human-readable rendering.

use std::io::{self, Write};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::queue::STATES;

/// Selectors shared by `jobs list` and `replay`; they combine (AND).
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state (one of [`STATES`]).
    pub state: Option<String>,
    /// Only jobs of this event type, e.g. `organizationMembership.created`.
    pub event_type: Option<String>,
    /// Only jobs received at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only jobs received before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only jobs about this hotel or user (`jobs.entity_key`: the organization of an
    /// organization or membership event, else the object's own id).
    pub entity_id: Option<String>,
    /// At most this many jobs (oldest first).
    pub limit: Option<i64>,
}

/// Which jobs a command is about. Every given selector must hold (AND); the `ids` match any
/// of them (OR among themselves). `filter.limit` keeps the oldest N matches.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `--job ID` (repeatable). Empty: any id.
    pub ids: Vec<i64>,
    /// `--event-id`: the delivery's `svix-id`.
    pub event_id: Option<String>,
    pub filter: JobFilter,
}

/// A selector is malformed; nothing was read or changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    #[error("unknown state {0:?}; the states are {states}", states = STATES.join(", "))]
    UnknownState(String),
    #[error("--limit must be at least 1")]
    BadLimit,
    #[error("--since must be earlier than --until")]
    EmptyWindow,
    #[error(
        "replay needs at least one selector (--job, --event-id, --state, --type, --since, --until or --entity-id); \
         e.g. `orgsync replay --state dead --dry-run`"
    )]
    NoSelector,
}

impl Selection {
    pub fn from_filter(filter: JobFilter) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }

    /// Ok when every selector is well-formed: a known state, a positive limit, a non-empty
    /// time window.
    pub fn validate(&self) -> Result<(), SelectionError> {
        if let Some(state) = &self.filter.state {
            if !STATES.contains(&state.as_str()) {
                return Err(SelectionError::UnknownState(state.clone()));
            }
        }
        if self.filter.limit.is_some_and(|n| n < 1) {
            return Err(SelectionError::BadLimit);
        }
        if let (Some(since), Some(until)) = (self.filter.since, self.filter.until) {
            if since >= until {
                return Err(SelectionError::EmptyWindow);
            }
        }
        Ok(())
    }

    /// Ok when at least one selector narrows the set. `--limit` alone does not count: "the 10
    /// oldest jobs of any kind" is almost surely a mistake when it means re-running them.
    pub fn require_selector(&self) -> Result<(), SelectionError> {
        let f = &self.filter;
        let any = !self.ids.is_empty()
            || self.event_id.is_some()
            || f.state.is_some()
            || f.event_type.is_some()
            || f.since.is_some()
            || f.until.is_some()
            || f.entity_id.is_some();
        if any {
            Ok(())
        } else {
            Err(SelectionError::NoSelector)
        }
    }
}

/// One job without its payload and error history: a row of `jobs list`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct JobSummary {
    pub id: i64,
    /// The `svix-id` of the delivery.
    pub event_id: String,
    pub event_type: String,
    pub state: String,
    /// Attempts since the job was received or last replayed.
    pub attempts: i32,
    pub received_at: DateTime<Utc>,
    /// When an `available` job is (or was) due.
    pub run_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub done_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The hotel a membership job waits for.
    pub waiting_for: Option<String>,
}

/// One job in full: `jobs show`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub summary: JobSummary,
    /// The event as received (the verified webhook body); a body serde_json cannot represent
    /// as a value (lone surrogates, numbers beyond f64) is its raw text as a JSON string.
    pub payload: serde_json::Value,
    /// Every failed attempt (`{attempt, at, error}`) and every replay (`{replayed_at,
    /// previous_state, previous_attempts}`), oldest first.
    pub errors: serde_json::Value,
}

/// The jobs matching `selection`, oldest received first. Ok(empty) when none match.
/// The caller validates the selection first ([`Selection::validate`]).
pub async fn list_jobs(pool: &PgPool, selection: &Selection) -> Result<Vec<JobSummary>, sqlx::Error> {
    let f = &selection.filter;
    // An empty id list means "no id selector", not "no ids": pass NULL so the condition drops.
    let ids = (!selection.ids.is_empty()).then_some(selection.ids.as_slice());
    // Each `$n is null or ...` drops out when the selector is absent. A one-shot command's
    // statement is planned with its actual parameters, so the indexes on (state, received_at)
    // and (run_at) still serve.
    sqlx::query_as!(
        JobSummary,
        r#"
        select id, event_id, event_type, state, attempts, received_at, run_at, updated_at, done_at,
               last_error, waiting_for
        from jobs
        where ($1::text is null or state = $1)
          and ($2::text is null or event_type = $2)
          and ($3::timestamptz is null or received_at >= $3)
          and ($4::timestamptz is null or received_at < $4)
          and ($5::bigint[] is null or id = any($5))
          and ($6::text is null or event_id = $6)
          and ($8::text is null or entity_key = $8)
        order by received_at, id
        limit $7
        "#,
        f.state,
        f.event_type,
        f.since,
        f.until,
        ids,
        selection.event_id,
        f.limit,
        f.entity_id,
    )
    .fetch_all(pool)
    .await
}

/// The job with `id`, payload and history included. Ok(None) when there is no such job.
pub async fn show_job(pool: &PgPool, id: i64) -> Result<Option<JobDetail>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        select id, event_id, event_type, state, attempts, received_at, run_at, updated_at, done_at,
               last_error, waiting_for, payload::text as "payload!", errors
        from jobs where id = $1
        "#,
        id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| JobDetail {
        summary: JobSummary {
            id: r.id,
            event_id: r.event_id,
            event_type: r.event_type,
            state: r.state,
            attempts: r.attempts,
            received_at: r.received_at,
            run_at: r.run_at,
            updated_at: r.updated_at,
            done_at: r.done_at,
            last_error: r.last_error,
            waiting_for: r.waiting_for,
        },
        // The stored text is any JSON Clerk sent; what serde_json cannot hold as a value (a lone
        // surrogate, a number beyond f64) is shown as the raw text in a string.
        payload: serde_json::from_str(&r.payload).unwrap_or(serde_json::Value::String(r.payload)),
        errors: r.errors,
    }))
}

/// Renders jobs as an aligned table (or a line saying there are none).
pub fn write_table(out: &mut impl Write, jobs: &[JobSummary]) -> io::Result<()> {
    if jobs.is_empty() {
        return writeln!(out, "no jobs match");
    }
    let rows: Vec<[String; 7]> = jobs
        .iter()
        .map(|j| {
            [
                j.id.to_string(),
                j.state.clone(),
                j.attempts.to_string(),
                j.event_type.clone(),
                time(j.received_at),
                j.event_id.clone(),
                j.last_error.as_deref().map(one_line).unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["ID", "STATE", "ATTEMPTS", "TYPE", "RECEIVED", "EVENT ID", "LAST ERROR"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: [&str; 7]| -> io::Result<()> {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell); // no padding after the last column
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, header)?;
    for row in &rows {
        line(out, row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

/// Renders one job: its fields, its error and replay history, and its payload.
pub fn write_detail(out: &mut impl Write, job: &JobDetail) -> io::Result<()> {
    let j = &job.summary;
    let opt = |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_owned(), time);
    writeln!(out, "job {}", j.id)?;
    writeln!(out, "  event id:     {}", j.event_id)?;
    writeln!(out, "  type:         {}", j.event_type)?;
    writeln!(out, "  state:        {}", j.state)?;
    writeln!(out, "  attempts:     {}", j.attempts)?;
    writeln!(out, "  received:     {}", time(j.received_at))?;
    writeln!(out, "  run at:       {}", time(j.run_at))?;
    writeln!(out, "  updated:      {}", time(j.updated_at))?;
    writeln!(out, "  done:         {}", opt(j.done_at))?;
    writeln!(out, "  waiting for:  {}", j.waiting_for.as_deref().unwrap_or("-"))?;
    writeln!(out, "  last error:   {}", j.last_error.as_deref().unwrap_or("-"))?;
    let history = job.errors.as_array().map(Vec::as_slice).unwrap_or_default();
    writeln!(out, "history ({} entries):", history.len())?;
    for entry in history {
        writeln!(out, "  {}", history_line(entry))?;
    }
    writeln!(out, "payload:")?;
    let pretty = serde_json::to_string_pretty(&job.payload).map_err(io::Error::other)?;
    writeln!(out, "{pretty}")
}

/// One entry of a job's `errors` history as a line: a failed attempt, or a replay marker.
fn history_line(entry: &serde_json::Value) -> String {
    let text = |key: &str| {
        entry
            .get(key)
            .and_then(|v| v.as_str().map(str::to_owned).or_else(|| Some(v.to_string())))
    };
    // Postgres writes `2026-11-25T10:00:00.123456+00:00`; show times as everywhere else.
    let when = |key: &str| {
        text(key).map(|t| DateTime::parse_from_rfc3339(&t).map_or(t, |parsed| time(parsed.with_timezone(&Utc))))
    };
    if let Some(at) = when("replayed_at") {
        let state = text("previous_state").unwrap_or_else(|| "?".into());
        let attempts = text("previous_attempts").unwrap_or_else(|| "?".into());
        return format!("{at}  replayed (was {state} after {attempts} attempts)");
    }
    match (text("attempt"), when("at"), text("error")) {
        (Some(attempt), Some(at), Some(error)) => format!("{at}  attempt {attempt} failed: {error}"),
        // Not a shape orgsync writes; show it as it is rather than hide it.
        _ => entry.to_string(),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An error message on one table line: newlines folded, long messages cut.
fn one_line(s: &str) -> String {
    const MAX: usize = 80;
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= MAX {
        flat
    } else {
        format!("{}…", flat.chars().take(MAX - 1).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_validated() {
        let mut s = Selection::default();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.require_selector(), Err(SelectionError::NoSelector));
        s.filter.limit = Some(5);
        assert_eq!(
            s.require_selector(),
            Err(SelectionError::NoSelector),
            "--limit alone is not a selector"
        );
        s.filter.limit = Some(0);
        assert_eq!(s.validate(), Err(SelectionError::BadLimit));
        s.filter.limit = None;
        s.filter.state = Some("failed".into());
        assert_eq!(s.validate(), Err(SelectionError::UnknownState("failed".into())));
        s.filter.state = Some("dead".into());
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.require_selector(), Ok(()));
        let now = Utc::now();
        s.filter.since = Some(now);
        s.filter.until = Some(now);
        assert_eq!(s.validate(), Err(SelectionError::EmptyWindow));
        for sel in [
            Selection {
                ids: vec![1],
                ..Selection::default()
            },
            Selection {
                event_id: Some("msg_1".into()),
                ..Selection::default()
            },
            Selection::from_filter(JobFilter {
                event_type: Some("user.created".into()),
                ..JobFilter::default()
            }),
            Selection::from_filter(JobFilter {
                since: Some(now),
                ..JobFilter::default()
            }),
            Selection::from_filter(JobFilter {
                until: Some(now),
                ..JobFilter::default()
            }),
        ] {
            assert_eq!(sel.require_selector(), Ok(()), "{sel:?}");
        }
    }

    #[test]
    fn history_lines_show_failures_and_replays() {
        let failure =
            serde_json::json!({"attempt": 3, "at": "2026-11-25T10:00:00Z", "error": "hotel org_1 does not exist yet"});
        assert_eq!(
            history_line(&failure),
            "2026-11-25T10:00:00Z  attempt 3 failed: hotel org_1 does not exist yet"
        );
        let replay = serde_json::json!({"replayed_at": "2026-11-25T11:00:00.123456+00:00", "previous_state": "dead", "previous_attempts": 5});
        assert_eq!(
            history_line(&replay),
            "2026-11-25T11:00:00Z  replayed (was dead after 5 attempts)"
        );
        let odd = serde_json::json!({"something": 1});
        assert_eq!(history_line(&odd), r#"{"something":1}"#);
    }

    #[test]
    fn long_errors_fit_on_one_line() {
        assert_eq!(one_line("a\n  b"), "a b");
        let long = "x".repeat(200);
        let cut = one_line(&long);
        assert_eq!(cut.chars().count(), 80);
        assert!(cut.ends_with('…'));
    }
}
