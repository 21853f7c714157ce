//! The consumer: reconcile rules, retries, dead-lettering and the locking contract.

mod common;

use std::time::Duration;

use common::events::*;
use common::*;
use orgsync::queue::runner::run_batch;
use sqlx::PgPool;

const H: &str = "org_2hotelAlpine0000000000001";
const U: &str = "user_2staffMaria000000000000001";
const M: &str = "orgmem_2mariaAlpine000000000001";
const T0: i64 = 1_764_000_000_000;

async fn hotel(pool: &PgPool, id: &str) -> Option<(String, i64, bool)> {
    sqlx::query_as("select name, clerk_version, deleted_at is not null from hotels where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn user_row(pool: &PgPool, id: &str) -> Option<(Option<String>, Option<String>, i64, bool)> {
    sqlx::query_as("select email, first_name, clerk_version, deleted_at is not null from users where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn membership_row(pool: &PgPool, hotel: &str, user: &str) -> Option<(String, String, bool)> {
    sqlx::query_as(
        "select clerk_membership_id, role, deleted_at is not null from memberships where hotel_id = $1 and user_id = $2",
    )
    .bind(hotel)
    .bind(user)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn fixture_events_delivered_over_http_become_rows() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let app = TestApp::full(pool.clone()).await;
    for (i, name) in ["organization.created", "user.created", "organizationMembership.created"]
        .iter()
        .enumerate()
    {
        assert!(app
            .deliver(&format!("msg_{i}"), &fixture(name))
            .await
            .status()
            .is_success());
    }
    wait_until(
        &pool,
        "select count(*) = 3 from jobs where state = 'done'",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        hotel(&pool, H).await,
        Some(("Hotel Alpine".into(), 1_764_000_120_000, false))
    );
    let (email, first, _, deleted) = user_row(&pool, U).await.unwrap();
    assert_eq!(
        (email.as_deref(), first.as_deref(), deleted),
        (Some("maria.rossi@example.com"), Some("Maria"), false)
    );
    assert_eq!(
        membership_row(&pool, H, U).await,
        Some((M.into(), "org:admin".into(), false))
    );

    // Then the rest of the fixture story: updates, and deletes that end the membership.
    for (i, name) in ["organizationMembership.updated", "organization.updated", "user.updated"]
        .iter()
        .enumerate()
    {
        app.deliver(&format!("msg_u{i}"), &fixture(name)).await;
    }
    wait_until(
        &pool,
        "select count(*) = 6 from jobs where state = 'done'",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(membership_row(&pool, H, U).await.unwrap().1, "org:member");
    app.deliver("msg_del", &fixture("organization.deleted")).await;
    wait_until(
        &pool,
        "select count(*) = 7 from jobs where state = 'done'",
        Duration::from_secs(10),
    )
    .await;
    assert!(hotel(&pool, H).await.unwrap().2);
    assert!(
        membership_row(&pool, H, U).await.unwrap().2,
        "deleting a hotel ends its memberships"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_event_never_overwrites_a_newer_one() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let s = fast_workers();
    insert_job(
        &pool,
        "new",
        &organization("organization.updated", H, "Newer", T0, T0 + 500, 1),
    )
    .await;
    insert_job(
        &pool,
        "old",
        &organization("organization.created", H, "Older", T0, T0, 1),
    )
    .await;
    drain(&pool, &s, 5).await;
    assert_eq!(hotel(&pool, H).await, Some(("Newer".into(), T0 + 500, false)));

    insert_job(
        &pool,
        "u-new",
        &user("user.updated", U, "New", "new@x.test", T0, T0 + 9, 1),
    )
    .await;
    insert_job(&pool, "u-old", &user("user.created", U, "Old", "old@x.test", T0, T0, 1)).await;
    drain(&pool, &s, 5).await;
    assert_eq!(user_row(&pool, U).await.unwrap().1.as_deref(), Some("New"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tombstones_are_final_for_hotels_users_and_memberships() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let s = fast_workers();
    insert_job(&pool, "hd", &organization_deleted(H, 1_764_000_500)).await; // seconds
    insert_job(
        &pool,
        "hc",
        &organization("organization.created", H, "Back?", T0, T0 + 900_000, 1),
    )
    .await;
    insert_job(&pool, "ud", &user_deleted(U, T0 + 500_000)).await; // milliseconds
    insert_job(
        &pool,
        "uc",
        &user("user.created", U, "Back?", "b@x.test", T0, T0 + 900_000, 1),
    )
    .await;
    drain(&pool, &s, 5).await;
    let h = hotel(&pool, H).await.unwrap();
    assert!(h.2, "a late created does not resurrect a deleted hotel");
    assert_eq!(
        h.1, 1_764_000_500_000,
        "the delete's version is its event time, normalised to ms"
    );
    assert!(user_row(&pool, U).await.unwrap().3, "nor a deleted user");

    let h2 = "org_2second000000000000000001";
    let u2 = "user_2second00000000000000001";
    insert_job(
        &pool,
        "h2",
        &organization("organization.created", h2, "Second", T0, T0, 1),
    )
    .await;
    insert_job(
        &pool,
        "md",
        &membership(
            "organizationMembership.deleted",
            M,
            h2,
            u2,
            "org:member",
            T0,
            T0 + 10,
            T0 + 20,
        ),
    )
    .await;
    insert_job(
        &pool,
        "mc",
        &membership(
            "organizationMembership.created",
            M,
            h2,
            u2,
            "org:admin",
            T0,
            T0 + 30,
            T0,
        ),
    )
    .await;
    drain(&pool, &s, 5).await;
    assert!(
        membership_row(&pool, h2, u2).await.unwrap().2,
        "nor a deleted membership"
    );

    // A new invitation of the same person is a different, newer membership: it is live.
    let again = "orgmem_2again000000000000000001";
    insert_job(
        &pool,
        "m2",
        &membership(
            "organizationMembership.created",
            again,
            h2,
            u2,
            "org:member",
            T0 + 50,
            T0 + 50,
            T0,
        ),
    )
    .await;
    drain(&pool, &s, 5).await;
    assert_eq!(
        membership_row(&pool, h2, u2).await,
        Some((again.into(), "org:member".into(), false))
    );
    let states: Vec<String> = sqlx::query_scalar("select distinct state from jobs")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(states, vec!["done".to_owned()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_user_ends_their_memberships() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let s = fast_workers();
    insert_job(&pool, "h", &organization("organization.created", H, "A", T0, T0, 1)).await;
    insert_job(
        &pool,
        "m",
        &membership("organizationMembership.created", M, H, U, "org:admin", T0, T0, 1),
    )
    .await;
    drain(&pool, &s, 5).await;
    insert_job(&pool, "ud", &user_deleted(U, T0 + 5)).await;
    drain(&pool, &s, 5).await;
    assert!(membership_row(&pool, H, U).await.unwrap().2);
    // A late membership event for the deleted user is obsolete: done, no effect.
    insert_job(
        &pool,
        "m-late",
        &membership("organizationMembership.updated", M, H, U, "org:member", T0, T0 + 9, 1),
    )
    .await;
    drain(&pool, &s, 5).await;
    assert_eq!(job_state(&pool, "m-late").await.0, "done");
    assert_eq!(
        membership_row(&pool, H, U).await,
        Some((M.into(), "org:admin".into(), true))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_membership_stub_user_never_overwrites_user_event_data() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let s = fast_workers();
    insert_job(&pool, "h", &organization("organization.created", H, "A", T0, T0, 1)).await;
    insert_job(&pool, "u", &user("user.created", U, "Maria", "maria@x.test", T0, T0, 1)).await;
    insert_job(
        &pool,
        "m",
        &membership("organizationMembership.created", M, H, U, "admin", T0, T0, 1),
    )
    .await;
    drain(&pool, &s, 5).await;
    let (email, first, version, _) = user_row(&pool, U).await.unwrap();
    assert_eq!(
        (email.as_deref(), first.as_deref(), version),
        (Some("maria@x.test"), Some("Maria"), T0)
    );
    assert_eq!(
        membership_row(&pool, H, U).await.unwrap().1,
        "org:admin",
        "legacy role key normalised"
    );

    // The other order: the stub comes first, and the user event replaces it.
    let u2 = "user_2late00000000000000000001";
    insert_job(
        &pool,
        "m2",
        &membership(
            "organizationMembership.created",
            "orgmem_2x",
            H,
            u2,
            "basic_member",
            T0,
            T0,
            1,
        ),
    )
    .await;
    drain(&pool, &s, 5).await;
    let (email, _, version, _) = user_row(&pool, u2).await.unwrap();
    assert_eq!((email.as_deref(), version), (Some(&*format!("{u2}@stub.test")), 0));
    assert_eq!(membership_row(&pool, H, u2).await.unwrap().1, "org:member");
    insert_job(
        &pool,
        "u2",
        &user("user.created", u2, "Late", "late@x.test", T0, T0 + 1, 1),
    )
    .await;
    drain(&pool, &s, 5).await;
    assert_eq!(user_row(&pool, u2).await.unwrap().0.as_deref(), Some("late@x.test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_membership_before_its_hotel_retries_then_applies_once_the_hotel_arrives() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let mut s = fast_workers();
    s.retry_base = Duration::from_secs(60); // a long backoff: only the wake-up can make it prompt
    s.retry_cap = Duration::from_secs(60);
    insert_job(
        &pool,
        "m",
        &membership("organizationMembership.created", M, H, U, "org:admin", T0, T0, 1),
    )
    .await;
    let report = run_batch(&pool, &s).await.unwrap();
    assert_eq!((report.claimed, report.retried), (1, 1));
    let (state, attempts, error) = job_state(&pool, "m").await;
    assert_eq!((state.as_str(), attempts), ("available", 1));
    assert!(error.unwrap().contains(H));
    let waiting: Option<String> = sqlx::query_scalar("select waiting_for from jobs where event_id = 'm'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(waiting.as_deref(), Some(H));
    assert!(membership_row(&pool, H, U).await.is_none());

    insert_job(&pool, "h", &organization("organization.created", H, "A", T0, T0, 1)).await;
    drain(&pool, &s, 5).await;
    assert_eq!(
        job_state(&pool, "m").await.0,
        "done",
        "applying the hotel made the waiting membership due"
    );
    assert_eq!(
        membership_row(&pool, H, U).await,
        Some((M.into(), "org:admin".into(), false))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_membership_of_a_deleted_hotel_completes_without_effect() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let s = fast_workers();
    insert_job(&pool, "h", &organization("organization.created", H, "A", T0, T0, 1)).await;
    insert_job(&pool, "hd", &organization_deleted(H, T0 + 10)).await;
    drain(&pool, &s, 5).await;
    insert_job(
        &pool,
        "m",
        &membership("organizationMembership.created", M, H, U, "org:admin", T0, T0 + 1, 1),
    )
    .await;
    drain(&pool, &s, 5).await;
    assert_eq!(job_state(&pool, "m").await, ("done".into(), 1, None));
    assert!(membership_row(&pool, H, U).await.is_none());
    assert!(hotel(&pool, H).await.unwrap().2);
}

#[tokio::test(flavor = "multi_thread")]
async fn retryable_failures_dead_letter_after_max_attempts_keeping_every_error() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let mut s = fast_workers();
    s.retry_base = Duration::ZERO;
    s.max_attempts = 4;
    insert_job(
        &pool,
        "m",
        &membership("organizationMembership.created", M, H, U, "org:admin", T0, T0, 1),
    )
    .await;
    drain(&pool, &s, 10).await;
    let (state, attempts, error) = job_state(&pool, "m").await;
    assert_eq!((state.as_str(), attempts), ("dead", 4));
    assert!(error.unwrap().contains("does not exist yet"));
    let errors: serde_json::Value = sqlx::query_scalar("select errors from jobs where event_id = 'm'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let attempts: Vec<i64> = errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_job_is_dead_at_once_and_the_queue_keeps_moving() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let s = fast_workers();
    let mut poison = organization("organization.created", H, "A", T0, T0, 1);
    poison["data"]["created_at"] = serde_json::json!("yesterday");
    insert_job(&pool, "poison", &poison).await;
    insert_job(&pool, "good", &user("user.created", U, "Maria", "m@x.test", T0, T0, 1)).await;
    drain(&pool, &s, 5).await;
    let (state, attempts, error) = job_state(&pool, "poison").await;
    assert_eq!((state.as_str(), attempts), ("dead", 1));
    assert!(error
        .unwrap()
        .contains("organization.created payload does not match its shape"));
    assert_eq!(job_state(&pool, "good").await.0, "done");
    assert!(user_row(&pool, U).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_job_is_invisible_to_other_claimers() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let s = fast_workers();
    insert_job(&pool, "h0", &organization("organization.created", H, "A", T0, T0, 1)).await;
    drain(&pool, &s, 5).await;
    insert_job(
        &pool,
        "h1",
        &organization("organization.updated", H, "B", T0, T0 + 1, 1),
    )
    .await;

    // Hold the hotel row so the first worker blocks mid-batch, its job claimed.
    let blocker = hold_hotel_row(&pool, H).await;
    let first = tokio::spawn({
        let (pool, s) = (pool.clone(), s.clone());
        async move { run_batch(&pool, &s).await.unwrap() }
    });
    wait_for_lock_waiters(&pool, "%", 1).await;
    let second = run_batch(&pool, &s).await.unwrap();
    assert_eq!(
        second.claimed, 0,
        "the job held by the first worker is skipped, not waited for"
    );
    blocker.commit().await.unwrap();
    let first = first.await.unwrap();
    assert_eq!((first.claimed, first.done), (1, 1));
    assert_eq!(hotel(&pool, H).await.unwrap().0, "B");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_bookkeeping_commits_with_the_release_of_the_lock() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let mut s = fast_workers();
    // A retry well in the future (the cap too: fast_workers caps delays at 200 ms).
    s.retry_base = Duration::from_secs(30);
    s.retry_cap = Duration::from_secs(60);
    insert_job(
        &pool,
        "m",
        &membership("organizationMembership.created", M, H, U, "org:admin", T0, T0, 1),
    )
    .await;
    assert_eq!(run_batch(&pool, &s).await.unwrap().retried, 1);
    // The moment the lock is gone the job is rescheduled, so nobody can claim it again early.
    let again = run_batch(&pool, &s).await.unwrap();
    assert_eq!(again.claimed, 0);
    let (state, attempts, _) = job_state(&pool, "m").await;
    assert_eq!((state.as_str(), attempts), ("available", 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_of_one_hotel_never_lose_the_newest_update() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    // Many transactions write versions of one hotel at once, in random order: the newest wins.
    let org = |v: i64| orgsync::clerk::Organization {
        id: orgsync::clerk::HotelId::parse(H).unwrap(),
        name: format!("v{v}"),
        slug: None,
        image_url: None,
        public_metadata: serde_json::json!({}),
        created_at: T0,
        updated_at: T0 + v,
        role_set_key: None,
    };
    let mut versions: Vec<i64> = (1..=40).collect();
    use rand::seq::SliceRandom;
    versions.shuffle(&mut rand::rng());
    let tasks: Vec<_> = versions
        .into_iter()
        .map(|v| {
            let pool = pool.clone();
            let o = org(v);
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                orgsync::reconcile::upsert_hotel(&mut tx, &o).await.unwrap();
                tokio::task::yield_now().await;
                tx.commit().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(hotel(&pool, H).await, Some(("v40".into(), T0 + 40, false)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_membership_racing_its_hotels_delete_never_stays_live() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let s = fast_workers();
    for round in 0..20 {
        let h = format!("org_2race{round:021}");
        let u = format!("user_2race{round:020}");
        insert_job(
            &pool,
            &format!("h{round}"),
            &organization("organization.created", &h, "R", T0, T0, 1),
        )
        .await;
        drain(&pool, &s, 5).await;
        let m = orgsync::clerk::ClerkEvent::parse(
            "organizationMembership.created",
            &membership(
                "organizationMembership.created",
                "orgmem_2r",
                &h,
                &u,
                "org:admin",
                T0,
                T0,
                1,
            ),
        )
        .unwrap()
        .unwrap();
        let hid = orgsync::clerk::HotelId::parse(&h).unwrap();
        let (p1, p2) = (pool.clone(), pool.clone());
        let add = tokio::spawn(async move {
            let mut tx = p1.begin().await.unwrap();
            orgsync::reconcile::apply(&mut tx, &m).await.unwrap();
            tx.commit().await.unwrap();
        });
        let del = tokio::spawn(async move {
            let mut tx = p2.begin().await.unwrap();
            orgsync::reconcile::delete_hotel(&mut tx, &hid, T0 + 5).await.unwrap();
            tx.commit().await.unwrap();
        });
        add.await.unwrap();
        del.await.unwrap();
        let live: i64 =
            sqlx::query_scalar("select count(*) from memberships where hotel_id = $1 and deleted_at is null")
                .bind(&h)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(live, 0, "round {round}: a live membership survived its hotel's delete");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enqueued_event_wakes_idle_workers_through_notify() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let mut cfg = config(Some(SECRET), true);
    cfg.worker_settings.poll_interval = Duration::from_secs(3600); // polling alone would never see it
    let app = TestApp::spawn(pool.clone(), cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // workers are idle, listening
    assert!(app
        .deliver("msg_wake", &fixture("organization.created"))
        .await
        .status()
        .is_success());
    wait_until(
        &pool,
        "select count(*) = 1 from jobs where state = 'done'",
        Duration::from_secs(10),
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_finds_jobs_that_arrived_without_a_notification() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    // Enqueued without the trigger that notifies (as by a tool that bypasses it, or a lost
    // notification): only polling can find it.
    sqlx::query("alter table jobs disable trigger jobs_notify")
        .execute(&pool)
        .await
        .unwrap();
    let app = TestApp::full(pool.clone()).await; // polls every 50 ms
    tokio::time::sleep(Duration::from_millis(200)).await;
    insert_job(&pool, "quiet", &organization("organization.created", H, "A", T0, T0, 1)).await;
    wait_until(
        &pool,
        "select count(*) = 1 from jobs where state = 'done'",
        Duration::from_secs(10),
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stub_user_waits_while_another_worker_holds_that_users_events() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let s = fast_workers();
    insert_job(&pool, "h", &organization("organization.created", H, "A", T0, T0, 1)).await;
    drain(&pool, &s, 5).await;
    // Another worker "holds" the user (as when it is applying user.created right now).
    let mut other = pool.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock($1, hashtext($2))")
        .bind(orgsync::reconcile::ENTITY_LOCK_CLASS)
        .bind(U)
        .execute(&mut *other)
        .await
        .unwrap();
    insert_job(
        &pool,
        "m",
        &membership("organizationMembership.created", M, H, U, "org:admin", T0, T0, 1),
    )
    .await;
    let report = run_batch(&pool, &s).await.unwrap();
    assert_eq!(
        report.retried, 1,
        "no stub written while the user's events are in another worker's hands"
    );
    assert!(user_row(&pool, U).await.is_none());
    assert!(job_state(&pool, "m")
        .await
        .2
        .unwrap()
        .contains("being written by another worker"));
    other.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await; // past the retry delay (cap 200 ms)
    drain(&pool, &s, 5).await;
    assert_eq!(
        membership_row(&pool, H, U).await,
        Some((M.into(), "org:admin".into(), false))
    );
}
