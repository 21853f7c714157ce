//! Reconcile: how fast the consumer drains a pre-filled job table (a realistic history with
//! duplicates and out-of-order deliveries) into rows, in this process, with the library's
//! [`orgsync::queue::Runner`], the change feed's sequencer running beside it as in `serve`. The
//! clock stops when every job is done *and* every change is readable in the feed; the rows must
//! then be the history's and the feed's ids contiguous. Run with 4 workers, then with 1 (the
//! feed must not make them equal). `ORGSYNC_BENCH_PROFILE=1` samples what the workers' and the
//! sequencer's sessions do ([`crate::sampler`]).

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::history::{with_duplicates, Expected, History};
use crate::measure::{backend_cpu, backend_cpu_since, cpu_seconds};
use crate::{truncate, Row};

/// What the phase measured.
pub struct Reconcile {
    pub rate: f64,
    pub jobs: usize,
    pub deadlocks: i64,
    pub settings: String,
}

/// Fills the job table, drains it (4 workers, then 1), checks the rows and the feed, and returns
/// the phase's rows.
pub async fn run(pool: &PgPool, db_url: &str, scale: f64, baseline: f64) -> Vec<Row> {
    let profile = std::env::var("ORGSYNC_BENCH_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
    let four = measure(pool, db_url, scale, 4, profile).await;
    let one = measure(pool, db_url, scale, 1, false).await;
    vec![
        Row::new(
            format!(
                "reconcile: events/s ({} jobs; {}; feed on), deadlocks",
                four.jobs, four.settings
            ),
            format!("{:.0}/s, {} deadlocks", four.rate, four.deadlocks),
            format!("{:.2}×", four.rate / baseline),
            "≥ 3.0× baseline, 0 deadlocks",
        ),
        Row::new(
            format!(
                "reconcile: events/s ({} jobs; {}; feed on), deadlocks",
                one.jobs, one.settings
            ),
            format!("{:.0}/s, {} deadlocks", one.rate, one.deadlocks),
            format!("{:.2}×", one.rate / baseline),
            "",
        ),
        Row::new(
            "reconcile: 4 workers against 1",
            format!("{:.2}×", four.rate / one.rate),
            "",
            "≥ 1.5×",
        ),
    ]
}

/// A pool of its own for the library's sessions, named for the sampler.
fn named_pool(db_url: &str, name: &str, connections: u32) -> PgPool {
    let options: PgConnectOptions = db_url.parse::<PgConnectOptions>().unwrap().application_name(name);
    PgPoolOptions::new()
        .max_connections(connections)
        .connect_lazy_with(options)
}

async fn measure(pool: &PgPool, db_url: &str, scale: f64, workers: usize, profile: bool) -> Reconcile {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let history = History::reconcile_mix(scale, &mut rng);
    // 5% duplicates (distinct deliveries of the same event), then out of order: shuffled within
    // windows of 200 deliveries (so some memberships arrive before their hotel and must retry).
    let mut events = with_duplicates(history.events, 0.05, &mut rng);
    for chunk in events.chunks_mut(200) {
        chunk.shuffle(&mut rng);
    }
    let n = events.len();
    let ids: Vec<String> = (0..n).map(|i| format!("msg_rec_{i}")).collect();
    let types: Vec<String> = events.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    let payloads: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    sqlx::query(
        "insert into jobs (event_id, event_type, payload)
         select * from unnest($1::text[], $2::text[], $3::text[]::json[])",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&payloads)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("vacuum analyze jobs").execute(pool).await.unwrap();
    let deadlocks_before = deadlocks(pool).await;

    let settings = orgsync::queue::WorkerSettings {
        concurrency: workers,
        batch_size: 200,
        retry_base: Duration::from_millis(10),
        retry_cap: Duration::from_millis(100),
        poll_interval: Duration::from_millis(10),
        ..Default::default()
    };
    let described = format!(
        "{} worker{}, batches of {}",
        settings.concurrency,
        if settings.concurrency == 1 { "" } else { "s" },
        settings.batch_size
    );
    let cancel = CancellationToken::new();
    let worker_pool = named_pool(db_url, "orgsync-bench-workers", workers as u32 + 2);
    let sequencer_pool = named_pool(db_url, "orgsync-bench-sequencer", 2);
    println!("reconcile: {n} jobs queued; draining with {described}");
    let sampling = CancellationToken::new();
    let samplers = profile.then(|| {
        (
            tokio::spawn(crate::sampler::sample(
                pool.clone(),
                "orgsync-bench-workers",
                sampling.clone(),
            )),
            tokio::spawn(crate::sampler::sample(
                pool.clone(),
                "orgsync-bench-sequencer",
                sampling.clone(),
            )),
        )
    });
    let backends_before = backend_cpu(pool).await;
    let cpu_before = cpu_seconds(0);
    let started = Instant::now();
    let runner = tokio::spawn(orgsync::queue::Runner::new(worker_pool.clone(), settings).run(cancel.clone()));
    let sequencer = tokio::spawn(orgsync::changes::sequencer::run(
        sequencer_pool.clone(),
        orgsync::changes::SequencerSettings::default(),
        cancel.clone(),
    ));
    // `exists` stops at the first due job (or pending change): the poll stays cheap while
    // thousands are left. Done when the jobs are and the feed holds every change.
    while sqlx::query_scalar::<_, bool>(
        "select exists (select 1 from jobs where state = 'available') or exists (select 1 from pending_changes)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(0);
    let backends = backend_cpu_since(&backends_before, &backend_cpu(pool).await);
    cancel.cancel();
    runner.await.unwrap();
    sequencer.await.unwrap();
    sampling.cancel();
    if let Some((w, s)) = samplers {
        crate::sampler::print("reconcile, workers", &w.await.unwrap());
        crate::sampler::print("reconcile, sequencer", &s.await.unwrap());
    }
    worker_pool.close().await;
    sequencer_pool.close().await;
    let per = |secs: f64| secs * 1e6 / n as f64;
    println!(
        "reconcile: CPU per job: workers {:.0} µs + their Postgres backends {:.0} µs (machine: {:.0} µs in all)",
        per(cpu_after.2 - cpu_before.2),
        per(backends),
        per(cpu_after.0 - cpu_before.0)
    );
    // Backends report their statistics when idle, at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let deadlocks = deadlocks(pool).await - deadlocks_before;
    let (retried, dead): (i64, i64) =
        sqlx::query_as("select count(*) filter (where attempts > 1), count(*) filter (where state = 'dead') from jobs")
            .fetch_one(pool)
            .await
            .unwrap();
    println!(
        "reconcile: {n} jobs in {elapsed:.2} s; {deadlocks} deadlocks, {retried} jobs needed more than one attempt"
    );
    assert_eq!(dead, 0, "no job of the benchmark history should dead-letter");
    let (changes, first, last): (i64, Option<i64>, Option<i64>) =
        sqlx::query_as("select count(*), min(id), max(id) from changes")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(changes > 0, "the feed recorded the drain");
    assert_eq!(
        last.unwrap() - first.unwrap() + 1,
        changes,
        "the feed's ids are contiguous"
    );
    println!(
        "reconcile: the feed holds {changes} changes, ids {}..={}",
        first.unwrap(),
        last.unwrap()
    );
    let rows = Expected::read(pool).await.unwrap();
    assert!(
        rows == history.expected,
        "the rows are not the history's: {}",
        rows.difference(&history.expected)
    );
    truncate(pool).await;
    Reconcile {
        rate: n as f64 / elapsed,
        jobs: n,
        deadlocks,
        settings: described,
    }
}

/// Deadlocks Postgres counted in this database so far.
pub async fn deadlocks(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select deadlocks from pg_stat_database where datname = current_database()")
        .fetch_one(pool)
        .await
        .unwrap()
}
