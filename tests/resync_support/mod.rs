//! What the resync test targets share: a fixed past, database probes, and a converged start.
#![allow(dead_code)]

use orgsync::clerk::{ClerkEvent, Membership, Organization};
use orgsync::reconcile;
use orgsync::resync::{resync, ResyncOptions};
use serde_json::Value;
use sqlx::PgPool;

use crate::fake_clerk::FakeClerk;

/// A fixed past: fake objects are dated from here, so any webhook "now" is newer.
pub const BASE: i64 = 1_764_000_000_000;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn opts() -> ResyncOptions {
    ResyncOptions::default()
}

pub async fn scalar_i64(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

pub async fn live(pool: &PgPool, table: &str) -> i64 {
    scalar_i64(pool, &format!("select count(*) from {table} where deleted_at is null")).await
}

pub async fn is_live_hotel(pool: &PgPool, id: &str) -> bool {
    sqlx::query_scalar::<_, bool>("select deleted_at is null from hotels where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every row's physical version: any write, even one that changes no value, changes it.
pub async fn fingerprint(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "select concat_ws('|',
            (select string_agg(id || ':' || xmin::text, ',' order by id) from hotels),
            (select string_agg(id || ':' || xmin::text, ',' order by id) from users),
            (select string_agg(hotel_id || user_id || ':' || xmin::text, ',' order by hotel_id, user_id) from memberships))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

pub async fn last_run(pool: &PgPool) -> (String, bool, Value, Option<String>) {
    sqlx::query_as("select outcome, dry_run, counts, error from resync_runs order by id desc limit 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

pub async fn apply(pool: &PgPool, event: ClerkEvent) -> reconcile::Applied {
    let mut tx = pool.begin().await.unwrap();
    let applied = reconcile::apply(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    applied
}

pub fn organization(v: &Value) -> Organization {
    serde_json::from_value(v.clone()).unwrap()
}

pub fn member(v: &Value) -> Membership {
    serde_json::from_value(v.clone()).unwrap()
}

/// A fake seeded with `orgs`/`users`/`memberships` and a database converged to it.
pub async fn converged(pool: &PgPool, orgs: usize, users: usize, memberships: usize) -> FakeClerk {
    let fake = FakeClerk::start().await;
    fake.seed(orgs, users, memberships, BASE);
    let report = resync(pool, &fake.client(), &opts()).await.expect("initial resync");
    assert_eq!(report.hotels.created.len(), orgs);
    fake
}
