//! Ingest: signed Clerk webhooks accepted by the real `orgsync serve` (receiver only) over
//! loopback from [`CONCURRENCY`] keep-alive connections in a closed loop (rate, acknowledgement
//! latency, the receiver's CPU per delivery), then the p99 latency at a fixed offered load of
//! [`FIXED_RATE`] requests/s, and the receiver's peak RSS over both.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::deliver::Poster;
use crate::history::fixture;
use crate::measure::{cpu_seconds, ms, percentile, rss_kib};
use crate::serve::{Serve, SECRET};
use crate::{Row, CONCURRENCY};

/// The offered load of the open-loop latency measurement.
pub const FIXED_RATE: u64 = 1_000;

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

/// Runs the phase for `phase` (each of the closed and the open loop) and returns its rows.
pub async fn run(db_url: &str, phase: Duration, baseline: f64) -> Vec<Row> {
    let batchers = std::env::var("ORGSYNC_INGEST_BATCHERS").unwrap_or_else(|_| "4".into());
    let serve = Serve::start(db_url, &["--no-worker"], &[("ORGSYNC_INGEST_BATCHERS", batchers)]).await;
    let pid = serve.pid;
    let poster = Arc::new(Poster::new(serve.addr, SECRET));
    let bodies = Arc::new(webhook_bodies(4096));

    // RSS sampling of the receiver, for the whole ingest phase.
    let peak = Arc::new(AtomicU64::new(0));
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

    let send = move |id: String, body_index: usize| {
        let (poster, bodies) = (poster.clone(), bodies.clone());
        async move {
            let started = Instant::now();
            let body = &bodies[body_index % bodies.len()];
            let ok = matches!(poster.deliver(&id, body).await, Ok(status) if (200..300).contains(&status));
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
    serve.stop().await;
    rows(
        &Ingest {
            rate,
            orgsync_cpu_us: orgsync,
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            fixed_p99: percentile(&fixed, 0.99),
            fixed_rate: total as f64 / sent_in,
            fixed_errors,
            peak_rss_kib,
        },
        baseline,
    )
}

fn rows(ingest: &Ingest, baseline: f64) -> Vec<Row> {
    vec![
        Row::new(
            "ingest: signed webhooks/s (64 conns)",
            format!("{:.0}/s", ingest.rate),
            format!("{:.2}×", ingest.rate / baseline),
            "≥ 2.0× baseline",
        ),
        Row::new(
            "ingest: receiver CPU per delivery",
            format!("{:.1} µs", ingest.orgsync_cpu_us),
            "",
            "≤ 20 µs",
        ),
        Row::new(
            "ingest: ack latency p50 / p99 (64 conns)",
            format!("{} / {}", ms(ingest.p50), ms(ingest.p99)),
            "",
            "",
        ),
        Row::new(
            format!("ingest: ack latency p99 at {FIXED_RATE} req/s"),
            format!(
                "{} ({:.0} req/s sent, {} errors)",
                ms(ingest.fixed_p99),
                ingest.fixed_rate,
                ingest.fixed_errors
            ),
            "",
            "≤ 25 ms",
        ),
        Row::new(
            "ingest: receiver peak RSS",
            format!("{:.1} MiB", ingest.peak_rss_kib as f64 / 1024.0),
            "",
            "≤ 64 MiB",
        ),
    ]
}
