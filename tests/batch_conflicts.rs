//! The consumer's batch composition rules that keep workers from deadlocking each other:
//! membership jobs and user deletes never share a batch, and batches that delete hotels or users
//! run one at a time (see `src/queue/runner.rs`).

mod common;

use common::events::*;
use common::*;
use orgsync::queue::runner::run_batch;
use orgsync::queue::WorkerSettings;

const H: &str = "org_2hotelAlpine0000000000001";
const U1: &str = "user_2staffMaria000000000000001";
const U2: &str = "user_2staffLuca0000000000000002";
const T0: i64 = 1_764_000_000_000;

/// One worker's settings, with batches large enough to claim every job of a test at once.
fn settings() -> WorkerSettings {
    WorkerSettings {
        batch_size: 50,
        ..fast_workers()
    }
}

/// A live hotel H and users U1, U2, applied.
async fn seed(pool: &sqlx::PgPool) {
    insert_job(
        pool,
        "msg_h",
        &organization("organization.created", H, "Hotel Alpine", T0, T0, T0),
    )
    .await;
    insert_job(
        pool,
        "msg_u1",
        &user("user.created", U1, "Maria", "m@x.test", T0, T0, T0),
    )
    .await;
    insert_job(
        pool,
        "msg_u2",
        &user("user.created", U2, "Luca", "l@x.test", T0, T0, T0),
    )
    .await;
    drain(pool, &settings(), 5).await;
}

fn member(id: &str, user: &str) -> serde_json::Value {
    membership(
        "organizationMembership.created",
        id,
        H,
        user,
        "org:member",
        T0 + 10,
        T0 + 10,
        T0 + 10,
    )
}

#[tokio::test]
async fn user_deletes_wait_for_the_next_batch_when_an_older_membership_job_was_claimed_with_them() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    insert_job(&db.pool, "msg_m", &member("orgmem_1", U1)).await;
    insert_job(&db.pool, "msg_del", &user_deleted(U2, T0 + 20)).await;

    let first = run_batch(&db.pool, &settings()).await.unwrap();
    assert_eq!((first.claimed, first.done, first.deferred), (2, 1, 1));
    assert_eq!(job_state(&db.pool, "msg_m").await.0, "done");
    // Untouched: still due, no attempt counted.
    assert_eq!(job_state(&db.pool, "msg_del").await, ("available".into(), 0, None));

    let second = run_batch(&db.pool, &settings()).await.unwrap();
    assert_eq!((second.claimed, second.done, second.deferred), (1, 1, 0));
    assert_eq!(job_state(&db.pool, "msg_del").await.0, "done");
}

#[tokio::test]
async fn membership_jobs_wait_for_the_next_batch_when_an_older_user_delete_was_claimed_with_them() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    insert_job(&db.pool, "msg_del", &user_deleted(U2, T0 + 20)).await;
    insert_job(&db.pool, "msg_m", &member("orgmem_1", U1)).await;
    insert_job(
        &db.pool,
        "msg_h2",
        &organization("organization.updated", H, "Renamed", T0, T0 + 30, T0 + 30),
    )
    .await;

    let first = run_batch(&db.pool, &settings()).await.unwrap();
    // The user delete (the oldest of the two kinds) and the hotel rename apply; the membership waits.
    assert_eq!((first.claimed, first.done, first.deferred), (3, 2, 1));
    assert_eq!(job_state(&db.pool, "msg_del").await.0, "done");
    assert_eq!(job_state(&db.pool, "msg_h2").await.0, "done");
    assert_eq!(job_state(&db.pool, "msg_m").await, ("available".into(), 0, None));

    drain(&db.pool, &settings(), 3).await;
    assert_eq!(job_state(&db.pool, "msg_m").await.0, "done");
    let live: bool = sqlx::query_scalar("select deleted_at is null from memberships where user_id = $1")
        .bind(U1)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(live, "the deferred membership still applies");
}

/// Holds the lock batches that delete take, as another worker's batch would.
async fn hold_deletes_lock(pool: &sqlx::PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock(1869768548, 0)") // class "orgd"
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

#[tokio::test]
async fn batches_that_delete_wait_for_each_other() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    for (id, event) in [
        ("msg_del_user", user_deleted(U2, T0 + 20)),
        ("msg_del_hotel", organization_deleted(H, T0 + 20)),
    ] {
        insert_job(&db.pool, id, &event).await;
        let other = hold_deletes_lock(&db.pool).await;
        let batch = tokio::spawn({
            let pool = db.pool.clone();
            async move { run_batch(&pool, &settings()).await.unwrap() }
        });
        wait_for_lock_waiters(&db.pool, "orgsync-test", 1).await;
        assert!(
            !batch.is_finished(),
            "the batch waits while another batch that deletes runs"
        );
        other.rollback().await.unwrap();
        assert_eq!(batch.await.unwrap().done, 1);
        assert_eq!(job_state(&db.pool, id).await.0, "done");
    }
}

#[tokio::test]
async fn batches_without_deletes_do_not_wait_for_batches_that_delete() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    insert_job(&db.pool, "msg_m", &member("orgmem_1", U1)).await;
    let other = hold_deletes_lock(&db.pool).await;
    let report = run_batch(&db.pool, &settings()).await.unwrap();
    assert_eq!(report.done, 1);
    other.rollback().await.unwrap();
}
