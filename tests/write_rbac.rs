//! Administering roles and permissions through the `/v1` API against the fake Clerk: at every
//! answer, `member_permissions` already agrees for every member holding the role, across
//! hotels, and the change feed has one row per effective change; the webhooks Clerk sends later
//! change nothing.

mod common;
mod fake_clerk;
mod write_support;

use common::*;
use fake_clerk::{membership, org, user};
use orgsync::resync::{resync, ResyncOptions};
use serde_json::{json, Value};
use sqlx::PgPool;
use write_support::*;

const HOTELS: usize = 20;
const HOLDERS: usize = 1_000;
const PERMISSION: &str = "org:reservations:manage";

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// Members holding `permission` in the access view, and in how many hotels.
async fn holding(pool: &PgPool, permission: &str) -> (i64, i64) {
    sqlx::query_as("select count(*), count(distinct hotel_id) from member_permissions where permission = $1")
        .bind(permission)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `HOLDERS` members of `HOTELS` hotels holding `role` in the fake, mirrored by a resync.
async fn put_holders(w: &WriteApp, role: &str) {
    let orgs: Vec<Value> = (0..HOTELS)
        .map(|h| org(&format!("org_fd{h:05}"), &format!("Hotel {h}"), BASE, BASE))
        .collect();
    for o in &orgs {
        w.fake.put_org(o);
    }
    for u in 0..HOLDERS {
        let person = user(
            &format!("user_fd{u:05}"),
            &format!("desk{u}@example.com"),
            "Desk",
            &format!("{u}"),
            BASE,
            BASE,
        );
        w.fake.put_user(&person);
        w.fake.put_membership(&membership(
            &format!("orgmem_fd{u:05}"),
            &orgs[u % HOTELS],
            &person,
            role,
            BASE + u as i64,
            BASE + u as i64,
        ));
    }
    let report = resync(w.pool(), &w.fake.client(), &ResyncOptions::default())
        .await
        .expect("the resync mirrors the holders");
    assert_eq!(report.hotels.created.len(), HOTELS);
}

/// Releases the held webhooks late, shuffled and half of them twice (`seed`), waits for them,
/// and asserts they changed no row and added no change row: each was a duplicate by version.
async fn late_webhooks_change_nothing(w: &WriteApp, seed: u64) {
    let pool = w.pool();
    let (rows_before, feed_before) = (rows(pool).await, feed(pool).await.len());
    w.fake.configure_webhooks(fake_clerk::WebhookSettings::unruly(
        std::time::Duration::from_millis(30),
        0.5,
        seed,
    ));
    settle(w).await;
    assert_eq!(rows(pool).await, rows_before, "the webhooks changed no row");
    assert_eq!(feed(pool).await.len(), feed_before, "and made no change row");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_and_a_revoke_reach_all_1000_holders_of_the_role_across_hotels_at_the_answer() {
    let db = TestDb::new().await;
    let w = WriteApp::start(db.pool.clone()).await;
    w.fake.hold_webhooks(true); // only the write path can make the view agree at the answer
    let pool = w.pool();

    let (status, permission) = w
        .call(
            "POST",
            "/v1/permissions",
            Some(json!({"name": "Manage reservations", "key": PERMISSION})),
        )
        .await;
    assert_eq!(status, 201, "{permission}");
    let (status, role) = w
        .call(
            "POST",
            "/v1/roles",
            Some(json!({"name": "Front desk", "key": "org:frontdesk", "description": "the desk"})),
        )
        .await;
    assert_eq!(status, 201, "{role}");
    assert_eq!(role["permissions"], json!([]), "{role}");
    put_holders(&w, "org:frontdesk").await;
    assert_eq!(holding(pool, PERMISSION).await, (0, 0));

    let grant = format!("/v1/roles/{}/permissions/{}", id(&role), id(&permission));
    let before = feed(pool).await.len();
    let (status, granted) = w.call("POST", &grant, None).await;
    assert_eq!(status, 200, "{granted}");
    assert_eq!(granted["permissions"], json!([PERMISSION]), "{granted}");
    assert_eq!(granted["members"], HOLDERS as i64, "{granted}");
    // In the same breath: every holder, in every hotel, holds it.
    assert_eq!(holding(pool, PERMISSION).await, (HOLDERS as i64, HOTELS as i64));
    let after_grant = feed(pool).await;
    assert_eq!(
        after_grant[before..]
            .iter()
            .map(|(e, k, op, s)| (e.as_str(), k.as_str(), op.as_str(), s.as_deref()))
            .collect::<Vec<_>>(),
        vec![("role", id(&role).as_str(), "updated", Some("api"))],
        "one change row: the role's new permission set"
    );

    // Granting what the role already has answers the same and changes nothing.
    let (status, again) = w.call("POST", &grant, None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["permissions"], json!([PERMISSION]));
    assert_eq!(feed(pool).await.len(), after_grant.len(), "no change, no row");

    let (status, revoked) = w.call("DELETE", &grant, None).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["permissions"], json!([]), "{revoked}");
    assert_eq!(
        holding(pool, PERMISSION).await,
        (0, 0),
        "revoked from all at the answer"
    );
    let after_revoke = feed(pool).await;
    assert_eq!(after_revoke.len(), after_grant.len() + 1);

    // Clerk's role.* and permission.* webhooks, late and shuffled: duplicates by version.
    late_webhooks_change_nothing(&w, 11).await;
    assert_eq!(holding(pool, PERMISSION).await, (0, 0));
    w.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn permissions_and_roles_are_created_renamed_and_deleted_with_the_view_right_at_each_answer() {
    let db = TestDb::new().await;
    let w = WriteApp::start(db.pool.clone()).await;
    w.fake.hold_webhooks(true);
    let pool = w.pool();

    let (status, perm) = w
        .call(
            "POST",
            "/v1/permissions",
            Some(json!({"name": "Read bookings", "key": "org:bookings:read"})),
        )
        .await;
    assert_eq!(status, 201, "{perm}");
    // A role created with the permission: its holders hold it from the answer on.
    let (status, role) = w
        .call(
            "POST",
            "/v1/roles",
            Some(json!({"name": "Night audit", "key": "org:night", "permissions": [id(&perm)]})),
        )
        .await;
    assert_eq!(status, 201, "{role}");
    assert_eq!(role["permissions"], json!(["org:bookings:read"]));
    let hotel = w.create_hotel("Hotel Alpine").await;
    let hotel_id = id(&hotel);
    let (status, member) = w
        .call(
            "POST",
            &format!("/v1/hotels/{hotel_id}/members"),
            Some(json!({"user_id": "user_tom", "role": "org:night"})),
        )
        .await;
    assert_eq!(status, 201, "{member}");
    assert_eq!(holding(pool, "org:bookings:read").await, (1, 1));

    // The permission re-keyed: the view shows the new key at once.
    let (status, renamed) = w
        .call(
            "PATCH",
            &format!("/v1/permissions/{}", id(&perm)),
            Some(json!({"key": "org:bookings:view"})),
        )
        .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["key"], "org:bookings:view");
    assert_eq!(holding(pool, "org:bookings:read").await, (0, 0));
    assert_eq!(holding(pool, "org:bookings:view").await, (1, 1));

    // A role held by a member cannot be deleted (Clerk's 422 and its code come back).
    let (status, refused) = w.call("DELETE", &format!("/v1/roles/{}", id(&role)), None).await;
    assert_eq!(status, 422, "{refused}");
    assert!(refused["error"]["clerk_code"].is_string(), "{refused}");

    // The permission deleted: it leaves the role, and nobody holds it, at the answer.
    let (status, deleted) = w.call("DELETE", &format!("/v1/permissions/{}", id(&perm)), None).await;
    assert_eq!(status, 200, "{deleted}");
    assert!(deleted["deleted_at"].is_string(), "{deleted}");
    assert_eq!(holding(pool, "org:bookings:view").await, (0, 0));
    let role_perms: i64 = sqlx::query_scalar("select count(*) from role_permissions where role_id = $1")
        .bind(id(&role))
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(role_perms, 0, "a deleted permission leaves every role");

    // A malformed key is refused by orgsync, naming the field; Clerk is not asked.
    let asked = w.fake.requests("/v1/organization_permissions");
    let (status, bad) = w
        .call(
            "POST",
            "/v1/permissions",
            Some(json!({"name": "x", "key": "bookings read"})),
        )
        .await;
    assert!(status == 400 || status == 422, "{status} {bad}");
    assert!(bad["error"]["message"].as_str().unwrap().contains("key"), "{bad}");
    assert_eq!(w.fake.requests("/v1/organization_permissions"), asked);

    late_webhooks_change_nothing(&w, 5).await;
    w.app.stop().await;
}
