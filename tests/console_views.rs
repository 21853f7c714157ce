//! The console's resync page, access explorer and change feed, against the real application,
//! database and the fake Clerk API: a dry run's difference, a real run, a refused mass delete;
//! the answer of `orgsync access`; changes followed live over server-sent events.

mod common;
mod console_support;
mod fake_clerk;
mod resync_support;

use std::time::Duration;

use common::access_events::{permission_data, role};
use common::*;
use console_support::*;
use fake_clerk::FakeClerk;
use orgsync::tokens::Access;
use reqwest::StatusCode;
use resync_support::{live, BASE};
use sqlx::PgPool;

async fn signed_in(app: &TestApp, pool: &PgPool) -> Session {
    Session::signed_in(base(app), &token(pool, "ops", Access::ReadWrite).await).await
}

/// Polls the resync page's live part until the run started there has finished.
async fn finished_run(s: &mut Session) -> String {
    for _ in 0..200 {
        let part = s.page("/console/resync/live").await;
        if !part.contains("Running…") && part.contains("run-state") {
            return part;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the console's resync did not finish");
}

async fn start(s: &mut Session, mode: &str) {
    let csrf = s.get("/console/resync").await.csrf();
    let page = s
        .post("/console/resync/start", &[("csrf", &csrf), ("mode", mode)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_shows_the_difference_a_real_run_applies_it_and_a_mass_delete_is_refused() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let fake = FakeClerk::start().await;
    fake.seed(4, 3, 4, BASE);
    let mut cfg = console_config(false);
    cfg.clerk = Some(fake.clerk_config());
    let app = TestApp::spawn(pool.clone(), cfg).await;
    let mut s = signed_in(&app, pool).await;
    let page = s.page("/console/resync").await;
    assert!(page.contains("No resync has run yet"));

    start(&mut s, "dry").await;
    let part = finished_run(&mut s).await;
    assert!(part.contains("Dry run finished: nothing was written"), "{part}");
    for id in ["org_s0000000", "org_s0000003", "user_s0000002"] {
        assert!(part.contains(id), "{id} would be created: {part}");
    }
    assert!(part.contains("hotels created: 4"), "{part}");
    assert_eq!(live(pool, "hotels").await, 0, "a dry run writes no row");
    let page = s.page("/console/resync").await;
    assert!(
        page.contains("dry run") && page.contains("succeeded"),
        "the run is listed"
    );

    start(&mut s, "real").await;
    let part = finished_run(&mut s).await;
    assert!(part.contains("Resync succeeded"), "{part}");
    assert_eq!(live(pool, "hotels").await, 4);
    assert_eq!(live(pool, "memberships").await, 4);

    for i in 0..3 {
        fake.delete_org(&format!("org_s{i:07}"));
    }
    start(&mut s, "real").await;
    let part = finished_run(&mut s).await;
    assert!(
        part.contains("Refused: refusing to delete 3 of 4 live hotels"),
        "{part}"
    );
    assert!(
        part.contains("--allow-mass-delete"),
        "it says how to go on, as the CLI does"
    );
    assert_eq!(live(pool, "hotels").await, 4, "a refused run writes nothing");
    let id: i64 = sqlx::query_scalar("select id from resync_runs where outcome = 'refused'")
        .fetch_one(pool)
        .await
        .unwrap();
    let run = s.page(&format!("/console/resync/runs/{id}")).await;
    assert!(
        run.contains("refused") && run.contains("refusing to delete 3 of 4"),
        "{run}"
    );
    assert_eq!(s.get("/console/resync/runs/999").await.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn without_a_clerk_key_the_resync_buttons_are_off() {
    let db = TestDb::new().await;
    let app = console_app(&db.pool, false).await;
    let mut s = signed_in(&app, &db.pool).await;
    let page = s.get("/console/resync").await;
    assert!(page.body.contains("CLERK_SECRET_KEY is not set"));
    assert!(page
        .body
        .contains("id=\"resync-dry\" class=\"secondary\" type=\"submit\" disabled"));
    let refused = s
        .post("/console/resync/start", &[("csrf", &page.csrf()), ("mode", "dry")])
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

/// A hotel with a member, a live role granting two permissions, and a removed member.
async fn access_fixture(pool: &PgPool) {
    let perms = vec![
        permission_data("perm_read", "org:bookings:read", 1, 1),
        permission_data("perm_write", "org:bookings:write", 1, 1),
    ];
    for (n, event) in [
        events::organization("organization.created", "org_alpine", "Hotel Alpine", 1, 1, 1),
        events::user(
            "user.created",
            "user_maria",
            "Maria",
            "maria.rossi@example.com",
            1,
            1,
            1,
        ),
        events::user("user.created", "user_luca", "Luca", "luca@example.com", 1, 1, 1),
        role("role.created", "role_manager", "org:manager", perms, 1, 1, 1),
    ]
    .into_iter()
    .enumerate()
    {
        insert_job(pool, &format!("msg_fx{n}"), &event).await;
    }
    drain(pool, &fast_workers(), 20).await;
    for (n, event) in [
        events::membership(
            "organizationMembership.created",
            "orgmem_1",
            "org_alpine",
            "user_maria",
            "org:manager",
            2,
            2,
            2,
        ),
        events::membership(
            "organizationMembership.created",
            "orgmem_2",
            "org_alpine",
            "user_luca",
            "org:manager",
            2,
            2,
            2,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        insert_job(pool, &format!("msg_m{n}"), &event).await;
    }
    drain(pool, &fast_workers(), 20).await;
    let gone = events::membership(
        "organizationMembership.deleted",
        "orgmem_2",
        "org_alpine",
        "user_luca",
        "org:manager",
        2,
        3,
        3,
    );
    insert_job(pool, "msg_gone", &gone).await;
    drain(pool, &fast_workers(), 20).await;
}

#[tokio::test]
async fn the_access_explorer_finds_people_and_hotels_and_answers_like_orgsync_access() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let app = console_app(pool, false).await;
    access_fixture(pool).await;
    let mut s = signed_in(&app, pool).await;

    for q in ["maria", "MARIA.R", "Maria", "user_maria"] {
        let body = s.page(&format!("/console/access?q={q}")).await;
        assert!(body.contains("maria.rossi@example.com"), "{q} finds Maria");
        assert!(!body.contains("luca@example.com"), "{q} finds only Maria");
    }
    for q in ["hotel al", "hotel-alpine", "org_alpine"] {
        let body = s.page(&format!("/console/access?q={}", q.replace(' ', "+"))).await;
        assert!(body.contains("Hotel Alpine"), "{q} finds the hotel");
    }
    let body = s.page("/console/access?q=%25").await;
    assert!(
        body.contains("No user matches") && body.contains("No hotel matches"),
        "% is literal"
    );

    let user_page = s.page("/console/access?user=user_maria").await;
    assert!(user_page.contains("Hotel Alpine") && user_page.contains("explain access"));
    let hotel_page = s.page("/console/access?hotel=org_alpine").await;
    assert!(hotel_page.contains("maria.rossi@example.com") && hotel_page.contains("removed"));

    let q = "/console/access?user=user_maria&hotel=org_alpine&permission=org:bookings:write";
    let body = s.page(q).await;
    let cli = orgsync::ops::check_access(pool, "user_maria", "org_alpine", Some("org:bookings:write"))
        .await
        .unwrap();
    assert_eq!(cli.held, Some(true));
    for g in &cli.grants {
        assert!(body.contains(g.as_str()), "{g} listed");
    }
    assert!(body.contains("org:manager"), "the role");
    assert!(body.contains("role_manager"), "the role the permissions come from");
    assert!(body.contains("org:bookings:write</span>: held"), "{body}");

    let q = "/console/access?user=user_maria&hotel=org_alpine&permission=org:billing:manage";
    let body = s.page(q).await;
    let cli = orgsync::ops::check_access(pool, "user_maria", "org_alpine", Some("org:billing:manage"))
        .await
        .unwrap();
    assert!(body.contains("not held"));
    for r in &cli.reasons {
        assert!(body.contains(&format!("because {r}")), "{r}");
    }

    let body = s.page("/console/access?user=user_luca&hotel=org_alpine").await;
    let cli = orgsync::ops::check_access(pool, "user_luca", "org_alpine", None)
        .await
        .unwrap();
    assert!(!cli.reasons.is_empty());
    for r in &cli.reasons {
        assert!(body.contains(&format!("because {r}")), "{r}");
    }
    let body = s.page("/console/access?user=user_nobody&hotel=org_alpine").await;
    assert!(body.contains("No membership of this user in this hotel"));

    // The hotel's role set does not list Maria's role: the explorer says so, as the CLI does.
    sqlx::raw_sql(
        "insert into role_sets (id, key, name, created_at, updated_at, clerk_version)
           values ('rs_basic', 'role_set:basic', 'Basic staff', now(), now(), 1);
         insert into role_set_roles (role_set_id, role_key, role_id) values ('rs_basic', 'org:member', 'role_member');
         update hotels set role_set_key = 'role_set:basic' where id = 'org_alpine';",
    )
    .execute(pool)
    .await
    .unwrap();
    let body = s.page("/console/access?user=user_maria&hotel=org_alpine").await;
    let cli = orgsync::ops::check_access(pool, "user_maria", "org_alpine", None)
        .await
        .unwrap();
    assert!(!cli.notes.is_empty(), "{cli:?}");
    assert!(
        body.contains("role_set:basic") && body.contains("does not list this role"),
        "{body}"
    );
    assert!(
        cli.notes[0].starts_with("role org:manager is not in the hotel"),
        "{:?}",
        cli.notes
    );
    assert!(
        body.contains("note: role org:manager is not in the hotel"),
        "the CLI's note in {body}"
    );
    app.stop().await;
}

/// Reads server-sent events from `response` until one carries `needle`; returns what was read.
async fn read_events_until(response: &mut reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("the event arrives in time")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn the_change_feed_is_filtered_by_entity_and_followed_live() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let app = console_app(pool, true).await;
    let mut s = signed_in(&app, pool).await;
    let org = events::organization("organization.created", "org_feed1", "Feed One", 1, 1, 1);
    assert!(app.deliver("msg_feed1", &org.to_string()).await.status().is_success());
    wait_until(
        pool,
        "select exists (select 1 from changes where entity_id = 'org_feed1')",
        Duration::from_secs(10),
    )
    .await;

    let body = s.page("/console/changes").await;
    assert!(body.contains("org_feed1"));
    let users_only = s.page("/console/changes?entity=user").await;
    assert!(!users_only.contains("org_feed1"), "filtered by entity");
    assert_eq!(
        s.get("/console/changes?entity=planet").await.status,
        StatusCode::BAD_REQUEST
    );

    // Follow from the newest change: a change committed later arrives on the stream.
    let last = orgsync::changes::last_id(pool).await.unwrap();
    let cookie = format!("orgsync_console={}", s.cookies["orgsync_console"]);
    let mut stream = s
        .http
        .get(format!("{}/console/changes/stream?after={last}", s.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let org2 = events::organization("organization.created", "org_feed2", "Feed Two", 1, 1, 1);
    assert!(app.deliver("msg_feed2", &org2.to_string()).await.status().is_success());
    let seen = read_events_until(&mut stream, "org_feed2").await;
    assert!(seen.contains("event: change"), "{seen}");
    assert!(!seen.contains("org_feed1"), "only changes after the cursor");
    drop(stream);

    // A browser that reconnects sends Last-Event-ID and misses nothing.
    let mut resumed = s
        .http
        .get(format!("{}/console/changes/stream?entity=hotel", s.base))
        .header("cookie", &cookie)
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    let seen = read_events_until(&mut resumed, "org_feed2").await;
    assert!(!seen.contains("org_feed1"));
    drop(resumed);

    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/console/changes/stream", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        anonymous.status(),
        StatusCode::SEE_OTHER,
        "the stream needs a session too"
    );
    app.stop().await;
}
