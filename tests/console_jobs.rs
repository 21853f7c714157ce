//! The console's overview, jobs pages and replay, against the real application and database:
//! the same verdict as `orgsync status`, the CLI's selectors and keyset paging, a job with its
//! attempts, errors and a redacted payload, and replays through `orgsync replay`'s function.

mod common;
mod console_support;

use std::time::Duration;

use common::cli::{seed_job, state_of};
use common::*;
use console_support::*;
use orgsync::ops::jobs::{JobFilter, Selection};
use orgsync::tokens::Access;
use reqwest::StatusCode;
use sqlx::PgPool;

async fn signed_in(app: &TestApp, pool: &PgPool) -> Session {
    Session::signed_in(base(app), &token(pool, "ops", Access::ReadWrite).await).await
}

#[tokio::test]
async fn the_overview_gives_the_verdict_of_orgsync_status_without_counting_every_job() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let app = console_app(pool, false).await;
    let mut s = signed_in(&app, pool).await;

    let healthy = s.page("/console/").await;
    assert!(healthy.contains("Healthy"), "{healthy}");

    for i in 0..3 {
        seed_job(
            pool,
            &format!("msg_d{i}"),
            "organizationMembership.created",
            "dead",
            "2 hours",
        )
        .await;
    }
    for i in 0..20 {
        seed_job(pool, &format!("msg_ok{i}"), "user.created", "done", "3 hours").await;
    }
    // Due for half an hour: beyond the default 10 minutes.
    seed_job(pool, "msg_late", "organization.created", "available", "30 minutes").await;
    sqlx::query(
        "insert into resync_runs (started_at, finished_at, outcome, counts, error)
         values (now() - interval '1 hour', now() - interval '59 minutes', 'failed',
                 '{\"hotels\": {\"created\": 4, \"updated\": 2, \"deleted\": 0}}', 'listing organizations failed: 503')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("analyze jobs").execute(pool).await.unwrap();

    let status = orgsync::ops::gather_status(pool, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(status.problems.len(), 3, "{:?}", status.problems);
    let overview = orgsync::console::overview::gather(pool, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        overview.status.problems, status.problems,
        "the same verdict, word for word"
    );
    assert_eq!(overview.status.queue.dead(), 3);
    assert_eq!(overview.status.queue.due, status.queue.due);
    assert_eq!(
        overview.status.queue.last_webhook_received_at,
        status.queue.last_webhook_received_at
    );
    assert_eq!(overview.status.last_resync, status.last_resync);
    let done = overview.status.queue.jobs["done"];
    assert!(
        (15..=25).contains(&done),
        "the estimate of done jobs is near 20: {done}"
    );

    for body in [s.page("/console/").await, s.page("/console/overview/live").await] {
        assert!(body.contains("Needs attention"));
        for p in &status.problems {
            assert!(body.contains(&p.replace('&', "&amp;")), "{p} in the page");
        }
        assert!(body.contains("organizationMembership.created"), "jobs by type");
        assert!(body.contains("oldest due for 30m"), "{body}");
        assert!(body.contains("hotels +4 ~2 −0"), "the last resync's counts");
        assert!(body.contains("planner estimates"), "estimates are said to be estimates");
    }
    let page = s.page("/console/").await;
    assert!(
        page.contains("data-refresh-url=\"/console/overview/live\""),
        "the overview refreshes itself"
    );
    app.stop().await;
}

/// `n` jobs of one entity and type, received a minute apart, oldest first.
async fn seed_many(pool: &PgPool, n: usize, prefix: &str, kind: &str, state: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let ago = format!("{} minutes", 10 + n - i);
        ids.push(seed_job(pool, &format!("{prefix}{i:03}"), kind, state, &ago).await);
    }
    ids
}

fn ids_in(body: &str) -> Vec<i64> {
    body.match_indices("data-job-id=\"")
        .map(|(at, m)| {
            let rest = &body[at + m.len()..];
            rest[..rest.find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

/// Follows the "older" links from `path`, collecting the job ids of every page.
async fn all_pages(s: &mut Session, path: &str) -> (Vec<i64>, usize) {
    let mut ids = Vec::new();
    let mut next = Some(path.to_owned());
    let mut pages = 0;
    while let Some(path) = next {
        let body = s.page(&path).await;
        ids.extend(ids_in(&body));
        pages += 1;
        next = body.find("id=\"older\"").map(|at| {
            let href = &body[at..];
            let start = href.find("href=\"").unwrap() + 6;
            let end = start + href[start..].find('"').unwrap();
            href[start..end].replace("&amp;", "&")
        });
    }
    (ids, pages)
}

#[tokio::test]
async fn the_jobs_list_filters_like_the_cli_and_pages_by_keyset() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let app = console_app(pool, false).await;
    let mut s = signed_in(&app, pool).await;
    let done = seed_many(pool, 70, "msg_u", "user.created", "done").await;
    let dead = seed_many(pool, 3, "msg_m", "organizationMembership.created", "dead").await;
    let hotel = events::organization("organization.updated", "org_filter", "Filtered", 1, 1, 1);
    let about_hotel = insert_job(pool, "msg_filter", &hotel).await;

    // No selector: every job exactly once, newest first, 50 a page.
    let (ids, pages) = all_pages(&mut s, "/console/jobs").await;
    assert_eq!(pages, 2);
    let everything = orgsync::ops::list_jobs(pool, &Selection::default()).await.unwrap();
    let mut expected: Vec<i64> = everything.iter().map(|j| j.id).collect();
    expected.reverse();
    assert_eq!(ids, expected, "newest first, no job twice or missing");
    assert_eq!(ids.len(), 74);

    // Each selector agrees with the CLI's list.
    let cases: Vec<(&str, Selection)> = vec![
        (
            "state=dead",
            Selection::from_filter(JobFilter {
                state: Some("dead".into()),
                ..JobFilter::default()
            }),
        ),
        (
            "type=user.created",
            Selection::from_filter(JobFilter {
                event_type: Some("user.created".into()),
                ..JobFilter::default()
            }),
        ),
        (
            "state=dead&type=organizationMembership.created",
            Selection::from_filter(JobFilter {
                state: Some("dead".into()),
                event_type: Some("organizationMembership.created".into()),
                ..JobFilter::default()
            }),
        ),
        (
            "since=45m&until=30m",
            Selection::from_filter(JobFilter {
                since: Some(chrono::Utc::now() - chrono::Duration::minutes(45)),
                until: Some(chrono::Utc::now() - chrono::Duration::minutes(30)),
                ..JobFilter::default()
            }),
        ),
        (
            "event_id=msg_u007",
            Selection {
                event_id: Some("msg_u007".into()),
                ..Selection::default()
            },
        ),
        (
            "entity_id=org_filter",
            Selection::from_filter(JobFilter {
                entity_id: Some("org_filter".into()),
                ..JobFilter::default()
            }),
        ),
    ];
    for (query, selection) in cases {
        let (ids, _) = all_pages(&mut s, &format!("/console/jobs?{query}")).await;
        let mut cli: Vec<i64> = orgsync::ops::list_jobs(pool, &selection)
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        cli.reverse();
        assert_eq!(ids, cli, "{query}");
        assert!(!ids.is_empty(), "{query} matches something");
    }
    let (ids, _) = all_pages(&mut s, "/console/jobs?entity_id=org_filter").await;
    assert_eq!(ids, vec![about_hotel]);
    let (ids, _) = all_pages(&mut s, "/console/jobs?state=dead").await;
    assert_eq!(ids, dead.iter().rev().copied().collect::<Vec<_>>());
    let body = s.page("/console/jobs?state=dead").await;
    assert!(
        body.contains("id=\"replay-matching\""),
        "dead jobs offer a replay of the selection"
    );
    // 70 done jobs span two pages of the keyset; every one is reached.
    let (ids, _) = all_pages(&mut s, "/console/jobs?state=done").await;
    for d in &done {
        assert!(ids.contains(d), "done job {d} is listed");
    }

    for bad in ["state=failed", "since=soon", "before=junk", "since=1h&until=2h"] {
        let page = s.get(&format!("/console/jobs?{bad}")).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_job_page_shows_every_attempt_and_error_and_the_payload_without_secrets() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let app = console_app(pool, false).await;
    let mut s = signed_in(&app, pool).await;
    let mut user = events::user("user.created", "user_redact", "Maria", "maria@example.com", 1, 1, 1);
    user["data"]["private_metadata"] = serde_json::json!({"stripe": "cus_very_private"});
    user["data"]["unsafe_metadata"] = serde_json::json!({"note": "typed_by_the_user"});
    let id = insert_job(pool, "msg_redact", &user).await;
    let errors = serde_json::json!([
        {"attempt": 1, "at": "2026-12-01T10:00:00Z", "error": "database unavailable: first"},
        {"attempt": 2, "at": "2026-12-01T10:00:05Z", "error": "database unavailable: second"},
        {"replayed_at": "2026-12-01T11:00:00Z", "previous_state": "dead", "previous_attempts": 2},
        {"attempt": 1, "at": "2026-12-01T11:00:01Z", "error": "database unavailable: third"},
    ]);
    sqlx::query("update jobs set state = 'dead', attempts = 1, errors = $2, last_error = 'database unavailable: third' where id = $1")
        .bind(id)
        .bind(&errors)
        .execute(pool)
        .await
        .unwrap();

    let body = s.page(&format!("/console/jobs/{id}")).await;
    for shown in [
        "database unavailable: first",
        "database unavailable: second",
        "database unavailable: third",
        "replayed (was dead after 2 attempts)",
        "msg_redact",
        "maria@example.com",
        "Maria",
    ] {
        assert!(body.contains(shown), "{shown} on the job page");
    }
    for hidden in ["cus_very_private", "typed_by_the_user"] {
        assert!(!body.contains(hidden), "{hidden} is not shown");
    }
    let unsafe_size = serde_json::to_string(&user["data"]["unsafe_metadata"]).unwrap().len();
    assert!(body.contains(&format!("[hidden: {unsafe_size} bytes]")), "its size is");
    assert!(body.contains("Replay this job"));
    assert_eq!(s.get("/console/jobs/424242").await.status, StatusCode::NOT_FOUND);
    let live = s.page(&format!("/console/jobs/{id}/live")).await;
    assert!(live.contains("database unavailable: third") && !live.contains("<html"));
    app.stop().await;
}

#[tokio::test]
async fn replaying_a_dead_job_runs_it_again_until_done() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let app = console_app(pool, true).await;
    common::cli::wait_for_listener(pool).await;
    let mut s = signed_in(&app, pool).await;
    let id = seed_job(pool, "msg_dead", "organization.created", "dead", "1 hour").await;
    let page = s.get(&format!("/console/jobs/{id}")).await;
    let replayed = s
        .post(&format!("/console/jobs/{id}/replay"), &[("csrf", &page.csrf())])
        .await;
    assert_eq!(replayed.status, StatusCode::SEE_OTHER);
    assert_eq!(replayed.location(), Some(format!("/console/jobs/{id}").as_str()));
    wait_until(
        pool,
        &format!("select state = 'done' from jobs where id = {id}"),
        Duration::from_secs(10),
    )
    .await;
    let body = s.page(&format!("/console/jobs/{id}")).await;
    assert!(body.contains("state-done"));
    assert!(
        body.contains("replayed (was dead after 3 attempts)"),
        "the history tells the replay"
    );
    let hotels: i64 = sqlx::query_scalar("select count(*) from hotels")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(hotels, 1, "the event was applied");
    let missing = s.post("/console/jobs/777777/replay", &[("csrf", &page.csrf())]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn replaying_every_dead_job_of_a_filter_shows_the_count_first() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let app = console_app(pool, false).await;
    let mut s = signed_in(&app, pool).await;
    let chosen = seed_many(pool, 3, "msg_a", "organizationMembership.created", "dead").await;
    let other = seed_many(pool, 2, "msg_b", "user.created", "dead").await;
    let done = seed_job(pool, "msg_done", "organizationMembership.created", "done", "1 hour").await;

    let confirm = s.get("/console/replay?type=organizationMembership.created").await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(
        confirm.body.contains("<strong>3</strong> dead jobs match"),
        "{}",
        confirm.body
    );
    assert_eq!(ids_in(&confirm.body).len(), 3);
    for id in &chosen {
        assert_eq!(state_of(pool, *id).await, "dead", "showing the count changes nothing");
    }
    let wrong_state = s.get("/console/replay?state=done").await;
    assert_eq!(wrong_state.status, StatusCode::BAD_REQUEST);

    let page = s
        .post(
            "/console/replay",
            &[
                ("csrf", &confirm.csrf()),
                ("state", "dead"),
                ("type", "organizationMembership.created"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Replayed 3 jobs"), "{}", page.body);
    for id in &chosen {
        assert_eq!(state_of(pool, *id).await, "available");
    }
    for id in &other {
        assert_eq!(state_of(pool, *id).await, "dead", "another type is left alone");
    }
    assert_eq!(state_of(pool, done).await, "done", "only dead jobs");
    let markers: i64 =
        sqlx::query_scalar("select count(*) from jobs, jsonb_array_elements(errors) e where e ? 'replayed_at'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(markers, 3, "the same replay as `orgsync replay`: a marker per job");
    app.stop().await;
}
