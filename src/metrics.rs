//! Prometheus metrics, exported with `metrics-exporter-prometheus` at `GET /metrics`.
//!
//! Counters and histograms are recorded where things happen (the receiver, the workers) and
//! describe this process. The gauges that describe the job table and the resync history are
//! read from Postgres when `/metrics` is scraped ([`refresh_gauges`]), so every replica
//! reports the same truth: aggregate those with `max`, not `sum`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `orgsync_webhook_deliveries_total` | counter | `outcome` (accepted, duplicate, skipped, rejected), `reason` (for rejected) |
//! | `orgsync_jobs_processed_total` | counter | `type`, `outcome` (done, skipped, retry, dead) |
//! | `orgsync_job_duration_seconds` | histogram | `type` |
//! | `orgsync_ingest_batch_size` | histogram | |
//! | `orgsync_jobs` | gauge | `state` (available, done, dead, skipped) |
//! | `orgsync_jobs_due` | gauge | |
//! | `orgsync_oldest_pending_job_age_seconds` | gauge | |
//! | `orgsync_last_webhook_received_timestamp_seconds` | gauge | |
//! | `orgsync_resync_runs_total` | counter | `outcome` (succeeded, failed, refused) |
//! | `orgsync_resync_last_success_timestamp_seconds` | gauge | |
//! | `orgsync_changes_pending` | gauge | |
//! | `orgsync_changes_pending_oldest_age_seconds` | gauge | |
//! | `orgsync_changes_sequenced_total` | counter | |
//! | `orgsync_database_up` | gauge | |
//! | `orgsync_http_connections_open` | gauge | `listener` (main, admin) |
//! | `orgsync_http_connections_evicted_total` | counter | `listener` |
//! | `orgsync_http_connections_shed_total` | counter | `listener` |
//! | `orgsync_http_header_timeouts_total` | counter | `listener` |

use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Bucket bounds (seconds) of every `_seconds` histogram: applying one job takes milliseconds;
/// seconds mean lock waits or a struggling database.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Bucket bounds of `orgsync_ingest_batch_size` (deliveries per commit, at most 512 by default).
pub const BATCH_SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How often recorded histogram samples are folded into their buckets. Without this upkeep a
/// process nobody scrapes would keep every sample in memory.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder once (later calls return the same handle), describes the
/// metrics for the `# HELP` lines, and starts the upkeep thread.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                // Per-metric buckets: one global list would render the batch-size histogram
                // in seconds-sized buckets (everything in +Inf).
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full("orgsync_ingest_batch_size".into()), &BATCH_SIZE_BUCKETS)
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process");
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "orgsync_webhook_deliveries_total",
        "Webhook deliveries received, by outcome (accepted, duplicate, skipped, rejected) and rejection reason."
    );
    describe_counter!(
        "orgsync_jobs_processed_total",
        "Job attempts finished by this process, by event type and outcome (done, skipped, retry, dead)."
    );
    describe_histogram!(
        "orgsync_job_duration_seconds",
        Unit::Seconds,
        "Time to apply one job, by event type."
    );
    describe_histogram!(
        "orgsync_ingest_batch_size",
        Unit::Count,
        "Deliveries committed together by the receiver."
    );
    describe_gauge!("orgsync_jobs", Unit::Count, "Jobs in the table, by state.");
    describe_gauge!(
        "orgsync_jobs_due",
        Unit::Count,
        "Available jobs whose run time has passed."
    );
    describe_gauge!(
        "orgsync_oldest_pending_job_age_seconds",
        Unit::Seconds,
        "How long the oldest due job has been due (0 when none is due)."
    );
    describe_gauge!(
        "orgsync_last_webhook_received_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the newest delivery in the job table."
    );
    describe_counter!(
        "orgsync_resync_runs_total",
        "Finished resync runs (dry runs excluded), by outcome (succeeded, failed, refused)."
    );
    describe_gauge!(
        "orgsync_resync_last_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time the last applied resync succeeded."
    );
    describe_histogram!(
        "orgsync_resync_duration_seconds",
        Unit::Seconds,
        "Time a resync run took, listing and writing."
    );
    describe_counter!(
        "orgsync_resync_changes_total",
        "Rows a resync changed, by table (hotels, users, memberships) and action (created, updated, deleted)."
    );
    describe_counter!(
        "orgsync_self_heal_total",
        "Missing hotels fetched from Clerk by the workers, by outcome."
    );
    describe_counter!(
        "orgsync_clerk_requests_total",
        "Clerk Backend API requests, by endpoint and HTTP status (or transport error)."
    );
    describe_histogram!(
        "orgsync_clerk_request_duration_seconds",
        Unit::Seconds,
        "Clerk Backend API request time, by endpoint."
    );
    describe_gauge!(
        "orgsync_http_connections_open",
        Unit::Count,
        "Open HTTP connections, by listener (main, admin)."
    );
    describe_counter!(
        "orgsync_http_connections_evicted_total",
        "Connections closed unanswered to make room for a newcomer on a full listener (the one waiting longest without a complete request), by listener."
    );
    describe_counter!(
        "orgsync_http_connections_shed_total",
        "Newcomers answered 503 and closed unread because every place under the listener's cap held a request being handled, by listener."
    );
    describe_counter!(
        "orgsync_http_header_timeouts_total",
        "Connections closed for not sending a complete request head in time (stalled, or idle keep-alive), by listener."
    );
    describe_gauge!(
        "orgsync_changes_pending",
        Unit::Count,
        "Committed changes not yet readable in the change feed (waiting for a sequencer tick)."
    );
    describe_gauge!(
        "orgsync_changes_pending_oldest_age_seconds",
        Unit::Seconds,
        "How long ago the oldest committed change not yet in the feed was written (0 when none waits)."
    );
    describe_counter!(
        "orgsync_changes_sequenced_total",
        "Changes this process's sequencer made readable in the change feed."
    );
    describe_gauge!(
        "orgsync_database_up",
        "1 when the last scrape could read the job table, 0 when it could not (the job gauges are then stale)."
    );
}

/// Sets the job-table and resync gauges from the database before a scrape is rendered. A
/// failure is not an error of the scrape: `orgsync_database_up` drops to 0 and the other gauges
/// keep their previous values.
pub async fn refresh_gauges(pool: &PgPool) {
    if let Err(e) = try_refresh_gauges(pool).await {
        tracing::debug!(error = %e, "metrics: the job table could not be read");
    }
}

/// As [`refresh_gauges`], saying whether it worked: Ok when the gauges were refreshed, Err
/// when the database could not be read.
pub async fn try_refresh_gauges(pool: &PgPool) -> Result<(), sqlx::Error> {
    let snapshot = match crate::ops::status::snapshot(pool).await {
        Ok(s) => s,
        Err(e) => {
            metrics::gauge!("orgsync_database_up").set(0.0);
            return Err(e);
        }
    };
    metrics::gauge!("orgsync_database_up").set(1.0);
    for (state, n) in &snapshot.jobs {
        metrics::gauge!("orgsync_jobs", "state" => state.clone()).set(*n as f64);
    }
    metrics::gauge!("orgsync_jobs_due").set(snapshot.due as f64);
    metrics::gauge!("orgsync_oldest_pending_job_age_seconds").set(snapshot.oldest_due_age_seconds.unwrap_or(0.0));
    if let Some(t) = snapshot.last_webhook_received_at {
        metrics::gauge!("orgsync_last_webhook_received_timestamp_seconds").set(unix_seconds(t));
    }
    for (outcome, n) in &snapshot.resync_runs {
        // The count of rows in resync_runs only grows; `absolute` keeps the counter monotonic
        // even if rows were ever deleted.
        metrics::counter!("orgsync_resync_runs_total", "outcome" => outcome.clone()).absolute(*n as u64);
    }
    if let Some(t) = snapshot.last_resync_success_at {
        metrics::gauge!("orgsync_resync_last_success_timestamp_seconds").set(unix_seconds(t));
    }
    metrics::gauge!("orgsync_changes_pending").set(snapshot.changes_pending as f64);
    metrics::gauge!("orgsync_changes_pending_oldest_age_seconds")
        .set(snapshot.oldest_pending_change_age_seconds.unwrap_or(0.0));
    Ok(())
}

fn unix_seconds(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}
