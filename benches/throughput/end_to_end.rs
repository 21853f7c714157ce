//! End to end: a burst of signed deliveries posted to the real `orgsync serve` with its workers
//! running, timed from the first delivery until the rows equal the history's final state and the
//! change feed shows the burst's last change to a reader.
//!
//! The history ([`History::random_burst`]) holds organizations, users and memberships, their
//! updates and deletes; it is shuffled as a whole, and 10 % of its deliveries are sent twice with
//! the same svix-id (as Svix retries), [`CONCURRENCY`] at a time. Once every delivery is
//! acknowledged, the database is read until its rows are the expected ones and a feed reader
//! (started with the burst: plain SQL woken by LISTEN, [`FeedFollower`]) has read every change
//! committed, through the sequencer of `orgsync serve`; the run fails (the bench exits non-zero) when that does not happen within a
//! generous bound, or when a job dead-letters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sqlx::PgPool;

use crate::deliver::Poster;
use crate::feed_follower::FeedFollower;
use crate::history::{with_duplicates, Expected, History};
use crate::reconcile::deadlocks;
use crate::serve::{Serve, SECRET};
use crate::{truncate, Row, CONCURRENCY};

/// Attempts per delivery before the bench gives up (a 503 under load is retried, as Svix would).
const DELIVERY_ATTEMPTS: usize = 10;

/// The burst this phase and the [`crate::peer`] phase deliver: the same history, the same
/// duplicates, in the same shuffled order.
pub struct Burst {
    pub history: History,
    /// (svix-id, body), in delivery order.
    pub deliveries: Vec<(String, String)>,
    /// Distinct events (the rest of the deliveries are duplicates).
    pub events: usize,
}

impl Burst {
    /// The burst at `scale`: [`History::random_burst`], 10 % of it delivered twice with the same
    /// svix-id, shuffled as a whole (seeded: every call gives the same burst).
    pub fn new(scale: f64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let history = History::random_burst(scale, &mut rng);
        let deliveries: Vec<(String, String)> = history
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("msg_e2e_{i}"), e.to_string()))
            .collect();
        let mut deliveries = with_duplicates(deliveries, 0.10, &mut rng);
        deliveries.shuffle(&mut rng);
        let events = history.events.len();
        Self {
            history,
            deliveries,
            events,
        }
    }
}

/// Posts `deliveries` signed with [`SECRET`] to the receiver at `addr`, [`CONCURRENCY`] at a
/// time over keep-alive connections; a failed or non-2xx delivery is re-sent (with the same
/// svix-id, after a short pause, as Svix would) up to [`DELIVERY_ATTEMPTS`] times, then the
/// bench panics. Returns once every delivery is acknowledged, with the number of re-sends.
pub async fn post_all(addr: SocketAddr, deliveries: Vec<(String, String)>) -> usize {
    let poster = Arc::new(Poster::new(addr, SECRET));
    let retries = Arc::new(AtomicUsize::new(0));
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
    retries.load(Ordering::Relaxed)
}

/// What the phase measured: its table rows, and the seconds from the first delivery until the
/// rows were final and the feed complete (the [`crate::peer`] phase's ratio is to it).
pub struct EndToEnd {
    pub rows: Vec<Row>,
    pub seconds: f64,
}

/// Runs the phase against a fresh `orgsync serve` (its default workers).
pub async fn run(pool: &PgPool, db_url: &str, scale: f64, baseline: f64) -> EndToEnd {
    let Burst {
        history,
        deliveries,
        events,
    } = Burst::new(scale);
    let total = deliveries.len();
    truncate(pool).await;
    let deadlocks_before = deadlocks(pool).await;

    let serve = Serve::start(db_url, &[], &[]).await;
    // A feed reader from the start, as an application would run one.
    let follower = FeedFollower::start(pool).await;
    let started = Instant::now();
    let resent = post_all(serve.addr, deliveries).await;
    let posted = started.elapsed();

    // Every delivery is acknowledged (so durably queued): read the rows until they are right
    // and the follower has read every change committed.
    let bound = Duration::from_secs_f64(60.0 + 60.0 * scale);
    let mut rows_right = None;
    let converged = loop {
        let at = started.elapsed();
        if rows_right.is_none() {
            let (due, dead): (i64, i64) = sqlx::query_as(
                "select count(*) filter (where state = 'available'), count(*) filter (where state = 'dead') from jobs",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            assert_eq!(dead, 0, "a job of the end-to-end burst dead-lettered");
            if due == 0 && Expected::read(pool).await.unwrap() == history.expected {
                rows_right = Some(at);
            }
        }
        if rows_right.is_some() && follower.has_read_all(pool).await {
            break at;
        }
        if at > bound {
            let rows = Expected::read(pool).await.unwrap();
            panic!(
                "end-to-end: the rows are not the history's, or the feed is incomplete ({} of {} changes read), \
                 {:.0} s after the first delivery: {}",
                follower.read(),
                follower.committed(pool).await,
                at.as_secs_f64(),
                rows.difference(&history.expected)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rows_right = rows_right.expect("the loop ends once the rows are right");
    let changes = follower.stop().await;
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
    // How long after its hotel's first change a job that had waited for it ran (the wake-up).
    let (waited, p50, max): (i64, Option<f64>, Option<f64>) = sqlx::query_as(
        "select count(*), percentile_cont(0.5) within group (order by lag), max(lag) from (
           select extract(epoch from j.done_at - (select min(c.at) from changes c
                                                  where c.entity = 'hotel' and c.entity_id = j.entity_key))::float8 as lag
           from jobs j where j.attempts > 1 and j.last_error like 'hotel % does not exist yet') x",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    println!(
        "end-to-end: {waited} jobs that waited for their hotel ran {:.2} s (p50) / {:.2} s (max) after its first change",
        p50.unwrap_or(0.0),
        max.unwrap_or(0.0)
    );
    for (reason, n, most) in reasons {
        println!("end-to-end: {n} jobs retried (up to {most} attempts), last error: {reason}");
    }
    truncate(pool).await;
    let (posted_s, converged_s) = (posted.as_secs_f64(), converged.as_secs_f64());
    println!(
        "end-to-end: {total} deliveries ({events} events, {} duplicates) acknowledged in {posted_s:.2} s \
         ({:.0}/s, {resent} re-sent after an error); rows equal the history's final state {:.2} s \
         after the first delivery, the feed complete ({changes} changes read by a feed reader) at \
         {converged_s:.2} s; {retried} jobs needed more than one attempt, {deadlocks} deadlocks",
        total - events,
        total as f64 / posted_s,
        rows_right.as_secs_f64(),
    );
    let rate = total as f64 / converged_s;
    let rows = vec![
        Row::new(
            format!("end-to-end: {total} deliveries (shuffled, 10% duplicates) until the rows are final and the feed complete"),
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
    ];
    EndToEnd {
        rows,
        seconds: converged_s,
    }
}
