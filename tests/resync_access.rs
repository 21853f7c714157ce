//! The resync of roles, permissions and invitations against the fake Clerk API: webhooks lost,
//! deletes confirmed by id (tombstones), pagination, 429s, failed listings, the dry run, the
//! mass-delete refusal, and invitation tombstones.

mod common;
mod fake_clerk;
mod resync_support;

use common::*;
use fake_clerk::{invitation, membership, org, permission, role, user, Failure, FakeClerk};
use orgsync::clerk::{ClerkEvent, HotelId};
use orgsync::resync::{resync, ResyncError, ResyncOptions};
use resync_support::*;
use serde_json::Value;
use sqlx::PgPool;

const HOTEL: &str = "org_access000000000000000001";
const PERSON: &str = "user_access00000000000000001";
const READ: &str = "perm_read0000000000000000001";
const WRITE: &str = "perm_write000000000000000001";
const MANAGER: &str = "role_manager0000000000000001";
const INVITE: &str = "orginv_access000000000000001";

fn read() -> Value {
    permission(READ, "org:bookings:read", BASE, BASE)
}

fn write() -> Value {
    permission(WRITE, "org:bookings:write", BASE + 1, BASE + 1)
}

fn manager() -> Value {
    role(MANAGER, "org:manager", &[read(), write()], BASE, BASE)
}

fn invite() -> Value {
    invitation(INVITE, HOTEL, "new@example.com", "org:manager", "pending", BASE, BASE)
}

/// A fake with one hotel, a member of it as `org:manager`, the two permissions, the role and
/// an invitation.
async fn fake_with_access() -> FakeClerk {
    let fake = FakeClerk::start().await;
    let hotel = org(HOTEL, "Access Hotel", BASE, BASE);
    let person = user(PERSON, "person@example.com", "Per", "Son", BASE, BASE);
    fake.put_org(&hotel);
    fake.put_user(&person);
    fake.put_membership(&membership(
        "orgmem_access0000000000000001",
        &hotel,
        &person,
        "org:manager",
        BASE,
        BASE,
    ));
    fake.put_permission(&read());
    fake.put_permission(&write());
    fake.put_role(&manager());
    fake.put_invitation(&invite());
    fake
}

async fn grants(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select permission from member_permissions where user_id = $1 order by 1")
        .bind(PERSON)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn deleted(pool: &PgPool, table: &str, id: &str) -> Option<bool> {
    sqlx::query_scalar(&format!("select deleted_at is not null from {table} where id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Every access row's physical version.
async fn access_fingerprint(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "select concat_ws('|',
            (select string_agg(id || ':' || xmin::text, ',' order by id) from roles),
            (select string_agg(id || ':' || xmin::text, ',' order by id) from permissions),
            (select string_agg(role_id || permission_id || ':' || xmin::text, ',' order by 1) from role_permissions),
            (select string_agg(id || ':' || xmin::text, ',' order by id) from invitations))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_brings_what_webhooks_lost_and_tombstones_what_clerk_deleted() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_access().await;

    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(report.complete);
    assert_eq!(
        (
            report.listed.roles,
            report.listed.permissions,
            report.listed.invitations
        ),
        (1, 2, 1)
    );
    assert_eq!(report.roles.created.ids(), [MANAGER]);
    assert_eq!(report.permissions.created.ids(), [READ, WRITE]);
    assert_eq!(report.invitations.created.ids(), [INVITE]);
    assert_eq!(
        scalar_i64(&pool, "select count(*) from role_permissions").await,
        2,
        "the role arrives with its permission set"
    );
    assert_eq!(grants(&pool).await, ["org:bookings:read", "org:bookings:write"]);
    let json = report.to_json(false);
    assert_eq!(json["roles"]["created"], 1);
    assert_eq!(json["invitations"]["created"], 1);
    let text = orgsync::resync::render_text(&report, true);
    assert!(
        text.contains("+ role role_manager") && text.contains("+ invitation orginv_"),
        "{text}"
    );

    let again = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(again.is_unchanged(), "{:?}", again.to_json(true));

    // Clerk deleted the role, a permission and the invitation; the webhooks were lost.
    fake.delete_role(MANAGER);
    fake.delete_permission(WRITE);
    fake.delete_invitation(INVITE);
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert_eq!(report.roles.deleted.ids(), [MANAGER]);
    assert_eq!(report.permissions.deleted.ids(), [WRITE]);
    assert_eq!(report.invitations.deleted.ids(), [INVITE]);
    // Each was confirmed by id first.
    assert_eq!(fake.requests(&format!("/v1/organization_roles/{MANAGER}")), 1);
    assert_eq!(fake.requests(&format!("/v1/organization_permissions/{WRITE}")), 1);
    assert_eq!(
        fake.requests(&format!("/v1/organizations/{HOTEL}/invitations/{INVITE}")),
        1
    );
    // Tombstones: the rows stay, deleted.
    assert_eq!(deleted(&pool, "roles", MANAGER).await, Some(true));
    assert_eq!(deleted(&pool, "permissions", WRITE).await, Some(true));
    assert_eq!(deleted(&pool, "permissions", READ).await, Some(false));
    assert_eq!(deleted(&pool, "invitations", INVITE).await, Some(true));
    assert_eq!(scalar_i64(&pool, "select count(*) from role_permissions").await, 0);
    // The deleted role grants nothing any more (the membership's own keys stand in).
    let now = grants(&pool).await;
    assert!(!now.iter().any(|p| p.starts_with("org:bookings")), "{now:?}");
    let feed = scalar_i64(
        &pool,
        "select count(*) from changes where entity = 'invitation' and op = 'deleted' and source = 'resync'",
    )
    .await;
    assert_eq!(feed, 1, "the change feed reports the invitation's tombstone");

    // Tombstones are final: Clerk listing the invitation again (newer) does not revive it.
    let mut back = invite();
    back["status"] = "accepted".into();
    back["updated_at"] = (BASE + 10).into();
    fake.put_invitation(&back);
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(report.invitations.is_empty(), "{:?}", report.to_json(true));
    assert_eq!(deleted(&pool, "invitations", INVITE).await, Some(true));
    // Nor does its webhook (its hotel is live).
    let event = ClerkEvent::InvitationWritten {
        invitation: serde_json::from_value(back).unwrap(),
        version: BASE + 10,
    };
    assert_eq!(apply(&pool, event).await, orgsync::reconcile::Applied::Unchanged);
    let status: String = sqlx::query_scalar("select status from invitations where id = $1")
        .bind(INVITE)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "pending");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_missing_from_a_listing_that_clerk_still_has_is_kept() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_access().await;
    resync(&pool, &fake.client(), &opts()).await.unwrap();
    // Offset pagination skipped them: the listings lack them, Clerk still has them by id.
    for id in [MANAGER, WRITE, INVITE] {
        fake.hide_from_listings(id);
    }
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(report.is_unchanged(), "{:?}", report.to_json(true));
    assert_eq!(report.skipped.deletes_not_confirmed, 3);
    for (table, id) in [("roles", MANAGER), ("permissions", WRITE), ("invitations", INVITE)] {
        assert_eq!(deleted(&pool, table, id).await, Some(false), "{table}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn permissions_page_past_500_and_a_429_is_waited_out() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    for i in 0..501 {
        fake.put_permission(&permission(
            &format!("perm_p{i:07}"),
            &format!("org:thing{i}:read"),
            BASE + i,
            BASE + i,
        ));
    }
    fake.put_role(&manager());
    fake.fail(Failure::new("/v1/organization_roles", 429).retry_after("0").times(1));
    fake.fail(Failure::new("/v1/organization_invitations", 503).times(1));
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(report.complete);
    assert_eq!(report.listed.permissions, 501);
    // 501 listed + the 2 the role embeds.
    assert_eq!(live(&pool, "permissions").await, 503);
    assert_eq!(live(&pool, "roles").await, 1);
    let offsets: Vec<String> = fake
        .log()
        .iter()
        .filter(|l| l.path == "/v1/organization_permissions")
        .map(|l| {
            assert_eq!(l.param("limit"), Some("500"));
            assert_eq!(l.param("order_by"), Some("created_at"));
            l.param("offset").unwrap().to_owned()
        })
        .collect();
    assert_eq!(offsets, ["0", "500"]);
    let roles: Vec<u16> = fake
        .log()
        .iter()
        .filter(|l| l.path == "/v1/organization_roles")
        .map(|l| l.status)
        .collect();
    assert_eq!(roles, [429, 200], "the 429 was retried");
    assert_eq!(fake.requests("/v1/organization_invitations"), 2, "the 503 was retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_failing_midway_deletes_nothing_but_writes_what_it_listed() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_access().await;
    for i in 0..500 {
        fake.put_permission(&permission(
            &format!("perm_p{i:07}"),
            &format!("org:thing{i}:read"),
            BASE + 10 + i,
            BASE + 10 + i,
        ));
    }
    resync(&pool, &fake.client(), &opts()).await.unwrap();

    fake.delete_role(MANAGER);
    fake.delete_permission(READ);
    fake.delete_invitation(INVITE);
    let newer = role("role_new00000000000000000001", "org:new", &[], BASE + 5, BASE + 5);
    fake.put_role(&newer);
    fake.put_permission(&permission(
        "perm_late0000000000000000001",
        "org:late",
        BASE + 9000,
        BASE + 9000,
    ));
    fake.fail(Failure::new("/v1/organization_permissions", 500).at_offset(500));
    let err = resync(&pool, &fake.client(), &opts()).await.unwrap_err();
    let ResyncError::Incomplete { report, .. } = err else {
        panic!("{err}")
    };
    assert!(!report.complete);
    assert_eq!(report.roles.created.ids(), ["role_new00000000000000000001"]);
    for (table, id) in [("roles", MANAGER), ("permissions", READ), ("invitations", INVITE)] {
        assert_eq!(
            deleted(&pool, table, id).await,
            Some(false),
            "{table}: nothing is deleted"
        );
    }
    assert_eq!(last_run(&pool).await.0, "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_reports_the_same_difference_and_writes_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_access().await;
    resync(&pool, &fake.client(), &opts()).await.unwrap();

    fake.put_role(&role(
        "role_new00000000000000000001",
        "org:new",
        &[read()],
        BASE + 5,
        BASE + 5,
    ));
    let mut renamed = write();
    renamed["name"] = "write bookings".into();
    renamed["updated_at"] = (BASE + 7).into();
    fake.put_permission(&renamed);
    fake.delete_invitation(INVITE);

    let before = access_fingerprint(&pool).await;
    let dry = ResyncOptions {
        dry_run: true,
        ..opts()
    };
    let planned = resync(&pool, &fake.client(), &dry).await.unwrap();
    assert_eq!(access_fingerprint(&pool).await, before, "a dry run writes nothing");
    assert_eq!(planned.roles.created.ids(), ["role_new00000000000000000001"]);
    assert_eq!(planned.permissions.updated.ids(), [WRITE]);
    assert_eq!(planned.invitations.deleted.ids(), [INVITE]);
    let text = orgsync::resync::render_text(&planned, false);
    assert!(text.contains("invitations") && text.contains("dry run"), "{text}");

    let real = resync(&pool, &fake.client(), &opts()).await.unwrap();
    for (name, a, b) in [
        ("roles", &planned.roles, &real.roles),
        ("permissions", &planned.permissions, &real.permissions),
        ("invitations", &planned.invitations, &real.invitations),
    ] {
        assert_eq!(a, b, "{name}: the dry run reported what the run did");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_mass_delete_writes_no_access_row() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_access().await;
    resync(&pool, &fake.client(), &opts()).await.unwrap();
    fake.delete_org(HOTEL);
    fake.delete_role(MANAGER);
    fake.put_role(&role(
        "role_new00000000000000000001",
        "org:new",
        &[],
        BASE + 5,
        BASE + 5,
    ));
    let before = access_fingerprint(&pool).await;
    let err = resync(&pool, &fake.client(), &opts()).await.unwrap_err();
    assert!(matches!(err, ResyncError::MassDelete { .. }), "{err}");
    assert_eq!(access_fingerprint(&pool).await, before);
    assert_eq!(
        err.report().unwrap().roles.created.len(),
        1,
        "the refusal reports the difference"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_written_while_the_listings_ran_is_not_deleted() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_access().await;
    resync(&pool, &fake.client(), &opts()).await.unwrap();

    let gate = fake.gate("/v1/organization_invitations");
    let run = {
        let pool = pool.clone();
        let client = fake.client();
        tokio::spawn(async move { resync(&pool, &client, &opts()).await })
    };
    // The first run listed once already: wait for this run's request.
    fake.wait_for_requests("/v1/organization_invitations", 2).await;
    // A webhook writes a role Clerk's listing (already answered) does not hold; its version is
    // old, so only the change feed dates the write.
    let late = role("role_late0000000000000000001", "org:late", &[], BASE + 1, BASE + 1);
    let applied = apply(&pool, ClerkEvent::RoleUpserted(serde_json::from_value(late).unwrap())).await;
    assert_eq!(applied, orgsync::reconcile::Applied::Written);
    gate.open();
    let report = run.await.unwrap().unwrap();
    assert!(report.roles.deleted.is_empty(), "{:?}", report.to_json(true));
    assert_eq!(report.skipped.deletes_newer_than_listing, 1);
    assert_eq!(
        deleted(&pool, "roles", "role_late0000000000000000001").await,
        Some(false)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_hotel_tombstones_its_invitations_for_good() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_access().await;
    resync(&pool, &fake.client(), &opts()).await.unwrap();

    let hotel = HotelId::parse(HOTEL).unwrap();
    let mut tx = pool.begin().await.unwrap();
    orgsync::reconcile::delete_hotel(&mut tx, &hotel, BASE + 100)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        deleted(&pool, "invitations", INVITE).await,
        Some(true),
        "kept, as a tombstone"
    );
    orgsync::changes::sequence_now(&pool).await.unwrap(); // no sequencer runs in this test
    let feed = scalar_i64(
        &pool,
        "select count(*) from changes where entity = 'invitation' and op = 'deleted'",
    )
    .await;
    assert_eq!(feed, 1);
    let version = scalar_i64(
        &pool,
        &format!("select clerk_version from invitations where id = '{INVITE}'"),
    )
    .await;

    // No later write changes it.
    let mut accepted = invite();
    accepted["status"] = "accepted".into();
    accepted["updated_at"] = (BASE + 200).into();
    let event = ClerkEvent::InvitationWritten {
        invitation: serde_json::from_value(accepted).unwrap(),
        version: BASE + 200,
    };
    apply(&pool, event).await;
    let (status, v): (String, i64) = sqlx::query_as("select status, clerk_version from invitations where id = $1")
        .bind(INVITE)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((status.as_str(), v), ("pending", version));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_confirmation_by_id_deletes_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_access().await;
    resync(&pool, &fake.client(), &opts()).await.unwrap();
    fake.delete_permission(WRITE);
    fake.delete_role(MANAGER);
    // The permission is confirmed gone; asking for the role fails.
    fake.fail(Failure::new(&format!("/v1/organization_roles/{MANAGER}"), 500));
    let err = resync(&pool, &fake.client(), &opts()).await.unwrap_err();
    let ResyncError::Incomplete { report, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(fake.requests(&format!("/v1/organization_permissions/{WRITE}")), 1);
    assert!(report.permissions.deleted.is_empty(), "{:?}", report.to_json(true));
    assert_eq!(deleted(&pool, "permissions", WRITE).await, Some(false));
    assert_eq!(deleted(&pool, "roles", MANAGER).await, Some(false));
}
