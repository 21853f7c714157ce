//! Running the resync: one at a time across a fleet, the schedule, the self-heal of one hotel,
//! and the `orgsync resync` command and its report.

mod common;
mod fake_clerk;
mod resync_support;

use std::time::Duration;

use common::*;
use fake_clerk::{org, FakeClerk, KEY};
use orgsync::clerk::api::ClerkClient;
use orgsync::clerk::HotelId;
use orgsync::queue::runner::Heal;
use orgsync::resync::{resync, Outcome, ResyncError, ResyncReport, SelfHeal};
use resync_support::*;
use serde_json::Value;
use sqlx::PgPool;

#[tokio::test(flavor = "multi_thread")]
async fn only_one_resync_runs_at_a_time_and_an_interrupted_run_is_closed() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    fake.seed(2, 2, 2, BASE);
    // A run whose process died: still "running".
    sqlx::query("insert into resync_runs (started_at) values (now() - interval '1 hour')")
        .execute(&pool)
        .await
        .unwrap();

    let mut holder = pool.acquire().await.unwrap().detach();
    let got: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(orgsync::resync::RESYNC_LOCK_KEY)
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert!(got);
    let err = resync(&pool, &fake.client(), &opts()).await.unwrap_err();
    assert!(matches!(err, ResyncError::Busy), "{err}");
    assert_eq!(fake.log().len(), 0, "a busy resync asks Clerk nothing");
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(orgsync::resync::RESYNC_LOCK_KEY)
        .execute(&mut holder)
        .await
        .unwrap();
    sqlx::Connection::close(holder).await.unwrap();

    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert_eq!(report.hotels.created.len(), 2);
    let (outcome, error): (String, Option<String>) =
        sqlx::query_as("select outcome, error from resync_runs order by id limit 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(outcome, "failed");
    assert!(error.unwrap().contains("interrupted"));
}

// ---------------------------------------------------------------------------------------------
// Schedule and self-heal

fn with_clerk(fake: &FakeClerk, worker: bool) -> orgsync::app::ServeConfig {
    let mut c = config(Some(SECRET), worker);
    c.clerk = Some(fake.clerk_config());
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduled_resync_uses_the_configured_mass_delete_threshold() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = converged(&pool, 10, 5, 5).await;
    for i in 1..=5 {
        fake.delete_org(&format!("org_s{i:07}")); // half of the live hotels gone from Clerk
    }
    sqlx::query("delete from resync_runs").execute(&pool).await.unwrap(); // due at once
    let mut cfg = with_clerk(&fake, false);
    cfg.resync_interval = Some(Duration::from_secs(3600));
    let refused = TestApp::spawn(pool.clone(), cfg.clone()).await;
    let finished = "select exists (select 1 from resync_runs where outcome <> 'running')";
    wait_until(&pool, finished, Duration::from_secs(10)).await;
    refused.stop().await;
    let outcome: String = sqlx::query_scalar("select outcome from resync_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        outcome, "refused",
        "the default 10% threshold refuses deleting half the hotels"
    );
    assert_eq!(live(&pool, "hotels").await, 10, "a refused run writes nothing");

    sqlx::query("delete from resync_runs").execute(&pool).await.unwrap();
    cfg.mass_delete_threshold = 0.6;
    let allowed = TestApp::spawn(pool.clone(), cfg).await;
    wait_until(&pool, finished, Duration::from_secs(10)).await;
    allowed.stop().await;
    let (outcome, error): (String, Option<String>) = sqlx::query_as("select outcome, error from resync_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outcome, "succeeded", "{error:?}");
    assert_eq!(live(&pool, "hotels").await, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_scheduling_at_once_run_one_resync() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    fake.seed(5, 5, 5, BASE);
    let mut cfg = with_clerk(&fake, false);
    cfg.resync_interval = Some(Duration::from_secs(3600));
    let a = TestApp::spawn(pool.clone(), cfg.clone()).await;
    let b = TestApp::spawn(pool.clone(), cfg).await;
    wait_until(
        &pool,
        "select exists (select 1 from resync_runs where outcome = 'succeeded')",
        Duration::from_secs(10),
    )
    .await;
    // Both replicas look again meanwhile (they look at once, then every minute): still one run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(scalar_i64(&pool, "select count(*) from resync_runs").await, 1);
    assert_eq!(fake.requests("/v1/users/count"), 1, "one listing, by one replica");
    assert_eq!(live(&pool, "hotels").await, 5);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_schedule_waits_for_the_interval_since_the_last_run() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    fake.seed(1, 1, 1, BASE);
    // A successful run finished just now, by another replica.
    sqlx::query("insert into resync_runs (outcome, finished_at) values ('succeeded', now())")
        .execute(&pool)
        .await
        .unwrap();
    let mut cfg = with_clerk(&fake, false);
    cfg.resync_interval = Some(Duration::from_millis(800));
    let app = TestApp::spawn(pool.clone(), cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.log().len(), 0, "not due yet");
    wait_until(
        &pool,
        "select count(*) = 2 from resync_runs where outcome = 'succeeded'",
        Duration::from_secs(10),
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn self_heal_fetches_a_missing_parent_and_tombstones_an_unknown_one() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    // Clerk holds the hotel and the membership whose webhook arrives below (the self-heal lists
    // the hotel's memberships too, and treats older news of members it did not list as obsolete).
    fake.seed(1, 1, 1, BASE);
    let mut cfg = with_clerk(&fake, true);
    cfg.self_heal_after = 2;
    let app = TestApp::spawn(pool.clone(), cfg).await;

    // organization.created was lost: only the membership arrives.
    let body = with_data("organizationMembership.created", |v| {
        v["data"]["organization"]["id"] = "org_s0000000".into();
        v["data"]["public_user_data"]["user_id"] = "user_s0000000".into();
    });
    assert!(app.deliver("msg_heal_found", &body).await.status().is_success());
    wait_until(
        &pool,
        "select exists (select 1 from memberships where hotel_id = 'org_s0000000')",
        Duration::from_secs(10),
    )
    .await;
    let name: String = sqlx::query_scalar("select name from hotels where id = 'org_s0000000'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, "Hotel 0", "the hotel came from the Clerk API");
    assert_eq!(fake.requests("/v1/organizations/org_s0000000"), 1);

    // An organization Clerk does not have: 404 → tombstone, and the job ends as obsolete.
    let body = with_data("organizationMembership.created", |v| {
        v["data"]["id"] = "orgmem_2unknownOrg0000000001".into();
        v["data"]["organization"]["id"] = "org_2unknown00000000000001".into();
    });
    assert!(app.deliver("msg_heal_missing", &body).await.status().is_success());
    wait_until(
        &pool,
        "select state = 'done' from jobs where event_id = 'msg_heal_missing'",
        Duration::from_secs(10),
    )
    .await;
    assert!(!is_live_hotel(&pool, "org_2unknown00000000000001").await);
    assert_eq!(
        scalar_i64(
            &pool,
            "select count(*) from memberships where hotel_id = 'org_2unknown00000000000001'"
        )
        .await,
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn self_heal_waits_for_the_attempts_and_does_not_hammer() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    fake.seed(1, 0, 0, BASE);
    let heal = SelfHeal::new(pool.clone(), fake.client(), 3);
    let hotel = HotelId::parse("org_s0000000").unwrap();
    heal.heal(hotel.clone(), 1).await;
    heal.heal(hotel.clone(), 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fake.log().len(), 0, "not before the configured attempts");
    for attempt in 3..8 {
        heal.heal(hotel.clone(), attempt).await;
    }
    fake.wait_for_requests("/v1/organizations/org_s0000000", 1).await;
    wait_until(
        &pool,
        "select exists (select 1 from hotels where id = 'org_s0000000')",
        Duration::from_secs(5),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fake.requests("/v1/organizations/org_s0000000"),
        1,
        "one fetch per cooldown"
    );

    // A 404 from something that is not Clerk (a proxy, a wrong URL) is not "deleted".
    let stranger = ClerkClient::new(
        &format!("{}/nothing-here", fake.url()),
        KEY,
        100,
        Duration::from_secs(2),
    )
    .unwrap();
    let err = SelfHeal::new(pool.clone(), stranger, 1)
        .heal_now(&HotelId::parse("org_2other").unwrap())
        .await;
    assert!(err.is_err());
    assert_eq!(
        scalar_i64(&pool, "select count(*) from hotels where id = 'org_2other'").await,
        0
    );
}

// ---------------------------------------------------------------------------------------------
// The command

async fn database_url(pool: &PgPool) -> String {
    test_database_url(pool).await
}

async fn orgsync(pool: &PgPool, fake: &FakeClerk, key: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgsync"))
        .arg("resync")
        .args(args)
        .env("DATABASE_URL", database_url(pool).await)
        .env("CLERK_API_URL", fake.url())
        .env("CLERK_SECRET_KEY", key)
        .env("CLERK_RATE_LIMIT", "1000")
        .env("ORGSYNC_LOG_FORMAT", "pretty")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_prints_the_difference_and_exits_by_outcome() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = converged(&pool, 20, 5, 5).await;
    fake.put_org(&org("org_new0000001", "New", BASE + 99, BASE + 99));
    let before = fingerprint(&pool).await;

    let (code, stdout, stderr) = orgsync(&pool, &fake, KEY, &["--dry-run", "--json", "--verbose"]).await;
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["hotels"]["created"], 1);
    assert_eq!(report["hotels"]["ids"]["created"][0], "org_new0000001");
    assert!(
        stderr.contains("listing organizations"),
        "plain progress lines off a terminal: {stderr}"
    );
    assert_eq!(fingerprint(&pool).await, before);

    let (code, stdout, _) = orgsync(&pool, &fake, KEY, &[]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("resync succeeded"), "{stdout}");
    assert!(is_live_hotel(&pool, "org_new0000001").await);

    fake.delete_org("org_s0000001");
    fake.delete_org("org_s0000002");
    fake.delete_org("org_s0000003");
    let (code, _, stderr) = orgsync(&pool, &fake, KEY, &[]).await;
    assert_eq!(code, 2, "refused: {stderr}");
    assert!(stderr.contains("--allow-mass-delete"), "{stderr}");
    let (code, stdout, _) = orgsync(&pool, &fake, KEY, &["--allow-mass-delete", "-v"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("- hotel org_s0000002"), "{stdout}");

    let (code, _, stderr) = orgsync(&pool, &fake, "sk_test_wrongkey", &[]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("CLERK_SECRET_KEY"), "{stderr}");
    assert!(!stderr.contains("sk_test_wrongkey"), "the key never shows: {stderr}");
}

#[test]
fn report_text_lists_ids_only_when_verbose() {
    let mut report = dummy_report();
    report.hotels.created.push("org_x".into());
    let plain = orgsync::resync::render_text(&report, false);
    assert!(plain.contains("hotels") && !plain.contains("org_x"));
    assert!(orgsync::resync::render_text(&report, true).contains("+ hotel org_x"));
}

/// The report of an empty run.
fn dummy_report() -> ResyncReport {
    ResyncReport {
        run_id: 1,
        dry_run: true,
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        outcome: Outcome::Succeeded,
        complete: true,
        listed: Default::default(),
        hotels: Default::default(),
        users: Default::default(),
        memberships: Default::default(),
        roles: Default::default(),
        permissions: Default::default(),
        invitations: Default::default(),
        role_sets: Default::default(),
        members_outside_role_set: 0,
        memberships_ended_by_deletes: 0,
        skipped: Default::default(),
        mass_delete: None,
        error: None,
    }
}
