//! Process lifecycle: graceful shutdown, retention pruning, and what logs may contain.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::events::*;
use common::*;

const T0: i64 = 1_764_000_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_batch_in_flight_then_exits() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let h = "org_2term00000000000000000001";
    insert_job(
        &pool,
        "h",
        &organization("organization.created", h, "Before", T0, T0, 1),
    )
    .await;
    drain(&pool, &fast_workers(), 5).await;
    insert_job(
        &pool,
        "rename",
        &organization("organization.updated", h, "After", T0, T0 + 1, 1),
    )
    .await;

    let blocker = hold_hotel_row(&pool, h).await;
    let url = test_database_url(&pool).await;
    let mut child = spawn_worker_process(&url, &["--workers", "1", "--poll-interval", "50ms"]);
    wait_for_lock_waiters(&pool, "orgsync", 1).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Still running: it is finishing its batch, which waits for our lock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child.try_wait().unwrap().is_none(), "exited before finishing its batch");
    blocker.commit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        job_state(&pool, "rename").await.0,
        "done",
        "the in-flight job was finished, not abandoned"
    );
    let name: String = sqlx::query_scalar("select name from hotels where id = $1")
        .bind(h)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, "After");
}

#[tokio::test(flavor = "multi_thread")]
async fn done_and_skipped_jobs_are_pruned_after_the_retention_period_only() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    for (id, state, age_days) in [
        ("old-done", "done", 8),
        ("old-skipped", "skipped", 8),
        ("new-done", "done", 1),
        ("old-dead", "dead", 30),
    ] {
        sqlx::query(
            "insert into jobs (event_id, event_type, payload, state, done_at, received_at)
             values ($1, 'user.created', '{}', $2,
                     case when $2 in ('done', 'skipped') then now() - make_interval(days => $3) end,
                     now() - make_interval(days => $3))",
        )
        .bind(id)
        .bind(state)
        .bind(age_days)
        .execute(&pool)
        .await
        .unwrap();
    }
    let pruned = orgsync::queue::runner::prune(&pool, Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    let left: Vec<String> = sqlx::query_scalar("select event_id from jobs order by event_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        vec!["new-done", "old-dead"],
        "dead jobs wait for an operator, whatever their age"
    );
}

/// A `tracing` writer that keeps everything written, for inspection.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// A current-thread runtime: the subscriber below is the *thread's* default, so the service's
// tasks must run on this thread for their logs to be captured (on a multi-thread runtime they
// log elsewhere and the test cannot see them).
#[tokio::test(flavor = "current_thread")]
async fn logs_carry_ids_and_types_but_never_secrets_or_payloads() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_current_span(true)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = TestApp::full(pool.clone()).await;
    let marker = "Very-Private-Hotel-Name-4711";
    let body = organization(
        "organization.created",
        "org_2logs00000000000000000001",
        marker,
        T0,
        T0,
        1,
    )
    .to_string();
    assert!(app.deliver("msg_logged", &body).await.status().is_success());
    // A refused delivery must not echo its body either.
    let forged = body.replace("4711", "4712");
    let headers = app.signer.sign("msg_forged", now_secs(), body.as_bytes());
    let r = app
        .client
        .post(app.url("/webhooks/clerk"))
        .headers(headers)
        .body(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
    wait_until(
        &pool,
        "select count(*) = 1 from jobs where state = 'done'",
        Duration::from_secs(10),
    )
    .await;
    app.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("msg_logged") && logs.contains("organization.created"),
        "ids and types are logged:\n{logs}"
    );
    assert!(
        !logs.contains("Very-Private-Hotel-Name"),
        "a payload leaked into the logs:\n{logs}"
    );
    let secret_body = SECRET.trim_start_matches("whsec_");
    assert!(!logs.contains(secret_body), "the webhook secret leaked into the logs");
}
