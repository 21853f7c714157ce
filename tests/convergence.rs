//! Property: whatever the order and duplication of deliveries, the rows end up exactly as if
//! every event had been applied once, in order.
//!
//! Random histories of hotels, users and memberships (created, renamed, role changes, removed,
//! invited again, deleted) become Clerk events; those are delivered shuffled and duplicated
//! through the real HTTP receiver to an app with several concurrent workers, and the resulting
//! rows are compared with in-order application of the same events. The same histories then run
//! two more ways, which must end in the same rows: (a) the consumer alone, one job per batch, in
//! delivery order; (c) a resync alone, from a fake Clerk API holding the history's final state
//! (live rows compared: a resync from nothing has no tombstones to write).
//!
//! Knobs: `ORGSYNC_PROPTEST_CASES` (default 12) and `ORGSYNC_PROPTEST_SEED` (a number; fixed by
//! default so CI is repeatable).

mod common;
mod fake_clerk;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::events::*;
use common::*;
use futures::StreamExt;
use orgsync::clerk::ClerkEvent;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::PgPool;

use fake_clerk::FakeClerk;
use orgsync::queue::runner::{run_batch, WorkerSettings};
use orgsync::resync::{resync, ResyncOptions};

const ORGS: u8 = 4;
const USERS: u8 = 5;

#[derive(Debug, Clone)]
enum Op {
    CreateOrg(u8),
    RenameOrg(u8),
    DeleteOrg(u8),
    CreateUser(u8),
    UpdateUser(u8),
    DeleteUser(u8),
    Invite(u8, u8, bool),
    ChangeRole(u8, u8),
    /// Remove the member, and with `true` invite them again right after (a new membership).
    Remove(u8, u8, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let o = 0..ORGS;
    let u = 0..USERS;
    prop_oneof![
        4 => o.clone().prop_map(Op::CreateOrg),
        3 => o.clone().prop_map(Op::RenameOrg),
        1 => o.clone().prop_map(Op::DeleteOrg),
        4 => u.clone().prop_map(Op::CreateUser),
        3 => u.clone().prop_map(Op::UpdateUser),
        1 => u.clone().prop_map(Op::DeleteUser),
        10 => (o.clone(), u.clone(), any::<bool>()).prop_map(|(o, u, a)| Op::Invite(o, u, a)),
        6 => (o.clone(), u.clone()).prop_map(|(o, u)| Op::ChangeRole(o, u)),
        4 => (o, u, any::<bool>()).prop_map(|(o, u, again)| Op::Remove(o, u, again)),
    ]
}

#[derive(Default)]
struct World {
    orgs: BTreeMap<u8, (bool, i64)>,                  // live?, created_at
    users: BTreeMap<u8, (bool, i64)>,                 // live?, created_at
    members: BTreeMap<(u8, u8), (String, i64, bool)>, // live membership: id, created_at, admin?
    next_membership: u32,
}

fn org_id(o: u8) -> String {
    format!("org_2prop{o:021}")
}
fn user_id(u: u8) -> String {
    format!("user_2prop{u:020}")
}

fn invite(w: &mut World, events: &mut Vec<Value>, o: u8, u: u8, admin: bool, t: i64, ts: i64) {
    w.next_membership += 1;
    let id = format!("orgmem_2prop{:019}", w.next_membership);
    let role = if admin { "org:admin" } else { "org:member" };
    events.push(membership(
        "organizationMembership.created",
        &id,
        &org_id(o),
        &user_id(u),
        role,
        t,
        t,
        ts,
    ));
    w.members.insert((o, u), (id, t, admin));
}

/// Turns abstract operations into the Clerk events a real instance would send, skipping
/// operations that are impossible at that point (e.g. renaming a deleted hotel).
fn history(ops: &[Op], steps: &[u16]) -> Vec<Value> {
    let mut w = World::default();
    let mut t = 1_764_000_000_000i64;
    let mut events = Vec::new();
    // Most hotels and users exist from the start, so memberships have something to join; the
    // last of each is created (or not) by the random operations.
    let setup = (0..ORGS - 1)
        .map(Op::CreateOrg)
        .chain((0..USERS - 1).map(Op::CreateUser));
    let ops: Vec<Op> = setup.chain(ops.iter().cloned()).collect();
    for (i, op) in ops.iter().enumerate() {
        t += 1 + i64::from(steps[i % steps.len()]);
        // Envelope timestamps: seconds for some events, milliseconds for others, as Clerk's
        // examples and docs disagree.
        let ts = if i % 2 == 0 { t / 1000 } else { t };
        let live_org = |w: &World, o: u8| w.orgs.get(&o).is_some_and(|x| x.0);
        let live_user = |w: &World, u: u8| w.users.get(&u).is_some_and(|x| x.0);
        match *op {
            Op::CreateOrg(o) if !w.orgs.contains_key(&o) => {
                w.orgs.insert(o, (true, t));
                events.push(organization(
                    "organization.created",
                    &org_id(o),
                    &format!("Hotel {o}"),
                    t,
                    t,
                    ts,
                ));
            }
            Op::RenameOrg(o) if live_org(&w, o) => {
                let created = w.orgs[&o].1;
                events.push(organization(
                    "organization.updated",
                    &org_id(o),
                    &format!("Hotel {o} @{t}"),
                    created,
                    t,
                    ts,
                ));
            }
            Op::DeleteOrg(o) if live_org(&w, o) => {
                w.orgs.get_mut(&o).unwrap().0 = false;
                w.members.retain(|(mo, _), _| *mo != o);
                events.push(organization_deleted(&org_id(o), ts));
            }
            Op::CreateUser(u) if !w.users.contains_key(&u) => {
                w.users.insert(u, (true, t));
                events.push(user(
                    "user.created",
                    &user_id(u),
                    &format!("User {u}"),
                    &format!("u{u}@x.test"),
                    t,
                    t,
                    ts,
                ));
            }
            Op::UpdateUser(u) if live_user(&w, u) => {
                let created = w.users[&u].1;
                let email = format!("u{u}.{t}@x.test");
                events.push(user(
                    "user.updated",
                    &user_id(u),
                    &format!("User {u} @{t}"),
                    &email,
                    created,
                    t,
                    ts,
                ));
            }
            Op::DeleteUser(u) if live_user(&w, u) => {
                w.users.get_mut(&u).unwrap().0 = false;
                w.members.retain(|(_, mu), _| *mu != u);
                events.push(user_deleted(&user_id(u), ts));
            }
            Op::Invite(o, u, admin) if live_org(&w, o) && live_user(&w, u) && !w.members.contains_key(&(o, u)) => {
                invite(&mut w, &mut events, o, u, admin, t, ts);
            }
            Op::ChangeRole(o, u) if w.members.contains_key(&(o, u)) => {
                let m = w.members.get_mut(&(o, u)).unwrap();
                m.2 = !m.2;
                let role = if m.2 { "org:admin" } else { "org:member" };
                events.push(membership(
                    "organizationMembership.updated",
                    &m.0,
                    &org_id(o),
                    &user_id(u),
                    role,
                    m.1,
                    t,
                    ts,
                ));
            }
            Op::Remove(o, u, again) if w.members.contains_key(&(o, u)) => {
                let (id, created, admin) = w.members.remove(&(o, u)).unwrap();
                let role = if admin { "org:admin" } else { "org:member" };
                // The payload is the membership as it was last updated; the envelope dates the removal.
                let last_update = events
                    .iter()
                    .filter(|e| e["data"]["id"] == serde_json::json!(id))
                    .map(|e| e["data"]["updated_at"].as_i64().unwrap())
                    .max()
                    .unwrap_or(created);
                let kind = "organizationMembership.deleted";
                events.push(membership(
                    kind,
                    &id,
                    &org_id(o),
                    &user_id(u),
                    role,
                    created,
                    last_update,
                    ts,
                ));
                if again {
                    t += 1;
                    invite(&mut w, &mut events, o, u, !admin, t, t);
                }
            }
            _ => {}
        }
    }
    events
}

/// Everything an application reading the tables can observe: live rows in full, and which
/// hotels and users are deleted and since when. (Tombstones keep whatever data they had, which
/// legitimately depends on arrival order.)
async fn snapshot(pool: &PgPool) -> Value {
    sqlx::query_scalar(
        r#"
        select jsonb_build_object(
          'hotels', (select coalesce(jsonb_agg(h order by h.id), '[]') from
                     (select id, name, slug, image_url, public_metadata, created_at, updated_at, clerk_version
                      from hotels where deleted_at is null) h),
          'hotels_deleted', (select coalesce(jsonb_agg(jsonb_build_array(id, deleted_at) order by id), '[]')
                             from hotels where deleted_at is not null),
          'users', (select coalesce(jsonb_agg(u order by u.id), '[]') from
                    (select id, email, first_name, last_name, image_url, created_at, updated_at, clerk_version
                     from users where deleted_at is null) u),
          'users_deleted', (select coalesce(jsonb_agg(jsonb_build_array(id, deleted_at) order by id), '[]')
                            from users where deleted_at is not null),
          'memberships', (select coalesce(jsonb_agg(m order by m.hotel_id, m.user_id), '[]') from
                          (select hotel_id, user_id, clerk_membership_id, role, created_at, updated_at, clerk_version
                           from memberships where deleted_at is null) m)
        )
        "#,
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn reset(pool: &PgPool) {
    sqlx::query("truncate memberships, hotels, users, jobs, snapshot_marks restart identity cascade")
        .execute(pool)
        .await
        .unwrap();
}

async fn in_order(pool: &PgPool, events: &[Value]) -> Value {
    for e in events {
        let event = ClerkEvent::parse(&kind(e), e).unwrap().unwrap();
        let mut tx = pool.begin().await.unwrap();
        orgsync::reconcile::apply(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    }
    snapshot(pool).await
}

struct Harness {
    app: TestApp,
    server: PgPool,
    db: String,
    /// A database without workers, for the one-job-per-batch consumer and the resync.
    quiet: TestDb,
}

/// Organizations, users and memberships (by hotel and user), each by id.
type FinalState = (
    BTreeMap<String, Value>,
    BTreeMap<String, Value>,
    BTreeMap<(String, String), Value>,
);

/// What Clerk holds at the end of a history: the last data of every live organization, user and
/// membership.
fn final_state(events: &[Value]) -> FinalState {
    let (mut orgs, mut users, mut members) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for e in events {
        let d = &e["data"];
        let id = d["id"].as_str().unwrap_or_default().to_owned();
        match kind(e).as_str() {
            "organization.created" | "organization.updated" => {
                orgs.insert(id, d.clone());
            }
            "organization.deleted" => {
                orgs.remove(&id);
                members.retain(|(o, _): &(String, String), _| *o != id);
            }
            "user.created" | "user.updated" => {
                users.insert(id, d.clone());
            }
            "user.deleted" => {
                users.remove(&id);
                members.retain(|(_, u): &(String, String), _| *u != id);
            }
            k => {
                let key = (
                    d["organization"]["id"].as_str().unwrap().to_owned(),
                    d["public_user_data"]["user_id"].as_str().unwrap().to_owned(),
                );
                if k == "organizationMembership.deleted" {
                    members.remove(&key);
                } else {
                    members.insert(key, d.clone());
                }
            }
        }
    }
    (orgs, users, members)
}

/// The live rows of a [`snapshot`].
fn live(snapshot: &Value) -> Value {
    serde_json::json!({
        "hotels": snapshot["hotels"], "users": snapshot["users"], "memberships": snapshot["memberships"],
    })
}

/// Runs every job one per batch, in claim order, until all are done.
async fn one_job_per_batch(pool: &PgPool) -> Result<(), String> {
    let settings = WorkerSettings {
        batch_size: 1,
        retry_base: Duration::from_millis(1),
        retry_cap: Duration::from_millis(5),
        max_attempts: 100_000,
        ..WorkerSettings::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let report = run_batch(pool, &settings).await.map_err(|e| e.to_string())?;
        if tokio::time::Instant::now() > deadline {
            return Err("one job per batch: not converged in 60 s".into());
        }
        if report.claimed > 0 {
            continue;
        }
        let (open, dead): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where state = 'available'), count(*) filter (where state = 'dead') from jobs",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if dead > 0 {
            return Err("a job dead-lettered (one per batch)".into());
        }
        if open == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err("one job per batch: not converged in 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl Harness {
    async fn start() -> Self {
        let server = PgPool::connect(&database_on_server("postgres")).await.unwrap();
        let db = format!("orgsync_convergence_{}", std::process::id());
        sqlx::query(&format!("drop database if exists {db} with (force)"))
            .execute(&server)
            .await
            .unwrap();
        sqlx::query(&format!("create database {db}"))
            .execute(&server)
            .await
            .unwrap();
        let url = database_on_server(&db);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect(&url)
            .await
            .unwrap();
        orgsync::db::MIGRATOR.run(&pool).await.unwrap();
        let mut cfg = config(Some(SECRET), true);
        cfg.worker_settings.concurrency = 4;
        cfg.worker_settings.batch_size = 4;
        cfg.worker_settings.max_attempts = 100_000; // a membership may wait long for its hotel
        cfg.worker_settings.retry_cap = Duration::from_millis(100);
        let app = TestApp::spawn(pool, cfg).await;
        let quiet = TestDb::new().await;
        Self { app, server, db, quiet }
    }

    async fn check(&self, ops: &[Op], steps: &[u16], seed: u64) -> Result<(), String> {
        let pool = &self.app.pool;
        let events = history(ops, steps);
        reset(pool).await;
        let expected = in_order(pool, &events).await;
        reset(pool).await;

        // Deliveries: every event once, some again under the same svix-id (a Svix retry), some
        // again under a new id (the same change sent twice); all shuffled.
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut deliveries: Vec<(String, String)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let body = e.to_string();
            deliveries.push((format!("msg_{i}"), body.clone()));
            if rng.random_bool(0.3) {
                deliveries.push((format!("msg_{i}"), body.clone()));
            }
            if rng.random_bool(0.15) {
                deliveries.push((format!("msg_{i}_again"), body));
            }
        }
        deliveries.shuffle(&mut rng);
        let statuses: Vec<_> = futures::stream::iter(deliveries.iter())
            .map(|(id, body)| async move { self.app.deliver(id, body).await.status() })
            .buffer_unordered(8)
            .collect()
            .await;
        if let Some(bad) = statuses.iter().find(|s| !s.is_success()) {
            return Err(format!("a delivery was refused: {bad}"));
        }
        let unique: BTreeSet<&String> = deliveries.iter().map(|(id, _)| id).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (total, done, dead): (i64, i64, i64) = sqlx::query_as(
                "select count(*), count(*) filter (where state = 'done'), count(*) filter (where state = 'dead') from jobs",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            if dead > 0 {
                return Err("a job dead-lettered".into());
            }
            if total != unique.len() as i64 {
                return Err(format!("{total} jobs for {} distinct svix-ids", unique.len()));
            }
            if done == total {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("not converged in 30 s: {done}/{total} done"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let actual = snapshot(pool).await;
        if actual != expected {
            return Err(format!(
                "diverged from in-order application\nevents: {}\nexpected: {expected:#}\nactual: {actual:#}",
                events.iter().map(kind).collect::<Vec<_>>().join(", ")
            ));
        }

        // (a) The consumer alone, one job per batch, in delivery order.
        let quiet = &self.quiet.pool;
        reset(quiet).await;
        let mut stored = BTreeSet::new();
        for (id, body) in &deliveries {
            if stored.insert(id) {
                insert_job(quiet, id, &serde_json::from_str(body).unwrap()).await;
            }
        }
        one_job_per_batch(quiet).await?;
        let one_by_one = snapshot(quiet).await;
        if one_by_one != expected {
            return Err(format!(
                "one job per batch diverged\nexpected: {expected:#}\nactual: {one_by_one:#}"
            ));
        }

        // (c) A resync alone, from a fake Clerk holding the final state.
        reset(quiet).await;
        let fake = FakeClerk::start().await;
        let (orgs, users, members) = final_state(&events);
        orgs.values().for_each(|o| fake.put_org(o));
        users.values().for_each(|u| fake.put_user(u));
        members.values().for_each(|m| fake.put_membership(m));
        resync(quiet, &fake.client(), &ResyncOptions::default())
            .await
            .map_err(|e| format!("resync failed: {e}"))?;
        let resynced = live(&snapshot(quiet).await);
        if resynced != live(&expected) {
            return Err(format!(
                "a resync from the final state diverged\nexpected: {:#}\nactual: {resynced:#}",
                live(&expected)
            ));
        }
        Ok(())
    }

    async fn stop(self) {
        let Self { app, server, db, quiet } = self;
        drop(quiet);
        app.pool.close().await;
        app.stop().await;
        let _ = sqlx::query(&format!("drop database if exists {db} with (force)"))
            .execute(&server)
            .await;
    }
}

#[test]
fn shuffled_duplicated_concurrent_deliveries_converge_to_the_in_order_state() {
    let cases = std::env::var("ORGSYNC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("ORGSYNC_PROPTEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261125);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let harness = rt.block_on(Harness::start());

    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        max_shrink_iters: 48,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let strategy = (
        proptest::collection::vec(op(), 10..70),
        proptest::collection::vec(0u16..2500, 1..8),
        any::<u64>(),
    );
    let result = runner.run(&strategy, |(ops, steps, shuffle)| {
        rt.block_on(harness.check(&ops, &steps, shuffle)).map_err(|e| {
            eprintln!("case failed: {}", e.lines().next().unwrap_or_default());
            TestCaseError::fail(e)
        })
    });
    rt.block_on(harness.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn the_generator_makes_rich_histories() {
    // Guard against a generator that silently produces trivial histories: the histories the
    // property runs on must exercise every event type, re-invitations included.
    use proptest::strategy::ValueTree;
    let mut runner = TestRunner::deterministic();
    let ops = proptest::collection::vec(op(), 10..70);
    let mut kinds = BTreeSet::new();
    let mut reinvited = false;
    for _ in 0..12 {
        let h = history(&ops.new_tree(&mut runner).unwrap().current(), &[700, 1500]);
        let mut pairs = BTreeMap::new();
        for e in &h {
            kinds.insert(kind(e));
            if kind(e) == "organizationMembership.created" {
                let pair = (
                    e["data"]["organization"]["id"].to_string(),
                    e["data"]["public_user_data"]["user_id"].to_string(),
                );
                *pairs.entry(pair).or_insert(0) += 1;
            }
        }
        reinvited |= pairs.values().any(|n| *n > 1);
    }
    assert_eq!(kinds.len(), 9, "{kinds:?}");
    assert!(reinvited, "no history invited the same person to the same hotel twice");
}
