//! Operator commands: `status`, `jobs list`, `jobs show`, `replay`, `send`, `changes` and
//! `access`.
//!
//! Each command is a library function that takes a [`PgPool`] (or an HTTP client) and writes
//! to a [`std::io::Write`] or returns a struct, so tests drive it against a real database in a
//! known state. The command line (`crate::cli::commands`) wraps them: it connects, calls the
//! library function, prints, and turns the outcome into an exit code.
//!
//! Output conventions: results go to stdout (JSON with `--json`), progress and notes to stderr,
//! so `orgsync ... --json | jq` always sees clean JSON.

pub mod access;
pub mod changes;
pub mod jobs;
pub mod progress;
pub mod replay;
pub mod send;
pub mod status;

use anyhow::Context;
use sqlx::PgPool;

use crate::db::{PoolSettings, Schema};

pub use access::{check_access, Access};
pub use jobs::{list_jobs, show_job, JobDetail, JobFilter, JobSummary, Selection};
pub use progress::Progress;
pub use replay::{replay_jobs, run_replay, ReplayReport};
pub use send::{send_event, SendOutcome};
pub use status::{gather_status, QueueSnapshot, Status};

/// `orgsync jobs list` shows this many jobs unless `--limit` says otherwise, so a table with
/// millions of done jobs does not flood the terminal.
pub const DEFAULT_LIST_LIMIT: i64 = 100;

/// Exit code of `orgsync status` when everything is fine.
pub const EXIT_HEALTHY: i32 = 0;
/// Exit code of `orgsync status` when a person is needed (the reasons are printed).
pub const EXIT_ATTENTION: i32 = 1;
/// Exit code of `orgsync status` when the database cannot be read (unreachable, bad URL,
/// or not migrated).
pub const EXIT_UNREACHABLE: i32 = 2;

/// A small lazy pool for a one-shot command. Err only when the URL is not a Postgres URL;
/// an unreachable server shows up at the first query.
pub fn connect(database_url: &str, schema: &Schema) -> anyhow::Result<PgPool> {
    let options = crate::db::connect_options(database_url, schema).context("DATABASE_URL is not a Postgres URL")?;
    // One connection is all a command needs; a short acquire timeout makes an unreachable
    // database fail fast, which matters when `status` serves as a probe.
    let settings = PoolSettings {
        max_connections: 2,
        acquire_timeout: std::time::Duration::from_secs(5),
    };
    Ok(crate::db::lazy_pool(options, &settings))
}
