//! The change feed: only effective changes, in commit order, never skipped by a reader, and
//! `orgsync changes --follow` across a restart.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::events::{membership, organization, user};
use common::*;
use orgsync::changes::{read_after, Change};
use orgsync::queue::Runner;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

const T0: i64 = 1_764_000_000_000;

async fn all_changes(pool: &PgPool) -> Vec<Change> {
    read_after(pool, 0, None, 1_000_000).await.unwrap()
}

/// (entity, entity_id, op, clerk_version, source, job_id) of every change, in id order.
type Row = (String, String, String, i64, Option<String>, Option<i64>);

fn rows(changes: &[Change]) -> Vec<Row> {
    changes
        .iter()
        .map(|c| {
            (
                c.entity.clone(),
                c.entity_id.clone(),
                c.op.clone(),
                c.clerk_version,
                c.source.clone(),
                c.job_id,
            )
        })
        .collect()
}

fn row(entity: &str, id: &str, op: &str, version: i64, job: i64) -> Row {
    (
        entity.into(),
        id.into(),
        op.into(),
        version,
        Some("webhook".into()),
        Some(job),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn only_effective_changes_are_recorded_with_their_job() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let w = fast_workers();
    let org_created = organization("organization.created", "org_1", "Alpha", T0, T0, T0);
    let j1 = insert_job(&pool, "e1", &org_created).await;
    insert_job(&pool, "e1-dup", &org_created).await; // the same event delivered twice
    drain(&pool, &w, 10).await;
    // Newer, but no mirrored column differs (Clerk touched a field orgsync does not keep).
    let mut touched = org_created.clone();
    touched["type"] = "organization.updated".into();
    touched["data"]["updated_at"] = (T0 + 1).into();
    touched["data"]["members_count"] = 7.into();
    insert_job(&pool, "e2", &touched).await;
    let mut renamed = org_created.clone();
    renamed["type"] = "organization.updated".into();
    renamed["data"]["updated_at"] = (T0 + 3).into();
    renamed["data"]["name"] = "Beta".into();
    let j3 = insert_job(&pool, "e3", &renamed).await;
    drain(&pool, &w, 10).await;
    // Stale: older than the row.
    insert_job(
        &pool,
        "e4",
        &organization("organization.updated", "org_1", "Stale", T0, T0 + 2, T0 + 2),
    )
    .await;
    let j5 = insert_job(
        &pool,
        "e5",
        &user("user.created", "user_1", "Ann", "a@x.test", T0, T0, T0),
    )
    .await;
    drain(&pool, &w, 10).await;
    let m = |kind: &str, role: &str, v: i64| membership(kind, "orgmem_1", "org_1", "user_1", role, T0, v, v);
    let j6 = insert_job(&pool, "e6", &m("organizationMembership.created", "org:member", T0 + 10)).await;
    drain(&pool, &w, 10).await;
    let j7 = insert_job(&pool, "e7", &m("organizationMembership.updated", "org:admin", T0 + 11)).await;
    drain(&pool, &w, 10).await;
    let j8 = insert_job(&pool, "e8", &m("organizationMembership.deleted", "org:admin", T0 + 12)).await;
    insert_job(
        &pool,
        "e8-dup",
        &m("organizationMembership.deleted", "org:admin", T0 + 12),
    )
    .await;
    drain(&pool, &w, 10).await;

    let changes = all_changes(&pool).await;
    assert_eq!(
        rows(&changes),
        vec![
            row("hotel", "org_1", "created", T0, j1),
            row("hotel", "org_1", "updated", T0 + 3, j3),
            row("user", "user_1", "created", T0, j5),
            row("membership", "orgmem_1", "created", T0 + 10, j6),
            row("membership", "orgmem_1", "updated", T0 + 11, j7),
            row("membership", "orgmem_1", "deleted", T0 + 12, j8),
        ]
    );
    let last = changes.last().unwrap();
    assert_eq!(
        (last.hotel_id.as_deref(), last.user_id.as_deref()),
        (Some("org_1"), Some("user_1"))
    );
    assert!(changes.windows(2).all(|w| w[0].id < w[1].id));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_hotel_reports_the_memberships_it_ends() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let w = fast_workers();
    insert_job(
        &pool,
        "o",
        &organization("organization.created", "org_1", "A", T0, T0, T0),
    )
    .await;
    drain(&pool, &w, 10).await;
    for u in ["user_1", "user_2"] {
        let id = format!("orgmem_{u}");
        let e = membership(
            "organizationMembership.created",
            &id,
            "org_1",
            u,
            "org:member",
            T0,
            T0,
            T0,
        );
        insert_job(&pool, &id, &e).await;
    }
    drain(&pool, &w, 10).await;
    let del = insert_job(&pool, "d", &common::events::organization_deleted("org_1", T0 + 50)).await;
    drain(&pool, &w, 10).await;
    let after = all_changes(&pool).await;
    let deleted: Vec<_> = after
        .iter()
        .filter(|c| c.op == "deleted")
        .map(|c| (c.entity.as_str(), c.user_id.as_deref(), c.job_id))
        .collect();
    assert_eq!(deleted.len(), 3, "{after:?}");
    assert!(deleted.contains(&("hotel", None, Some(del))));
    assert!(deleted.contains(&("membership", Some("user_1"), Some(del))));
    assert!(deleted.contains(&("membership", Some("user_2"), Some(del))));
}

/// One entity's history: the events in the order Clerk made them.
fn history(seed: u64) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    for h in 0..5 {
        let id = format!("org_{h}");
        events.push(organization(
            "organization.created",
            &id,
            &format!("Hotel {h}"),
            T0,
            T0,
            T0,
        ));
        for v in 1..rng.random_range(1..4) {
            let name = format!("Hotel {h} v{v}");
            events.push(organization("organization.updated", &id, &name, T0, T0 + v, T0 + v));
        }
    }
    for u in 0..5 {
        let id = format!("user_{u}");
        events.push(user("user.created", &id, "First", &format!("{id}@x.test"), T0, T0, T0));
        for v in 1..rng.random_range(1..4) {
            let name = format!("First v{v}");
            events.push(user(
                "user.updated",
                &id,
                &name,
                &format!("{id}@x.test"),
                T0,
                T0 + v,
                T0 + v,
            ));
        }
    }
    for h in 0..5 {
        for u in 0..5 {
            if rng.random_bool(0.4) {
                continue;
            }
            let (org, usr, mid) = (format!("org_{h}"), format!("user_{u}"), format!("orgmem_{h}_{u}"));
            let m = |kind: &str, role: &str, v: i64| membership(kind, &mid, &org, &usr, role, T0, T0 + v, T0 + v);
            events.push(m("organizationMembership.created", "org:member", 0));
            if rng.random_bool(0.5) {
                events.push(m("organizationMembership.updated", "org:admin", 5));
            }
            if rng.random_bool(0.5) {
                events.push(m("organizationMembership.deleted", "org:admin", 9));
            }
        }
    }
    events
}

type Key = (String, String);

fn by_entity(changes: &[Change]) -> BTreeMap<Key, Vec<(String, i64)>> {
    let mut map: BTreeMap<Key, Vec<(String, i64)>> = BTreeMap::new();
    for c in changes {
        map.entry((c.entity.clone(), c.entity_id.clone()))
            .or_default()
            .push((c.op.clone(), c.clerk_version));
    }
    map
}

async fn run_workers_until_idle(pool: &PgPool, concurrency: usize) {
    let mut settings = fast_workers();
    settings.concurrency = concurrency;
    settings.batch_size = 7;
    settings.max_attempts = 1000;
    let cancel = CancellationToken::new();
    let runner = tokio::spawn(Runner::new(pool.clone(), settings).run(cancel.clone()));
    wait_until(
        pool,
        "select not exists (select 1 from jobs where state = 'available')",
        Duration::from_secs(60),
    )
    .await;
    cancel.cancel();
    runner.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shuffled_duplicated_history_yields_the_changes_of_replaying_it_in_order() {
    let seed = 12;
    let events = history(seed);
    // In order, one event at a time.
    let ordered_db = TestDb::new().await;
    let ordered = ordered_db.pool.clone();
    for (n, e) in events.iter().enumerate() {
        insert_job(&ordered, &format!("e{n}"), e).await;
        drain(&ordered, &fast_workers(), 10).await;
    }
    let expected = by_entity(&all_changes(&ordered).await);
    assert!(expected.values().all(|v| v[0].0 == "created"));

    // Shuffled, a third of the events delivered twice, four workers.
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut deliveries: Vec<(String, &Value)> = events.iter().enumerate().map(|(n, e)| (format!("e{n}"), e)).collect();
    for (n, e) in events.iter().enumerate().filter(|(n, _)| n % 3 == 0) {
        deliveries.push((format!("e{n}-again"), e));
    }
    deliveries.shuffle(&mut rng);
    for (id, e) in &deliveries {
        insert_job(&pool, id, e).await;
    }
    run_workers_until_idle(&pool, 4).await;
    let changes = all_changes(&pool).await;
    let got = by_entity(&changes);

    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same rows changed"
    );
    for (key, seen) in &got {
        let in_order = &expected[key];
        // No duplicate and no stale event made a change: versions only increase, per row.
        assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "{key:?}: {seen:?}");
        // Every change is one the in-order replay made too (a stub user is the one extra).
        for (op, version) in seen {
            let stub = key.0 == "user" && *version == 0;
            assert!(
                stub || in_order.iter().any(|(_, v)| v == version),
                "{key:?}: {op} {version} not in {in_order:?}"
            );
        }
        // And the feed ends where the in-order replay ends.
        // (A stub user replaced by its user.created is an update here, a creation in order.)
        let end = |v: &Vec<(String, i64)>| v.last().map(|(op, version)| (op == "deleted", *version));
        assert_eq!(end(seen), end(in_order), "{key:?}: {seen:?} vs {in_order:?}");
    }

    // The whole history again, shuffled: every event is a duplicate or stale, nothing changes.
    let before = changes.len();
    let mut again: Vec<&Value> = events.iter().collect();
    again.shuffle(&mut rng);
    for (n, e) in again.iter().enumerate() {
        insert_job(&pool, &format!("r{n}"), e).await;
    }
    run_workers_until_idle(&pool, 4).await;
    assert_eq!(all_changes(&pool).await.len(), before);
}

/// Writers whose ids would be drawn in one order and committed in another (a write, a random
/// pause, then the commit), and a reader polling `id > cursor` all along: it must see every
/// change exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_never_skips_a_change_committed_out_of_order() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 40;
    let done = CancellationToken::new();
    let reader = {
        let pool = pool.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen = Vec::new();
            loop {
                let finished = done.is_cancelled();
                let page = read_after(&pool, cursor, None, 100).await.unwrap();
                for c in &page {
                    cursor = c.id;
                    seen.push(c.id);
                }
                if finished && page.is_empty() {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
                for n in 0..PER_WRITER {
                    let mut tx = pool.begin().await.unwrap();
                    for k in 0..rng.random_range(1..4) {
                        sqlx::query(
                            "insert into hotels (id, name, created_at, updated_at, clerk_version)
                             values ($1, 'x', now(), now(), 1)",
                        )
                        .bind(format!("org_{w}_{n}_{k}"))
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                        tokio::time::sleep(Duration::from_millis(rng.random_range(0..3))).await;
                    }
                    if rng.random_bool(0.1) {
                        tx.rollback().await.unwrap(); // leaves a gap, never a skip
                    } else {
                        tx.commit().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    done.cancel();
    let seen = reader.await.unwrap();
    let all: Vec<i64> = all_changes(&pool).await.iter().map(|c| c.id).collect();
    assert_eq!(seen, all, "the reader saw every committed change once, in id order");
    let hotels: i64 = sqlx::query_scalar("select count(*) from hotels")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(all.len() as i64, hotels);
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_older_than_the_retention_are_pruned() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    insert_job(
        &pool,
        "o",
        &organization("organization.created", "org_1", "A", T0, T0, T0),
    )
    .await;
    insert_job(
        &pool,
        "p",
        &organization("organization.created", "org_2", "B", T0, T0, T0),
    )
    .await;
    drain(&pool, &fast_workers(), 10).await;
    orgsync::changes::sequence_now(&pool).await.unwrap(); // into `changes`, to be aged below
    sqlx::query("update changes set at = now() - interval '8 days' where entity_id = 'org_1'")
        .execute(&pool)
        .await
        .unwrap();
    let pruned = orgsync::changes::prune(&pool, Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left: Vec<String> = all_changes(&pool).await.into_iter().map(|c| c.entity_id).collect();
    assert_eq!(left, vec!["org_2".to_owned()]);
}

/// `orgsync changes --follow --json` as a child process; returns it and its stdout lines.
fn follow(
    url: &str,
    after: i64,
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgsync"))
        .args(["changes", "--follow", "--json", "--after", &after.to_string()])
        .env("DATABASE_URL", url)
        .env("ORGSYNC_POLL_INTERVAL", "30s") // new changes must arrive through LISTEN
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn next_id(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> i64 {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a change within 20 s")
        .unwrap()
        .expect("a line");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["entity"], "hotel", "{line}");
    v["id"].as_i64().unwrap()
}

async fn write_hotels(pool: &PgPool, from: usize, to: usize) {
    let tasks: Vec<_> = (from..to)
        .map(|n| {
            let pool = pool.clone();
            tokio::spawn(async move {
                sqlx::query(
                    "insert into hotels (id, name, created_at, updated_at, clerk_version) values ($1, 'x', now(), now(), 1)",
                )
                .bind(format!("org_{n}"))
                .execute(&pool)
                .await
                .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_sees_every_change_once_across_a_restart() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    write_hotels(&pool, 0, 10).await; // before the consumer starts
    let (mut first, mut lines) = follow(&db.url, 0);
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(next_id(&mut lines).await);
    }
    write_hotels(&pool, 10, 40).await; // while it follows (it polls only every 30 s)
    for _ in 10..40 {
        seen.push(next_id(&mut lines).await);
    }
    // Stop it (SIGTERM): it exits 0 after what it printed.
    let pid = first.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), first.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(lines.next_line().await.unwrap().is_none(), "nothing after the stop");

    // Changes committed while no consumer runs, then more after it resumes from its cursor.
    write_hotels(&pool, 40, 60).await;
    let cursor = *seen.last().unwrap();
    let (_second, mut lines) = follow(&db.url, cursor);
    for _ in 40..60 {
        seen.push(next_id(&mut lines).await);
    }
    write_hotels(&pool, 60, 80).await;
    for _ in 60..80 {
        seen.push(next_id(&mut lines).await);
    }
    let all: Vec<i64> = all_changes(&pool).await.iter().map(|c| c.id).collect();
    assert_eq!(all.len(), 80);
    assert_eq!(seen, all, "every change exactly once, in id order");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 80);
}
