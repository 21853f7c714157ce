//! The resync against a fake Clerk Backend API: pagination, convergence, the rails around
//! deletes, the dry run and races with webhooks. Clerk failures, the mass-delete refusal and
//! operations are in `resync_failures.rs` and `resync_operations.rs`.

mod common;
mod fake_clerk;
mod resync_support;

use std::time::{Duration, Instant};

use common::*;
use fake_clerk::{membership, org, user, FakeClerk, KEY};
use orgsync::clerk::{ClerkEvent, HotelId};
use orgsync::resync::{resync, Outcome, ResyncOptions};
use resync_support::*;
use serde_json::Value;
use sqlx::PgPool;

// ---------------------------------------------------------------------------------------------
// Pagination and convergence

/// Resyncs `n` organizations, users and memberships into an empty database, then again with
/// nothing changed, which must write nothing.
async fn converge_from_empty(pool: PgPool, n: usize) {
    let fake = FakeClerk::start().await;
    fake.seed(n, n, n, BASE);
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Succeeded);
    assert!(report.complete);
    assert_eq!(
        (
            report.listed.organizations,
            report.listed.memberships,
            report.listed.users
        ),
        (n as u64, n as u64, n as u64)
    );
    assert_eq!(report.hotels.created.len(), n);
    assert_eq!(report.users.created.len(), n);
    assert_eq!(report.memberships.created.len(), n);
    assert_eq!(live(&pool, "hotels").await, n as i64);
    assert_eq!(live(&pool, "users").await, n as i64);
    assert_eq!(live(&pool, "memberships").await, n as i64);

    // Offset pages for organizations and memberships; a cursor walk for users that ends with a
    // short page (an exactly full last page needs one more, empty, request).
    let pages = n.div_ceil(500).max(1);
    assert_eq!(fake.requests("/v1/organizations"), pages);
    assert_eq!(fake.requests("/v1/organization_memberships"), pages);
    assert_eq!(fake.requests("/v1/users"), n / 500 + 1);
    for l in fake.log().iter().filter(|l| l.path == "/v1/organizations") {
        assert_eq!(l.param("limit"), Some("500"));
        assert_eq!(l.param("order_by"), Some("created_at"));
    }
    let cursors: Vec<_> = fake
        .log()
        .iter()
        .filter_map(|l| l.param("starting_after").map(str::to_owned))
        .collect();
    if n >= 500 {
        assert_eq!(
            cursors.len(),
            1,
            "the second users page continues after the first page's last user"
        );
    }

    let before = fingerprint(&pool).await;
    let again = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(again.is_unchanged(), "{:?}", again.to_json(true));
    assert_eq!(fingerprint(&pool).await, before, "an unchanged resync writes no row");
    let runs = scalar_i64(&pool, "select count(*) from resync_runs where outcome = 'succeeded'").await;
    assert_eq!(runs, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_with_0_items() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    converge_from_empty(pool, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_with_1_item() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    converge_from_empty(pool, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_with_500_items() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    converge_from_empty(pool, 500).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_with_501_items() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    converge_from_empty(pool, 501).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_converges_a_stale_database() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = converged(&pool, 20, 30, 40).await;
    let t = BASE + 100_000;
    // Clerk moved on while webhooks were lost:
    let renamed = org("org_s0000001", "Renamed Hotel", BASE + 1, t);
    fake.put_org(&renamed);
    fake.delete_org("org_s0000002"); // 1 of 20 hotels: under the 10% rail
    let new_org = org("org_new0000001", "New Hotel", t, t);
    fake.put_org(&new_org);
    fake.delete_user("user_s0000003");
    fake.delete_membership("orgmem_s0000005");
    let users_of = |i: usize| {
        user(
            &format!("user_s{i:07}"),
            &format!("person{i}@example.com"),
            "Person",
            &format!("{i}"),
            BASE,
            BASE,
        )
    };
    let promoted = membership(
        "orgmem_s0000006",
        &org("org_s0000006", "Hotel 6", BASE + 6, BASE + 6),
        &users_of(12),
        "org:admin",
        BASE + 6,
        t,
    );
    fake.put_membership(&promoted);
    // A member whose user the users listing misses (created meanwhile): fetched by id.
    let hidden = user("user_hidden000001", "hidden@example.com", "Hid", "Den", t, t);
    fake.put_user(&hidden);
    fake.hide_from_listings("user_hidden000001");
    fake.put_membership(&membership("orgmem_new0000001", &new_org, &hidden, "org:member", t, t));
    // A membership of an organization the organizations listing does not have (yet).
    let unlisted = org("org_unlisted00001", "Unlisted", t, t);
    fake.put_membership(&membership(
        "orgmem_new0000002",
        &unlisted,
        &users_of(1),
        "org:member",
        t,
        t,
    ));
    // A hotel this database already tombstoned stays a tombstone, even though Clerk lists it.
    apply(
        &pool,
        ClerkEvent::OrganizationDeleted {
            id: HotelId::parse("org_s0000004").unwrap(),
            at: now_ms(),
        },
    )
    .await;
    let live_hotels_before = live(&pool, "hotels").await;

    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert_eq!(report.hotels.created.ids(), vec!["org_new0000001"]);
    assert_eq!(report.hotels.updated.ids(), vec!["org_s0000001"]);
    assert_eq!(report.hotels.deleted.ids(), vec!["org_s0000002"]);
    assert_eq!(report.users.deleted.ids(), vec!["user_s0000003"]);
    assert_eq!(report.users.created.ids(), vec!["user_hidden000001"]);
    // Seeded membership m joins org m % 20 and user (7 * org + m / 20) % 30.
    assert_eq!(report.memberships.deleted.ids(), vec!["org_s0000005/user_s0000005"]);
    assert_eq!(report.memberships.updated.ids(), vec!["org_s0000006/user_s0000012"]);
    assert_eq!(report.skipped.memberships_without_hotel, 1);
    assert!(
        report.skipped.memberships_obsolete >= 1,
        "memberships of the tombstoned hotel are obsolete"
    );

    let name: String = sqlx::query_scalar("select name from hotels where id = 'org_s0000001'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, "Renamed Hotel");
    assert!(!is_live_hotel(&pool, "org_s0000002").await);
    assert!(!is_live_hotel(&pool, "org_s0000004").await, "tombstones are final");
    assert!(is_live_hotel(&pool, "org_new0000001").await);
    assert_eq!(live(&pool, "hotels").await, live_hotels_before);
    // The delete is dated when the listing began, and versioned then.
    let (deleted_at, version): (chrono::DateTime<chrono::Utc>, i64) =
        sqlx::query_as("select deleted_at, clerk_version from hotels where id = 'org_s0000002'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(deleted_at, report.started_at);
    assert_eq!(version, report.started_at.timestamp_millis());
    // Cascades: the deleted hotel's and user's memberships ended with them.
    assert_eq!(
        scalar_i64(
            &pool,
            "select count(*) from memberships where hotel_id = 'org_s0000002' and deleted_at is null"
        )
        .await,
        0
    );
    assert_eq!(
        scalar_i64(
            &pool,
            "select count(*) from memberships where user_id = 'user_s0000003' and deleted_at is null"
        )
        .await,
        0
    );
    let (version, first_name): (i64, Option<String>) =
        sqlx::query_as("select clerk_version, first_name from users where id = 'user_hidden000001'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (version, first_name.as_deref()),
        (t, Some("Hid")),
        "the whole user, not a stub"
    );
    let role: String = sqlx::query_scalar("select role from memberships where clerk_membership_id = 'orgmem_s0000006'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(role, "org:admin");
    assert_eq!(
        scalar_i64(&pool, "select count(*) from hotels where id = 'org_unlisted00001'").await,
        0
    );

    // Converged: the next run changes nothing.
    let before = fingerprint(&pool).await;
    let again = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(again.is_unchanged(), "{}", again.to_json(true));
    assert_eq!(fingerprint(&pool).await, before);
}

/// Listed objects pass through the staging area (COPY's text format): text that COPY treats
/// specially (tabs, newlines, backslashes, `\N`) arrives in the rows exactly as Clerk sent it.
#[tokio::test(flavor = "multi_thread")]
async fn text_copy_treats_specially_survives_the_staging_area() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    let name = "Tab\there, line\nbreak, back\\slash, \\N and \\t, \"quoted\"";
    fake.put_org(&org("org_copy00000001", name, BASE, BASE));
    fake.put_user(&user(
        "user_copy0000001",
        "a\\b@example.com",
        "\\N",
        "Cr\rLf",
        BASE,
        BASE,
    ));
    resync(&pool, &fake.client(), &opts()).await.unwrap();
    let stored: String = sqlx::query_scalar("select name from hotels where id = 'org_copy00000001'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, "Tab\there, line\nbreak, back\\slash, \\N and \\t, \"quoted\"");
    let (email, first, last): (Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("select email, first_name, last_name from users where id = 'user_copy0000001'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (email.as_deref(), first.as_deref(), last.as_deref()),
        (Some("a\\b@example.com"), Some("\\N"), Some("Cr\rLf"))
    );
    let again = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(again.is_unchanged(), "{}", again.to_json(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_whose_user_clerk_does_not_return_gets_a_stub() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = converged(&pool, 2, 2, 2).await;
    let t = BASE + 100_000;
    // Clerk lists the membership but (deleted meanwhile, say) not the user, even by id.
    let ghost = user("user_ghost0000001", "ghost@example.com", "Gho", "St", t, t);
    let hotel = org("org_s0000000", "Hotel 0", BASE, BASE);
    fake.put_membership(&membership("orgmem_ghost00001", &hotel, &ghost, "basic_member", t, t));

    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert_eq!(report.users.created.ids(), vec!["user_ghost0000001"]);
    assert_eq!(report.memberships.created.ids(), vec!["org_s0000000/user_ghost0000001"]);
    let (version, email): (i64, Option<String>) =
        sqlx::query_as("select clerk_version, email from users where id = 'user_ghost0000001'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (version, email.as_deref()),
        (0, Some("ghost@example.com")),
        "a version-0 stub from public_user_data"
    );
    let role: String = sqlx::query_scalar("select role from memberships where user_id = 'user_ghost0000001'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(role, "org:member", "legacy role keys are normalised");
}

// ---------------------------------------------------------------------------------------------
// Safety rails

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_writes_nothing_and_reports_the_difference() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = converged(&pool, 20, 20, 20).await;
    fake.put_org(&org("org_s0000003", "Renamed", BASE + 3, BASE + 50_000));
    fake.put_org(&org("org_new0000001", "New", BASE + 99, BASE + 99));
    fake.delete_org("org_s0000007");
    fake.delete_user("user_s0000009");
    let before = fingerprint(&pool).await;

    let dry = resync(
        &pool,
        &fake.client(),
        &ResyncOptions {
            dry_run: true,
            ..opts()
        },
    )
    .await
    .unwrap();
    assert!(dry.dry_run);
    assert_eq!(fingerprint(&pool).await, before, "a dry run writes no row");
    assert_eq!(dry.hotels.created.ids(), vec!["org_new0000001"]);
    assert_eq!(dry.hotels.updated.ids(), vec!["org_s0000003"]);
    assert_eq!(dry.hotels.deleted.ids(), vec!["org_s0000007"]);
    assert_eq!(dry.users.deleted.ids(), vec!["user_s0000009"]);
    let (outcome, dry_run, counts, _) = last_run(&pool).await;
    assert_eq!((outcome.as_str(), dry_run), ("succeeded", true));
    assert_eq!(counts["hotels"]["deleted"], 1);
    let json = dry.to_json(true);
    assert_eq!(json["hotels"]["ids"]["created"][0], "org_new0000001");
    assert!(dry.to_json(false)["hotels"].get("ids").is_none());

    // The real run does what the dry run said.
    let real = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert_eq!(
        (real.hotels.clone(), real.users.deleted.clone()),
        (dry.hotels.clone(), dry.users.deleted.clone())
    );
    let mut a = real.memberships.deleted.ids().to_vec();
    let mut b = dry.memberships.deleted.ids().to_vec();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_the_listing_skipped_are_confirmed_by_id_and_kept() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = converged(&pool, 20, 20, 20).await;
    // Offset pages skip objects when others are deleted meanwhile: here, simply missing.
    fake.hide_from_listings("org_s0000003");
    fake.hide_from_listings("user_s0000004");
    fake.hide_from_listings("orgmem_s0000005");
    fake.put_org(&org("org_s0000003", "Hotel 3 renamed", BASE + 3, BASE + 70_000));

    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(
        report.hotels.deleted.is_empty() && report.users.deleted.is_empty(),
        "{}",
        report.to_json(true)
    );
    assert!(report.memberships.deleted.is_empty(), "{}", report.to_json(true));
    assert_eq!(report.skipped.deletes_not_confirmed, 3);
    assert!(is_live_hotel(&pool, "org_s0000003").await);
    // Found by id, it is also brought up to date.
    assert_eq!(report.hotels.updated.ids(), vec!["org_s0000003"]);
    let asked = fake
        .log()
        .iter()
        .any(|l| l.path == "/v1/organizations" && l.param("organization_id") == Some("org_s0000003"));
    assert!(asked);
    assert_eq!(fake.requests("/v1/organizations/org_s0000005/memberships"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_of_an_unexpected_shape_are_neither_written_nor_deleted() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = converged(&pool, 20, 20, 20).await;
    let mut broken_org = org("org_s0000001", "x", BASE + 1, BASE + 80_000);
    broken_org["name"] = Value::from(5);
    fake.put_org(&broken_org);
    let mut broken_member = membership(
        "orgmem_s0000002",
        &org("org_s0000002", "Hotel 2", BASE + 2, BASE + 2),
        &user("user_s0000014", "person14@example.com", "Person", "14", BASE, BASE),
        "org:member",
        BASE + 2,
        BASE + 80_000,
    );
    broken_member["public_user_data"]
        .as_object_mut()
        .unwrap()
        .remove("user_id");
    fake.put_membership(&broken_member);

    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert_eq!(report.skipped.invalid_items, 2);
    assert!(report.is_unchanged(), "{}", report.to_json(true));
    assert!(is_live_hotel(&pool, "org_s0000001").await);
    assert_eq!(
        scalar_i64(
            &pool,
            "select count(*) from memberships where hotel_id = 'org_s0000002' and deleted_at is null"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resync_racing_with_webhooks_never_overwrites_them_with_older_data() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = converged(&pool, 20, 20, 20).await;
    // What the listing will return: newer than the rows, older than the webhooks below.
    let listed_at = BASE + 50_000;
    fake.put_org(&org("org_s0000001", "Listed name", BASE + 1, listed_at));
    fake.put_org(&org("org_s0000002", "Listed B", BASE + 2, listed_at));
    let m3 = membership(
        "orgmem_s0000003",
        &org("org_s0000003", "Hotel 3", BASE + 3, BASE + 3),
        &user("user_s0000001", "person1@example.com", "Person", "1", BASE, BASE),
        "org:viewer",
        BASE + 3,
        listed_at,
    );
    fake.put_membership(&m3);
    // Gone from Clerk, so a candidate for deletion, but a webhook writes it during the run.
    fake.delete_org("org_s0000019");

    let gate = fake.gate("/v1/users");
    let run = {
        let (pool, client) = (pool.clone(), fake.client());
        tokio::spawn(async move { resync(&pool, &client, &opts()).await })
    };
    fake.wait_for_requests("/v1/users", 1).await;
    fake.wait_for_requests("/v1/organizations", 1).await;
    fake.wait_for_requests("/v1/organization_memberships", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the rows are loaded, the pages parsed

    // Webhooks applied by the consumer while the resync waits for its users.
    let now = now_ms();
    apply(
        &pool,
        ClerkEvent::OrganizationUpserted(organization(&org("org_s0000001", "Webhook name", BASE + 1, now))),
    )
    .await;
    apply(
        &pool,
        ClerkEvent::OrganizationDeleted {
            id: HotelId::parse("org_s0000002").unwrap(),
            at: now,
        },
    )
    .await;
    let mut m3_webhook = m3.clone();
    m3_webhook["role"] = "org:billing".into();
    m3_webhook["updated_at"] = now.into();
    apply(&pool, ClerkEvent::MembershipUpserted(member(&m3_webhook))).await;
    apply(
        &pool,
        ClerkEvent::OrganizationUpserted(organization(&org("org_s0000019", "Written meanwhile", BASE + 19, now))),
    )
    .await;
    let new_org = org("org_webhook000001", "Created meanwhile", now, now);
    apply(&pool, ClerkEvent::OrganizationUpserted(organization(&new_org))).await;
    let new_user = user("user_webhook00001", "new@example.com", "New", "Person", now, now);
    apply(
        &pool,
        ClerkEvent::MembershipUpserted(member(&membership(
            "orgmem_webhook001",
            &new_org,
            &new_user,
            "org:admin",
            now,
            now,
        ))),
    )
    .await;
    gate.open();

    let report = run.await.unwrap().unwrap();
    let name: String = sqlx::query_scalar("select name from hotels where id = 'org_s0000001'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, "Webhook name", "the listed (older) version lost to the webhook's");
    assert!(
        !is_live_hotel(&pool, "org_s0000002").await,
        "a webhook's tombstone is final"
    );
    let role: String = sqlx::query_scalar("select role from memberships where clerk_membership_id = 'orgmem_s0000003'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(role, "org:billing");
    assert!(
        is_live_hotel(&pool, "org_s0000019").await,
        "written after the listing began: not deleted"
    );
    assert!(!report.hotels.deleted.ids().contains(&"org_s0000019".to_owned()));
    assert!(is_live_hotel(&pool, "org_webhook000001").await);
    assert_eq!(
        scalar_i64(
            &pool,
            "select count(*) from memberships where clerk_membership_id = 'orgmem_webhook001' and deleted_at is null"
        )
        .await,
        1
    );
    assert!(!report.hotels.updated.ids().contains(&"org_s0000001".to_owned()));
}

/// The benchmark's shape (10k organizations, 50k users, 100k memberships, times
/// `ORGSYNC_BENCH_SCALE`, default 1), for a quick check outside CI: `cargo test --release --test
/// resync -- --ignored scale`. Each run is `orgsync resync` in a child process, so its time and
/// peak memory (VmHWM, sampled every 50 ms) are the resync's own, apart from the fake. Prints
/// the figures; asserts convergence and that the unchanged run writes no row.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a minute of work; run explicitly"]
async fn scale_10k_organizations_100k_memberships_50k_users() {
    let scale: f64 = std::env::var("ORGSYNC_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let (orgs, users, members) = (
        (10_000.0 * scale) as usize,
        (50_000.0 * scale) as usize,
        (100_000.0 * scale) as usize,
    );
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    let seeding = Instant::now();
    fake.seed(orgs, users, members, BASE);
    eprintln!("seeded the fake in {:?}", seeding.elapsed());

    let (empty, empty_peak) = resync_in_child(&pool, &fake).await;
    eprintln!(
        "empty database: {empty:?}, peak {} MiB, {} requests",
        empty_peak / 1024,
        fake.log().len()
    );
    assert_eq!(
        (
            live(&pool, "hotels").await,
            live(&pool, "users").await,
            live(&pool, "memberships").await
        ),
        (orgs as i64, users as i64, members as i64)
    );

    let before = fingerprint(&pool).await;
    let requests = fake.log().len();
    let (unchanged, unchanged_peak) = resync_in_child(&pool, &fake).await;
    eprintln!(
        "unchanged: {unchanged:?}, peak {} MiB, {} requests",
        unchanged_peak / 1024,
        fake.log().len() - requests
    );
    assert_eq!(fingerprint(&pool).await, before);
    // Speed is the benchmark's business (`cargo bench --bench throughput`), not a test's.
    eprintln!(
        "scale {scale}: {:.2} s from empty, {:.2} s unchanged; peak {} / {} MiB",
        empty.as_secs_f64(),
        unchanged.as_secs_f64(),
        empty_peak / 1024,
        unchanged_peak / 1024
    );
}

/// Runs `orgsync resync` against `fake`; returns how long it took and its peak resident memory
/// in KiB (the last VmHWM read before it exited).
async fn resync_in_child(pool: &PgPool, fake: &FakeClerk) -> (Duration, u64) {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgsync"))
        .arg("resync")
        .env("DATABASE_URL", test_database_url(pool).await)
        .env("CLERK_API_URL", fake.url())
        .env("CLERK_SECRET_KEY", KEY)
        .env("CLERK_RATE_LIMIT", "1000")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id().unwrap());
    let mut peak = 0u64;
    let exit = loop {
        tokio::select! {
            exit = child.wait() => break exit.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                let hwm = std::fs::read_to_string(&status).ok().and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                });
                peak = peak.max(hwm.unwrap_or(0));
            }
        }
    };
    assert!(exit.success(), "orgsync resync exited with {exit}");
    (started.elapsed(), peak)
}
