//! Property: random interleavings of API writes and their webhooks (late, shuffled, duplicated)
//! end in the same rows as the webhooks alone, applied in order to an empty mirror.
//!
//! Each case runs a random sequence of write-path operations (create, rename and delete hotels;
//! add, re-role and remove members; invite and revoke) through the real `/v1` API against the
//! fake Clerk, while the fake holds the webhooks Clerk would send; then they arrive shuffled and
//! duplicated through the real receiver. A second database gets only those webhooks, in emission
//! order. Live rows must be equal in full (`member_permissions` included), and the same hotels,
//! memberships and invitations must be gone: a tombstone's time is Clerk's `Date` of the delete's
//! answer on one side and the event's timestamp on the other, both Clerk's clock, so only the
//! fact of the deletion is compared.
//!
//! Knobs: `ORGSYNC_PROPTEST_CASES` (default 8) and `ORGSYNC_PROPTEST_SEED`.

mod common;
mod fake_clerk;
mod write_support;

use std::time::Duration;

use common::*;
use fake_clerk::{user, FakeClerk, WebhookSettings};
use orgsync::clerk::{ClerkEvent, User};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};
use sqlx::PgPool;
use write_support::*;

const PEOPLE: [&str; 3] = ["user_maria", "user_tom", "user_ana"];
const ROLES: [&str; 2] = ["org:admin", "org:member"];

/// One operation; indexes pick among the hotels created so far and the people.
#[derive(Debug, Clone)]
enum Op {
    Create {
        admin: usize,
    },
    Rename {
        hotel: usize,
        name: u8,
    },
    Delete {
        hotel: usize,
    },
    Add {
        hotel: usize,
        person: usize,
        role: usize,
    },
    SetRole {
        hotel: usize,
        person: usize,
        role: usize,
    },
    Remove {
        hotel: usize,
        person: usize,
    },
    Invite {
        hotel: usize,
        email: u8,
    },
    Revoke {
        nth: usize,
    },
    /// Clerk sends the webhooks held so far now (late, shuffled, some twice), while the next
    /// writes go on: webhooks and API writes interleave.
    Deliver,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..3usize).prop_map(|admin| Op::Create { admin }),
        1 => (0..4usize, any::<u8>()).prop_map(|(hotel, name)| Op::Rename { hotel, name }),
        1 => (0..4usize).prop_map(|hotel| Op::Delete { hotel }),
        3 => (0..4usize, 0..3usize, 0..2usize).prop_map(|(hotel, person, role)| Op::Add { hotel, person, role }),
        2 => (0..4usize, 0..3usize, 0..2usize).prop_map(|(hotel, person, role)| Op::SetRole { hotel, person, role }),
        2 => (0..4usize, 0..3usize).prop_map(|(hotel, person)| Op::Remove { hotel, person }),
        2 => (0..4usize, any::<u8>()).prop_map(|(hotel, email)| Op::Invite { hotel, email }),
        1 => (0..4usize).prop_map(|nth| Op::Revoke { nth }),
        2 => Just(Op::Deliver),
    ]
}

/// Live rows in full, and which rows are gone.
async fn snapshot(pool: &PgPool) -> Value {
    sqlx::query_scalar(
        r#"select jsonb_build_object(
             'hotels', (select coalesce(jsonb_agg(h order by id), '[]') from
                 (select id, name, slug, image_url, public_metadata, created_at, updated_at, clerk_version
                  from hotels where deleted_at is null) h),
             'hotels_gone', (select coalesce(jsonb_agg(id order by id), '[]') from hotels where deleted_at is not null),
             'users', (select coalesce(jsonb_agg(u order by id), '[]') from
                 (select id, email, first_name, last_name, created_at, updated_at, clerk_version from users) u),
             'memberships', (select coalesce(jsonb_agg(m order by hotel_id, user_id), '[]') from
                 (select hotel_id, user_id, clerk_membership_id, role, role_name, permissions, created_at, updated_at,
                         clerk_version from memberships where deleted_at is null) m),
             'memberships_gone', (select coalesce(jsonb_agg(clerk_membership_id order by clerk_membership_id), '[]')
                 from memberships where deleted_at is not null),
             'invitations', (select coalesce(jsonb_agg(i order by id), '[]') from
                 (select id, hotel_id, email_address, role, status, created_at, updated_at, clerk_version
                  from invitations where deleted_at is null) i),
             'invitations_gone', (select coalesce(jsonb_agg(id order by id), '[]') from invitations where deleted_at is not null),
             'member_permissions', (select coalesce(jsonb_agg(p order by hotel_id, user_id, permission), '[]')
                 from member_permissions p))"#,
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The tests' people as `user.created` would bring them, into `pool`.
async fn seed_people(pool: &PgPool) {
    for (i, id) in PEOPLE.iter().enumerate() {
        let u: User = serde_json::from_value(user(
            id,
            &format!("{id}@example.com"),
            "P",
            "Q",
            BASE + i as i64,
            BASE + i as i64,
        ))
        .unwrap();
        let mut tx = pool.begin().await.unwrap();
        orgsync::reconcile::apply(&mut tx, &ClerkEvent::UserUpserted(u))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
}

/// Runs `ops` through the API; returns nothing (refusals by Clerk are part of the history).
async fn run_ops(w: &WriteApp, ops: &[Op]) {
    let mut hotels: Vec<String> = Vec::new();
    let mut invitations: Vec<(usize, String)> = Vec::new();
    let pick = |hotels: &[String], i: usize| (!hotels.is_empty()).then(|| hotels[i % hotels.len()].clone());
    for op in ops {
        match op {
            Op::Create { admin } => {
                let (status, body) = w
                    .call(
                        "POST",
                        "/v1/hotels",
                        Some(json!({"name": format!("Hotel {}", hotels.len()), "created_by": PEOPLE[*admin]})),
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
                hotels.push(body["id"].as_str().unwrap().to_owned());
            }
            Op::Rename { hotel, name } => {
                if let Some(h) = pick(&hotels, *hotel) {
                    w.call(
                        "PATCH",
                        &format!("/v1/hotels/{h}"),
                        Some(json!({"name": format!("Renamed {name}")})),
                    )
                    .await;
                }
            }
            Op::Delete { hotel } => {
                if let Some(h) = pick(&hotels, *hotel) {
                    w.call("DELETE", &format!("/v1/hotels/{h}"), None).await;
                }
            }
            Op::Add { hotel, person, role } => {
                if let Some(h) = pick(&hotels, *hotel) {
                    let body = json!({"user_id": PEOPLE[*person], "role": ROLES[*role]});
                    w.call("POST", &format!("/v1/hotels/{h}/members"), Some(body)).await;
                }
            }
            Op::SetRole { hotel, person, role } => {
                if let Some(h) = pick(&hotels, *hotel) {
                    let path = format!("/v1/hotels/{h}/members/{}", PEOPLE[*person]);
                    w.call("PATCH", &path, Some(json!({"role": ROLES[*role]}))).await;
                }
            }
            Op::Remove { hotel, person } => {
                if let Some(h) = pick(&hotels, *hotel) {
                    w.call("DELETE", &format!("/v1/hotels/{h}/members/{}", PEOPLE[*person]), None)
                        .await;
                }
            }
            Op::Invite { hotel, email } => {
                if let Some(h) = pick(&hotels, *hotel) {
                    let body = json!({"email_address": format!("guest{email}@example.com"), "role": "org:member"});
                    let (status, answer) = w.call("POST", &format!("/v1/hotels/{h}/invitations"), Some(body)).await;
                    if status == 201 {
                        invitations.push((*hotel % hotels.len(), answer["id"].as_str().unwrap().to_owned()));
                    }
                }
            }
            Op::Revoke { nth } => {
                if !invitations.is_empty() {
                    let (h, inv) = &invitations[nth % invitations.len()];
                    let path = format!("/v1/hotels/{}/invitations/{inv}/revoke", hotels[*h]);
                    w.call("POST", &path, None).await;
                }
            }
            // Not waited for: they arrive during the writes that follow.
            Op::Deliver => w.fake.release_webhooks(),
        }
    }
}

/// The webhooks alone, in emission order, applied to an empty mirror.
async fn webhooks_alone(pool: &PgPool, events: &[fake_clerk::WebhookEvent]) -> Result<(), String> {
    for e in events {
        let payload: Value = e.json();
        let Some(event) = ClerkEvent::parse(&e.event_type, &payload).map_err(|err| err.to_string())? else {
            continue;
        };
        let mut tx = pool.begin().await.unwrap();
        orgsync::reconcile::apply(&mut tx, &event)
            .await
            .map_err(|err| format!("{} did not apply in order: {err}", e.event_type))?;
        tx.commit().await.unwrap();
    }
    Ok(())
}

async fn check(ops: &[Op], seed: u64) -> Result<(), String> {
    let api_db = TestDb::new().await;
    let alone_db = TestDb::new().await;
    seed_people(&api_db.pool).await;
    seed_people(&alone_db.pool).await;
    let fake = FakeClerk::start().await;
    let w = WriteApp::start_with(api_db.pool.clone(), fake, |_| {}).await;
    w.fake
        .configure_webhooks(WebhookSettings::unruly(Duration::from_millis(40), 0.3, seed));
    w.fake.hold_webhooks(true);
    run_ops(&w, ops).await;
    let emitted = w.fake.emitted_webhooks();
    settle(&w).await;
    webhooks_alone(&alone_db.pool, &emitted).await?;
    let (through_api, alone) = (snapshot(&api_db.pool).await, snapshot(&alone_db.pool).await);
    w.app.stop().await;
    if through_api != alone {
        return Err(format!(
            "ops {ops:?}\nthrough the API:\n{through_api:#}\nwebhooks alone:\n{alone:#}"
        ));
    }
    Ok(())
}

#[test]
fn api_writes_and_their_late_duplicated_webhooks_end_as_the_webhooks_alone() {
    let cases = std::env::var("ORGSYNC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let seed: u64 = std::env::var("ORGSYNC_PROPTEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261203);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let strategy = (
        (0..3usize).prop_map(|admin| Op::Create { admin }),
        proptest::collection::vec(op(), 4..24),
        any::<u64>(),
    );
    let result = runner.run(&strategy, |(first, rest, shuffle)| {
        let mut ops = vec![first];
        ops.extend(rest);
        rt.block_on(check(&ops, shuffle)).map_err(|e| {
            eprintln!("case failed: {}", e.lines().next().unwrap_or_default());
            TestCaseError::fail(e)
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
