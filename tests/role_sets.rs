//! Role sets in the rule book and in the access check: newer wins, tombstones are final, a role
//! set's roles are replaced as a whole, a key held by another live role set blocks (a chain of
//! renames settles in one call, a swap does not), hotels take `role_set_key` from their
//! organization payload, the change feed has one row per effective change, and
//! `member_permissions` / `orgsync access` say when a member's role is outside the hotel's role
//! set.

mod common;

use common::events::*;
use common::*;
use orgsync::clerk::{ClerkEvent, RoleSet, RoleSetId};
use orgsync::reconcile::{self, role_sets, Deletion, Item, Outcome, Source};
use serde_json::{json, Value};
use sqlx::PgPool;

const T0: i64 = 1_764_000_000_000;
const H: &str = "org_2hotelRoleSets00000000001";
const U: &str = "user_2deskClerk0000000000001";
const RS1: &str = "rs_2frontDesk000000000000001";
const RS2: &str = "rs_2nightShift00000000000001";

/// A RoleSet object as Clerk answers it, listing `roles` (key, id) with the first as default.
fn role_set(id: &str, key: &str, roles: &[(&str, &str)], updated: i64) -> Value {
    let item = |(k, i): &(&str, &str)| {
        json!({"object": "role_set_item", "id": i, "key": k, "name": k.trim_start_matches("org:"),
               "description": null, "created_at": T0, "updated_at": T0})
    };
    json!({
        "object": "role_set", "id": id, "key": key, "name": format!("{key} @{updated}"), "description": null,
        "type": "custom", "roles": roles.iter().map(item).collect::<Vec<_>>(),
        "default_role": roles.first().map(item), "creator_role": roles.first().map(item),
        "role_set_migration": null, "created_at": T0, "updated_at": updated
    })
}

fn parsed(v: &Value) -> RoleSet {
    serde_json::from_value(v.clone()).unwrap()
}

async fn write(pool: &PgPool, sets: &[Value]) -> role_sets::Upserted {
    let sets: Vec<RoleSet> = sets.iter().map(parsed).collect();
    let items: Vec<Item<&RoleSet>> = sets.iter().map(|s| Item { job: None, value: s }).collect();
    let mut tx = pool.begin().await.unwrap();
    reconcile::begin(&mut tx, Source::Resync).await.unwrap();
    let out = role_sets::upsert(&mut tx, &items).await.unwrap();
    tx.commit().await.unwrap();
    out
}

async fn row(pool: &PgPool, id: &str) -> Option<(String, i64, bool)> {
    sqlx::query_as("select key, clerk_version, deleted_at is not null from role_sets where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn roles_of(pool: &PgPool, id: &str) -> Vec<String> {
    sqlx::query_scalar("select role_key from role_set_roles where role_set_id = $1 order by 1")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn feed(pool: &PgPool, entity: &str) -> Vec<(String, String)> {
    orgsync::changes::sequence_now(pool).await.unwrap();
    sqlx::query_as("select entity_id, op from changes where entity = $1 order by id")
        .bind(entity)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn apply(pool: &PgPool, event: &Value) {
    let e = ClerkEvent::parse(&kind(event), event).unwrap().unwrap();
    let mut tx = pool.begin().await.unwrap();
    reconcile::apply(&mut tx, &e).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_wins_roles_are_replaced_whole_and_tombstones_are_final() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let v2 = role_set(
        RS1,
        "role_set:front",
        &[("org:desk", "role_2desk"), ("org:admin", "role_2admin")],
        T0 + 20,
    );
    assert_eq!(write(pool, &[v2]).await.outcomes, [Outcome::Written]);
    assert_eq!(roles_of(pool, RS1).await, ["org:admin", "org:desk"]);
    let (default, creator): (Option<String>, Option<String>) =
        sqlx::query_as("select default_role_key, creator_role_key from role_sets where id = $1")
            .bind(RS1)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        (default.as_deref(), creator.as_deref()),
        (Some("org:desk"), Some("org:desk"))
    );

    // An older version (one role) changes nothing; an equal one neither.
    let v1 = role_set(RS1, "role_set:front", &[("org:desk", "role_2desk")], T0 + 10);
    let same = role_set(RS1, "role_set:front", &[("org:night", "role_2night")], T0 + 20);
    assert_eq!(
        write(pool, &[v1, same]).await.outcomes,
        [Outcome::Unchanged, Outcome::Unchanged]
    );
    assert_eq!(roles_of(pool, RS1).await, ["org:admin", "org:desk"]);

    // A newer one replaces the roles as a whole.
    let v3 = role_set(RS1, "role_set:front", &[("org:night", "role_2night")], T0 + 30);
    assert_eq!(write(pool, &[v3]).await.outcomes, [Outcome::Written]);
    assert_eq!(roles_of(pool, RS1).await, ["org:night"]);

    // Deleted (Clerk said so): the tombstone is final, its roles are gone, and neither a later
    // listing nor the key's reuse by another role set brings it back.
    let mut tx = pool.begin().await.unwrap();
    reconcile::begin(&mut tx, Source::Resync).await.unwrap();
    let gone = role_sets::delete(
        &mut tx,
        &[Item {
            job: None,
            value: Deletion {
                id: RoleSetId::parse(RS1).unwrap(),
                at: T0 + 40,
            },
        }],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(gone, [Outcome::Written]);
    assert_eq!(row(pool, RS1).await, Some(("role_set:front".into(), T0 + 40, true)));
    assert!(roles_of(pool, RS1).await.is_empty());
    let late = role_set(RS1, "role_set:front", &[("org:desk", "role_2desk")], T0 + 50);
    let successor = role_set(RS2, "role_set:front", &[("org:desk", "role_2desk")], T0 + 50);
    assert_eq!(
        write(pool, &[late, successor]).await.outcomes,
        [Outcome::Unchanged, Outcome::Written]
    );
    assert!(row(pool, RS1).await.unwrap().2);
    assert_eq!(row(pool, RS2).await, Some(("role_set:front".into(), T0 + 50, false)));

    // The feed: one row per effective change (the unchanged writes made none).
    let rows = feed(pool, "role_set").await;
    let expected: Vec<(String, String)> = [(RS1, "created"), (RS1, "updated"), (RS1, "deleted"), (RS2, "created")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(rows, expected);
    orgsync::changes::sequence_now(pool).await.unwrap();
    let source: String = sqlx::query_scalar("select source from changes where entity = 'role_set' limit 1")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(source, "resync");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_held_by_another_live_role_set_blocks_until_it_is_freed() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let a1 = role_set(RS1, "role_set:a", &[("org:desk", "role_2desk")], T0);
    let b1 = role_set(RS2, "role_set:b", &[("org:desk", "role_2desk")], T0);
    write(pool, &[a1, b1]).await;

    // A chain of renames in one call (a takes b's key, b moves on): both written.
    let a2 = role_set(RS1, "role_set:b", &[("org:desk", "role_2desk")], T0 + 10);
    let b2 = role_set(RS2, "role_set:c", &[("org:desk", "role_2desk")], T0 + 10);
    let out = write(pool, &[a2, b2]).await;
    assert_eq!(out.outcomes, [Outcome::Written, Outcome::Written]);
    assert!(out.key_taken.is_empty());
    assert_eq!(row(pool, RS1).await.unwrap().0, "role_set:b");
    assert_eq!(row(pool, RS2).await.unwrap().0, "role_set:c");

    // A swap cannot be written without an intermediate state: both wait, nothing is guessed.
    let a3 = role_set(RS1, "role_set:c", &[("org:desk", "role_2desk")], T0 + 20);
    let b3 = role_set(RS2, "role_set:b", &[("org:desk", "role_2desk")], T0 + 20);
    let out = write(pool, &[a3.clone(), b3]).await;
    assert_eq!(out.outcomes, [Outcome::Unchanged, Outcome::Unchanged]);
    assert_eq!(out.key_taken, [RS1, RS2]);
    assert_eq!(row(pool, RS1).await.unwrap(), ("role_set:b".into(), T0 + 10, false));

    // Once the holder lets the key go (here: deleted), the waiting one is written.
    let mut tx = pool.begin().await.unwrap();
    reconcile::begin(&mut tx, Source::Resync).await.unwrap();
    role_sets::delete_inferred(&mut tx, &[RS2], T0 + 30).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(write(pool, &[a3]).await.outcomes, [Outcome::Written]);
    assert_eq!(row(pool, RS1).await.unwrap().0, "role_set:c");
}

#[tokio::test(flavor = "multi_thread")]
async fn members_outside_the_hotels_role_set_are_named_by_the_view_and_by_orgsync_access() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    // The hotel names its role set in its organization payload (the hotel rules write it).
    let mut hotel = organization("organization.created", H, "Role Set Hotel", T0, T0, T0);
    hotel["data"]["role_set_key"] = json!("role_set:front");
    apply(pool, &hotel).await;
    apply(pool, &user("user.created", U, "Desk", "desk@example.com", T0, T0, T0)).await;
    let mut member = membership(
        "organizationMembership.created",
        "orgmem_2desk",
        H,
        U,
        "org:night",
        T0,
        T0,
        T0,
    );
    member["data"]["permissions"] = json!(["org:bookings:read"]);
    apply(pool, &member).await;
    let key: Option<String> = sqlx::query_scalar("select role_set_key from hotels where id = $1")
        .bind(H)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(key.as_deref(), Some("role_set:front"));

    let in_set = || async {
        sqlx::query_scalar::<_, Option<bool>>(
            "select role_in_role_set from member_permissions where hotel_id = $1 and user_id = $2",
        )
        .bind(H)
        .bind(U)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    // The role set is not mirrored yet: unknown, and said so.
    assert_eq!(in_set().await, None);
    let access = orgsync::ops::access::check_access(pool, U, H, Some("org:bookings:read"))
        .await
        .unwrap();
    assert_eq!(access.held, Some(true));
    assert!(access.notes[0].contains("not mirrored"), "{:?}", access.notes);

    // Mirrored, without the member's role: the view says false, access says why.
    write(
        pool,
        &[role_set(RS1, "role_set:front", &[("org:desk", "role_2desk")], T0)],
    )
    .await;
    assert_eq!(in_set().await, Some(false));
    let access = orgsync::ops::access::check_access(pool, U, H, None).await.unwrap();
    assert_eq!(access.exit_code(), 0, "the member still holds access");
    let set = access.membership.as_ref().unwrap().role_set.as_ref().unwrap();
    assert_eq!(set.lists_role, Some(false));
    assert!(
        access.notes[0].contains("not in the hotel's role set role_set:front"),
        "{:?}",
        access.notes
    );
    let mut text = Vec::new();
    orgsync::ops::access::write_access(&mut text, &access).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("does NOT list this role") && text.contains("Clerk would refuse"),
        "{text}"
    );

    // The role set gains the role: true, no note.
    write(
        pool,
        &[role_set(
            RS1,
            "role_set:front",
            &[("org:desk", "role_2desk"), ("org:night", "role_2night")],
            T0 + 1,
        )],
    )
    .await;
    assert_eq!(in_set().await, Some(true));
    let access = orgsync::ops::access::check_access(pool, U, H, None).await.unwrap();
    assert!(access.notes.is_empty(), "{:?}", access.notes);

    // A newer organization payload moving the hotel to another role set is a hotel change in
    // the feed; the member's role is unknown again until that role set is mirrored.
    let before = feed(pool, "hotel").await.len();
    // (the same payload otherwise: only the role set key changes)
    let mut moved = hotel.clone();
    moved["data"]["updated_at"] = json!(T0 + 5);
    moved["data"]["role_set_key"] = json!("role_set:other");
    apply(pool, &moved).await;
    let after = feed(pool, "hotel").await;
    assert_eq!(after.len(), before + 1);
    assert_eq!(after.last().unwrap().1, "updated");
    assert_eq!(in_set().await, None);
}
