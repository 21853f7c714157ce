//! orgsync's throughput benchmark: `cargo bench --bench throughput`.
//!
//! One run, against the local Postgres, prints a table of figures and of their ratios to a
//! baseline measured in the same run (these machines are noisy; ratios travel better):
//!
//! 1. baseline ([`baseline`]): durable single-row INSERTs of an event-sized JSONB row into a copy
//!    of `jobs` as first defined, one commit each, from 64 concurrent connections (the naive
//!    per-webhook commit limit);
//! 2. ingest ([`ingest`]): signed Clerk webhooks accepted by the real `orgsync serve` binary
//!    (receiver only) over loopback from 64 concurrent connections, latency at a fixed load, and
//!    the receiver's peak RSS;
//! 3. reconcile ([`reconcile`]): events per second drained from a pre-filled job table (a
//!    realistic history with duplicates and out-of-order deliveries) into rows, and deadlocks;
//! 4. end to end ([`end_to_end`]): a shuffled burst with duplicate deliveries posted to the real
//!    `orgsync serve` with its workers, timed until the rows are the history's final state and a
//!    feed reader has read every change;
//! 5. peer ([`peer`]): the same burst posted the same way to a Node.js receiver + Graphile Worker
//!    doing the same work (`benches/peer/`), timed the same way, as a ratio to end to end;
//! 6. resync ([`resync`]): the real `orgsync resync` against a fake Clerk API, from empty and
//!    unchanged, with the child's own peak RSS, at one or more scales;
//! 7. stalled ([`stalled`]): the real `orgsync serve` holding 10,000 stalled connections, its RSS
//!    and the latency of genuine deliveries posted meanwhile;
//! 8. api ([`api`]): the `/v1` write path of the real `orgsync serve` against the write-capable
//!    fake Clerk in a child process answering after 20 ms: p50/p99 of `POST /v1/hotels` and
//!    `DELETE …/members/{user_id}` at 50 concurrent requests, end to end and orgsync's own share;
//! 9. rbac ([`rbac`]): a permission granted to (and revoked from) a role held by 10,000 members
//!    across 500 hotels through the API, request to answer with `member_permissions` right, and
//!    the plan of the view's access check at 100,000 memberships;
//! 10. console ([`console`]): each console page's render time with a million jobs and 100,000
//!     memberships behind it, and no sequential scan of a big table.
//!
//! Knobs: `ORGSYNC_BENCH_SECONDS` (length of each timed phase of the baseline and ingest,
//! default 5), `ORGSYNC_BENCH_SCALE` (a factor on the dataset sizes, default 1.0),
//! `ORGSYNC_BENCH_SCALES` (e.g. `1,5`: the resync phase at each scale, ratios to the first),
//! `ORGSYNC_BENCH_ONLY` (one or more, comma-separated, of `ingest`, `reconcile`, `e2e`, `peer` (with `e2e`, for the ratio),
//! `resync`, `stalled`, `api`, `rbac` or `console`, with the baseline), `ORGSYNC_BENCH_PEER_CONCURRENCY`
//! (the peer's Graphile concurrency),
//! `DATABASE_URL` (the server; databases `orgsync_bench` and `orgsync_bench_resync_<n>` are
//! created on it and dropped at the end). Every failed check panics, so the bench exits non-zero.

mod api;
mod baseline;
mod console;
mod deliver;
mod end_to_end;
mod fake_clerk;
mod feed_follower;
mod history;
mod ingest;
mod measure;
mod peer;
mod rbac;
mod reconcile;
mod resync;
mod sampler;
mod serve;
mod stalled;
/// The tests' write-capable fake Clerk, served by this binary re-executed (the api phase).
#[path = "../../tests/fake_clerk/mod.rs"]
mod test_fake_clerk;

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Concurrent connections of the baseline and of the load generators.
pub const CONCURRENCY: usize = 64;

/// One line of the table.
pub struct Row {
    what: String,
    figure: String,
    ratio: String,
    target: String,
}

impl Row {
    pub fn new(
        what: impl Into<String>,
        figure: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            what: what.into(),
            figure: figure.into(),
            ratio: ratio.into(),
            target: target.into(),
        }
    }
}

/// Empties the job and domain tables (and what refers to them), and starts the change feed over
/// (its sequence restarts, so the sequencer's floor must too).
pub async fn truncate(pool: &PgPool) {
    sqlx::raw_sql(
        "truncate jobs, memberships, hotels, users, changes, pending_changes, snapshot_marks restart identity cascade;
         update changes_sequencer set last_id = 0, floor_seq = 0, candidate_seq = null, candidate_xid = null;",
    )
    .execute(pool)
    .await
    .unwrap();
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `ORGSYNC_BENCH_SCALES` (comma-separated factors), else `[scale]`.
fn resync_scales(scale: f64) -> Vec<f64> {
    let listed: Vec<f64> = std::env::var("ORGSYNC_BENCH_SCALES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .collect();
    if listed.is_empty() {
        vec![scale]
    } else {
        listed
    }
}

#[tokio::main]
async fn main() {
    // The api phase's fake Clerk is this binary in a child process.
    api::serve_fake_if_asked().await;
    // `cargo bench` passes `--bench`; nothing else is expected.
    let seconds = env_f64("ORGSYNC_BENCH_SECONDS", 5.0);
    let scale = env_f64("ORGSYNC_BENCH_SCALE", 1.0);
    let scales = resync_scales(scale);
    let phase = Duration::from_secs_f64(seconds);
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let base = server.rsplit_once('/').unwrap().0.to_owned();
    let db_url = format!("{base}/orgsync_bench");
    let admin = PgPool::connect(&server)
        .await
        .expect("Postgres reachable at DATABASE_URL");
    sqlx::query("drop database if exists orgsync_bench with (force)")
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("create database orgsync_bench")
        .execute(&admin)
        .await
        .unwrap();
    // No ping before each acquire: the baseline is one round trip per insert, as a plain client.
    let pool = PgPoolOptions::new()
        .max_connections(CONCURRENCY as u32 + 4)
        .test_before_acquire(false)
        .connect(&db_url)
        .await
        .unwrap();
    orgsync::db::MIGRATOR.run(&pool).await.unwrap();
    let pg_version: String = sqlx::query_scalar("select version()").fetch_one(&pool).await.unwrap();
    let sync_commit: String = sqlx::query_scalar("show synchronous_commit")
        .fetch_one(&pool)
        .await
        .unwrap();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("orgsync throughput benchmark");
    println!(
        "machine: {cores} cores; {}",
        pg_version.split(',').next().unwrap_or(&pg_version)
    );
    println!("postgres: synchronous_commit={sync_commit} (every commit below is durable)");
    println!(
        "phases of {seconds} s; {CONCURRENCY} concurrent connections; dataset scale {scale}; resync scales {scales:?}"
    );
    println!();

    // ORGSYNC_BENCH_ONLY=ingest|reconcile|e2e|peer|resync|stalled|api|rbac|console runs the baseline
    // and that phase alone (peer with e2e: its figure is a ratio to it).
    let only = std::env::var("ORGSYNC_BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    let mut rows = Vec::new();

    let baseline = baseline::run(&pool, &db_url, phase).await;
    truncate(&pool).await;
    rows.push(Row::new(
        "baseline: single-row durable INSERTs/s",
        format!("{baseline:.0}/s"),
        "1.00×",
        "",
    ));
    if run("ingest") {
        extend_printed(&mut rows, ingest::run(&db_url, phase, baseline).await);
        truncate(&pool).await;
    }
    if run("reconcile") {
        extend_printed(&mut rows, reconcile::run(&pool, &db_url, scale, baseline).await);
    }
    if run("e2e") || run("peer") {
        let e2e = end_to_end::run(&pool, &db_url, scale, baseline).await;
        extend_printed(&mut rows, e2e.rows);
        if run("peer") {
            extend_printed(&mut rows, peer::run(&admin, &base, scale, baseline, e2e.seconds).await);
        }
    }
    if run("resync") {
        extend_printed(&mut rows, resync::run(&admin, &base, &scales, baseline).await);
    }
    if run("stalled") {
        extend_printed(&mut rows, stalled::run(&db_url).await);
        truncate(&pool).await;
    }
    if run("api") {
        extend_printed(&mut rows, api::run(&pool, &db_url, scale).await);
    }
    if run("rbac") {
        extend_printed(&mut rows, rbac::run(&pool, &db_url, scale).await);
    }
    if run("console") {
        extend_printed(&mut rows, console::run(&admin, &base).await);
    }

    pool.close().await;
    sqlx::query("drop database if exists orgsync_bench with (force)")
        .execute(&admin)
        .await
        .unwrap();
    print_table(&rows);
}

/// Adds a phase's rows and prints them at once (a later phase that fails loses none).
fn extend_printed(rows: &mut Vec<Row>, phase: Vec<Row>) {
    for r in &phase {
        println!("row: {} | {} | {} | {}", r.what, r.figure, r.ratio, r.target);
    }
    rows.extend(phase);
}

fn print_table(rows: &[Row]) {
    println!();
    let w = rows.iter().map(|r| r.what.chars().count()).max().unwrap_or(10);
    let f = rows.iter().map(|r| r.figure.chars().count()).max().unwrap_or(10);
    println!("| {:w$} | {:f$} | {:>9} | target |", "measure", "figure", "× base");
    println!(
        "|{}|{}|{}|{}|",
        "-".repeat(w + 2),
        "-".repeat(f + 2),
        "-".repeat(11),
        "-".repeat(18)
    );
    for r in rows {
        println!("| {:w$} | {:f$} | {:>9} | {} |", r.what, r.figure, r.ratio, r.target);
    }
}
