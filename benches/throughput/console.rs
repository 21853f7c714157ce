//! Console: each page's server-side render time with a large mirror behind it: 1,000,000 jobs
//! (mostly done, as a week of retention holds), 100,000 memberships of 10,000 hotels and 50,000
//! users, and the change feed those rows produced, generated with `generate_series`. The real
//! application serves the console in this process (admin listener on loopback, a signed-in
//! session); each page is requested 20 times after a warm-up and its median and worst time are
//! reported (loopback HTTP adds a fraction of a millisecond). Target: ≤ 50 ms each.
//!
//! Checked: every page answers 200, and no page scans a big table: the sequential-scan counters
//! of `jobs`, `hotels`, `users`, `memberships` and `changes` do not move while the pages load
//! (every query goes through an index; the overview estimates instead of counting every job).

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::Row;

const JOBS: i64 = 1_000_000;
const HOTELS: i64 = 10_000;
const USERS: i64 = 50_000;
const MEMBERSHIPS: i64 = 100_000;
const DEAD: i64 = 2_000;
const AVAILABLE: i64 = 2_000;
const SAMPLES: usize = 20;
const TARGET_MS: f64 = 50.0;
const BIG_TABLES: &str = "'jobs', 'hotels', 'users', 'memberships', 'changes'";

/// Builds the dataset, serves the console, times every page. Panics when a page fails or a big
/// table is scanned.
pub async fn run(admin: &PgPool, base: &str) -> Vec<Row> {
    let name = "orgsync_bench_console";
    sqlx::query(&format!("drop database if exists {name} with (force)"))
        .execute(admin)
        .await
        .unwrap();
    sqlx::query(&format!("create database {name}"))
        .execute(admin)
        .await
        .unwrap();
    let url = format!("{base}/{name}");
    let schema = orgsync::db::Schema::default();
    let options = orgsync::db::connect_options(&url, &schema).unwrap();
    let pool = orgsync::db::lazy_pool(options, &orgsync::db::PoolSettings::default());
    orgsync::db::prepare(&url, &schema, &pool).await.unwrap();
    let started = Instant::now();
    generate(&pool).await;
    println!("console: dataset generated in {:.1} s", started.elapsed().as_secs_f64());

    let rows = measure(&pool).await;
    pool.close().await;
    sqlx::query(&format!("drop database if exists {name} with (force)"))
        .execute(admin)
        .await
        .unwrap();
    rows
}

async fn generate(pool: &PgPool) {
    let statements = [
        format!(
            "insert into hotels (id, name, slug, created_at, updated_at, clerk_version)
             select 'org_b' || lpad(i::text, 6, '0'), 'Hotel ' || i, 'hotel-' || i, now(), now(), 1
             from generate_series(1, {HOTELS}) i"
        ),
        format!(
            "insert into users (id, email, first_name, last_name, created_at, updated_at, clerk_version)
             select 'user_b' || lpad(i::text, 6, '0'), 'person' || i || '@example.com', 'Person', 'Number' || i,
                    now(), now(), 1
             from generate_series(1, {USERS}) i"
        ),
        format!(
            "insert into memberships (hotel_id, user_id, clerk_membership_id, role, created_at, updated_at, clerk_version)
             select 'org_b' || lpad((m % {HOTELS} + 1)::text, 6, '0'),
                    'user_b' || lpad((((m % {HOTELS}) * 7 + m / {HOTELS}) % {USERS} + 1)::text, 6, '0'),
                    'orgmem_b' || m, case when m < {HOTELS} then 'org:admin' else 'org:member' end, now(), now(), 1
             from generate_series(0, {MEMBERSHIPS} - 1) m"
        ),
        "insert into permissions (id, key, name, created_at, updated_at, clerk_version)
         values ('perm_b1', 'org:bookings:read', 'Read bookings', now(), now(), 1),
                ('perm_b2', 'org:bookings:write', 'Write bookings', now(), now(), 1)"
            .to_owned(),
        "insert into roles (id, key, name, created_at, updated_at, clerk_version)
         values ('role_b1', 'org:admin', 'Admin', now(), now(), 1), ('role_b2', 'org:member', 'Member', now(), now(), 1)"
            .to_owned(),
        "insert into role_permissions (role_id, permission_id)
         values ('role_b1', 'perm_b1'), ('role_b1', 'perm_b2'), ('role_b2', 'perm_b1')"
            .to_owned(),
        // A week of deliveries, newest last: mostly done, some skipped, a few dead and due.
        format!(
            "insert into jobs (event_id, event_type, payload, state, attempts, run_at, last_error, errors,
                               received_at, updated_at, done_at, entity_key)
             select 'msg_b' || i,
                    (array['organizationMembership.created', 'organizationMembership.updated', 'user.updated',
                           'user.created', 'organization.updated', 'session.created'])[i % 6 + 1],
                    ('{{\"object\": \"event\", \"type\": \"user.updated\", \"data\": {{\"id\": \"user_b'
                      || lpad((i % {USERS} + 1)::text, 6, '0') || '\", \"unsafe_metadata\": {{}}}}}}')::json,
                    s.state,
                    case s.state when 'dead' then 20 else 1 end,
                    now() - ({JOBS} - i) * interval '600 ms',
                    case s.state when 'dead' then 'hotel org_b000001 does not exist yet' end,
                    case s.state when 'dead'
                         then '[{{\"attempt\": 20, \"at\": \"2026-12-01T00:00:00Z\", \"error\": \"hotel org_b000001 does not exist yet\"}}]'::jsonb
                         else '[]'::jsonb end,
                    now() - ({JOBS} - i) * interval '600 ms', now(),
                    case when s.state in ('done', 'skipped') then now() - ({JOBS} - i) * interval '600 ms' end,
                    case when i % 2 = 0 then 'org_b' || lpad((i % {HOTELS} + 1)::text, 6, '0')
                         else 'user_b' || lpad((i % {USERS} + 1)::text, 6, '0') end
             from generate_series(1, {JOBS}) i,
                  lateral (select case when i % 500 = 7 then 'dead'
                                       when i > {JOBS} - {AVAILABLE} then 'available'
                                       when i % 6 = 5 then 'skipped'
                                       else 'done' end as state) s"
        ),
        "insert into resync_runs (started_at, finished_at, outcome, counts)
         select now() - i * interval '1 day', now() - i * interval '1 day' + interval '10 s', 'succeeded',
                '{\"hotels\": {\"created\": 0, \"updated\": 3, \"deleted\": 0}}'
         from generate_series(1, 30) i"
            .to_owned(),
        "vacuum analyze".to_owned(),
    ];
    for sql in statements {
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
    // The rows' changes are committed; the sequencer makes them the feed.
    orgsync::changes::sequence_now(pool).await.unwrap();
    let (dead, changes): (i64, i64) =
        sqlx::query_as("select (select count(*) from jobs where state = 'dead'), (select count(*) from changes)")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(dead >= DEAD, "{dead} dead jobs");
    println!("console: {JOBS} jobs ({dead} dead, {AVAILABLE} due), {MEMBERSHIPS} memberships, {changes} changes");
}

/// Sequential scans so far of each big table.
async fn seq_scans(pool: &PgPool) -> Vec<(String, i64)> {
    // Backends report their counters when they go idle; give them that moment.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query_as(&format!(
        "select relname::text, seq_scan from pg_stat_user_tables
         where schemaname = current_schema() and relname in ({BIG_TABLES}) order by relname"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The big tables scanned between `before` and `after`.
fn scanned(before: &[(String, i64)], after: &[(String, i64)]) -> Vec<String> {
    after
        .iter()
        .filter(|(t, n)| before.iter().any(|(b, m)| b == t && n > m))
        .map(|(t, _)| t.clone())
        .collect()
}

async fn measure(pool: &PgPool) -> Vec<Row> {
    let config = orgsync::app::ServeConfig {
        database_url: String::new(),
        schema: orgsync::db::Schema::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        webhook_secrets: Some(crate::serve::SECRET.to_owned()),
        max_body: 1 << 20,
        http: Default::default(),
        receiver: false,
        worker: false,
        pool: orgsync::db::PoolSettings::default(),
        ingest: Default::default(),
        worker_settings: Default::default(),
        clerk: None,
        resync_interval: None,
        self_heal_after: 3,
        mass_delete_threshold: 0.10,
        api_listen: None,
        api: Default::default(),
        feed: Default::default(),
        console: Some(orgsync::console::ConsoleConfig::default()),
    };
    let app = orgsync::app::Application::build_with_pool(config, pool.clone())
        .await
        .unwrap();
    let console = format!("http://127.0.0.1:{}", app.admin_port().unwrap());
    let cancel = CancellationToken::new();
    let server = tokio::spawn(app.run(cancel.clone()));
    let token = orgsync::tokens::create(
        pool,
        &orgsync::tokens::TokenName::parse("bench").unwrap(),
        orgsync::tokens::Access::ReadWrite,
    )
    .await
    .unwrap()
    .token;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = sign_in(&http, &console, &token).await;

    let dead_job: i64 = sqlx::query_scalar("select id from jobs where state = 'dead' order by id desc limit 1")
        .fetch_one(pool)
        .await
        .unwrap();
    let page_two = {
        let body = get(&http, &console, "/console/jobs", &cookie).await;
        let at = body.find("id=\"older\"").expect("a second page");
        let href = &body[at..];
        let start = href.find("href=\"").unwrap() + 6;
        href[start..start + href[start..].find('"').unwrap()].replace("&amp;", "&")
    };
    let pages: Vec<(&str, String)> = vec![
        ("overview", "/console/".into()),
        ("overview (refresh)", "/console/overview/live".into()),
        ("jobs, newest", "/console/jobs".into()),
        ("jobs, page 2", page_two),
        ("jobs, dead", "/console/jobs?state=dead".into()),
        ("jobs, by type", "/console/jobs?type=organization.updated".into()),
        ("jobs, by entity", "/console/jobs?entity_id=org_b000042".into()),
        ("jobs, by event id", "/console/jobs?event_id=msg_b123456".into()),
        (
            "jobs, done in a window",
            "/console/jobs?state=done&since=3days&until=2days".into(),
        ),
        (
            "jobs, type in a window",
            "/console/jobs?type=user.updated&since=5days&until=4days".into(),
        ),
        ("job", format!("/console/jobs/{dead_job}")),
        ("replay: count of dead jobs", "/console/replay?state=dead".into()),
        ("resync", "/console/resync".into()),
        ("access: search", "/console/access?q=person1234".into()),
        ("access: search a hotel", "/console/access?q=hotel+99".into()),
        ("access: a user's hotels", "/console/access?user=user_b001234".into()),
        ("access: a hotel's members", "/console/access?hotel=org_b000042".into()),
        (
            "access: the answer",
            "/console/access?user=user_b000043&hotel=org_b000043&permission=org:bookings:write".into(),
        ),
        ("changes", "/console/changes".into()),
        ("changes, memberships", "/console/changes?entity=membership".into()),
        ("changes, roles", "/console/changes?entity=role".into()),
    ];
    // Warm up (plans cached, pages in the buffer cache), then count the scans from here on.
    for (_, path) in &pages {
        for _ in 0..3 {
            get(&http, &console, path, &cookie).await;
        }
    }
    let mut scans_before = seq_scans(pool).await;
    let mut offenders = Vec::new();
    let mut rows = Vec::new();
    let mut worst = 0.0f64;
    for (what, path) in &pages {
        let mut times = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let t = Instant::now();
            get(&http, &console, path, &cookie).await;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let median = times[SAMPLES / 2];
        let max = times[SAMPLES - 1];
        worst = worst.max(median);
        let scans_after = seq_scans(pool).await;
        let tables = scanned(&scans_before, &scans_after);
        scans_before = scans_after;
        println!("console: {what:<28} median {median:6.1} ms  max {max:6.1} ms  {path}");
        if !tables.is_empty() {
            println!("console: {what} read {tables:?} whole");
            offenders.push(format!("{what}: {tables:?}"));
        }
        rows.push(Row::new(
            format!("console: {what}"),
            format!("{median:.1} ms (max {max:.1})"),
            "",
            format!("≤ {TARGET_MS:.0} ms"),
        ));
    }
    let scans = offenders.len();
    assert_eq!(
        offenders,
        Vec::<String>::new(),
        "console pages scanned one of {BIG_TABLES}"
    );
    rows.push(Row::new(
        "console: sequential scans of the big tables while the pages load",
        format!("{scans}"),
        "",
        "0",
    ));
    println!("console: slowest median {worst:.1} ms; 0 sequential scans of {BIG_TABLES}");
    cancel.cancel();
    let _ = server.await;
    rows
}

async fn sign_in(http: &reqwest::Client, console: &str, token: &str) -> String {
    let form = http.get(format!("{console}/console/login")).send().await.unwrap();
    let login_cookie = form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let body = form.text().await.unwrap();
    let at = body.find("name=\"login_csrf\" value=\"").unwrap() + 25;
    let nonce = &body[at..at + body[at..].find('"').unwrap()];
    let signed = http
        .post(format!("{console}/console/login"))
        .header("cookie", login_cookie)
        .form(&[("token", token), ("login_csrf", nonce)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), reqwest::StatusCode::SEE_OTHER, "signed in");
    signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("orgsync_console="))
        .unwrap()
}

async fn get(http: &reqwest::Client, console: &str, path: &str, cookie: &str) -> String {
    let r = http
        .get(format!("{console}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK, "{path}");
    r.text().await.unwrap()
}
