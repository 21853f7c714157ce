//! Resync: the real `orgsync resync` as a child process against the bench's fake Clerk API (in
//! this process), at one or more dataset scales: from empty, then again with nothing changed
//! (which must write no row). The child is reaped with `wait4`, whose `ru_maxrss` is the peak
//! resident set of the resync alone (the fake's memory is this process's).
//!
//! Each scale gets a database of its own (orgsync's default schema in it; the other phases
//! keep theirs in `public`, a layout `orgsync migrate` will not share a database with), migrated
//! by `orgsync migrate` before the clock starts. The child's request budget is raised far above Clerk's (production
//! allows 1,000 requests in any 10 s, which alone would take 10 s per 1,000 requests beyond the
//! first 1,000): the phase
//! measures the resync's own cost; the request count is printed so that floor can be read off.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::fake_clerk::{FakeClerk, KEY};
use crate::Row;

/// The request budget given to the child (per 10 s).
const RATE_LIMIT: &str = "1000000";

/// One `orgsync` child run to its end.
struct ChildRun {
    elapsed: Duration,
    exit: Option<i32>,
    peak_rss_kib: u64,
    cpu: Duration,
    stdout: String,
    stderr: String,
}

/// Runs `orgsync <args>` with `env`, capturing its output, and reaps it with `wait4`.
async fn run_child(args: &[&str], env: Vec<(&'static str, String)>) -> ChildRun {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orgsync"));
        command
            .args(&args)
            .env("ORGSYNC_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let started = Instant::now();
        // Reaped below with wait4 (std's wait would not give the child's rusage).
        #[allow(clippy::zombie_processes)]
        let mut child = command.spawn().expect("orgsync binary starts");
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        // The peak RSS of the child's own image, sampled from /proc: wait4's `ru_maxrss` is no
        // use here, because exec records the peak of the address space it replaces, and a
        // child spawned with vfork semantics (as std does) replaces the bench's own.
        let peak = {
            let pid = child.id();
            std::thread::spawn(move || {
                let mut peak_kib = 0u64;
                while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let Some(hwm) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) else {
                        break; // a zombie: it has exited
                    };
                    let kib = hwm.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak_kib = peak_kib.max(kib);
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak_kib
            })
        };
        let mut status: libc::c_int = 0;
        // SAFETY: `rusage` is plain data that wait4 fills; the pid is our child, not yet reaped
        // (std's `Child` is never waited on, so nothing else reaps it).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
        let elapsed = started.elapsed();
        assert_eq!(reaped, child.id() as libc::pid_t, "wait4 reaps the resync child");
        let exit = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        let time = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
        ChildRun {
            elapsed,
            exit,
            peak_rss_kib: peak.join().unwrap(),
            cpu: time(usage.ru_utime) + time(usage.ru_stime),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    })
    .await
    .unwrap()
}

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

/// What one scale measured.
struct Scaled {
    scale: f64,
    orgs: usize,
    users: usize,
    members: usize,
    empty: ChildRun,
    unchanged: ChildRun,
    requests: u64,
}

async fn at_scale(admin: &PgPool, server_base: &str, scale: f64, n: usize) -> Scaled {
    let (orgs, users, members) = (
        ((10_000.0 * scale) as usize).max(1),
        ((50_000.0 * scale) as usize).max(1),
        (100_000.0 * scale) as usize,
    );
    let seeding = Instant::now();
    let fake = FakeClerk::start(orgs, users, members).await;
    println!(
        "resync: scale {scale}: fake Clerk API holds {orgs} organizations, {members} memberships, {users} users (built in {:.1} s)",
        seeding.elapsed().as_secs_f64()
    );
    let database = format!("orgsync_bench_resync_{n}");
    let db_url = format!("{server_base}/{database}");
    for sql in [
        format!("drop database if exists {database} with (force)"),
        format!("create database {database}"),
    ] {
        sqlx::query(&sql).execute(admin).await.unwrap();
    }
    let schema = orgsync::db::DEFAULT_SCHEMA;
    let env = |fake: &FakeClerk| {
        vec![
            ("DATABASE_URL", db_url.to_owned()),
            ("ORGSYNC_SCHEMA", schema.to_owned()),
            ("CLERK_API_URL", fake.url()),
            ("CLERK_SECRET_KEY", KEY.to_owned()),
            ("CLERK_RATE_LIMIT", RATE_LIMIT.to_owned()),
        ]
    };
    let migrated = run_child(&["migrate"], env(&fake)).await;
    assert_eq!(migrated.exit, Some(0), "orgsync migrate failed: {}", migrated.stderr);
    let options = orgsync::db::connect_options(&db_url, &schema.parse().unwrap()).unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();

    let before = fake.requests();
    let empty = run_child(&["resync", "--json"], env(&fake)).await;
    let requests = fake.requests() - before;
    let failed = |what: &str, run: &ChildRun| {
        format!(
            "{what} exited {:?}\nfake Clerk API lacks: {:?}\nstdout: {}\nstderr: {}",
            run.exit,
            fake.unknown_paths(),
            run.stdout,
            run.stderr
        )
    };
    assert_eq!(empty.exit, Some(0), "{}", failed("resync from empty", &empty));
    let counts: (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from hotels where deleted_at is null),
                (select count(*) from users where deleted_at is null),
                (select count(*) from memberships where deleted_at is null)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        counts,
        (orgs as i64, users as i64, members as i64),
        "the resync from empty must mirror every organization, user and membership"
    );
    let written = fingerprint(&pool).await;
    let unchanged = run_child(&["resync", "--json"], env(&fake)).await;
    assert_eq!(unchanged.exit, Some(0), "{}", failed("unchanged resync", &unchanged));
    assert!(
        fingerprint(&pool).await == written,
        "an unchanged resync must write nothing"
    );
    let unknown = fake.unknown_paths();
    if !unknown.is_empty() {
        println!("resync: WARNING: the bench's fake Clerk API does not serve {unknown:?} (answered 404)");
    }
    pool.close().await;
    fake.stop().await;
    sqlx::query(&format!("drop database {database} with (force)"))
        .execute(admin)
        .await
        .unwrap();
    for (what, run) in [("from empty", &empty), ("unchanged", &unchanged)] {
        println!(
            "resync: scale {scale}, {what}: {:.2} s wall, {:.2} s CPU, peak RSS {:.1} MiB",
            run.elapsed.as_secs_f64(),
            run.cpu.as_secs_f64(),
            run.peak_rss_kib as f64 / 1024.0
        );
    }
    println!(
        "resync: scale {scale}: {requests} requests per run (Clerk's production budget, 1,000 per 10 s, alone would make it ≥ {} s)",
        10 * ((requests.max(1) - 1) / 1000)
    );
    Scaled {
        scale,
        orgs,
        users,
        members,
        empty,
        unchanged,
        requests,
    }
}

/// Runs the phase at each of `scales` (the first is the reference of the others' ratios) and
/// returns its rows.
pub async fn run(admin: &PgPool, server_base: &str, scales: &[f64], baseline: f64) -> Vec<Row> {
    let mut measured: Vec<Scaled> = Vec::new();
    for (n, &scale) in scales.iter().enumerate() {
        measured.push(at_scale(admin, server_base, scale, n).await);
    }
    let reference = &measured[0];
    let mut rows = Vec::new();
    for m in &measured {
        // At the reference scale, the absolute targets; at others, linear growth within 10 %.
        let growth = m.scale / reference.scale;
        let versus = |run: &ChildRun, base: &ChildRun, absolute: &str| {
            if std::ptr::eq(m, reference) {
                (String::new(), absolute.to_owned())
            } else {
                (
                    format!(
                        "; {:.2}× scale {}",
                        run.elapsed.as_secs_f64() / base.elapsed.as_secs_f64(),
                        reference.scale
                    ),
                    format!("≤ {:.1}× scale {}", growth * 1.1, reference.scale),
                )
            }
        };
        let (vs, target) = versus(&m.empty, &reference.empty, "≤ 60 s");
        rows.push(Row::new(
            format!(
                "resync from empty, scale {} ({} orgs, {} memberships, {} users; {} requests)",
                m.scale, m.orgs, m.members, m.users, m.requests
            ),
            format!("{:.2} s{vs}", m.empty.elapsed.as_secs_f64()),
            // Rows written per second, against single-row inserts per second.
            format!(
                "{:.2}×",
                (m.orgs + m.users + m.members) as f64 / m.empty.elapsed.as_secs_f64() / baseline
            ),
            target,
        ));
        let (vs, target) = versus(&m.unchanged, &reference.unchanged, "≤ 15 s");
        rows.push(Row::new(
            format!("resync, nothing changed (writes nothing), scale {}", m.scale),
            format!("{:.2} s{vs}", m.unchanged.elapsed.as_secs_f64()),
            "",
            target,
        ));
        rows.push(Row::new(
            format!("resync: the child's peak RSS, scale {}", m.scale),
            format!(
                "{:.1} MiB (unchanged run {:.1} MiB)",
                m.empty.peak_rss_kib as f64 / 1024.0,
                m.unchanged.peak_rss_kib as f64 / 1024.0
            ),
            "",
            "≤ 256 MiB at scale 5",
        ));
    }
    rows
}
