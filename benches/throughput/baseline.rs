//! The baseline: durable single-row INSERT + COMMIT of an event-sized JSONB row per event, from
//! [`CONCURRENCY`] connections, into a copy of `jobs` as first defined. Raw Postgres, nothing
//! of orgsync: every other figure is also given as a ratio to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgPool};

use crate::history::fixture;
use crate::measure::cpu_seconds;
use crate::CONCURRENCY;

/// Inserts for `phase` and returns the rate (inserts per second).
pub async fn run(pool: &PgPool, db_url: &str, phase: Duration) -> f64 {
    // The job table as the baseline was first defined (and measured): a `jsonb` payload and the
    // generated `entity_key`, so that ratios stay comparable across schema changes.
    for sql in [
        "create table baseline_jobs (like jobs including all)",
        "alter table baseline_jobs alter column payload type jsonb using payload::jsonb",
        "alter table baseline_jobs drop column entity_key",
        "alter table baseline_jobs add column entity_key text generated always as
            (coalesce(payload -> 'data' -> 'organization' ->> 'id', payload -> 'data' ->> 'id')) stored",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
    let payload = fixture("user.created").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    // Each client holds its own connection, as a plain client (or pgbench) does.
    let mut connections = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        connections.push(sqlx::PgConnection::connect(db_url).await.unwrap());
    }
    let cpu_before = cpu_seconds(0);
    let started = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(t, mut conn)| {
            let (payload, stop) = (payload.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    sqlx::query(
                        "insert into baseline_jobs (event_id, event_type, payload) values ($1, 'user.created', $2::jsonb)",
                    )
                    .bind(format!("base_{t}_{n}"))
                    .bind(&payload)
                    .execute(&mut conn)
                    .await
                    .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(0);
    sqlx::query("drop table baseline_jobs").execute(pool).await.unwrap();
    println!("baseline: {total} inserts in {:.1} s", started.elapsed().as_secs_f64());
    let per = |a: f64, b: f64| (b - a) * 1e6 / total.max(1) as f64;
    let client = per(cpu_before.2, cpu_after.2);
    println!(
        "baseline: CPU per insert: {:.0} µs in all = client {client:.0} µs + Postgres and the rest {:.0} µs",
        per(cpu_before.0, cpu_after.0),
        per(cpu_before.0, cpu_after.0) - client
    );
    rate
}
