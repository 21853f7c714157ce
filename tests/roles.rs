//! Roles, permissions and invitations through the consumer: newer wins, tombstones are final,
//! a role's permission set is replaced only by a newer role, a deleted permission leaves every
//! set, a role key held by another live role makes the arrival wait, and invitations wait for
//! their hotel.

mod common;

use common::access_events::*;
use common::events::*;
use common::*;
use sqlx::PgPool;

const H: &str = "org_2hotelRoles000000000000001";
const T0: i64 = 1_764_000_000_000;
const P1: &str = "perm_2read0000000000000000001";
const P2: &str = "perm_2manage00000000000000001";
const R1: &str = "role_2frontDesk00000000000001";
const R2: &str = "role_2nightShift0000000000001";

async fn role_set(pool: &PgPool, role: &str) -> Vec<String> {
    sqlx::query_scalar("select permission_id from role_permissions where role_id = $1 order by 1")
        .bind(role)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn role_row(pool: &PgPool, id: &str) -> Option<(String, i64, bool)> {
    sqlx::query_as("select key, clerk_version, deleted_at is not null from roles where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn permission_row(pool: &PgPool, id: &str) -> Option<(String, i64, bool)> {
    sqlx::query_as("select name, clerk_version, deleted_at is not null from permissions where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn run(pool: &PgPool, jobs: &[(&str, serde_json::Value)]) {
    for (id, e) in jobs {
        insert_job(pool, id, e).await;
    }
    drain(pool, &fast_workers(), 50).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_update_replaces_the_permission_set_only_when_newer() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let both = vec![
        permission_data(P1, "org:read", T0, T0),
        permission_data(P2, "org:manage", T0, T0),
    ];
    run(
        pool,
        &[(
            "v2",
            role("role.updated", R1, "org:front_desk", both, T0, T0 + 20, T0 + 20),
        )],
    )
    .await;
    assert_eq!(role_set(pool, R1).await, vec![P2.to_owned(), P1.to_owned()]);
    // An older version (one permission) arrives late: the set stays.
    let one = vec![permission_data(P1, "org:read", T0, T0)];
    run(
        pool,
        &[(
            "v1",
            role("role.created", R1, "org:front_desk", one, T0, T0 + 10, T0 + 10),
        )],
    )
    .await;
    assert_eq!(role_set(pool, R1).await, vec![P2.to_owned(), P1.to_owned()]);
    assert_eq!(job_state(pool, "v1").await.0, "done");
    // A newer version replaces it as a whole.
    let manage = vec![permission_data(P2, "org:manage", T0, T0)];
    run(
        pool,
        &[(
            "v3",
            role("role.updated", R1, "org:front_desk", manage, T0, T0 + 30, T0 + 30),
        )],
    )
    .await;
    assert_eq!(role_set(pool, R1).await, vec![P2.to_owned()]);
    assert_eq!(
        role_row(pool, R1).await,
        Some(("org:front_desk".into(), T0 + 30, false))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_embedded_permission_gets_its_row_and_newer_copies_win() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let embedded = vec![permission_data(P1, "org:read", T0, T0 + 5)];
    run(
        pool,
        &[(
            "r1",
            role("role.created", R1, "org:front_desk", embedded, T0, T0 + 10, T0 + 10),
        )],
    )
    .await;
    assert_eq!(
        permission_row(pool, P1).await,
        Some((format!("org:read @{}", T0 + 5), T0 + 5, false))
    );
    // The permission's own, older event changes nothing; a newer one wins.
    run(
        pool,
        &[(
            "p0",
            permission("permission.created", P1, "org:read", T0, T0 + 1, T0 + 1),
        )],
    )
    .await;
    assert_eq!(permission_row(pool, P1).await.unwrap().1, T0 + 5);
    run(
        pool,
        &[(
            "p1",
            permission("permission.updated", P1, "org:read", T0, T0 + 7, T0 + 7),
        )],
    )
    .await;
    assert_eq!(permission_row(pool, P1).await.unwrap().1, T0 + 7);
    // A newer copy embedded in a later role version updates it too; an older one does not.
    let newer = vec![permission_data(P1, "org:read", T0, T0 + 9)];
    run(
        pool,
        &[(
            "r2",
            role("role.updated", R1, "org:front_desk", newer, T0, T0 + 20, T0 + 20),
        )],
    )
    .await;
    assert_eq!(permission_row(pool, P1).await.unwrap().1, T0 + 9);
    let older = vec![permission_data(P1, "org:read", T0, T0 + 2)];
    run(
        pool,
        &[(
            "r3",
            role("role.updated", R1, "org:front_desk", older, T0, T0 + 30, T0 + 30),
        )],
    )
    .await;
    assert_eq!(permission_row(pool, P1).await.unwrap().1, T0 + 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_permission_leaves_every_role_and_stays_deleted() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let both = || {
        vec![
            permission_data(P1, "org:read", T0, T0),
            permission_data(P2, "org:manage", T0, T0),
        ]
    };
    run(
        pool,
        &[
            (
                "a",
                role("role.created", R1, "org:front_desk", both(), T0, T0 + 1, T0 + 1),
            ),
            ("b", role("role.created", R2, "org:night", both(), T0, T0 + 1, T0 + 1)),
        ],
    )
    .await;
    run(pool, &[("del", permission_deleted(P2, T0 + 50))]).await;
    assert_eq!(role_set(pool, R1).await, vec![P1.to_owned()]);
    assert_eq!(role_set(pool, R2).await, vec![P1.to_owned()]);
    assert!(permission_row(pool, P2).await.unwrap().2);
    // A stale role version still embedding it (delivered late, yet newer than the role row)
    // cannot bring it back, nor can the permission's own late update.
    run(
        pool,
        &[
            (
                "late-role",
                role("role.updated", R1, "org:front_desk", both(), T0, T0 + 40, T0 + 40),
            ),
            (
                "late-perm",
                permission("permission.updated", P2, "org:manage", T0, T0 + 45, T0 + 45),
            ),
        ],
    )
    .await;
    assert_eq!(role_set(pool, R1).await, vec![P1.to_owned()]);
    assert!(permission_row(pool, P2).await.unwrap().2, "tombstones are final");
    assert_eq!(role_row(pool, R1).await.unwrap().1, T0 + 40);

    // Deletion delivered before anything else: a tombstone, and no role ever holds it.
    let db2 = TestDb::new().await;
    let pool2 = &db2.pool;
    run(pool2, &[("del", permission_deleted(P2, T0 + 50))]).await;
    run(
        pool2,
        &[(
            "a",
            role("role.created", R1, "org:front_desk", both(), T0, T0 + 1, T0 + 1),
        )],
    )
    .await;
    assert_eq!(role_set(pool2, R1).await, vec![P1.to_owned()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_tombstone_is_final_and_empties_its_set() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let one = || vec![permission_data(P1, "org:read", T0, T0)];
    run(
        pool,
        &[(
            "c",
            role("role.created", R1, "org:front_desk", one(), T0, T0 + 1, T0 + 1),
        )],
    )
    .await;
    run(pool, &[("d", role_deleted(R1, T0 + 100))]).await;
    assert!(role_row(pool, R1).await.unwrap().2);
    assert!(role_set(pool, R1).await.is_empty());
    run(
        pool,
        &[(
            "u",
            role("role.updated", R1, "org:front_desk", one(), T0, T0 + 200, T0 + 200),
        )],
    )
    .await;
    assert!(
        role_row(pool, R1).await.unwrap().2,
        "a newer version does not revive it"
    );
    assert!(role_set(pool, R1).await.is_empty());
    // Its key is free for another role.
    run(
        pool,
        &[(
            "n",
            role(
                "role.created",
                R2,
                "org:front_desk",
                one(),
                T0 + 300,
                T0 + 300,
                T0 + 300,
            ),
        )],
    )
    .await;
    assert_eq!(role_row(pool, R2).await.unwrap().0, "org:front_desk");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_whose_key_another_live_role_holds_waits_without_aborting_the_batch() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let none = Vec::new;
    run(
        pool,
        &[("old", role("role.created", R1, "org:desk", none(), T0, T0 + 1, T0 + 1))],
    )
    .await;
    // R1 was deleted in Clerk and R2 took its key, but R2 arrives first, in a batch with others.
    insert_job(
        pool,
        "new",
        &role("role.created", R2, "org:desk", none(), T0 + 10, T0 + 10, T0 + 10),
    )
    .await;
    insert_job(
        pool,
        "other",
        &permission("permission.created", P1, "org:read", T0, T0, T0),
    )
    .await;
    orgsync::queue::runner::run_batch(pool, &fast_workers()).await.unwrap();
    let (state, _, error) = job_state(pool, "new").await;
    assert_eq!(state, "available", "it waits");
    assert!(error.unwrap().contains("org:desk"));
    assert_eq!(
        job_state(pool, "other").await.0,
        "done",
        "the rest of the batch applied"
    );
    assert_eq!(role_row(pool, R2).await, None);
    // The holder's deletion arrives: the waiting role applies.
    insert_job(pool, "gone", &role_deleted(R1, T0 + 5)).await;
    drain_until_done(pool).await;
    assert_eq!(role_row(pool, R2).await, Some(("org:desk".into(), T0 + 10, false)));

    // Two unknown roles claiming one key in one batch: the newer is written, the other waits.
    let db2 = TestDb::new().await;
    let pool2 = &db2.pool;
    insert_job(
        pool2,
        "a",
        &role("role.created", R1, "org:x", none(), T0, T0 + 1, T0 + 1),
    )
    .await;
    insert_job(
        pool2,
        "b",
        &role("role.created", R2, "org:x", none(), T0, T0 + 2, T0 + 2),
    )
    .await;
    orgsync::queue::runner::run_batch(pool2, &fast_workers()).await.unwrap();
    assert_eq!(job_state(pool2, "b").await.0, "done");
    assert_eq!(job_state(pool2, "a").await.0, "available");
    assert_eq!(role_row(pool2, R2).await.unwrap().0, "org:x");
}

/// Runs batches (retries included) until every job is done; panics after 10 s.
async fn drain_until_done(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        orgsync::queue::runner::run_batch(pool, &fast_workers()).await.unwrap();
        let open: i64 = sqlx::query_scalar("select count(*) from jobs where state <> 'done'")
            .fetch_one(pool)
            .await
            .unwrap();
        if open == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "jobs not done in 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

const I: &str = "orginv_2lucaRoles00000000000001";

async fn invitation_row(pool: &PgPool, id: &str) -> Option<(String, i64, bool)> {
    sqlx::query_as("select status, clerk_version, created_at is not null from invitations where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invitation_waits_for_its_hotel_and_is_woken_by_it() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let created = invitation(
        "organizationInvitation.created",
        I,
        H,
        "luca@x.test",
        "org:member",
        Some(T0 + 10),
        Some(T0 + 10),
        T0 + 10,
    );
    insert_job(pool, "inv", &created).await;
    orgsync::queue::runner::run_batch(pool, &fast_workers()).await.unwrap();
    let waiting: (String, Option<String>) =
        sqlx::query_as("select state, waiting_for from jobs where event_id = 'inv'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(waiting, ("available".into(), Some(H.into())));
    // Applying the hotel makes the waiting job due at once (its retry was scheduled later).
    sqlx::query("update jobs set run_at = now() + interval '1 hour' where event_id = 'inv'")
        .execute(pool)
        .await
        .unwrap();
    run(
        pool,
        &[("org", organization("organization.created", H, "Hotel", T0, T0, T0))],
    )
    .await;
    drain(pool, &fast_workers(), 10).await;
    assert_eq!(job_state(pool, "inv").await.0, "done");
    assert_eq!(invitation_row(pool, I).await, Some(("pending".into(), T0 + 10, true)));

    // The hotel is deleted: its invitations are tombstoned with it (the row stays, unchanged but
    // for deleted_at), and later news of them is obsolete.
    run(pool, &[("del", organization_deleted(H, T0 + 100))]).await;
    assert_eq!(invitation_row(pool, I).await, Some(("pending".into(), T0 + 10, true)));
    let tombstoned: bool = sqlx::query_scalar("select deleted_at is not null from invitations where id = $1")
        .bind(I)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(tombstoned);
    let mut accepted = created.clone();
    accepted["type"] = "organizationInvitation.accepted".into();
    accepted["data"]["status"] = "accepted".into();
    accepted["data"]["updated_at"] = (T0 + 20).into();
    run(pool, &[("late", accepted)]).await;
    assert_eq!(job_state(pool, "late").await.0, "done");
    assert_eq!(invitation_row(pool, I).await, Some(("pending".into(), T0 + 10, true)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_without_updated_at_settles_the_invitation_in_any_order() {
    let created = invitation(
        "organizationInvitation.created",
        I,
        H,
        "luca@x.test",
        "org:member",
        Some(T0 + 10_400),
        Some(T0 + 10_400),
        T0 + 10_400,
    );
    // Clerk's revocation has no created_at/updated_at; its event time (whole seconds) can fall
    // before the creation's millisecond updated_at.
    let mut revoked = invitation(
        "organizationInvitation.revoked",
        I,
        H,
        "luca@x.test",
        "org:member",
        None,
        None,
        (T0 + 10_400) / 1000,
    );
    revoked["data"]["status"] = "revoked".into();
    for order in [[&created, &revoked], [&revoked, &created]] {
        let db = TestDb::new().await;
        let pool = &db.pool;
        run(
            pool,
            &[("org", organization("organization.created", H, "Hotel", T0, T0, T0))],
        )
        .await;
        run(pool, &[("first", order[0].clone())]).await;
        run(pool, &[("second", order[1].clone())]).await;
        let (status, _, has_created) = invitation_row(pool, I).await.unwrap();
        assert_eq!((status.as_str(), has_created), ("revoked", true));
    }
}
