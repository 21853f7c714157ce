//! The resync when Clerk fails (429, 5xx, timeouts, a wrong key, a listing cut short) and
//! when it would delete too much.

mod common;
mod fake_clerk;
mod resync_support;

use std::time::{Duration, Instant};

use common::*;
use fake_clerk::{org, Failure, FakeClerk, KEY};
use orgsync::clerk::api::{ClerkApiError, ClerkClient};
use orgsync::clerk::ClerkEvent;
use orgsync::resync::{resync, ResyncError, ResyncOptions};
use resync_support::*;

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
    // One request per listing (seven, and the users count first): none retried.
    assert_eq!(fake.log().len() - requests_before, 8);
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
