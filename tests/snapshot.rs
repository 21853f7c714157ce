//! A snapshot outranks what is older: after a resync (whole, or of one hotel by the self-heal)
//! listed Clerk at T, the queued events older than T that it wakes cannot undo what it found.

mod common;
mod fake_clerk;

use std::time::Duration;

use common::events::membership as membership_event;
use common::*;
use fake_clerk::{membership, org, user, FakeClerk};
use orgsync::clerk::HotelId;
use orgsync::queue::runner::WorkerSettings;
use orgsync::resync::{resync, ResyncOptions, SelfHeal};
use sqlx::PgPool;

const BASE: i64 = 1_764_000_000_000;
const HOTEL: &str = "org_lost000000000001";

fn member_id(i: usize) -> String {
    format!("user_member{i:08}")
}

/// The case: every webhook of one hotel was lost (its creation and the removal of 7 of
/// its 10 members), so the members' older `created` jobs wait for the hotel. Clerk holds the
/// hotel with its 3 remaining members.
async fn lost_hotel(pool: &PgPool) -> FakeClerk {
    let fake = FakeClerk::start().await;
    let hotel = org(HOTEL, "Lost Hotel", BASE, BASE + 10);
    fake.put_org(&hotel);
    for i in 0..10 {
        let u = user(
            &member_id(i),
            &format!("m{i}@example.com"),
            "Member",
            &format!("{i}"),
            BASE,
            BASE,
        );
        fake.put_user(&u);
        if i < 3 {
            let m = membership(
                &format!("orgmem_lost{i:08}"),
                &hotel,
                &u,
                "org:member",
                BASE + 20,
                BASE + 20,
            );
            fake.put_membership(&m);
        }
    }
    for i in 0..10 {
        let event = membership_event(
            "organizationMembership.created",
            &format!("orgmem_lost{i:08}"),
            HOTEL,
            &member_id(i),
            "org:member",
            BASE + 20,
            BASE + 20,
            BASE + 20,
        );
        insert_job(pool, &format!("msg_member_{i}"), &event).await;
    }
    fake
}

/// Workers whose retries wait long: only the wake-up of an applied hotel makes them due again.
fn patient_workers() -> WorkerSettings {
    WorkerSettings {
        retry_base: Duration::from_secs(600),
        retry_cap: Duration::from_secs(600),
        batch_size: 100,
        ..fast_workers()
    }
}

async fn live_members(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select user_id from memberships where hotel_id = $1 and deleted_at is null order by user_id")
        .bind(HOTEL)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn waiting_jobs(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from jobs where state = 'available' and waiting_for = $1")
        .bind(HOTEL)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Runs every due job, then checks that none is left waiting or failed.
async fn run_woken_jobs(pool: &PgPool, s: &WorkerSettings) {
    drain(pool, s, 10).await;
    let left: i64 = sqlx::query_scalar("select count(*) from jobs where state <> 'done'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "every woken job has run to done");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_resync_while_jobs_wait_keeps_removed_members_removed() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = lost_hotel(&pool).await;
    let s = patient_workers();
    drain(&pool, &s, 3).await;
    assert_eq!(waiting_jobs(&pool).await, 10, "the members wait for their hotel");

    resync(&pool, &fake.client(), &ResyncOptions::default()).await.unwrap();
    run_woken_jobs(&pool, &s).await;
    let expected: Vec<String> = (0..3).map(member_id).collect();
    assert_eq!(
        live_members(&pool).await,
        expected,
        "the 7 removed members stay removed"
    );

    // News newer than the snapshot still applies.
    let now = chrono::Utc::now().timestamp_millis() + 1_000;
    let event = membership_event(
        "organizationMembership.created",
        "orgmem_new000000001",
        HOTEL,
        &member_id(9),
        "org:admin",
        now,
        now,
        now,
    );
    insert_job(&pool, "msg_invited_again", &event).await;
    run_woken_jobs(&pool, &s).await;
    assert!(live_members(&pool).await.contains(&member_id(9)));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_self_heal_alone_keeps_removed_members_removed() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let fake = lost_hotel(&pool).await;
    let s = patient_workers();
    drain(&pool, &s, 3).await;
    assert_eq!(waiting_jobs(&pool).await, 10);

    SelfHeal::new(pool.clone(), fake.client(), 1)
        .heal_now(&HotelId::parse(HOTEL).unwrap())
        .await
        .unwrap();
    run_woken_jobs(&pool, &s).await;
    let expected: Vec<String> = (0..3).map(member_id).collect();
    assert_eq!(
        live_members(&pool).await,
        expected,
        "the 7 removed members stay removed"
    );
}
