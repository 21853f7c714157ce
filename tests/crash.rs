//! A worker process killed with SIGKILL in the middle of a batch: nothing of the batch is
//! visible, its jobs run again elsewhere, and the final state is the same.

mod common;

use std::time::Duration;

use common::events::*;
use common::*;

const T0: i64 = 1_764_000_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_batch_leaves_nothing_half_applied() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let h0 = "org_2crash0000000000000000000";
    insert_job(
        &pool,
        "h0",
        &organization("organization.created", h0, "Zero", T0, T0, 1),
    )
    .await;
    drain(&pool, &fast_workers(), 5).await;

    let others: Vec<String> = (1..=3).map(|i| format!("org_2crash{i:019}")).collect();
    for (i, h) in others.iter().enumerate() {
        insert_job(
            &pool,
            &format!("h{}", i + 1),
            &organization("organization.created", h, "New", T0, T0, 1),
        )
        .await;
    }
    insert_job(
        &pool,
        "h0-update",
        &organization("organization.updated", h0, "Zero renamed", T0, T0 + 1, 1),
    )
    .await;
    insert_job(
        &pool,
        "u",
        &user(
            "user.created",
            "user_2crash000000000000000001",
            "U",
            "u@x.test",
            T0,
            T0,
            1,
        ),
    )
    .await;

    // Hold hotel h0 so the worker blocks on the fourth job, the first three applied but not
    // committed.
    let blocker = hold_hotel_row(&pool, h0).await;
    let url = test_database_url(&pool).await;
    let mut worker = spawn_worker_process(&url, &["--workers", "1", "--batch-size", "10"]);
    wait_for_lock_waiters(&pool, "orgsync", 1).await;
    // The worker's session (the test's own pool is named orgsync too: tell them apart by pid).
    let waiter: i32 = sqlx::query_scalar(
        "select pid from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    worker.start_kill().unwrap(); // SIGKILL: no graceful anything
    worker.wait().await.unwrap();
    // Postgres notices the dead client and rolls its transaction back.
    wait_until(
        &pool,
        &format!("select count(*) = 0 from pg_stat_activity where pid = {waiter}"),
        Duration::from_secs(30),
    )
    .await;
    let visible: i64 = sqlx::query_scalar("select count(*) from hotels where id = any($1)")
        .bind(&others)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(visible, 0, "the killed batch's applied events are not visible");
    let pending: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'available' and attempts = 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 5, "every job of the killed batch is claimable again");
    blocker.commit().await.unwrap();

    // Another worker runs them: the same final state as if nothing had happened.
    drain(&pool, &fast_workers(), 5).await;
    let states: Vec<(String, i32)> = sqlx::query_as("select state, attempts from jobs order by id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(states.iter().all(|(s, a)| s == "done" && *a == 1), "{states:?}");
    let names: Vec<String> = sqlx::query_scalar("select name from hotels order by id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(names, vec!["Zero renamed", "New", "New", "New"]);
}

#[test]
fn every_command_parses_its_defaults() {
    // Clap checks flag definitions only when a command is parsed: parse each one with its
    // defaults so a mistyped definition fails here, not in production.
    use clap::Parser;
    for args in [
        &["orgsync", "serve"][..],
        &["orgsync", "serve", "--no-receiver", "--resync-interval", "off"],
        &["orgsync", "migrate"],
        &["orgsync", "resync", "--dry-run"],
        &["orgsync", "status"],
        &["orgsync", "jobs", "list", "--state", "dead", "--since", "2h"],
        &["orgsync", "jobs", "show", "1"],
        &["orgsync", "replay", "--state", "dead", "--dry-run"],
        &["orgsync", "send", "organization.created"],
        &["orgsync", "healthcheck"],
    ] {
        let cli = orgsync::cli::Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        if let orgsync::cli::Command::Serve(serve) = cli.command {
            let _ = serve.config();
        }
    }
}
