//! The app's access check, the view `member_permissions`: a member gains and loses permissions
//! as their role is edited in Clerk, as they change role, when banned, when removed; the
//! membership's own permissions stand in while its role is unknown. And the change feed reports
//! roles, permissions and invitations.

mod common;

use common::access_events::*;
use common::events::*;
use common::*;
use orgsync::changes::read_after;
use sqlx::PgPool;

const H: &str = "org_2hotelView0000000000000001";
const U: &str = "user_2janeView000000000000001";
const M: &str = "orgmem_2janeView0000000000001";
const R: &str = "role_2frontDeskView00000000001";
const READ: &str = "perm_2readView00000000000001";
const MANAGE: &str = "perm_2manageView0000000000001";
const T0: i64 = 1_764_000_000_000;

async fn held(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "select permission from member_permissions where hotel_id = $1 and user_id = $2 order by permission",
    )
    .bind(H)
    .bind(U)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn run(pool: &PgPool, id: &str, event: serde_json::Value) {
    insert_job(pool, id, &event).await;
    drain(pool, &fast_workers(), 20).await;
    assert_eq!(job_state(pool, id).await.0, "done", "{id}");
}

fn member(kind: &str, role: &str, own: &[&str], updated: i64) -> serde_json::Value {
    with_permissions(membership(kind, M, H, U, role, T0, updated, updated), own)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_gains_and_loses_permissions_as_clerk_changes() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    run(
        pool,
        "org",
        organization("organization.created", H, "Hotel", T0, T0, T0),
    )
    .await;
    run(pool, "user", user("user.created", U, "Jane", "jane@x.test", T0, T0, T0)).await;
    // The role is not known yet: the membership's own permissions stand in.
    run(
        pool,
        "m1",
        member(
            "organizationMembership.created",
            "org:front_desk",
            &["org:own:read"],
            T0 + 10,
        ),
    )
    .await;
    assert_eq!(held(pool).await, vec!["org:own:read"]);

    // The role arrives: its permission set is what counts.
    let read = permission_data(READ, "org:bookings:read", T0, T0);
    let manage = permission_data(MANAGE, "org:bookings:manage", T0, T0);
    run(
        pool,
        "r1",
        role(
            "role.created",
            R,
            "org:front_desk",
            vec![read.clone()],
            T0,
            T0 + 20,
            T0 + 20,
        ),
    )
    .await;
    assert_eq!(held(pool).await, vec!["org:bookings:read"]);

    // The role is edited in Clerk.
    let both = vec![read.clone(), manage.clone()];
    run(
        pool,
        "r2",
        role("role.updated", R, "org:front_desk", both, T0, T0 + 30, T0 + 30),
    )
    .await;
    assert_eq!(held(pool).await, vec!["org:bookings:manage", "org:bookings:read"]);
    run(
        pool,
        "r3",
        role("role.updated", R, "org:front_desk", vec![manage], T0, T0 + 40, T0 + 40),
    )
    .await;
    assert_eq!(held(pool).await, vec!["org:bookings:manage"]);

    // The member changes role (to one orgsync has no row for: its own permissions stand in).
    run(
        pool,
        "m2",
        member(
            "organizationMembership.updated",
            "org:member",
            &["org:sys_memberships:read"],
            T0 + 50,
        ),
    )
    .await;
    assert_eq!(held(pool).await, vec!["org:sys_memberships:read"]);
    run(
        pool,
        "m3",
        member("organizationMembership.updated", "org:front_desk", &[], T0 + 60),
    )
    .await;
    assert_eq!(held(pool).await, vec!["org:bookings:manage"]);

    // Banned: nothing; unbanned: back. Locked: nothing.
    let jane = |updated: i64| user("user.updated", U, "Jane", "jane@x.test", T0, updated, updated);
    run(pool, "b1", with_status(jane(T0 + 70), true, false)).await;
    assert!(held(pool).await.is_empty());
    run(pool, "b2", with_status(jane(T0 + 80), false, false)).await;
    assert_eq!(held(pool).await, vec!["org:bookings:manage"]);
    run(pool, "l1", with_status(jane(T0 + 90), false, true)).await;
    assert!(held(pool).await.is_empty());
    run(pool, "l2", with_status(jane(T0 + 95), false, false)).await;
    assert_eq!(held(pool).await, vec!["org:bookings:manage"]);

    // A deleted permission grants nothing.
    run(pool, "pd", permission_deleted(MANAGE, T0 + 97)).await;
    assert!(held(pool).await.is_empty());
    run(
        pool,
        "r4",
        role("role.updated", R, "org:front_desk", vec![read], T0, T0 + 98, T0 + 98),
    )
    .await;
    assert_eq!(held(pool).await, vec!["org:bookings:read"]);

    // Removed: nothing.
    run(
        pool,
        "m4",
        member("organizationMembership.deleted", "org:front_desk", &[], T0 + 100),
    )
    .await;
    assert!(held(pool).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_change_feed_reports_roles_permissions_and_invitations() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    run(
        pool,
        "org",
        organization("organization.created", H, "Hotel", T0, T0, T0),
    )
    .await;
    let read = permission_data(READ, "org:bookings:read", T0, T0 + 1);
    let r1 = role("role.created", R, "org:front_desk", vec![read], T0, T0 + 2, T0 + 2);
    run(pool, "r1", r1.clone()).await;
    run(pool, "r1-dup", r1).await;
    run(
        pool,
        "r2",
        role("role.updated", R, "org:front_desk", vec![], T0, T0 + 3, T0 + 3),
    )
    .await;
    run(pool, "pd", permission_deleted(READ, T0 + 4)).await;
    let inv = "orginv_2janeView000000000001";
    run(
        pool,
        "i1",
        invitation(
            "organizationInvitation.created",
            inv,
            H,
            "jane@x.test",
            "org:member",
            Some(T0 + 5),
            Some(T0 + 5),
            T0 + 5,
        ),
    )
    .await;
    let mut accepted = invitation(
        "organizationInvitation.accepted",
        inv,
        H,
        "jane@x.test",
        "org:member",
        Some(T0 + 5),
        Some(T0 + 6),
        T0 + 6,
    );
    accepted["data"]["status"] = "accepted".into();
    run(pool, "i2", accepted).await;
    run(pool, "rd", role_deleted(R, T0 + 7)).await;

    let seen: Vec<(String, String, String, i64)> = read_after(pool, 0, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.entity != "hotel")
        .map(|c| (c.entity, c.entity_id, c.op, c.clerk_version))
        .collect();
    let expected: Vec<(String, String, String, i64)> = [
        ("permission", READ, "created", T0 + 1),
        ("role", R, "created", T0 + 2),
        ("role", R, "updated", T0 + 3),
        ("permission", READ, "deleted", T0 + 4),
        ("invitation", inv, "created", T0 + 5),
        ("invitation", inv, "updated", T0 + 6),
        ("role", R, "deleted", T0 + 7),
    ]
    .into_iter()
    .map(|(e, id, op, v)| (e.to_owned(), id.to_owned(), op.to_owned(), v))
    .collect();
    assert_eq!(seen, expected);

    // `orgsync changes --entity` takes the new entities too.
    let url = common::cli::db_url(pool).await;
    let printed = common::cli::orgsync(&url, &["changes", "--entity", "role", "--json"]).await;
    assert_eq!(printed.code, 0, "{printed:?}");
    let ops: Vec<String> = printed
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["op"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ops, ["created", "updated", "deleted"], "{printed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fixtures_sent_in_sequence_build_a_coherent_picture() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let story = [
        "organization.created",
        "user.created",
        "organizationMembership.created",
        "permission.created",
        "role.created",
        "permission.updated",
        "role.updated",
        "organizationInvitation.created",
        "organizationInvitation.accepted",
        "organizationInvitation.revoked",
    ];
    for name in story {
        run(pool, name, fixture_json(name)).await;
    }
    let sets: Vec<(String, String, String)> = sqlx::query_as(
        "select r.key, p.key, p.name from role_permissions rp join roles r on r.id = rp.role_id
         join permissions p on p.id = rp.permission_id order by 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        sets,
        vec![
            (
                "org:front_desk".into(),
                "org:bookings:manage".into(),
                "Manage bookings".into()
            ),
            (
                "org:front_desk".into(),
                "org:bookings:read".into(),
                "Read bookings and guests".into()
            ),
        ]
    );
    let invitations: Vec<(String, String, Option<String>)> =
        sqlx::query_as("select email_address, status, user_id from invitations order by 1")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        invitations,
        vec![
            ("giulia.verdi@example.com".into(), "revoked".into(), None),
            (
                "luca.bianchi@example.com".into(),
                "accepted".into(),
                Some("user_2staffLuca0000000000000001".into())
            ),
        ]
    );
    // Maria is an admin, a role orgsync has no row for: her membership's own permissions count.
    let maria: Vec<String> = sqlx::query_scalar("select permission from member_permissions order by 1")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(maria.len(), 4, "{maria:?}");
    for name in ["permission.deleted", "role.deleted", "organization.deleted"] {
        run(pool, name, fixture_json(name)).await;
    }
    let left: (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from role_permissions), (select count(*) from invitations where deleted_at is null),
                (select count(*) from roles where deleted_at is null)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(left, (0, 0, 0));
}
