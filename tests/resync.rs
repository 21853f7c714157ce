//! The resync, the scheduled run and the self-heal, against a fake Clerk Backend API.

mod common;
mod fake_clerk;

use std::time::{Duration, Instant};

use common::*;
use fake_clerk::{membership, org, user, Failure, FakeClerk, KEY};
use orgsync::clerk::api::{ClerkApiError, ClerkClient};
use orgsync::clerk::{ClerkEvent, HotelId, Membership, Organization};
use orgsync::queue::runner::Heal;
use orgsync::reconcile;
use orgsync::resync::{resync, Outcome, ResyncError, ResyncOptions, ResyncReport, SelfHeal};
use serde_json::Value;
use sqlx::PgPool;

/// A fixed past: fake objects are dated from here, so any webhook "now" is newer.
const BASE: i64 = 1_764_000_000_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn opts() -> ResyncOptions {
    ResyncOptions::default()
}

async fn scalar_i64(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn live(pool: &PgPool, table: &str) -> i64 {
    scalar_i64(pool, &format!("select count(*) from {table} where deleted_at is null")).await
}

async fn is_live_hotel(pool: &PgPool, id: &str) -> bool {
    sqlx::query_scalar::<_, bool>("select deleted_at is null from hotels where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every row's physical version: any write, even one that changes no value, changes it.
async fn fingerprint(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "select concat_ws('|',
            (select string_agg(id || ':' || xmin::text, ',' order by id) from hotels),
            (select string_agg(id || ':' || xmin::text, ',' order by id) from users),
            (select string_agg(hotel_id || user_id || ':' || xmin::text, ',' order by hotel_id, user_id) from memberships))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn last_run(pool: &PgPool) -> (String, bool, Value, Option<String>) {
    sqlx::query_as("select outcome, dry_run, counts, error from resync_runs order by id desc limit 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn apply(pool: &PgPool, event: ClerkEvent) -> reconcile::Applied {
    let mut tx = pool.begin().await.unwrap();
    let applied = reconcile::apply(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    applied
}

fn organization(v: &Value) -> Organization {
    serde_json::from_value(v.clone()).unwrap()
}

fn member(v: &Value) -> Membership {
    serde_json::from_value(v.clone()).unwrap()
}

/// A fake seeded with `orgs`/`users`/`memberships` and a database converged to it.
async fn converged(pool: &PgPool, orgs: usize, users: usize, memberships: usize) -> FakeClerk {
    let fake = FakeClerk::start().await;
    fake.seed(orgs, users, memberships, BASE);
    let report = resync(pool, &fake.client(), &opts()).await.expect("initial resync");
    assert_eq!(report.hotels.created.len(), orgs);
    fake
}

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
// Clerk failures

#[tokio::test(flavor = "multi_thread")]
async fn a_429_waits_retry_after_then_succeeds() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    fake.seed(3, 3, 3, BASE);
    fake.fail(
        Failure::new("/v1/organizations", 429)
            .at_offset(0)
            .times(1)
            .retry_after("1"),
    );
    let started = Instant::now();
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    // The policy's own backoff is 5 ms: only Retry-After explains a full second.
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(fake.requests("/v1/organizations"), 2);
    assert_eq!(report.hotels.created.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_then_succeed() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    fake.seed(3, 3, 3, BASE);
    fake.fail(Failure::new("/v1/organization_memberships", 503).times(2));
    fake.fail(Failure::new("/v1/users", 500).times(1));
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert_eq!(fake.requests("/v1/organization_memberships"), 3);
    assert_eq!(report.memberships.created.len(), 3);
    assert_eq!(report.users.created.len(), 3);
}

#[tokio::test]
async fn timeouts_are_retried_and_bounded() {
    let fake = FakeClerk::start().await;
    fake.seed(0, 2, 0, BASE);
    let client = ClerkClient::new(&fake.url(), KEY, 1000, Duration::from_millis(150))
        .unwrap()
        .with_retry_policy(fake_clerk::fast_retries());
    // Held requests time out; once the gate opens the retry gets its answer.
    let gate = fake.gate("/v1/users/count");
    let opener = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        gate.open();
    });
    assert_eq!(client.count_users().await.unwrap(), 2);
    assert!(fake.requests("/v1/users/count") >= 2);
    opener.await.unwrap();

    // A gate that never opens: bounded retries, then a transport error.
    let _closed = fake.gate("/v1/users");
    let err = client.list_users(None, 500).await.unwrap_err();
    assert!(matches!(err, ClerkApiError::Transport { attempts: 5, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_is_a_clear_key_error_and_is_not_retried() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = converged(&pool, 3, 3, 3).await;
    fake.set_key("sk_test_anotherinstance");
    let before = fingerprint(&pool).await;
    let requests_before = fake.log().len();
    let err = resync(&pool, &fake.client(), &opts()).await.unwrap_err();
    let ResyncError::Incomplete { source, report } = &err else {
        panic!("{err}")
    };
    assert!(source.is_auth(), "{source}");
    assert!(err.to_string().contains("CLERK_SECRET_KEY"), "{err}");
    assert!(!report.complete);
    // One request per listing (the users listing asks for the count first): none retried.
    assert_eq!(fake.log().len() - requests_before, 4);
    assert_eq!(fingerprint(&pool).await, before);
    let (outcome, _, _, error) = last_run(&pool).await;
    assert_eq!(outcome, "failed");
    assert!(error.unwrap().contains("CLERK_SECRET_KEY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_failing_on_page_3_deletes_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    // Rows Clerk does not have: a complete listing would delete them (5 of 5 live hotels).
    for i in 0..5 {
        let stale = org(&format!("org_stale{i:07}"), "Stale", BASE, BASE);
        apply(&pool, ClerkEvent::OrganizationUpserted(organization(&stale))).await;
    }
    fake.seed(1200, 10, 10, BASE);
    fake.fail(Failure::new("/v1/organizations", 500).at_offset(1000));

    let err = resync(
        &pool,
        &fake.client(),
        &ResyncOptions {
            allow_mass_delete: true,
            ..opts()
        },
    )
    .await
    .unwrap_err();
    let ResyncError::Incomplete { source, report } = &err else {
        panic!("{err}")
    };
    assert!(
        matches!(
            source,
            ClerkApiError::Server {
                status: 500,
                attempts: 5,
                ..
            }
        ),
        "{source}"
    );
    assert!(!report.complete);
    assert!(
        report.hotels.deleted.is_empty() && report.users.deleted.is_empty() && report.memberships.deleted.is_empty()
    );
    for i in 0..5 {
        assert!(
            is_live_hotel(&pool, &format!("org_stale{i:07}")).await,
            "a partial listing deletes nothing"
        );
    }
    // What was listed is applied: pages 1 and 2.
    assert_eq!(live(&pool, "hotels").await, 5 + 1000);
    let bounded = fake
        .log()
        .iter()
        .filter(|l| l.path == "/v1/organizations" && l.param("offset") == Some("1000"))
        .count();
    assert_eq!(bounded, 5, "1 attempt + 4 retries, then it gives up");
    let (outcome, _, counts, error) = last_run(&pool).await;
    assert_eq!(outcome, "failed");
    assert_eq!(counts["complete"], false);
    assert!(error.unwrap().contains("500"));
}

// ---------------------------------------------------------------------------------------------
// Safety rails

#[tokio::test(flavor = "multi_thread")]
async fn a_mass_delete_is_refused_without_the_flag() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = converged(&pool, 10, 10, 10).await;
    fake.delete_org("org_s0000001");
    fake.delete_org("org_s0000002"); // 2 of 10: 20% > 10%
    fake.put_org(&org("org_new0000001", "New", BASE + 99, BASE + 99));
    let before = fingerprint(&pool).await;

    let err = resync(&pool, &fake.client(), &opts()).await.unwrap_err();
    let ResyncError::MassDelete { report } = &err else {
        panic!("{err}")
    };
    let m = report.mass_delete.unwrap();
    assert_eq!((m.hotels_to_delete, m.live_hotels), (2, 10));
    assert_eq!(
        report.memberships_ended_by_deletes, 2,
        "what the refused run would have ended"
    );
    assert!(err.to_string().contains("--allow-mass-delete"), "{err}");
    assert_eq!(
        fingerprint(&pool).await,
        before,
        "a refused run writes nothing, not even the creates"
    );
    assert_eq!(last_run(&pool).await.0, "refused");

    let report = resync(
        &pool,
        &fake.client(),
        &ResyncOptions {
            allow_mass_delete: true,
            ..opts()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.hotels.deleted.ids(), vec!["org_s0000001", "org_s0000002"]);
    assert_eq!(report.hotels.created.ids(), vec!["org_new0000001"]);
    assert_eq!(report.memberships_ended_by_deletes, 2, "one member each");
    assert!(!is_live_hotel(&pool, "org_s0000001").await);
    assert_eq!(
        scalar_i64(&pool, "select count(*) from memberships where hotel_id in ('org_s0000001', 'org_s0000002') and deleted_at is null").await,
        0
    );
}

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
        memberships_ended_by_deletes: 0,
        skipped: Default::default(),
        mass_delete: None,
        error: None,
    }
}

/// The benchmark's shape, for a quick check outside CI: `cargo test --release --test resync --
/// --ignored scale`. Prints the timings; asserts the budgets (60 s from empty, 15 s unchanged
/// with no row written).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a minute of work; run explicitly"]
async fn scale_10k_organizations_100k_memberships_50k_users() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    let seeding = Instant::now();
    fake.seed(10_000, 50_000, 100_000, BASE);
    eprintln!("seeded the fake in {:?}", seeding.elapsed());
    let client = ClerkClient::new(&fake.url(), KEY, 1000, Duration::from_secs(30)).unwrap();

    let started = Instant::now();
    let report = resync(&pool, &client, &opts()).await.unwrap();
    let empty = started.elapsed();
    eprintln!("empty database: {empty:?}, {} requests", fake.log().len());
    assert_eq!(
        (
            report.hotels.created.len(),
            report.users.created.len(),
            report.memberships.created.len()
        ),
        (10_000, 50_000, 100_000)
    );

    let before = fingerprint(&pool).await;
    let requests = fake.log().len();
    let started = Instant::now();
    let again = resync(&pool, &client, &opts()).await.unwrap();
    let unchanged = started.elapsed();
    eprintln!("unchanged: {unchanged:?}, {} requests", fake.log().len() - requests);
    assert!(again.is_unchanged());
    assert_eq!(fingerprint(&pool).await, before);
    // Speed is the benchmark's business (`cargo bench --bench throughput`), not a test's.
    eprintln!("{empty:?} from empty, {unchanged:?} unchanged");
}
