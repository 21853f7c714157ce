//! The change feed's sequencer (migration `20261203000010_change_feed_sequencer.sql`): a reader
//! of `id > cursor` never skips or repeats a change whatever order writers commit in, per-entity
//! order holds, a sequencer killed mid-tick loses nothing and numbers nothing twice, stalled
//! writers stall nobody, stored cursors survive the upgrade, and a table joins the feed in one
//! statement.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use orgsync::changes::{read_after, sequence_now};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn insert_hotel(conn: &mut PgConnection, id: &str, version: i64) {
    sqlx::query(
        "insert into hotels (id, name, created_at, updated_at, clerk_version) values ($1, $1, now(), now(), $2)",
    )
    .bind(id)
    .bind(version)
    .execute(conn)
    .await
    .unwrap();
}

/// Renames hotel `id` (an effective change) and sets its version.
async fn rename_hotel(conn: &mut PgConnection, id: &str, version: i64) {
    sqlx::query("update hotels set name = $1 || '@' || $2, clerk_version = $2 where id = $1")
        .bind(id)
        .bind(version)
        .execute(conn)
        .await
        .unwrap();
}

/// (id, entity_id, clerk_version) of every readable change, in id order, by plain SQL (no
/// sequencing of its own).
async fn readable(pool: &PgPool) -> Vec<(i64, String, i64)> {
    sqlx::query_as("select id, entity_id, clerk_version from changes order by id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_committed_after_a_later_one_is_delivered_after_it() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    // A writes first (its change is inserted, and drawn, first) but commits last.
    let mut a = pool.begin().await.unwrap();
    insert_hotel(&mut a, "org_a", 1).await;
    let mut b = pool.begin().await.unwrap();
    insert_hotel(&mut b, "org_b", 1).await;
    b.commit().await.unwrap();

    let first = read_after(&pool, 0, None, 100).await.unwrap();
    assert_eq!(
        first.iter().map(|c| (c.id, c.entity_id.as_str())).collect::<Vec<_>>(),
        vec![(1, "org_b")]
    );
    a.commit().await.unwrap();
    let cursor = first.last().unwrap().id;
    let second = read_after(&pool, cursor, None, 100).await.unwrap();
    assert_eq!(
        second.iter().map(|c| (c.id, c.entity_id.as_str())).collect::<Vec<_>>(),
        vec![(2, "org_a")],
        "A's change comes after the cursor, never behind it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_of_one_entity_are_in_the_order_their_writers_committed() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let mut setup = pool.acquire().await.unwrap();
    insert_hotel(&mut setup, "org_e", 1).await;
    drop(setup);
    // T1 takes a position in the insert order first (a change of another hotel), T2 then
    // changes E and commits, then T1 changes E and commits. Both are moved by the same tick.
    let mut t1 = pool.begin().await.unwrap();
    insert_hotel(&mut t1, "org_f", 1).await;
    let mut t2 = pool.begin().await.unwrap();
    rename_hotel(&mut t2, "org_e", 2).await;
    t2.commit().await.unwrap();
    rename_hotel(&mut t1, "org_e", 3).await;
    t1.commit().await.unwrap();

    let moved = sequence_now(&pool).await.unwrap();
    assert_eq!(moved, 4, "one tick moves all four");
    let of_e: Vec<i64> = readable(&pool)
        .await
        .into_iter()
        .filter(|(_, e, _)| e == "org_e")
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(of_e, vec![1, 2, 3], "T2's change of E before T1's");
}

/// `orgsync changes --follow --json` (which runs a sequencer of its own, ticking every 2 ms),
/// its stdout lines sent to `lines`.
fn follower(url: &str, lines: Arc<Mutex<Vec<Value>>>) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgsync"))
        .args(["changes", "--follow", "--json"])
        .env("DATABASE_URL", url)
        .env("ORGSYNC_FEED_TICK", "2ms")
        .env("ORGSYNC_POLL_INTERVAL", "50ms")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = out.next_line().await {
            lines.lock().unwrap().push(serde_json::from_str(&line).unwrap());
        }
    });
    child
}

/// Waits until the sequencer tick holding the lock is blocked (on `holder`'s lock of the
/// sequencer row, the last thing a tick writes): it has moved and numbered changes in its
/// transaction and not committed them. Returns whether that transaction has written (holds a
/// transaction id).
async fn wait_for_a_blocked_tick(pool: &PgPool, holder: i32) -> bool {
    let blocked = "from pg_locks l join pg_stat_activity a using (pid)
                   where l.locktype = 'advisory' and l.granted and a.datname = current_database()
                     and $1 = any (pg_blocking_pids(a.pid))";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let wrote: Option<bool> = sqlx::query_scalar(&format!("select a.backend_xid is not null {blocked}"))
            .bind(holder)
            .fetch_optional(pool)
            .await
            .unwrap();
        if let Some(wrote) = wrote {
            return wrote;
        }
        assert!(tokio::time::Instant::now() < deadline, "no sequencer tick blocked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the stress writers committed: (hotel, version) of every change, and how many
/// transactions committed.
#[derive(Default)]
struct Committed {
    changes: BTreeSet<(String, i64)>,
    transactions: usize,
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_sequencers_one_killed_mid_tick_number_every_committed_change_once() {
    const WRITERS: usize = 8;
    const TRANSACTIONS: usize = 60;
    const HOTELS: usize = 24;
    const PAGE: i64 = 7;
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let committed = Arc::new(Mutex::new(Committed::default()));
    {
        let mut conn = pool.acquire().await.unwrap();
        for h in 0..HOTELS {
            insert_hotel(&mut conn, &format!("org_{h:02}"), 1).await;
            committed.lock().unwrap().changes.insert((format!("org_{h:02}"), 1));
        }
    }

    // Sequencer A, then the writers and a plain-SQL reader with a small page.
    let mut a = follower(&db.url, Arc::new(Mutex::new(Vec::new())));
    let done = tokio_util::sync::CancellationToken::new();
    let reader = {
        let (pool, done) = (pool.clone(), done.clone());
        tokio::spawn(async move {
            let mut cursor = 0i64;
            let mut seen = Vec::new();
            loop {
                let finished = done.is_cancelled();
                let page: Vec<(i64, String, i64)> = sqlx::query_as(
                    "select id, entity_id, clerk_version from changes where id > $1 order by id limit $2",
                )
                .bind(cursor)
                .bind(PAGE)
                .fetch_all(&pool)
                .await
                .unwrap();
                if let Some(last) = page.last() {
                    cursor = last.0;
                }
                let empty = page.is_empty();
                seen.extend(page);
                if finished && empty {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (pool, committed) = (pool.clone(), committed.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
                for n in 0..TRANSACTIONS {
                    let mut conn = pool.acquire().await.unwrap();
                    let mut tx = conn.begin().await.unwrap();
                    let mut mine = Vec::new();
                    // A few hotels, in id order (no deadlock between writers), and sometimes
                    // a new one.
                    let mut picked: Vec<usize> = (0..rng.random_range(1..4)).map(|_| rng.random_range(0..HOTELS)).collect();
                    picked.sort_unstable();
                    picked.dedup();
                    for h in picked {
                        let id = format!("org_{h:02}");
                        let version: i64 = sqlx::query_scalar(
                            "update hotels set name = $1 || '/' || (clerk_version + 1), clerk_version = clerk_version + 1
                             where id = $1 returning clerk_version",
                        )
                        .bind(&id)
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                        mine.push((id, version));
                        tokio::time::sleep(Duration::from_millis(rng.random_range(0..3))).await;
                    }
                    if rng.random_bool(0.2) {
                        let id = format!("org_new_{w}_{n}");
                        insert_hotel(&mut tx, &id, 1).await;
                        mine.push((id, 1));
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..3))).await;
                    if rng.random_bool(0.1) {
                        tx.rollback().await.unwrap();
                    } else {
                        tx.commit().await.unwrap();
                        let mut c = committed.lock().unwrap();
                        c.changes.extend(mine);
                        c.transactions += 1;
                    }
                }
            })
        })
        .collect();

    // Mid-run: hold the sequencer row, so that A's next tick moves and numbers changes and
    // then blocks before its commit; start B; kill A with SIGKILL; let go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut hold = pool.begin().await.unwrap();
    let holder: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut *hold)
        .await
        .unwrap();
    sqlx::query("select 1 from changes_sequencer for update")
        .execute(&mut *hold)
        .await
        .unwrap();
    let tick_wrote = wait_for_a_blocked_tick(&pool, holder).await;
    let commits_before = committed.lock().unwrap().transactions;
    let b_lines = Arc::new(Mutex::new(Vec::new()));
    let _b = follower(&db.url, b_lines.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.start_kill().unwrap(); // SIGKILL
    a.wait().await.unwrap();
    let commits_while_blocked = committed.lock().unwrap().transactions - commits_before;
    hold.rollback().await.unwrap();

    for w in writers {
        w.await.unwrap();
    }
    let committed = std::mem::take(&mut *committed.lock().unwrap());
    let k = committed.changes.len() as i64;
    // B sequences the rest.
    wait_until(
        &pool,
        &format!("select count(*) = {k} from changes"),
        Duration::from_secs(30),
    )
    .await;
    done.cancel();
    let seen = reader.await.unwrap();

    assert!(
        commits_while_blocked > 0,
        "writers kept committing while the sequencer was stuck"
    );
    assert!(tick_wrote, "the killed tick had moved and numbered changes");
    let ids: Vec<i64> = seen.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(
        ids,
        (1..=k).collect::<Vec<_>>(),
        "positions exactly 1..K, each read once"
    );
    let read: BTreeSet<(String, i64)> = seen.iter().map(|(_, e, v)| (e.clone(), *v)).collect();
    assert_eq!(read.len(), seen.len(), "no change twice");
    assert_eq!(read, committed.changes, "the set read is the set committed");
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, e, v) in &seen {
        let before = last.insert(e, *v).unwrap_or(0);
        assert!(*v > before, "{e}: version {v} after {before}");
    }
    assert_eq!(
        readable(&pool).await,
        seen,
        "the table holds exactly what the reader read"
    );
    let head: i64 = sqlx::query_scalar("select last_id from changes_sequencer")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(head, k);
    // The surviving follower printed the whole feed too, in order.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (b_lines.lock().unwrap().len() as i64) < k && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_ids: Vec<i64> = b_lines
        .lock()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    assert_eq!(b_ids, (1..=k).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_idle_in_transaction_here_or_in_another_database_stalls_no_one() {
    let db = TestDb::new().await;
    let other = TestDb::new().await; // another database on the same server
    let pool = db.pool.clone();
    let mut idle_here = pool.begin().await.unwrap();
    insert_hotel(&mut idle_here, "org_idle", 1).await;
    let mut idle_there = other.pool.begin().await.unwrap();
    insert_hotel(&mut idle_there, "org_elsewhere", 1).await;

    // The others' changes flow: to this crate's readers, and to plain SQL through a running
    // sequencer.
    let cancel = tokio_util::sync::CancellationToken::new();
    let sequencer = tokio::spawn(orgsync::changes::sequencer::run(
        pool.clone(),
        Default::default(),
        cancel.clone(),
    ));
    let mut conn = pool.acquire().await.unwrap();
    for n in 0..5 {
        insert_hotel(&mut conn, &format!("org_{n}"), 1).await;
    }
    wait_until(&pool, "select count(*) = 5 from changes", Duration::from_secs(10)).await;
    let got: Vec<String> = read_after(&pool, 0, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.entity_id)
        .collect();
    assert_eq!(got, ["org_0", "org_1", "org_2", "org_3", "org_4"]);

    idle_here.commit().await.unwrap();
    idle_there.rollback().await.unwrap();
    wait_until(
        &pool,
        "select exists (select 1 from changes where id = 6 and entity_id = 'org_idle')",
        Duration::from_secs(10),
    )
    .await;
    cancel.cancel();
    sequencer.await.unwrap();
}

/// The migrations of the release before the sequencer, applied to `pool`'s database.
async fn migrate_to_the_old_feed(conn: &mut PgConnection) {
    let dir = tempfile::tempdir().unwrap();
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&migrations).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.as_str() < "20261203000000" {
            std::fs::copy(migrations.join(&name), dir.path().join(&name)).unwrap();
        }
    }
    let old = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    assert!(old.iter().all(|m| m.version < 20261203000000));
    old.run(&mut *conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_cursor_continues_across_the_upgrade_without_gap_or_repeat() {
    let db = TestDb::empty().await;
    let pool = db.pool.clone();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("create schema orgsync").execute(&mut *conn).await.unwrap();
    migrate_to_the_old_feed(&mut conn).await;
    // The old feed: ids drawn at commit, one rolled back (a gap).
    for n in 0..4 {
        insert_hotel(&mut conn, &format!("org_old_{n}"), 1).await;
    }
    let mut rolled_back = conn.begin().await.unwrap();
    insert_hotel(&mut rolled_back, "org_gone", 1).await;
    rolled_back.rollback().await.unwrap();
    insert_hotel(&mut conn, "org_old_4", 1).await;
    let old: Vec<(i64, String)> = sqlx::query_as("select id, entity_id from changes order by id")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(old.len(), 5);
    // A consumer handled three of them and stored its cursor.
    let cursor = old[2].0;
    drop(conn);

    orgsync::db::prepare(&db.url, &orgsync::db::Schema::default(), &pool)
        .await
        .expect("the upgrade applies");
    let mut conn = pool.acquire().await.unwrap();
    for n in 0..3 {
        insert_hotel(&mut conn, &format!("org_new_{n}"), 1).await;
    }
    rename_hotel(&mut conn, "org_old_0", 2).await;

    let rest = read_after(&pool, cursor, None, 100).await.unwrap();
    let rest: Vec<(i64, String)> = rest.into_iter().map(|c| (c.id, c.entity_id)).collect();
    let last_old = old.last().unwrap().0;
    assert_eq!(
        rest,
        vec![
            old[3].clone(),
            old[4].clone(),
            (last_old + 1, "org_new_0".into()),
            (last_old + 2, "org_new_1".into()),
            (last_old + 3, "org_new_2".into()),
            (last_old + 4, "org_old_0".into()),
        ],
        "the old changes after the cursor, then the new ones right after the old ids"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_joins_the_feed_in_one_statement() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    sqlx::raw_sql(
        "create table room_types (id text primary key, key text not null, name text not null,
                                 deleted_at timestamptz, clerk_version bigint not null, last_job_id bigint);
         select add_to_change_feed('room_types', entity => 'room_type', key_column => 'key',
                                   mirrored => array['key', 'name']);",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::raw_sql(
        "select set_config('orgsync.source', 'webhook', false);
         insert into room_types values ('rs_1', 'default', 'Default', null, 1, 7), ('rs_2', 'other', 'Other', null, 1, 8);
         update room_types set clerk_version = 2 where id = 'rs_1';            -- nothing mirrored changed
         update room_types set name = 'Renamed', clerk_version = 3 where id = 'rs_1';
         update room_types set deleted_at = now(), clerk_version = 4 where id = 'rs_2';
         update room_types set name = 'Ghost', clerk_version = 5 where id = 'rs_2'; -- stays a tombstone",
    )
    .execute(&pool)
    .await
    .unwrap();
    let got: Vec<(String, String, String, i64, Option<i64>)> = read_after(&pool, 0, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.entity, c.entity_id, c.op, c.clerk_version, c.job_id))
        .collect();
    let row =
        |id: &str, op: &str, v: i64, job: i64| ("room_type".to_owned(), id.to_owned(), op.to_owned(), v, Some(job));
    let mut expected = vec![row("default", "created", 1, 7), row("other", "created", 1, 8)];
    expected.sort(); // one statement's rows come in any order
    let mut first_two = got[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, expected);
    assert_eq!(
        got[2..],
        [row("default", "updated", 3, 7), row("other", "deleted", 4, 8)]
    );
    // The entity check knows it; an unknown entity is still refused.
    let refused = sqlx::query(
        "insert into pending_changes (entity, entity_id, op, clerk_version) values ('nonsense', 'x', 'created', 1)",
    )
    .execute(&pool)
    .await;
    assert!(refused.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_changes_waiting_for_the_sequencer() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let mut conn = pool.acquire().await.unwrap();
    insert_hotel(&mut conn, "org_1", 1).await;
    insert_hotel(&mut conn, "org_2", 1).await;
    sqlx::query("update pending_changes set at = now() - interval '20 minutes'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let status = orgsync::ops::status::gather_status(&pool, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(status.queue.changes_pending, 2);
    assert!(status.queue.oldest_pending_change_age_seconds.unwrap() >= 1200.0);
    assert!(!status.healthy);
    assert!(
        status.problems.iter().any(|p| p.contains("not yet in the change feed")),
        "{:?}",
        status.problems
    );
    let mut text = Vec::new();
    orgsync::ops::status::write_status(&mut text, &status).unwrap();
    assert!(String::from_utf8(text).unwrap().contains("2 committed changes waiting"));

    sequence_now(&pool).await.unwrap();
    let status = orgsync::ops::status::gather_status(&pool, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        (
            status.queue.changes_pending,
            status.queue.changes_last_id,
            status.healthy
        ),
        (0, 2, true)
    );
    let ids: HashSet<i64> = readable(&pool).await.into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(ids, HashSet::from([1, 2]));
}
