//! Operator commands on the job queue against a real database in a known state: `replay`,
//! `jobs list` and `jobs show`, through the library functions and through the built `orgsync`
//! binary (exit codes, output, and what changed in the database).

mod common;

use std::time::Duration;

use common::cli::*;
use common::*;
use orgsync::ops::replay::{ReplayOptions, DEFAULT_CHUNK_SIZE};
use orgsync::ops::JobFilter;
use orgsync::ops::{list_jobs, replay_jobs, run_replay, Progress, Selection};
use serde_json::Value;

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
