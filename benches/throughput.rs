//! orgsync's throughput benchmark: `cargo bench --bench throughput`.
//!
//! One run, against the local Postgres, prints a table of figures and of their ratios to a
//! baseline measured in the same run (these machines are noisy; ratios travel better):
//!
//! 1. baseline: durable single-row INSERTs of an event-sized JSONB row into a copy of `jobs` as
//!    first defined (`jsonb` payload, generated `entity_key`), one commit each, from 64
//!    concurrent connections (the naive per-webhook commit limit);
//! 2. ingest: signed Clerk webhooks accepted by the real `orgsync serve` binary over loopback from
//!    64 concurrent connections (p50/p99 acknowledgement latency), then p99 at a fixed offered load
//!    of 1,000 requests/s, and the receiver's peak RSS;
//! 3. reconcile: events per second drained from a pre-filled job table (a realistic mix with
//!    duplicates and out-of-order deliveries) into rows;
//! 4. resync: 10,000 organizations, 100,000 memberships and 50,000 users from a fake Clerk API
//!    into an empty database, then again with nothing changed (which must write nothing).
//!
//! Knobs: `ORGSYNC_BENCH_SECONDS` (length of each timed phase, default 5),
//! `ORGSYNC_BENCH_SCALE` (a factor on the dataset sizes, default 1.0), `DATABASE_URL` (the
//! server; a database `orgsync_bench` is created on it and dropped at the end).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use orgsync::clerk::signature::WebhookVerifier;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_YmVuY2htYXJrLXNlY3JldC1mb3Itb3Jnc3luYw==";
const CONCURRENCY: usize = 64;
const FIXED_RATE: u64 = 1_000;

fn fixture(name: &str) -> Value {
    let text = match name {
        "organization.created" => include_str!("../fixtures/webhooks/organization.created.json"),
        "organization.updated" => include_str!("../fixtures/webhooks/organization.updated.json"),
        "organization.deleted" => include_str!("../fixtures/webhooks/organization.deleted.json"),
        "user.created" => include_str!("../fixtures/webhooks/user.created.json"),
        "user.updated" => include_str!("../fixtures/webhooks/user.updated.json"),
        "user.deleted" => include_str!("../fixtures/webhooks/user.deleted.json"),
        "organizationMembership.created" => include_str!("../fixtures/webhooks/organizationMembership.created.json"),
        "organizationMembership.updated" => include_str!("../fixtures/webhooks/organizationMembership.updated.json"),
        "organizationMembership.deleted" => include_str!("../fixtures/webhooks/organizationMembership.deleted.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).unwrap()
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    what: String,
    figure: String,
    ratio: String,
    target: String,
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let seconds = env_f64("ORGSYNC_BENCH_SECONDS", 5.0);
    let scale = env_f64("ORGSYNC_BENCH_SCALE", 1.0);
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
    println!("phases of {seconds} s; {CONCURRENCY} concurrent connections; dataset scale {scale}");
    println!();

    let mut rows = Vec::new();
    // ORGSYNC_BENCH_ONLY=ingest|reconcile|resync runs the baseline and that phase alone.
    let only = std::env::var("ORGSYNC_BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only == name;

    // 1. Baseline.
    let baseline = baseline_inserts(&pool, &db_url, phase).await;
    truncate(&pool).await;
    rows.push(Row {
        what: "baseline: single-row durable INSERTs/s".into(),
        figure: format!("{baseline:.0}/s"),
        ratio: "1.00×".into(),
        target: String::new(),
    });

    // 2. Ingest through the real binary.
    if run("ingest") {
        let ingest = ingest(&db_url, phase).await;
        truncate(&pool).await;
        rows.push(Row {
            what: "ingest: signed webhooks/s (64 conns)".into(),
            figure: format!("{:.0}/s", ingest.rate),
            ratio: format!("{:.2}×", ingest.rate / baseline),
            target: "≥ 2.0× baseline".into(),
        });
        rows.push(Row {
            what: "ingest: receiver CPU per delivery".into(),
            figure: format!("{:.1} µs", ingest.orgsync_cpu_us),
            ratio: String::new(),
            target: "≤ 20 µs".into(),
        });
        rows.push(Row {
            what: "ingest: ack latency p50 / p99 (64 conns)".into(),
            figure: format!("{} / {}", ms(ingest.p50), ms(ingest.p99)),
            ratio: String::new(),
            target: String::new(),
        });
        rows.push(Row {
            what: format!("ingest: ack latency p99 at {FIXED_RATE} req/s"),
            figure: format!(
                "{} ({:.0} req/s sent, {} errors)",
                ms(ingest.fixed_p99),
                ingest.fixed_rate,
                ingest.fixed_errors
            ),
            ratio: String::new(),
            target: "≤ 25 ms".into(),
        });
        rows.push(Row {
            what: "ingest: receiver peak RSS".into(),
            figure: format!("{:.1} MiB", ingest.peak_rss_kib as f64 / 1024.0),
            ratio: String::new(),
            target: "≤ 64 MiB".into(),
        });
    }

    // 3. Reconcile.
    if run("reconcile") {
        let (reconcile_rate, n, settings) = reconcile(&pool, scale).await;
        rows.push(Row {
            what: format!("reconcile: events/s ({n} jobs; {settings})"),
            figure: format!("{reconcile_rate:.0}/s"),
            ratio: format!("{:.2}×", reconcile_rate / baseline),
            target: "≥ 5000/s".into(),
        });
    }

    // 4. Resync.
    if run("resync") {
        rows.extend(resync::run(&pool, scale, baseline).await);
    }

    pool.close().await;
    sqlx::query("drop database if exists orgsync_bench with (force)")
        .execute(&admin)
        .await
        .unwrap();

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

async fn truncate(pool: &PgPool) {
    sqlx::query("truncate jobs, memberships, hotels, users restart identity")
        .execute(pool)
        .await
        .unwrap();
}

/// Single-row INSERT + COMMIT per event from `CONCURRENCY` connections for `phase`, into a copy
/// of `jobs` (same columns, defaults and indexes; no trigger): raw Postgres, nothing of orgsync.
async fn baseline_inserts(pool: &PgPool, db_url: &str, phase: Duration) -> f64 {
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

struct Ingest {
    rate: f64,
    p50: Duration,
    p99: Duration,
    fixed_p99: Duration,
    fixed_rate: f64,
    fixed_errors: usize,
    peak_rss_kib: u64,
    /// CPU time of the receiver process per accepted delivery, in µs (closed loop).
    orgsync_cpu_us: f64,
}

/// Realistic bodies: every handled type, with distinct ids.
fn webhook_bodies(n: usize) -> Vec<String> {
    let kinds = [
        "user.created",
        "organizationMembership.created",
        "organization.created",
        "user.updated",
    ];
    (0..n)
        .map(|i| {
            let mut v = fixture(kinds[i % kinds.len()]);
            v["data"]["id"] = json!(format!(
                "{}_{i:024}",
                v["data"]["id"].as_str().unwrap().split('_').next().unwrap()
            ));
            v.to_string()
        })
        .collect()
}

async fn ingest(db_url: &str, phase: Duration) -> Ingest {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgsync"))
        .args(["serve", "--no-worker", "--listen", &format!("127.0.0.1:{port}")])
        .env(
            "ORGSYNC_INGEST_BATCHERS",
            std::env::var("ORGSYNC_INGEST_BATCHERS").unwrap_or_else(|_| "4".into()),
        )
        .env("DATABASE_URL", db_url)
        // The bench migrates its own database's `public` schema (one search_path for all of
        // its pools): the service runs there too.
        .env("ORGSYNC_SCHEMA", "public")
        .env("CLERK_WEBHOOK_SECRET", SECRET)
        .env("ORGSYNC_RESYNC_INTERVAL", "off")
        .env("ORGSYNC_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("orgsync binary starts");
    let pid = child.id().unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let signer = Arc::new(WebhookVerifier::parse(SECRET).unwrap());
    let bodies = Arc::new(webhook_bodies(4096));

    // RSS sampling of the receiver, for the whole ingest phase.
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn({
        let (peak, sampling) = (peak.clone(), sampling.clone());
        async move {
            while !sampling.is_cancelled() {
                if let Some(kib) = rss_kib(pid, "VmHWM:") {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // The load generator is a minimal HTTP/1.1 client over keep-alive connections (as wrk is),
    // so that the machine's two cores go to orgsync and Postgres rather than to the client.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let idle: Arc<std::sync::Mutex<Vec<RawHttp>>> = Arc::default();
    let send = move |id: String, body_index: usize| {
        let (signer, bodies, idle) = (signer.clone(), bodies.clone(), idle.clone());
        async move {
            let body = &bodies[body_index % bodies.len()];
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let headers = signer.sign(&id, now, body.as_bytes());
            let started = Instant::now();
            let pooled = idle.lock().unwrap().pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => match RawHttp::connect(addr).await {
                    Ok(c) => c,
                    Err(_) => return (false, started.elapsed()),
                },
            };
            let ok = match conn.post("/webhooks/clerk", &headers, body).await {
                Ok(status) => {
                    idle.lock().unwrap().push(conn);
                    (200..300).contains(&status)
                }
                Err(_) => false,
            };
            (ok, started.elapsed())
        }
    };

    // Warm-up, then the closed loop.
    futures::stream::iter(0..500)
        .map(|i| send(format!("msg_warm_{i}"), i))
        .buffer_unordered(CONCURRENCY)
        .count()
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let (stop, send) = (stop.clone(), send.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (ok, latency) = send(format!("msg_{t}_{n}"), t * 7919 + n).await;
                    if ok {
                        latencies.push(latency);
                    } else {
                        errors += 1;
                    }
                    n += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(pid);
    latencies.sort();
    let rate = latencies.len() as f64 / elapsed;
    println!(
        "ingest: {} accepted, {errors} failed in {elapsed:.1} s",
        latencies.len()
    );
    let per = |a: f64, b: f64| (b - a) * 1e6 / latencies.len().max(1) as f64;
    let (orgsync, generator) = (per(cpu_before.1, cpu_after.1), per(cpu_before.2, cpu_after.2));
    println!(
        "ingest: CPU per delivery: {:.0} µs in all = orgsync {orgsync:.0} µs + load generator {generator:.0} µs + Postgres and the rest {:.0} µs",
        per(cpu_before.0, cpu_after.0),
        per(cpu_before.0, cpu_after.0) - orgsync - generator
    );

    // Open loop at a fixed offered load: latency counts from the intended send time, so a
    // stalled receiver shows up as queueing, not as fewer samples.
    let total = (FIXED_RATE as f64 * phase.as_secs_f64()) as usize;
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / FIXED_RATE));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        interval.tick().await;
        let intended = Instant::now();
        let send = send.clone();
        handles.push(tokio::spawn(async move {
            let (ok, _) = send(format!("msg_fixed_{i}"), i).await;
            (ok, intended.elapsed())
        }));
    }
    let sent_in = started.elapsed().as_secs_f64();
    let mut fixed = Vec::with_capacity(total);
    let mut fixed_errors = 0;
    for h in handles {
        let (ok, latency) = h.await.unwrap();
        if ok {
            fixed.push(latency);
        } else {
            fixed_errors += 1;
        }
    }
    fixed.sort();
    sampling.cancel();
    let _ = sampler.await;
    let peak_rss_kib = peak.load(Ordering::Relaxed).max(rss_kib(pid, "VmHWM:").unwrap_or(0));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    Ingest {
        rate,
        orgsync_cpu_us: orgsync,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        fixed_p99: percentile(&fixed, 0.99),
        fixed_rate: total as f64 / sent_in,
        fixed_errors,
        peak_rss_kib,
    }
}

/// One keep-alive HTTP/1.1 connection that sends a request and reads the whole answer.
struct RawHttp {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawHttp {
    async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Ok(status) once the answer (headers and body) is read.
    async fn post(&mut self, path: &str, headers: &http::HeaderMap, body: &str) -> std::io::Result<u16> {
        use std::fmt::Write as _;
        use tokio::io::AsyncWriteExt;
        let mut req = String::with_capacity(body.len() + 256);
        let _ = write!(
            req,
            "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            let _ = write!(req, "{k}: {}\r\n", v.to_str().unwrap_or_default());
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).await?;
        self.buf.clear();
        let broken = || std::io::Error::other("malformed answer");
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).map_err(|_| broken())?;
                let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(broken)?;
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + length {
                    self.read_more().await?;
                }
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// CPU seconds used so far by: the whole machine, process `pid`, and this process (Linux).
fn cpu_seconds(pid: u32) -> (f64, f64, f64) {
    let ticks = |stat: &str| -> f64 {
        // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let f: Vec<&str> = after.split_whitespace().collect();
        let t = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        t / 100.0 // USER_HZ
    };
    // /proc/stat's first line: user nice system idle iowait irq softirq steal ...; busy = all but idle and iowait.
    let machine = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        let v: Vec<f64> = s
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        Some((v.iter().sum::<f64>() - v.get(3)? - v.get(4)?) / 100.0)
    });
    let of = |p: &str| std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(0.0, |s| ticks(&s));
    (machine.unwrap_or(0.0), of(&pid.to_string()), of("self"))
}

/// A `/proc/<pid>/status` field in KiB (Linux).
fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Fills the job table with a realistic history, then measures how fast workers drain it.
async fn reconcile(pool: &PgPool, scale: f64) -> (f64, usize, String) {
    let orgs = (1_000.0 * scale) as usize;
    let users = (5_000.0 * scale) as usize;
    let members = (10_000.0 * scale) as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let t0 = 1_764_000_000_000i64;
    let org_id = |i: usize| format!("org_2bench{i:020}");
    let user_id = |i: usize| format!("user_2bench{i:020}");
    let mut events: Vec<Value> = Vec::new();
    let with = |kind: &str, ts: i64, edit: &dyn Fn(&mut Value)| {
        let mut v = fixture(kind);
        v["timestamp"] = json!(ts);
        edit(&mut v["data"]);
        v
    };
    for i in 0..orgs {
        events.push(with("organization.created", t0, &|d| {
            d["id"] = json!(org_id(i));
            d["created_at"] = json!(t0);
            d["updated_at"] = json!(t0);
        }));
    }
    for i in 0..users {
        events.push(with("user.created", t0, &|d| {
            d["id"] = json!(user_id(i));
            d["created_at"] = json!(t0);
            d["updated_at"] = json!(t0);
        }));
    }
    let mut pairs = std::collections::HashSet::new();
    while pairs.len() < members {
        pairs.insert((rng.random_range(0..orgs), rng.random_range(0..users)));
    }
    for (n, (o, u)) in pairs.iter().enumerate() {
        events.push(with("organizationMembership.created", t0 + 10, &|d| {
            d["id"] = json!(format!("orgmem_2bench{n:020}"));
            d["organization"]["id"] = json!(org_id(*o));
            d["public_user_data"]["user_id"] = json!(user_id(*u));
            d["created_at"] = json!(t0 + 10);
            d["updated_at"] = json!(t0 + 10);
        }));
    }
    // Updates (some memberships change role), a few deletes.
    for i in 0..orgs / 2 {
        events.push(with("organization.updated", t0 + 20, &|d| {
            d["id"] = json!(org_id(i));
            d["name"] = json!(format!("Renamed {i}"));
            d["created_at"] = json!(t0);
            d["updated_at"] = json!(t0 + 20);
        }));
    }
    for i in 0..users / 5 {
        events.push(with("user.updated", t0 + 20, &|d| {
            d["id"] = json!(user_id(i));
            d["created_at"] = json!(t0);
            d["updated_at"] = json!(t0 + 20);
        }));
    }
    for (n, (o, u)) in pairs.iter().enumerate().take(members / 10) {
        events.push(with("organizationMembership.updated", t0 + 30, &|d| {
            d["id"] = json!(format!("orgmem_2bench{n:020}"));
            d["organization"]["id"] = json!(org_id(*o));
            d["public_user_data"]["user_id"] = json!(user_id(*u));
            d["created_at"] = json!(t0 + 10);
            d["updated_at"] = json!(t0 + 30);
        }));
    }
    for i in 0..orgs / 50 {
        events.push(with("organization.deleted", (t0 + 40) / 1000, &|d| {
            d["id"] = json!(org_id(orgs - 1 - i))
        }));
    }
    for i in 0..users / 50 {
        events.push(with("user.deleted", t0 + 40, &|d| {
            d["id"] = json!(user_id(users - 1 - i))
        }));
    }
    // 5% duplicates, then out of order: shuffled within windows of 200 deliveries (so some
    // memberships arrive before their hotel and must retry).
    let dups: Vec<Value> = events.choose_multiple(&mut rng, events.len() / 20).cloned().collect();
    events.extend(dups);
    for chunk in events.chunks_mut(200) {
        chunk.shuffle(&mut rng);
    }
    let n = events.len();
    let ids: Vec<String> = (0..n).map(|i| format!("msg_rec_{i}")).collect();
    let types: Vec<String> = events.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    let payloads: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    sqlx::query(
        "insert into jobs (event_id, event_type, payload)
         select * from unnest($1::text[], $2::text[], $3::text[]::jsonb[])",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&payloads)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("vacuum analyze jobs").execute(pool).await.unwrap();

    let settings = orgsync::queue::WorkerSettings {
        concurrency: 4,
        batch_size: 200,
        retry_base: Duration::from_millis(10),
        retry_cap: Duration::from_millis(100),
        poll_interval: Duration::from_millis(10),
        ..Default::default()
    };
    let described = format!("{} workers, batches of {}", settings.concurrency, settings.batch_size);
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let runner = tokio::spawn(orgsync::queue::Runner::new(pool.clone(), settings).run(cancel.clone()));
    loop {
        let left: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'available'")
            .fetch_one(pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    cancel.cancel();
    runner.await.unwrap();
    let (deadlocks, retried): (i64, i64) = sqlx::query_as(
        "select (select deadlocks from pg_stat_database where datname = current_database()),
                (select count(*) from jobs where attempts > 1)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    println!("reconcile: {deadlocks} deadlocks, {retried} jobs needed more than one attempt");
    let dead: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'dead'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(dead, 0, "no job of the benchmark history should dead-letter");
    println!("reconcile: {n} jobs in {elapsed:.2} s");
    truncate(pool).await;
    (n as f64 / elapsed, n, described)
}

#[path = "../tests/fake_clerk/mod.rs"]
mod fake_clerk;

mod resync {
    use super::*;
    use orgsync::clerk::api::ClerkClient;
    use orgsync::resync::{resync, ResyncOptions};

    /// A digest of every domain row's `xmin`: unchanged exactly when no row was written.
    async fn fingerprint(pool: &PgPool) -> String {
        sqlx::query_scalar(
            "select md5(concat_ws('|',
                (select string_agg(id || ':' || xmin::text, ',' order by id) from hotels),
                (select string_agg(id || ':' || xmin::text, ',' order by id) from users),
                (select string_agg(hotel_id || user_id || ':' || xmin::text, ',' order by hotel_id, user_id)
                 from memberships)))",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    }

    pub async fn run(pool: &PgPool, scale: f64, baseline: f64) -> Vec<Row> {
        let (orgs, users, members) = (
            (10_000.0 * scale) as usize,
            (50_000.0 * scale) as usize,
            (100_000.0 * scale) as usize,
        );
        truncate(pool).await;
        let fake = fake_clerk::FakeClerk::start().await;
        fake.seed(orgs, users, members, 1_764_000_000_000);
        // The fake's key is a development key; allow production's budget (1000 per 10 s).
        let client = ClerkClient::new(&fake.url(), fake_clerk::KEY, 1000, Duration::from_secs(30)).unwrap();
        let options = ResyncOptions::default();

        let started = Instant::now();
        let first = resync(pool, &client, &options)
            .await
            .expect("resync from empty succeeds");
        let empty = started.elapsed();
        let requests = fake.log().len();
        let before = fingerprint(pool).await;
        let started = Instant::now();
        let again = resync(pool, &client, &options)
            .await
            .expect("unchanged resync succeeds");
        let unchanged = started.elapsed();
        let wrote_nothing = again.is_unchanged() && fingerprint(pool).await == before;
        println!(
            "resync: {} hotels, {} users, {} memberships created in {:.2} s ({requests} requests); unchanged run {:.2} s, wrote nothing: {wrote_nothing}",
            first.hotels.created.len(),
            first.users.created.len(),
            first.memberships.created.len(),
            empty.as_secs_f64(),
            unchanged.as_secs_f64()
        );
        assert!(wrote_nothing, "an unchanged resync must write nothing");
        truncate(pool).await;
        vec![
            Row {
                what: format!("resync from empty ({orgs} orgs, {members} memberships, {users} users)"),
                figure: format!("{:.2} s", empty.as_secs_f64()),
                // Rows written per second, against single-row inserts per second.
                ratio: format!(
                    "{:.2}×",
                    (orgs + users + members) as f64 / empty.as_secs_f64() / baseline
                ),
                target: "≤ 60 s".into(),
            },
            Row {
                what: "resync, nothing changed (writes nothing)".into(),
                figure: format!("{:.2} s", unchanged.as_secs_f64()),
                ratio: String::new(),
                target: "≤ 15 s".into(),
            },
        ]
    }
}
