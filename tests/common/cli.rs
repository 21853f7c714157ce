//! Helpers of the operator-command tests: run the built `orgsync` binary against a test's
//! database, and seed jobs as the receiver and workers would have left them.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use super::{fixture_json, test_database_url, wait_until};

/// The URL of the test's own database.
pub async fn db_url(pool: &PgPool) -> String {
    test_database_url(pool).await
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the built `orgsync` binary with `DATABASE_URL=db` and stdout/stderr captured (so not a
/// terminal), without any operator settings inherited from the environment.
pub async fn orgsync(db: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgsync"))
        .args(args)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "warn")
        .env_remove("CLERK_WEBHOOK_SECRET")
        .env_remove("ORGSYNC_SEND_URL")
        .env_remove("ORGSYNC_MAX_PENDING_AGE")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the orgsync binary runs");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Inserts a job as the receiver and workers would have left it. `received_ago` and `run_in`
/// are Postgres intervals. A dead job gets three recorded failures; done and skipped jobs a
/// `done_at`.
pub async fn seed_job(pool: &PgPool, event_id: &str, event_type: &str, state: &str, received_ago: &str) -> i64 {
    let payload = if orgsync::clerk::events::is_handled(event_type) {
        fixture_json(event_type)
    } else {
        serde_json::json!({"object": "event", "type": event_type, "data": {"id": "x"}, "timestamp": 1764000000})
    };
    let (attempts, errors, last_error) = match state {
        "dead" => {
            let errs: Vec<Value> = (1..=3)
                .map(|n| serde_json::json!({"attempt": n, "at": "2026-11-25T10:00:00Z", "error": format!("failure {n}")}))
                .collect();
            (3, Value::Array(errs), Some("failure 3"))
        }
        "done" | "skipped" => (1, serde_json::json!([]), None),
        _ => (0, serde_json::json!([]), None),
    };
    sqlx::query_scalar(
        r#"
        insert into jobs (event_id, event_type, payload, state, attempts, errors, last_error,
                          received_at, run_at, updated_at, done_at)
        values ($1, $2, $3, $4, $5, $6, $7, now() - $8::interval, now() - $8::interval, now(),
                case when $4 in ('done', 'skipped') then now() end)
        returning id
        "#,
    )
    .bind(event_id)
    .bind(event_type)
    .bind(payload)
    .bind(state)
    .bind(attempts)
    .bind(errors)
    .bind(last_error)
    .bind(received_ago)
    .fetch_one(pool)
    .await
    .unwrap()
}

pub async fn state_of(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("select state from jobs where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The whole job table as JSON, to compare before and after.
pub async fn jobs_table(pool: &PgPool) -> Value {
    sqlx::query_scalar("select coalesce(jsonb_agg(to_jsonb(j) order by id), '[]') from jobs j")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until the app's workers are LISTENing, so a NOTIFY sent afterwards cannot be missed.
pub async fn wait_for_listener(pool: &PgPool) {
    wait_until(
        pool,
        "select exists(select 1 from pg_stat_activity where datname = current_database() and query ilike 'listen%')",
        Duration::from_secs(10),
    )
    .await;
}

pub fn ids_of(jobs: &[orgsync::ops::JobSummary]) -> Vec<i64> {
    jobs.iter().map(|j| j.id).collect()
}
