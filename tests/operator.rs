//! Operator commands against a real database in a known state: `status`, `jobs list`,
//! `jobs show`, `replay` and `send`, through the library functions and through the built
//! `orgsync` binary (exit codes, output, and what changed in the database).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use orgsync::ops::replay::{ReplayOptions, DEFAULT_CHUNK_SIZE};
use orgsync::ops::JobFilter;
use orgsync::ops::{list_jobs, replay_jobs, run_replay, Progress, Selection};
use serde_json::Value;
use sqlx::PgPool;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The URL of the test's own database.
async fn db_url(pool: &PgPool) -> String {
    test_database_url(pool).await
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
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
async fn orgsync(db: &str, args: &[&str]) -> Run {
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
async fn seed_job(pool: &PgPool, event_id: &str, event_type: &str, state: &str, received_ago: &str) -> i64 {
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

async fn state_of(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("select state from jobs where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The whole job table as JSON, to compare before and after.
async fn jobs_table(pool: &PgPool) -> Value {
    sqlx::query_scalar("select coalesce(jsonb_agg(to_jsonb(j) order by id), '[]') from jobs j")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until the app's workers are LISTENing, so a NOTIFY sent afterwards cannot be missed.
async fn wait_for_listener(pool: &PgPool) {
    wait_until(
        pool,
        "select exists(select 1 from pg_stat_activity where datname = current_database() and query ilike 'listen%')",
        Duration::from_secs(10),
    )
    .await;
}

fn ids_of(jobs: &[orgsync::ops::JobSummary]) -> Vec<i64> {
    jobs.iter().map(|j| j.id).collect()
}

// ---------------------------------------------------------------------------------------------
// replay

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_job_is_replayed_then_applied_promptly() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    // One attempt and it is dead; workers poll only every 10 minutes, so anything that happens
    // within the test's timeouts was woken by a notification.
    let mut cfg = config(Some(SECRET), true);
    cfg.worker_settings.max_attempts = 1;
    cfg.worker_settings.poll_interval = Duration::from_secs(600);
    let app = TestApp::spawn(pool.clone(), cfg).await;
    wait_for_listener(&pool).await;

    // The membership arrives before its hotel and dies on its only attempt.
    assert_eq!(
        app.deliver("msg_member", &fixture("organizationMembership.created"))
            .await
            .status(),
        202
    );
    wait_until(
        &pool,
        "select state = 'dead' from jobs where event_id = 'msg_member'",
        Duration::from_secs(10),
    )
    .await;
    // The hotel arrives; waking waiting jobs concerns available ones, so the dead job stays dead.
    assert_eq!(
        app.deliver("msg_org", &fixture("organization.created")).await.status(),
        202
    );
    wait_until(&pool, "select exists(select 1 from hotels)", Duration::from_secs(10)).await;
    let id: i64 = sqlx::query_scalar("select id from jobs where event_id = 'msg_member'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state_of(&pool, id).await, "dead");
    assert_eq!(
        sqlx::query_scalar::<_, i64>("select count(*) from memberships")
            .fetch_one(&pool)
            .await
            .unwrap(),
        0
    );

    // The operator finds it, reads it, and replays it.
    let db = db_url(&pool).await;
    let listed = orgsync(&db, &["jobs", "list", "--state", "dead"]).await;
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(
        listed.stdout.contains("organizationMembership.created") && listed.stdout.contains("msg_member"),
        "{listed:?}"
    );
    let shown = orgsync(&db, &["jobs", "show", &id.to_string()]).await;
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(
        shown
            .stdout
            .contains("attempt 1 failed: hotel org_2hotelAlpine0000000000001 does not exist yet"),
        "{shown:?}"
    );

    let replayed = orgsync(&db, &["replay", "--state", "dead"]).await;
    assert_eq!(replayed.code, 0, "{replayed:?}");
    assert!(replayed.stdout.contains("replayed 1 job"), "{replayed:?}");
    wait_until(
        &pool,
        "select exists(select 1 from memberships)",
        Duration::from_secs(10),
    )
    .await;
    wait_until(
        &pool,
        "select state = 'done' from jobs where event_id = 'msg_member'",
        Duration::from_secs(10),
    )
    .await;

    // A fresh budget (one attempt since the replay), and the history kept with the replay in it.
    let (attempts, errors): (i32, Value) = sqlx::query_as("select attempts, errors from jobs where id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1);
    let errors = errors.as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0]["attempt"], 1);
    assert_eq!(errors[1]["previous_state"], "dead");
    assert_eq!(errors[1]["previous_attempts"], 1);
    assert!(errors[1]["replayed_at"].is_string());
    app.stop().await;
}

#[derive(sqlx::FromRow)]
struct ReplayedRow {
    state: String,
    attempts: i32,
    due_now: bool,
    waiting_for: Option<String>,
    done_at: Option<chrono::DateTime<chrono::Utc>>,
    errors: Value,
    last_error: Option<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_resets_the_budget_and_keeps_the_history() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let dead = seed_job(&pool, "msg_dead", "user.created", "dead", "2 hours").await;
    let done = seed_job(&pool, "msg_done", "user.updated", "done", "1 hour").await;
    sqlx::query("update jobs set waiting_for = 'org_x', run_at = now() + interval '1 day' where id = $1")
        .bind(dead)
        .execute(&pool)
        .await
        .unwrap();

    assert_eq!(
        replay_jobs(&pool, &[dead, done, 999_999]).await.unwrap(),
        2,
        "unknown ids are ignored"
    );

    for (id, previous_state, previous_attempts, history) in [(dead, "dead", 3, 4), (done, "done", 1, 1)] {
        let row: ReplayedRow = sqlx::query_as(
            "select state, attempts, run_at <= now() and run_at > now() - interval '1 minute' as due_now,
                    waiting_for, done_at, errors, last_error
             from jobs where id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        let ReplayedRow {
            state,
            attempts,
            due_now,
            waiting_for,
            done_at,
            errors,
            last_error,
        } = row;
        assert_eq!((state.as_str(), attempts, due_now), ("available", 0, true));
        assert_eq!((waiting_for, done_at), (None, None));
        let errors = errors.as_array().unwrap();
        assert_eq!(errors.len(), history, "earlier failures are kept: {errors:?}");
        let marker = errors.last().unwrap();
        assert_eq!(marker["previous_state"], previous_state);
        assert_eq!(marker["previous_attempts"], previous_attempts);
        if previous_state == "dead" {
            assert_eq!(errors[0]["error"], "failure 1");
            assert_eq!(
                last_error.as_deref(),
                Some("failure 3"),
                "the last error stays readable"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn selectors_combine() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let j1 = seed_job(&pool, "msg_a", "organization.created", "dead", "3 hours").await;
    let j2 = seed_job(&pool, "msg_b", "user.created", "dead", "2 hours").await;
    let j3 = seed_job(&pool, "msg_c", "user.created", "done", "1 hour").await;
    let j4 = seed_job(&pool, "msg_d", "session.created", "skipped", "30 minutes").await;
    let j5 = seed_job(&pool, "msg_e", "user.created", "dead", "10 minutes").await;
    let j6 = seed_job(&pool, "msg_f", "user.updated", "available", "0 seconds").await;

    let now = chrono::Utc::now();
    let ago = |m: i64| Some(now - chrono::Duration::minutes(m));
    let filter = |state: Option<&str>, event_type: Option<&str>| JobFilter {
        state: state.map(str::to_owned),
        event_type: event_type.map(str::to_owned),
        ..JobFilter::default()
    };
    let cases: Vec<(&str, Selection, Vec<i64>)> = vec![
        (
            "state",
            Selection::from_filter(filter(Some("dead"), None)),
            vec![j1, j2, j5],
        ),
        (
            "state+type",
            Selection::from_filter(filter(Some("dead"), Some("user.created"))),
            vec![j2, j5],
        ),
        (
            "state+type+limit keeps the oldest",
            Selection::from_filter(JobFilter {
                limit: Some(1),
                ..filter(Some("dead"), Some("user.created"))
            }),
            vec![j2],
        ),
        (
            "ids+state",
            Selection {
                ids: vec![j1, j3],
                ..Selection::from_filter(filter(Some("dead"), None))
            },
            vec![j1],
        ),
        (
            "ids alone",
            Selection {
                ids: vec![j6, j3],
                ..Selection::default()
            },
            vec![j3, j6],
        ),
        (
            "event id",
            Selection {
                event_id: Some("msg_a".into()),
                ..Selection::default()
            },
            vec![j1],
        ),
        (
            "event id+state",
            Selection {
                event_id: Some("msg_a".into()),
                ..Selection::from_filter(filter(Some("done"), None))
            },
            vec![],
        ),
        (
            "since",
            Selection::from_filter(JobFilter {
                since: ago(90),
                ..JobFilter::default()
            }),
            vec![j3, j4, j5, j6],
        ),
        (
            "since+until",
            Selection::from_filter(JobFilter {
                since: ago(90),
                until: ago(20),
                ..JobFilter::default()
            }),
            vec![j3, j4],
        ),
        (
            "type+since",
            Selection::from_filter(JobFilter {
                since: ago(90),
                ..filter(None, Some("user.created"))
            }),
            vec![j3, j5],
        ),
        ("done", Selection::from_filter(filter(Some("done"), None)), vec![j3]),
        (
            "skipped",
            Selection::from_filter(filter(Some("skipped"), None)),
            vec![j4],
        ),
    ];
    for (name, selection, expected) in &cases {
        selection.validate().unwrap();
        assert_eq!(&ids_of(&list_jobs(&pool, selection).await.unwrap()), expected, "{name}");
    }

    // The binary combines them the same way, and replays exactly the selection.
    let db = db_url(&pool).await;
    let run = orgsync(
        &db,
        &["replay", "--state", "dead", "--type", "user.created", "--since", "150m"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("replayed 2 jobs"), "{run:?}");
    assert_eq!(state_of(&pool, j1).await, "dead", "another type");
    assert_eq!(state_of(&pool, j2).await, "available");
    assert_eq!(state_of(&pool, j5).await, "available");
    assert_eq!(state_of(&pool, j3).await, "done", "another state");

    let run = orgsync(
        &db,
        &[
            "replay",
            "--job",
            &j3.to_string(),
            "--job",
            &j4.to_string(),
            "--state",
            "skipped",
        ],
    )
    .await;
    assert!(run.stdout.contains("replayed 1 job"), "{run:?}");
    assert_eq!(state_of(&pool, j4).await, "available");
    assert_eq!(state_of(&pool, j3).await, "done");

    let run = orgsync(&db, &["replay", "--event-id", "msg_a", "--json"]).await;
    let report: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
    assert_eq!(
        (report["matched"].as_u64(), report["replayed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(report["jobs"][0]["id"], j1);
    assert_eq!(state_of(&pool, j1).await, "available");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_lists_and_changes_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let a = seed_job(&pool, "msg_a", "user.created", "dead", "1 hour").await;
    let b = seed_job(&pool, "msg_b", "organization.updated", "dead", "2 hours").await;
    seed_job(&pool, "msg_c", "user.created", "done", "1 hour").await;
    let before = jobs_table(&pool).await;
    let db = db_url(&pool).await;

    let run = orgsync(&db, &["replay", "--state", "dead", "--dry-run"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("dry run: would replay 2 jobs"), "{run:?}");
    for id in [a, b] {
        assert!(
            run.stdout.lines().any(|l| l.starts_with(&format!("{id} "))),
            "job {id} listed: {run:?}"
        );
    }
    let run = orgsync(&db, &["replay", "--state", "dead", "--dry-run", "--json"]).await;
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(
        (report["matched"].as_u64(), report["replayed"].as_u64()),
        (Some(2), Some(0))
    );

    assert_eq!(jobs_table(&pool).await, before, "a dry run writes nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_without_a_selector_is_refused() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    seed_job(&pool, "msg_a", "user.created", "done", "1 hour").await;
    let before = jobs_table(&pool).await;
    let db = db_url(&pool).await;
    for args in [&["replay"][..], &["replay", "--limit", "5"], &["replay", "--dry-run"]] {
        let run = orgsync(&db, args).await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(run.stderr.contains("at least one selector"), "{run:?}");
    }
    let run = orgsync(&db, &["replay", "--state", "failed"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("unknown state \"failed\""), "{run:?}");
    assert_eq!(jobs_table(&pool).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_twice_is_safe() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let app = TestApp::full(pool.clone()).await;
    assert_eq!(
        app.deliver("msg_org", &fixture("organization.created")).await.status(),
        202
    );
    assert_eq!(app.deliver("msg_user", &fixture("user.created")).await.status(), 202);
    assert_eq!(
        app.deliver("msg_member", &fixture("organizationMembership.created"))
            .await
            .status(),
        202
    );
    let all_done = "select count(*) = 3 from jobs where state = 'done'";
    wait_until(&pool, all_done, Duration::from_secs(10)).await;
    let rows = "select jsonb_build_array(
                  (select jsonb_agg(to_jsonb(h)) from hotels h),
                  (select jsonb_agg(to_jsonb(u)) from users u),
                  (select jsonb_agg(to_jsonb(m)) from memberships m))";
    let before: Value = sqlx::query_scalar(rows).fetch_one(&pool).await.unwrap();

    let db = db_url(&pool).await;
    for _ in 0..2 {
        let run = orgsync(&db, &["replay", "--state", "done"]).await;
        assert!(run.stdout.contains("replayed 3 jobs"), "{run:?}");
        wait_until(&pool, all_done, Duration::from_secs(10)).await;
    }
    let after: Value = sqlx::query_scalar(rows).fetch_one(&pool).await.unwrap();
    assert_eq!(after, before, "applying the same events again changes no row");
    let markers: Vec<i64> = sqlx::query_scalar(
        "select (select count(*) from jsonb_array_elements(errors) e where e ? 'replayed_at') from jobs order by id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(markers, vec![2, 2, 2]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_reports_progress_in_chunks() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let ids: Vec<i64> = sqlx::query_scalar(
        "insert into jobs (event_id, event_type, payload, state)
         select 'msg_' || n, 'user.created', '{}', 'dead' from generate_series(1, 5) n returning id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();

    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let selection = Selection::from_filter(JobFilter {
        state: Some("dead".into()),
        ..JobFilter::default()
    });
    let options = ReplayOptions {
        dry_run: false,
        chunk_size: 2,
    };
    let sink = buf.clone();
    let report = run_replay(&pool, &selection, &options, |total| {
        Progress::lines("replay", Some(total), Box::new(sink), Duration::ZERO)
    })
    .await
    .unwrap();
    assert_eq!((report.matched, report.replayed), (5, 5));
    assert_eq!(ids_of(&report.jobs), ids);
    let printed = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(printed, "replay: 2/5\nreplay: 4/5\nreplay: 5/5\n");
    let available: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'available'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(available, 5);

    // The binary is not on a terminal here: plain lines on stderr, the result on stdout.
    const { assert!(DEFAULT_CHUNK_SIZE >= 5) };
    let run = orgsync(&db_url(&pool).await, &["replay", "--state", "available", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("replay: 5/5"), "{run:?}");
    let report: Value = serde_json::from_str(&run.stdout).expect("stdout is only the JSON report");
    assert_eq!(report["replayed"], 5);
}

// ---------------------------------------------------------------------------------------------
// jobs list / jobs show

#[tokio::test(flavor = "multi_thread")]
async fn jobs_list_filters_and_limits() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let dead = seed_job(&pool, "msg_dead", "organizationMembership.created", "dead", "1 hour").await;
    seed_job(&pool, "msg_done", "user.created", "done", "1 hour").await;
    let db = db_url(&pool).await;

    let run = orgsync(&db, &["jobs", "list", "--state", "dead"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:?}");
    assert!(lines[0].starts_with("ID") && lines[0].contains("LAST ERROR"));
    assert!(
        lines[1].starts_with(&format!("{dead} ")) && lines[1].contains("failure 3"),
        "{run:?}"
    );

    let run = orgsync(&db, &["jobs", "list", "--type", "user.created", "--json"]).await;
    let listed: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0]["event_id"].as_str(), listed[0]["state"].as_str()),
        (Some("msg_done"), Some("done"))
    );
    assert!(listed[0].get("payload").is_none(), "the list leaves payloads out");

    let run = orgsync(&db, &["jobs", "list", "--state", "available"]).await;
    assert_eq!((run.code, run.stdout.trim()), (0, "no jobs match"));

    // Without --limit the list stops at 100 and says so.
    sqlx::query(
        "insert into jobs (event_id, event_type, payload, state)
         select 'msg_bulk_' || n, 'user.updated', '{}', 'done' from generate_series(1, 120) n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let run = orgsync(&db, &["jobs", "list", "--json"]).await;
    assert_eq!(serde_json::from_str::<Vec<Value>>(&run.stdout).unwrap().len(), 100);
    assert!(run.stderr.contains("showing the oldest 100"), "{run:?}");
    let run = orgsync(&db, &["jobs", "list", "--json", "--limit", "500"]).await;
    assert_eq!(serde_json::from_str::<Vec<Value>>(&run.stdout).unwrap().len(), 122);
    assert!(!run.stderr.contains("showing"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_show_prints_payload_attempts_errors_and_times() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let id = seed_job(&pool, "msg_dead", "organizationMembership.created", "dead", "1 hour").await;
    let db = db_url(&pool).await;

    let run = orgsync(&db, &["jobs", "show", &id.to_string()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    for expected in [
        format!("job {id}"),
        "event id:     msg_dead".into(),
        "state:        dead".into(),
        "attempts:     3".into(),
        "history (3 entries):".into(),
        "attempt 2 failed: failure 2".into(),
        "received:".into(),
        "\"id\": \"orgmem_2mariaAlpine000000000001\"".into(),
    ] {
        assert!(run.stdout.contains(&expected), "missing {expected:?}: {run:?}");
    }

    let run = orgsync(&db, &["jobs", "show", &id.to_string(), "--json"]).await;
    let job: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(job["payload"], fixture_json("organizationMembership.created"));
    assert_eq!(job["errors"].as_array().unwrap().len(), 3);
    assert_eq!(job["attempts"], 3);
    for field in ["received_at", "run_at", "updated_at"] {
        assert!(
            job[field]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>()
                .is_ok(),
            "{field}"
        );
    }

    let run = orgsync(&db, &["jobs", "show", "424242"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no job with id 424242"), "{run:?}");
}

// ---------------------------------------------------------------------------------------------
// status

async fn seed_resync(pool: &PgPool, outcome: &str, dry_run: bool, started_ago: &str) {
    sqlx::query(
        "insert into resync_runs (started_at, finished_at, outcome, dry_run, counts, error)
         values (now() - $1::interval, case when $2 <> 'running' then now() - $1::interval + interval '1 minute' end,
                 $2, $3, '{\"hotels_upserted\": 2}', case when $2 = 'failed' then 'Clerk answered 500' end)",
    )
    .bind(started_ago)
    .bind(outcome)
    .bind(dry_run)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn status_is_healthy_on_a_quiet_queue() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    seed_job(&pool, "msg_a", "user.created", "done", "5 minutes").await;
    // A job waiting for a later retry is not "pending too long".
    let retry = seed_job(&pool, "msg_b", "organizationMembership.created", "available", "2 hours").await;
    sqlx::query("update jobs set run_at = now() + interval '5 minutes', waiting_for = 'org_1' where id = $1")
        .bind(retry)
        .execute(&pool)
        .await
        .unwrap();
    seed_resync(&pool, "succeeded", false, "3 hours").await;
    let db = db_url(&pool).await;

    let run = orgsync(&db, &["status"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("status:        healthy"), "{run:?}");
    assert!(run
        .stdout
        .contains("1 available (0 due, 1 scheduled for retry, 1 waiting for a hotel), 1 done, 0 dead"));
    assert!(run.stdout.contains("last resync:   #1 succeeded"), "{run:?}");
    assert!(run.stdout.contains(r#"counts {"hotels_upserted":2}"#), "{run:?}");

    let run = orgsync(&db, &["status", "--json"]).await;
    assert_eq!(run.code, 0);
    let s: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(s["healthy"], true);
    assert_eq!(s["jobs"]["done"], 1);
    assert_eq!(s["scheduled"], 1);
    assert_eq!(s["last_resync"]["outcome"], "succeeded");
    assert_eq!(s["last_resync"]["counts"]["hotels_upserted"], 2);
    let last: chrono::DateTime<chrono::Utc> = s["last_webhook_received_at"].as_str().unwrap().parse().unwrap();
    assert!(
        (chrono::Utc::now() - last).num_minutes() == 5,
        "the newest delivery, 5 minutes ago: {last}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_exits_1_for_dead_jobs() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    seed_job(&pool, "msg_a", "user.created", "dead", "5 minutes").await;
    let run = orgsync(&db_url(&pool).await, &["status"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("needs attention") && run.stdout.contains("1 dead job:"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_exits_1_when_a_due_job_waits_too_long() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    seed_job(&pool, "msg_a", "user.created", "available", "1 hour").await;
    let db = db_url(&pool).await;
    let run = orgsync(&db, &["status"]).await;
    assert_eq!(run.code, 1, "the default threshold is 10 minutes: {run:?}");
    assert!(run.stdout.contains("the oldest due job has waited 1h"), "{run:?}");
    let run = orgsync(&db, &["status", "--max-pending-age", "2h"]).await;
    assert_eq!(run.code, 0, "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_follows_the_last_finished_resync() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let db = db_url(&pool).await;
    seed_resync(&pool, "failed", false, "3 hours").await;
    let run = orgsync(&db, &["status"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("the last resync (#1) failed: Clerk answered 500"),
        "{run:?}"
    );

    // A failed dry run says nothing about the rows; a run in progress does not hide the failure.
    seed_resync(&pool, "failed", true, "2 hours").await;
    seed_resync(&pool, "running", false, "1 minute").await;
    let run = orgsync(&db, &["status", "--json"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let s: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(s["last_resync"]["outcome"], "running");
    assert_eq!(s["problems"].as_array().unwrap().len(), 1);

    seed_resync(&pool, "succeeded", false, "30 seconds").await;
    assert_eq!(orgsync(&db, &["status"]).await.code, 0);
    seed_resync(&pool, "refused", false, "10 seconds").await;
    let run = orgsync(&db, &["status"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("--allow-mass-delete"), "{run:?}");

    // A long resync report is cut on the terminal and whole in JSON.
    let long: Value = (0..100)
        .map(|n| (format!("key_{n}"), Value::from(n)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    sqlx::query("insert into resync_runs (finished_at, outcome, counts) values (now(), 'succeeded', $1)")
        .bind(&long)
        .execute(&pool)
        .await
        .unwrap();
    let run = orgsync(&db, &["status"]).await;
    let line = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("counts"))
        .unwrap();
    assert!(
        line.ends_with("… (all of it with --json)") && line.chars().count() < 220,
        "{line}"
    );
    let run = orgsync(&db, &["status", "--json"]).await;
    let s: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(s["last_resync"]["counts"], long);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_exits_2_when_the_database_cannot_be_read() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let run = orgsync("postgres://postgres@127.0.0.1:1/orgsync", &["status"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.contains("cannot read the database"), "{run:?}");
    let run = orgsync("postgres://postgres@127.0.0.1:1/orgsync", &["status", "--json"]).await;
    assert_eq!(run.code, 2);
    let s: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (s["healthy"].as_bool(), s["unreachable"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(orgsync("not a url", &["status"]).await.code, 2);

    // A reachable server whose database lacks the schema (here: a search path without it)
    // cannot be read either.
    let mut url = reqwest::Url::parse(&db_url(&pool).await).unwrap();
    url.set_path("postgres");
    let bare = format!("{url}?options=-csearch_path%3Dorgsync_none");
    assert_eq!(orgsync(&bare, &["status"]).await.code, 2);
}

// ---------------------------------------------------------------------------------------------
// send

#[tokio::test(flavor = "multi_thread")]
async fn send_round_trips_through_a_running_receiver() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let app = TestApp::full(pool.clone()).await;
    let db = db_url(&pool).await;
    let url = app.url("/webhooks/clerk");

    let run = orgsync(
        &db,
        &[
            "send",
            "organization.created",
            "--url",
            &url,
            "--webhook-secret",
            SECRET,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("202 Accepted") && run.stdout.contains("accepted"),
        "{run:?}"
    );
    // The row appears: the receiver stored the job and a worker applied it.
    wait_until(
        &pool,
        "select exists(select 1 from hotels where name = 'Hotel Alpine')",
        Duration::from_secs(10),
    )
    .await;
    let (event_id, payload): (String, Value) = sqlx::query_as("select event_id, payload from jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        event_id.starts_with("msg_") && run.stdout.contains(&event_id),
        "{event_id}: {run:?}"
    );
    let sent_at = payload["timestamp"].as_i64().unwrap();
    assert!((now_secs() - sent_at).abs() < 60, "timestamped now, not {sent_at}");
    assert_eq!(payload["data"], fixture_json("organization.created")["data"]);

    // --type, and a chosen id: the second delivery of the same id is a duplicate.
    for expected in ["202 Accepted", "200 OK"] {
        let run = orgsync(
            &db,
            &[
                "send",
                "--type",
                "user.created",
                "--event-id",
                "msg_mine",
                "--url",
                &url,
                "--webhook-secret",
                SECRET,
            ],
        )
        .await;
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.contains(expected), "{expected}: {run:?}");
    }
    assert_eq!(job_count(&pool).await, 2);

    // A fixture file of a type orgsync does not handle is stored as skipped.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session.json");
    std::fs::write(
        &path,
        r#"{"object":"event","type":"session.created","data":{"id":"sess_1"}}"#,
    )
    .unwrap();
    let run = orgsync(
        &db,
        &[
            "send",
            path.to_str().unwrap(),
            "--url",
            &url,
            "--webhook-secret",
            SECRET,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let state: String = sqlx::query_scalar("select state from jobs where event_type = 'session.created'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "skipped");

    // The wrong secret: the receiver refuses, send reports it and exits 1.
    let other = "whsec_b3RoZXItc2VjcmV0LW5vdC10aGUtcmlnaHQtb25l";
    let run = orgsync(&db, &["send", "user.deleted", "--url", &url, "--webhook-secret", other]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("401") && run.stdout.contains("bad_signature"),
        "{run:?}"
    );
    assert_eq!(job_count(&pool).await, 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn send_signs_with_the_stored_secret_by_default() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let db = db_url(&pool).await;
    // Before any `serve`, there is no secret to sign with.
    let run = orgsync(
        &db,
        &["send", "user.created", "--url", "http://127.0.0.1:1/webhooks/clerk"],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("no webhook secret"), "{run:?}");

    // A receiver started without a secret generates and stores one; send finds it there.
    let app = TestApp::spawn(pool.clone(), config(None, false)).await;
    let run = orgsync(&db, &["send", "user.created", "--url", &app.url("/webhooks/clerk")]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("202 Accepted"), "{run:?}");
    assert_eq!(job_count(&pool).await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn send_explains_what_it_cannot_do() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let db = db_url(&pool).await;
    let closed = "http://127.0.0.1:1/webhooks/clerk";
    let run = orgsync(
        &db,
        &["send", "user.created", "--url", closed, "--webhook-secret", SECRET],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("is `orgsync serve` running there?"), "{run:?}");
    let run = orgsync(
        &db,
        &["send", "user.exploded", "--url", closed, "--webhook-secret", SECRET],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("neither a file nor a built-in event type"),
        "{run:?}"
    );
    let run = orgsync(&db, &["send", "--url", closed, "--webhook-secret", SECRET]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("give a fixture file or an event type"), "{run:?}");
    let run = orgsync(
        &db,
        &[
            "send",
            "user.created",
            "--url",
            closed,
            "--webhook-secret",
            "sk_test_123",
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("not a valid Svix secret") && !run.stderr.contains("sk_test_123"),
        "{run:?}"
    );
}
