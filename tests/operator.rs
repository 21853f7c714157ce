//! Operator commands against a real database in a known state: `status`, `send` and `access`,
//! through the library functions and through the built `orgsync` binary (exit codes, output,
//! and what changed in the database).

mod common;

use std::time::Duration;

use common::cli::*;
use common::*;
use serde_json::Value;
use sqlx::PgPool;

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

// ---------------------------------------------------------------------------------------------
// access

/// A hotel with three members: Jane (`org:manager`, a role known with `org:bookings:read`), Ben
/// (`org:manager`, banned) and Kim (`org:night`, a role not known yet, with Clerk's permissions
/// on the membership). Seeded as rows: these tests are about the command, not the rules.
async fn seed_access(pool: &PgPool) {
    sqlx::raw_sql(
        r#"
        insert into hotels (id, name, created_at, updated_at, clerk_version)
            values ('org_h', 'Harbour Hotel', now(), now(), 1);
        insert into users (id, email, created_at, updated_at, clerk_version, banned)
            values ('user_jane', 'jane@example.com', now(), now(), 1, false),
                   ('user_ben', 'ben@example.com', now(), now(), 1, true),
                   ('user_kim', 'kim@example.com', now(), now(), 1, false);
        insert into roles (id, key, name, created_at, updated_at, clerk_version)
            values ('role_m', 'org:manager', 'Manager', now(), now(), 1);
        insert into permissions (id, key, name, created_at, updated_at, clerk_version)
            values ('perm_r', 'org:bookings:read', 'Read bookings', now(), now(), 1),
                   ('perm_w', 'org:bookings:write', 'Write bookings', now(), now(), 1);
        insert into role_permissions values ('role_m', 'perm_r');
        insert into memberships (hotel_id, user_id, clerk_membership_id, role, role_name, permissions,
                                 created_at, updated_at, clerk_version)
            values ('org_h', 'user_jane', 'orgmem_j', 'org:manager', 'Manager', '{}', now(), now(), 1),
                   ('org_h', 'user_ben', 'orgmem_b', 'org:manager', 'Manager', '{}', now(), now(), 1),
                   ('org_h', 'user_kim', 'orgmem_k', 'org:night', 'Night audit',
                    '{org:bookings:write}', now(), now(), 1);
        "#,
    )
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn access_exits_0_when_held_and_1_when_not_with_the_reason() {
    let db = TestDb::new().await;
    seed_access(&db.pool).await;
    let url = db_url(&db.pool).await;

    let run = orgsync(&url, &["access", "user_jane", "org_h", "org:bookings:read"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("org:bookings:read: held"), "{run:?}");
    assert!(run.stdout.contains("granted by:  role role_m (Manager)"), "{run:?}");

    let run = orgsync(&url, &["access", "user_jane", "org_h", "org:bookings:write"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("org:bookings:write: not held"), "{run:?}");
    assert!(
        run.stdout
            .contains("because role org:manager does not grant org:bookings:write"),
        "{run:?}"
    );

    // Without a permission: a member with access exits 0 and lists what the role grants.
    let run = orgsync(&url, &["access", "user_jane", "org_h", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let a: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(a["grants"], serde_json::json!(["org:bookings:read"]));
    assert_eq!(a["membership"]["source"]["role"]["role_id"], "role_m");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_explains_a_banned_user_an_unknown_role_and_a_stranger() {
    let db = TestDb::new().await;
    seed_access(&db.pool).await;
    let url = db_url(&db.pool).await;

    let run = orgsync(&url, &["access", "user_ben", "org_h", "org:bookings:read"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("because the user is banned"), "{run:?}");
    assert!(run.stdout.contains("permissions: none"), "{run:?}");
    assert_eq!(orgsync(&url, &["access", "user_ben", "org_h"]).await.code, 1);

    // The role is not known yet: the membership's own permissions stand in.
    let run = orgsync(&url, &["access", "user_kim", "org_h", "org:bookings:write"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("the membership's own permissions"), "{run:?}");

    // Once the permission is deleted in Clerk, it grants nothing, and the reason says so.
    sqlx::query("update permissions set deleted_at = now(), clerk_version = 2 where id = 'perm_w'")
        .execute(&db.pool)
        .await
        .unwrap();
    let run = orgsync(&url, &["access", "user_kim", "org_h", "org:bookings:write"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("because permission org:bookings:write was deleted in Clerk"),
        "{run:?}"
    );

    let run = orgsync(&url, &["access", "user_nobody", "org_h", "org:bookings:read"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("no membership"), "{run:?}");
    assert!(run.stdout.contains("user user_nobody is not in the mirror"), "{run:?}");

    // A removed membership holds nothing.
    sqlx::query("update memberships set deleted_at = now(), clerk_version = 2 where user_id = 'user_jane'")
        .execute(&db.pool)
        .await
        .unwrap();
    let run = orgsync(&url, &["access", "user_jane", "org_h", "org:bookings:read"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("because the membership was removed"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_exits_2_when_the_database_cannot_be_read() {
    let run = orgsync(
        "postgres://postgres@127.0.0.1:1/orgsync",
        &["access", "user_jane", "org_h", "org:bookings:read"],
    )
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("cannot read the database"), "{run:?}");
    assert_eq!(orgsync("not a url", &["access", "user_jane", "org_h"]).await.code, 2);
}
