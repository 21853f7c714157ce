//! End to end: a burst of signed deliveries posted to the real `orgsync serve` with its workers
//! running, timed from the first delivery until the rows equal the history's final state.
//!
//! The history ([`History::random_burst`]) holds organizations, users and memberships, their
//! updates and deletes; it is shuffled as a whole, and 10 % of its deliveries are sent twice with
//! the same svix-id (as Svix retries), [`CONCURRENCY`] at a time. Once every delivery is
//! acknowledged, the database is read until its rows are the expected ones; the run fails (the
//! bench exits non-zero) when they are not within a generous bound, or when a job dead-letters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sqlx::PgPool;

use crate::deliver::Poster;
use crate::history::{with_duplicates, Expected, History};
use crate::reconcile::deadlocks;
use crate::serve::{Serve, SECRET};
use crate::{truncate, Row, CONCURRENCY};

/// Attempts per delivery before the bench gives up (a 503 under load is retried, as Svix would).
const DELIVERY_ATTEMPTS: usize = 10;

/// Runs the phase against a fresh `orgsync serve` (its default workers) and returns its rows.
pub async fn run(pool: &PgPool, db_url: &str, scale: f64, baseline: f64) -> Vec<Row> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let history = History::random_burst(scale, &mut rng);
    let events = history.events.len();
    let deliveries: Vec<(String, String)> = history
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("msg_e2e_{i}"), e.to_string()))
        .collect();
    let mut deliveries = with_duplicates(deliveries, 0.10, &mut rng);
    deliveries.shuffle(&mut rng);
    let total = deliveries.len();
    truncate(pool).await;
    let deadlocks_before = deadlocks(pool).await;

    let serve = Serve::start(db_url, &[], &[]).await;
    let poster = Arc::new(Poster::new(serve.addr, SECRET));
    let retries = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    futures::stream::iter(deliveries)
        .map(|(id, body)| {
            let (poster, retries) = (poster.clone(), retries.clone());
            async move {
                for attempt in 1..=DELIVERY_ATTEMPTS {
                    match poster.deliver(&id, &body).await {
                        Ok(status) if (200..300).contains(&status) => return,
                        outcome if attempt == DELIVERY_ATTEMPTS => {
                            panic!("delivery {id} failed {DELIVERY_ATTEMPTS} times, last: {outcome:?}")
                        }
                        _ => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
                        }
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .for_each(|()| async {})
        .await;
    let posted = started.elapsed();

    // Every delivery is acknowledged (so durably queued): read the rows until they are right.
    let bound = Duration::from_secs_f64(60.0 + 60.0 * scale);
    let converged = loop {
        let at = started.elapsed();
        let (due, dead): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where state = 'available'), count(*) filter (where state = 'dead') from jobs",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(dead, 0, "a job of the end-to-end burst dead-lettered");
        let rows = if due == 0 {
            Some(Expected::read(pool).await.unwrap())
        } else {
            None
        };
        if rows.as_ref() == Some(&history.expected) {
            break at;
        }
        if at > bound {
            let rows = Expected::read(pool).await.unwrap();
            panic!(
                "end-to-end: the rows are not the history's {:.0} s after the first delivery ({due} jobs due): {}",
                at.as_secs_f64(),
                rows.difference(&history.expected)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    serve.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // statistics are reported when idle
    let deadlocks = deadlocks(pool).await - deadlocks_before;
    let retried: i64 = sqlx::query_scalar("select count(*) from jobs where attempts > 1")
        .fetch_one(pool)
        .await
        .unwrap();
    // Why jobs were retried: the kind of their last error, how many, and their most attempts.
    let reasons: Vec<(String, i64, i32)> = sqlx::query_as(
        "select left(regexp_replace(coalesce(last_error, 'none'), '(org|user)_[A-Za-z0-9]+', '…', 'g'), 70),
                count(*), max(attempts)
         from jobs where attempts > 1 group by 1 order by 2 desc",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (reason, n, most) in reasons {
        println!("end-to-end: {n} jobs retried (up to {most} attempts), last error: {reason}");
    }
    truncate(pool).await;
    let (posted_s, converged_s) = (posted.as_secs_f64(), converged.as_secs_f64());
    println!(
        "end-to-end: {total} deliveries ({events} events, {} duplicates) acknowledged in {posted_s:.2} s \
         ({:.0}/s, {} re-sent after an error); rows equal the history's final state {converged_s:.2} s \
         after the first delivery; {retried} jobs needed more than one attempt, {deadlocks} deadlocks",
        total - events,
        total as f64 / posted_s,
        retries.load(Ordering::Relaxed)
    );
    let rate = total as f64 / converged_s;
    vec![
        Row::new(
            format!("end-to-end: {total} deliveries (shuffled, 10% duplicates) until the rows are final"),
            format!("{converged_s:.2} s = {rate:.0} deliveries/s"),
            format!("{:.2}×", rate / baseline),
            "converges",
        ),
        Row::new(
            "end-to-end: deliveries acknowledged/s (workers running)",
            format!(
                "{:.0}/s in {posted_s:.2} s, {deadlocks} deadlocks",
                total as f64 / posted_s
            ),
            format!("{:.2}×", total as f64 / posted_s / baseline),
            "",
        ),
    ]
}
