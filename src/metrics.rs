//! Prometheus metrics. Counters and histograms are recorded where things happen; the gauges
//! that describe the job table are read from Postgres when `/metrics` is scraped, so every
//! replica reports the same truth.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process")
        })
        .clone()
}

/// Sets the job-table gauges from the database; a failure leaves the previous values.
pub async fn refresh_gauges(pool: &PgPool) {
    let depth = sqlx::query!(r#"select state as "state!", count(*) as "count!" from jobs group by state"#)
        .fetch_all(pool)
        .await;
    if let Ok(rows) = depth {
        for state in crate::queue::STATES {
            let n = rows.iter().find(|r| r.state == state).map_or(0, |r| r.count);
            metrics::gauge!("orgsync_jobs", "state" => state).set(n as f64);
        }
    }
    let oldest = sqlx::query_scalar!(
        r#"select extract(epoch from now() - min(run_at))::float8 from jobs where state = 'available' and run_at <= now()"#
    )
    .fetch_one(pool)
    .await;
    if let Ok(age) = oldest {
        metrics::gauge!("orgsync_oldest_pending_job_age_seconds").set(age.unwrap_or(0.0).max(0.0));
    }
    let last_success = sqlx::query_scalar!(
        r#"select extract(epoch from max(finished_at))::float8 from resync_runs where outcome = 'succeeded' and not dry_run"#
    )
    .fetch_one(pool)
    .await;
    if let Ok(Some(t)) = last_success {
        metrics::gauge!("orgsync_resync_last_success_timestamp_seconds").set(t);
    }
}
