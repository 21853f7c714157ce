//! Role sets in the resync and the self-heal, against the fake Clerk API: pagination past 500
//! with a 429 waited out, deletes confirmed by id (and kept when Clerk still has them, or when
//! written after the listing began), a failed listing deleting nothing, the dry run, the
//! mass-delete refusal, the count of members outside their hotel's role set, the self-heal
//! fetching a hotel's role set by key, and `orgsync changes --entity role_set`.

mod common;
mod fake_clerk;
mod resync_support;

use common::*;
use fake_clerk::{membership, org, role, role_set, user, Failure, FakeClerk};
use orgsync::clerk::{HotelId, RoleSet};
use orgsync::reconcile::{self, role_sets, Item, Source};
use orgsync::resync::{resync, ResyncError, ResyncOptions, SelfHeal};
use resync_support::*;
use sqlx::PgPool;

const HOTEL: &str = "org_roleSets000000000000000001";
const PERSON: &str = "user_roleSets00000000000000001";
const FRONT: &str = "rs_front00000000000000000001";
const NIGHT: &str = "rs_night00000000000000000001";

/// A fake with three roles, two role sets (front: admin + desk; night: admin + night), a hotel
/// using the front set and a member of it holding `role`.
async fn fake_with_role_sets(role_of_member: &str) -> FakeClerk {
    let fake = FakeClerk::start().await;
    for (id, key) in [
        ("role_admin0000000000000000001", "org:admin"),
        ("role_desk00000000000000000001", "org:desk"),
        ("role_night0000000000000000001", "org:night"),
    ] {
        fake.put_role(&role(id, key, &[], BASE, BASE));
    }
    fake.put_role_set(&role_set(FRONT, "role_set:front", &["org:admin", "org:desk"], BASE));
    fake.put_role_set(&role_set(
        NIGHT,
        "role_set:night",
        &["org:admin", "org:night"],
        BASE + 1,
    ));
    let mut hotel = org(HOTEL, "Role Set Hotel", BASE, BASE);
    hotel["role_set_key"] = "role_set:front".into();
    let person = user(PERSON, "person@example.com", "Per", "Son", BASE, BASE);
    fake.put_org(&hotel);
    fake.put_user(&person);
    fake.put_membership(&membership(
        "orgmem_roleSets0000000000001",
        &hotel,
        &person,
        role_of_member,
        BASE,
        BASE,
    ));
    fake
}

async fn role_set_row(pool: &PgPool, id: &str) -> Option<(String, bool)> {
    sqlx::query_as("select key, deleted_at is not null from role_sets where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn role_keys(pool: &PgPool, id: &str) -> Vec<String> {
    sqlx::query_scalar("select role_key from role_set_roles where role_set_id = $1 order by 1")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Every role set row's physical version.
async fn role_set_fingerprint(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "select concat_ws('|',
            (select string_agg(id || ':' || xmin::text, ',' order by id) from role_sets),
            (select string_agg(role_set_id || role_key || ':' || xmin::text, ',' order by 1) from role_set_roles))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_mirrors_role_sets_and_tombstones_only_what_clerk_confirms_gone() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_role_sets("org:desk").await;

    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(report.complete);
    assert_eq!(report.listed.role_sets, 2);
    assert_eq!(report.role_sets.created.ids(), [FRONT, NIGHT]);
    assert_eq!(role_keys(&pool, FRONT).await, ["org:admin", "org:desk"]);
    let (default, creator, kind): (String, String, String) =
        sqlx::query_as("select default_role_key, creator_role_key, type from role_sets where id = $1")
            .bind(FRONT)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (default.as_str(), creator.as_str(), kind.as_str()),
        ("org:desk", "org:admin", "custom")
    );
    let key: Option<String> = sqlx::query_scalar("select role_set_key from hotels where id = $1")
        .bind(HOTEL)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(key.as_deref(), Some("role_set:front"));
    assert_eq!(report.members_outside_role_set, 0);
    let json = report.to_json(false);
    assert_eq!(json["role_sets"]["created"], 2);
    assert_eq!(json["listed"]["role_sets"], 2);
    let text = orgsync::resync::render_text(&report, true);
    assert!(
        text.contains("+ role_set rs_front") && text.contains("2 role sets"),
        "{text}"
    );

    // Nothing changed: nothing written.
    let before = role_set_fingerprint(&pool).await;
    let again = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(again.is_unchanged(), "{:?}", again.to_json(true));
    assert_eq!(role_set_fingerprint(&pool).await, before);

    // Offset pagination skipped one (Clerk still has it by id): kept, and asked for.
    fake.hide_from_listings(NIGHT);
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(report.role_sets.is_empty(), "{:?}", report.to_json(true));
    assert_eq!(report.skipped.deletes_not_confirmed, 1);
    assert_eq!(fake.requests(&format!("/v1/role_sets/{NIGHT}")), 1);
    assert_eq!(role_set_row(&pool, NIGHT).await, Some(("role_set:night".into(), false)));

    // Clerk deleted it: confirmed by id, tombstoned, its roles gone; final.
    fake.delete_role_set(NIGHT);
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert_eq!(report.role_sets.deleted.ids(), [NIGHT]);
    assert_eq!(fake.requests(&format!("/v1/role_sets/{NIGHT}")), 2);
    assert_eq!(role_set_row(&pool, NIGHT).await, Some(("role_set:night".into(), true)));
    assert!(role_keys(&pool, NIGHT).await.is_empty());
    fake.put_role_set(&role_set(NIGHT, "role_set:night", &["org:admin"], BASE + 50));
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(
        report.role_sets.is_empty(),
        "a tombstone is final: {:?}",
        report.to_json(true)
    );
    assert!(role_set_row(&pool, NIGHT).await.unwrap().1);

    // The feed: created twice, then the tombstone; all from the resync.
    orgsync::changes::sequence_now(&pool).await.unwrap();
    let feed: Vec<(String, String, String)> =
        sqlx::query_as("select entity_id, op, source from changes where entity = 'role_set' order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let ops: Vec<(&str, &str, &str)> = feed
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            (FRONT, "created", "resync"),
            (NIGHT, "created", "resync"),
            (NIGHT, "deleted", "resync")
        ]
    );
    let url = test_database_url(&pool).await;
    let run = common::cli::orgsync(&url, &["changes", "--entity", "role_set", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 3, "{}", run.stdout);
    assert!(run.stdout.contains(r#""entity":"role_set""#), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn role_sets_page_past_500_and_a_429_is_waited_out() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = FakeClerk::start().await;
    fake.put_role(&role("role_admin0000000000000000001", "org:admin", &[], BASE, BASE));
    for i in 0..520 {
        fake.put_role_set(&role_set(
            &format!("rs_s{i:07}"),
            &format!("role_set:s{i:07}"),
            &["org:admin"],
            BASE + i,
        ));
    }
    fake.fail(
        Failure::new("/v1/role_sets", 429)
            .at_offset(500)
            .retry_after("0")
            .times(2),
    );
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert!(report.complete);
    assert_eq!(report.listed.role_sets, 520);
    assert_eq!(report.role_sets.created.len(), 520);
    assert_eq!(live(&pool, "role_sets").await, 520);
    let pages: Vec<(String, u16)> = fake
        .log()
        .iter()
        .filter(|l| l.path == "/v1/role_sets")
        .map(|l| {
            assert_eq!(l.param("limit"), Some("500"));
            assert_eq!(l.param("order_by"), Some("created_at"), "oldest first");
            (l.param("offset").unwrap().to_owned(), l.status)
        })
        .collect();
    assert_eq!(
        pages,
        [
            ("0".into(), 200),
            ("500".into(), 429),
            ("500".into(), 429),
            ("500".into(), 200)
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_listing_or_confirmation_deletes_no_role_set() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_role_sets("org:desk").await;
    resync(&pool, &fake.client(), &opts()).await.unwrap();
    fake.delete_role_set(NIGHT);

    // The role set listing fails for good: what was listed of the rest is applied, nothing
    // deleted.
    fake.fail(Failure::new("/v1/role_sets", 500));
    let err = resync(&pool, &fake.client(), &opts()).await.unwrap_err();
    assert!(matches!(err, ResyncError::Incomplete { .. }), "{err}");
    assert!(err.report().unwrap().role_sets.deleted.is_empty());
    assert!(!role_set_row(&pool, NIGHT).await.unwrap().1);

    // The listing completes, but the confirmation by id fails: nothing deleted either.
    let fake = fake_with_role_sets("org:desk").await;
    fake.delete_role_set(NIGHT);
    fake.fail(Failure::new(&format!("/v1/role_sets/{NIGHT}"), 500));
    let err = resync(&pool, &fake.client(), &opts()).await.unwrap_err();
    assert!(matches!(err, ResyncError::Incomplete { .. }), "{err}");
    assert!(!role_set_row(&pool, NIGHT).await.unwrap().1);

    // A role set written after the listing began (its version is newer) is not even asked for.
    let fresh: RoleSet = serde_json::from_value(serde_json::json!({
        "object": "role_set", "id": "rs_fresh00000000000000000001", "key": "role_set:fresh", "name": "Fresh",
        "description": null, "type": "custom", "roles": [], "default_role": null, "creator_role": null,
        "created_at": now_ms() + 3_600_000, "updated_at": now_ms() + 3_600_000
    }))
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    reconcile::begin(&mut tx, Source::Resync).await.unwrap();
    role_sets::upsert(
        &mut tx,
        &[Item {
            job: None,
            value: &fresh,
        }],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let fake = fake_with_role_sets("org:desk").await;
    fake.delete_role_set(NIGHT);
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert_eq!(report.role_sets.deleted.ids(), [NIGHT]);
    assert_eq!(report.skipped.deletes_newer_than_listing, 1);
    assert_eq!(fake.requests("/v1/role_sets/rs_fresh00000000000000000001"), 0);
    assert!(!role_set_row(&pool, "rs_fresh00000000000000000001").await.unwrap().1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_and_a_refused_mass_delete_write_no_role_set() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_role_sets("org:night").await;
    let dry = ResyncOptions {
        dry_run: true,
        ..opts()
    };
    let report = resync(&pool, &fake.client(), &dry).await.unwrap();
    assert_eq!(
        report.role_sets.created.ids(),
        [FRONT, NIGHT],
        "the difference is reported"
    );
    assert_eq!(
        scalar_i64(&pool, "select count(*) from role_sets").await,
        0,
        "and not written"
    );

    resync(&pool, &fake.client(), &opts()).await.unwrap();
    // The member's role (org:night) is not in the hotel's set (front): counted.
    let report = resync(&pool, &fake.client(), &opts()).await.unwrap();
    assert_eq!(report.members_outside_role_set, 1);
    assert!(orgsync::resync::render_text(&report, false).contains("1 members hold a role"));

    // Clerk "lost" the hotel (a wrong key?) and changed a role set: the run is refused and
    // writes no role set either.
    fake.delete_org(HOTEL);
    fake.put_role_set(&role_set(FRONT, "role_set:front", &["org:admin"], BASE + 10));
    fake.delete_role_set(NIGHT);
    let before = role_set_fingerprint(&pool).await;
    let err = resync(&pool, &fake.client(), &opts()).await.unwrap_err();
    assert!(matches!(err, ResyncError::MassDelete { .. }), "{err}");
    assert_eq!(role_set_fingerprint(&pool).await, before);
    let refused = err.report().unwrap();
    assert_eq!(refused.role_sets.updated.ids(), [FRONT]);
    assert_eq!(refused.role_sets.deleted.ids(), [NIGHT]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_self_heal_of_a_hotel_fetches_its_role_set_by_key() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = fake_with_role_sets("org:desk").await;
    let heal = SelfHeal::new(pool.clone(), fake.client(), 1);
    heal.heal_now(&HotelId::parse(HOTEL).unwrap()).await.unwrap();
    assert_eq!(fake.requests("/v1/role_sets/role_set:front"), 1);
    assert_eq!(role_set_row(&pool, FRONT).await, Some(("role_set:front".into(), false)));
    assert_eq!(role_set_row(&pool, NIGHT).await, None, "only the hotel's own role set");
    orgsync::changes::sequence_now(&pool).await.unwrap();
    let feed: String = sqlx::query_scalar("select source from changes where entity = 'role_set'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(feed, "self_heal");

    // A failure to read the role set costs only the role set.
    let db2 = TestDb::new().await;
    fake.fail(Failure::new("/v1/role_sets/role_set:front", 500));
    let heal = SelfHeal::new(db2.pool.clone(), fake.client(), 1);
    heal.heal_now(&HotelId::parse(HOTEL).unwrap()).await.unwrap();
    assert!(is_live_hotel(&db2.pool, HOTEL).await);
    assert_eq!(scalar_i64(&db2.pool, "select count(*) from role_sets").await, 0);
}
