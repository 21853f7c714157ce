//! The thin wrappers the command line runs: each connects, calls the library function of
//! `crate::ops` (or `crate::resync`), prints, and turns the outcome into an exit code.

use std::io::Write;

use anyhow::Context;

use super::{AccessArgs, DatabaseArgs, JobFilterArgs, ReplayArgs, SendArgs, StatusArgs};
use crate::ops::{
    access, check_access, connect, gather_status, jobs, list_jobs, replay, run_replay, send, send_event, show_job,
    status, Progress, Selection, DEFAULT_LIST_LIMIT,
};

/// `orgsync status`. Never Err: every failure is an exit code ([`EXIT_UNREACHABLE`] when the
/// database cannot be read), so a probe can tell "unhealthy" from "cannot tell".
pub async fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    let pool = match connect(&args.database.database_url, &args.database.schema) {
        Ok(pool) => pool,
        Err(e) => return Ok(status::report_unreachable(&mut out, &e, args.json)),
    };
    match gather_status(&pool, args.max_pending_age).await {
        Ok(status) => {
            if args.json {
                serde_json::to_writer_pretty(&mut out, &status)?;
                writeln!(out)?;
            } else {
                status::write_status(&mut out, &status)?;
            }
            Ok(status.exit_code())
        }
        Err(e) => Ok(status::report_unreachable(&mut out, &anyhow::Error::new(e), args.json)),
    }
}

/// `orgsync jobs list`. Ok(0) after printing the matching jobs (possibly none); Err when the
/// filter is invalid or the database cannot be read.
pub async fn jobs_list(database: DatabaseArgs, filter: JobFilterArgs, json: bool) -> anyhow::Result<i32> {
    let mut selection = Selection::from_filter(filter.filter());
    selection.validate()?;
    let limit = selection.filter.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    // Fetch one more than shown to know whether the list was cut.
    selection.filter.limit = Some(limit + 1);
    let pool = connect(&database.database_url, &database.schema)?;
    let mut found = list_jobs(&pool, &selection).await.context("reading jobs")?;
    let cut = found.len() as i64 > limit;
    found.truncate(limit as usize);
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &found)?;
        writeln!(out)?;
    } else {
        jobs::write_table(&mut out, &found)?;
    }
    if cut {
        eprintln!("showing the oldest {limit} matching jobs; narrow with --state/--type/--since or raise --limit");
    }
    Ok(0)
}

/// `orgsync jobs show ID`. Ok(0) after printing the job; Ok(1) when there is no such job;
/// Err when the database cannot be read.
pub async fn jobs_show(database: DatabaseArgs, id: i64, json: bool) -> anyhow::Result<i32> {
    let pool = connect(&database.database_url, &database.schema)?;
    let Some(job) = show_job(&pool, id).await.context("reading the job")? else {
        eprintln!("no job with id {id} (done and skipped jobs are pruned after the retention period)");
        return Ok(1);
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &job)?;
        writeln!(out)?;
    } else {
        jobs::write_detail(&mut out, &job)?;
    }
    Ok(0)
}

/// `orgsync replay`. Ok(0) after replaying (or, with `--dry-run`, listing) the selected jobs,
/// also when none matched; Err when no selector was given, a selector is invalid, or the
/// database cannot be read or written (jobs replayed before the failure stay replayed).
pub async fn replay(args: ReplayArgs) -> anyhow::Result<i32> {
    let selection = Selection {
        ids: args.jobs,
        event_id: args.event_id,
        filter: args.filter.filter(),
    };
    selection.validate()?;
    selection.require_selector()?;
    let pool = connect(&args.database.database_url, &args.database.schema)?;
    let options = replay::ReplayOptions {
        dry_run: args.dry_run,
        chunk_size: replay::DEFAULT_CHUNK_SIZE,
    };
    let report = run_replay(&pool, &selection, &options, |total| {
        Progress::stderr("replay", Some(total))
    })
    .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        replay::write_report(&mut out, &report)?;
    }
    Ok(0)
}

/// `orgsync send`. Ok(0) when the receiver answered 2xx, Ok(1) when it answered anything else
/// (the status and answer are printed either way); Err when the fixture or secret cannot be
/// found or the receiver cannot be reached.
pub async fn send(args: SendArgs) -> anyhow::Result<i32> {
    let spec = args.fixture.as_deref().or(args.event_type.as_deref()).ok_or_else(|| {
        anyhow::anyhow!(
            "give a fixture file or an event type, e.g. `orgsync send organization.created`; built-in types: {}",
            send::builtin_types().join(", ")
        )
    })?;
    let fixture = send::load_fixture(spec)?;
    let secret = match args.webhook_secret.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(s) => s.to_owned(),
        None => {
            let pool = connect(&args.database.database_url, &args.database.schema)?;
            send::stored_secret(&pool).await?
        }
    };
    let event_id = args.event_id.unwrap_or_else(send::new_event_id);
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()?;
    let outcome = send_event(&client, &args.url, &secret, &event_id, &fixture).await?;
    let mut out = std::io::stdout().lock();
    send::write_outcome(&mut out, &outcome)?;
    Ok(if outcome.status.is_success() { 0 } else { 1 })
}

/// `orgsync access`. Never Err: the answer is the exit code ([`access::Access::exit_code`]), and
/// a database that cannot be read is [`crate::ops::EXIT_UNREACHABLE`] with the reason on stderr.
pub async fn access(args: AccessArgs) -> anyhow::Result<i32> {
    let checked = match connect(&args.database.database_url, &args.database.schema) {
        Ok(pool) => check_access(&pool, &args.user_id, &args.hotel_id, args.permission.as_deref())
            .await
            .map_err(anyhow::Error::new),
        Err(e) => Err(e),
    };
    let answer = match checked {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("cannot read the database: {e:#}");
            return Ok(crate::ops::EXIT_UNREACHABLE);
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &answer)?;
        writeln!(out)?;
    } else {
        access::write_access(&mut out, &answer)?;
    }
    Ok(answer.exit_code())
}
