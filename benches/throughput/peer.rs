//! The peer: the end-to-end burst ([`Burst`], the same history, duplicates and order) posted the
//! same way ([`post_all`]) to a Node.js receiver + Graphile Worker doing the same work
//! (`benches/peer/peer.mjs`: Svix verification, one job per delivery keyed by svix-id, newer-wins
//! apply to its own tables in its own database, a membership whose hotel is missing retried with
//! Graphile's backoff), timed from the first delivery until its rows equal the history's final
//! state; the ratio is to the end-to-end phase of the same run.
//!
//! The peer is installed with `npm ci` from the committed lockfile into `<target>/bench-peer`
//! (once, and again when the lockfile changes); its log goes to `<target>/bench-peer/peer.log`.
//! Knob: `ORGSYNC_BENCH_PEER_CONCURRENCY` (Graphile's `concurrency`, jobs run at once; default
//! [`DEFAULT_CONCURRENCY`]; Graphile's own default is 1). Node (`node`, `npm`) must be installed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::end_to_end::{post_all, Burst};
use crate::history::Expected;
use crate::reconcile::deadlocks;
use crate::serve::SECRET;
use crate::Row;

/// Jobs the peer runs at once unless `ORGSYNC_BENCH_PEER_CONCURRENCY` says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 8;

const PACKAGE_JSON: &str = include_str!("../peer/package.json");
const PACKAGE_LOCK: &str = include_str!("../peer/package-lock.json");
const SCRIPT: &str = include_str!("../peer/peer.mjs");

/// Runs the phase; `e2e_seconds` is the end-to-end phase's time in this run (for the ratio).
pub async fn run(admin: &PgPool, base: &str, scale: f64, baseline: f64, e2e_seconds: f64) -> Vec<Row> {
    let dir = install();
    let concurrency: usize = std::env::var("ORGSYNC_BENCH_PEER_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CONCURRENCY);
    sqlx::query("drop database if exists orgsync_bench_peer with (force)")
        .execute(admin)
        .await
        .unwrap();
    sqlx::query("create database orgsync_bench_peer")
        .execute(admin)
        .await
        .unwrap();
    let db_url = format!("{base}/orgsync_bench_peer");
    let pool = PgPool::connect(&db_url).await.unwrap();
    let Burst {
        history,
        deliveries,
        events,
    } = Burst::new(scale);
    let total = deliveries.len();

    let peer = Peer::start(&dir, &db_url, concurrency).await;
    let deadlocks_before = deadlocks(&pool).await;
    let started = Instant::now();
    let resent = post_all(peer.addr, deliveries).await;
    let posted = started.elapsed();

    // Every delivery is acknowledged (its job committed): read the rows until they are right.
    let bound = Duration::from_secs_f64(300.0 * scale.max(1.0));
    let converged = loop {
        let at = started.elapsed();
        // A duplicate delivered while the job of its key runs makes Graphile Worker take the key
        // off the running job and spend its attempts (attempts = max_attempts), so that it is
        // never retried: the new job carries the work. Such a job is neither runnable nor a
        // failure; a failure is a job still holding its key with its attempts spent.
        let (runnable, failed): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where run_at <= now() and attempts < max_attempts),
                    count(*) filter (where attempts >= max_attempts and key is not null and locked_at is null)
             from graphile_worker.jobs",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            failed,
            0,
            "a job of the peer failed permanently (see {})",
            dir.join("peer.log").display()
        );
        if runnable == 0 && Expected::read(&pool).await.unwrap() == history.expected {
            break at;
        }
        if at > bound {
            let rows = Expected::read(&pool).await.unwrap();
            panic!(
                "peer: the rows are not the history's {:.0} s after the first delivery ({runnable} jobs runnable): {}",
                at.as_secs_f64(),
                rows.difference(&history.expected)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stats = peer.stats().await;
    peer.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // statistics are reported when idle
    let deadlocks = deadlocks(&pool).await - deadlocks_before;
    pool.close().await;
    sqlx::query("drop database if exists orgsync_bench_peer with (force)")
        .execute(admin)
        .await
        .unwrap();

    let (posted_s, converged_s) = (posted.as_secs_f64(), converged.as_secs_f64());
    let count = |k: &str| stats[k].as_u64().unwrap_or(0);
    println!(
        "peer: {total} deliveries ({events} events) acknowledged by Node + Graphile Worker (concurrency \
         {concurrency}) in {posted_s:.2} s ({:.0}/s, {resent} re-sent after an error); rows equal the \
         history's final state {converged_s:.2} s after the first delivery; {} jobs succeeded, {} attempts \
         failed ({} waiting for their hotel), {deadlocks} deadlocks",
        total as f64 / posted_s,
        count("succeeded"),
        count("failed"),
        count("waitingForHotel"),
    );
    let rate = total as f64 / converged_s;
    let ratio = converged_s / e2e_seconds;
    println!("peer: its time / orgsync's end-to-end time = {converged_s:.2} s / {e2e_seconds:.2} s = {ratio:.2}×");
    vec![
        Row::new(
        format!("peer: Node + Graphile Worker (concurrency {concurrency}), the same {total} deliveries until the rows are final"),
        format!("{converged_s:.2} s = {rate:.0} deliveries/s (acknowledged at {:.0}/s)", total as f64 / posted_s),
        format!("{:.2}×", rate / baseline),
        "",
        ),
        Row::new(
            "end-to-end burst: the peer's time / orgsync's (rows final, feed complete)",
            format!("{ratio:.2}× ({converged_s:.2} s / {e2e_seconds:.2} s)"),
            "",
            "≥ 10×",
        ),
    ]
}

/// Copies the peer into `<target>/bench-peer` and installs its dependencies with `npm ci` when
/// they are missing or the lockfile changed. Returns the directory.
fn install() -> PathBuf {
    // The orgsync binary is <target>/<profile>/orgsync.
    let target = PathBuf::from(env!("CARGO_BIN_EXE_orgsync"))
        .parent()
        .and_then(|p| p.parent())
        .expect("the orgsync binary sits in <target>/<profile>/")
        .to_path_buf();
    let dir = target.join("bench-peer");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in [
        ("package.json", PACKAGE_JSON),
        ("package-lock.json", PACKAGE_LOCK),
        ("peer.mjs", SCRIPT),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    // Written after a successful install, inside node_modules (which `npm ci` removes first).
    let marker = dir.join("node_modules").join(".orgsync-bench-lock");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(PACKAGE_LOCK) {
        println!("peer: npm ci in {}", dir.display());
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .expect("npm is installed (the peer phase needs Node.js)");
        assert!(
            out.status.success(),
            "npm ci failed in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&marker, PACKAGE_LOCK).unwrap();
    }
    dir
}

/// The running peer (`node peer.mjs`).
struct Peer {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Peer {
    /// Starts the peer on a free loopback port against `db_url` and waits until it answers
    /// `/readyz` (its tables and Graphile's schema exist, the worker runs). Panics after 30 s.
    async fn start(dir: &std::path::Path, db_url: &str, concurrency: usize) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.join("peer.log")).unwrap();
        let child = tokio::process::Command::new("node")
            .arg("peer.mjs")
            .current_dir(dir)
            .env("DATABASE_URL", db_url)
            .env("CLERK_WEBHOOK_SECRET", SECRET)
            .env("PORT", port.to_string())
            .env("PEER_CONCURRENCY", concurrency.to_string())
            .env("NODE_ENV", "production")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("node is installed (the peer phase needs Node.js)");
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Self { child, addr };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the peer did not become ready within 30 s (see {})",
            dir.join("peer.log").display()
        );
    }

    /// The worker's counts (`/stats`).
    async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("http://{}/stats", self.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// SIGTERM (the peer stops its worker gracefully), then waits up to 10 s.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
