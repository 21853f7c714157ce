//! Who may use the write path, and how: bearer tokens (401/403), the real `orgsync serve`
//! binary with its API listener (tokens never in its log), the refusal to expose the API without
//! any token, and the `orgsync hotels|invite|members` commands.

mod common;
mod fake_clerk;
mod write_support;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use fake_clerk::{FakeClerk, KEY};
use orgsync::tokens::{self, Access, TokenName};
use serde_json::{json, Value};
use write_support::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_request_needs_a_live_token_and_writes_a_read_write_one() {
    let db = TestDb::new().await;
    let w = WriteApp::start(db.pool.clone()).await;
    let reader = tokens::create(&db.pool, &TokenName::parse("dashboard").unwrap(), Access::ReadOnly)
        .await
        .unwrap()
        .token;
    let revoked = tokens::create(&db.pool, &TokenName::parse("old").unwrap(), Access::ReadWrite)
        .await
        .unwrap()
        .token;
    tokens::revoke(&db.pool, &TokenName::parse("old").unwrap())
        .await
        .unwrap();
    let hotel = w.create_hotel("Hotel Alpine").await;
    let path = format!("/v1/hotels/{}", hotel["id"].as_str().unwrap());
    let body = json!({"name": "Hotel B", "created_by": "user_maria"});

    let send = |token: Option<String>, method: &str, path: &str| {
        let mut req = w.http.request(method.parse().unwrap(), w.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if method == "POST" {
            req = req.json(&body);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let sent = w.fake.log().len();
    for token in [
        None,
        Some("osk_000000000000_nope".to_owned()),
        Some(revoked.clone()),
        Some("Basic x".into()),
    ] {
        let (status, answer) = send(token.clone(), "POST", "/v1/hotels").await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(answer["error"]["code"], "unauthorized");
        assert_eq!(send(token, "GET", &path).await.0, 401);
    }
    assert_eq!(
        send(None, "GET", "/v1/no/such/route").await.0,
        401,
        "even unknown routes"
    );
    let (status, answer) = send(Some(reader.clone()), "POST", "/v1/hotels").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("read_only_token"))
    );
    assert_eq!(send(Some(reader.clone()), "DELETE", &path).await.0, 403);
    assert_eq!(send(Some(reader), "GET", &path).await.0, 200, "a read-only token reads");
    assert_eq!(w.fake.log().len(), sent, "nothing refused reached Clerk");
    w.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_to_serve_beyond_loopback_without_any_token() {
    let db = TestDb::new().await;
    let fake = FakeClerk::start().await;
    let mut cfg = write_config(&fake);
    cfg.api_listen = Some("0.0.0.0:0".parse().unwrap());
    let err = orgsync::app::Application::build_with_pool(cfg.clone(), db.pool.clone())
        .await
        .err()
        .expect("no token: refused");
    assert!(err.to_string().contains("orgsync tokens create"), "{err:#}");
    // Loopback needs none, and with a token any address is fine.
    let mut local = cfg.clone();
    local.api_listen = Some("127.0.0.1:0".parse().unwrap());
    assert!(orgsync::app::Application::build_with_pool(local, db.pool.clone())
        .await
        .is_ok());
    tokens::create(&db.pool, &TokenName::parse("app").unwrap(), Access::ReadOnly)
        .await
        .unwrap();
    let app = orgsync::app::Application::build_with_pool(cfg, db.pool.clone())
        .await
        .unwrap();
    assert!(app.api_port().is_some());
    // Without a Clerk key there is no API at all.
    let mut no_clerk = write_config(&fake);
    no_clerk.clerk = None;
    let app = orgsync::app::Application::build_with_pool(no_clerk, db.pool.clone())
        .await
        .unwrap();
    assert_eq!(app.api_port(), None);
}

/// A free local port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_binary_serves_the_api_and_never_logs_a_token() {
    let db = TestDb::new().await;
    let fake = FakeClerk::start().await;
    put_people(&fake);
    let token = tokens::create(&db.pool, &TokenName::parse("app").unwrap(), Access::ReadWrite)
        .await
        .unwrap()
        .token;
    let api_port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgsync"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("CLERK_SECRET_KEY", KEY)
        .env("CLERK_API_URL", fake.url())
        .env("CLERK_WEBHOOK_SECRET", SECRET)
        .env("ORGSYNC_API_LISTEN", format!("127.0.0.1:{api_port}"))
        .env("ORGSYNC_RESYNC_INTERVAL", "off")
        .env("ORGSYNC_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{api_port}{p}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while http.get(url("/v1/access")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the API never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = http
        .post(url("/v1/hotels"))
        .bearer_auth(&token)
        .json(&json!({"name": "Hotel Alpine", "created_by": "user_maria"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let timing = created.headers()["server-timing"].to_str().unwrap().to_owned();
    let clerk_ms: f64 = timing.strip_prefix("clerk;dur=").unwrap().parse().unwrap();
    assert!(clerk_ms > 0.0, "the answer says how long Clerk took: {timing}");
    let hotel: Value = created.json().await.unwrap();
    let rows: i64 = sqlx::query_scalar("select count(*) from memberships where hotel_id = $1")
        .bind(hotel["id"].as_str().unwrap())
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "read your write, from another process");
    let wrong = format!("{}x", &token[..token.len() - 1]);
    let refused = http.get(url("/v1/access")).bearer_auth(&wrong).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("/v1 API"), "the log says the API serves: {text}");
    let secret_part = token.rsplit('_').next().unwrap();
    assert!(!text.contains(secret_part), "a token reached the log");
    assert!(
        !text.contains(&wrong[wrong.len() - 20..]),
        "a presented token reached the log"
    );
    assert!(!text.contains(KEY), "the Clerk key reached the log");
}

/// Runs the built binary with the write path's environment.
async fn cli(db: &TestDb, fake: &FakeClerk, args: &[&str]) -> cli::Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgsync"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("CLERK_SECRET_KEY", KEY)
        .env("CLERK_API_URL", fake.url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    cli::Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_invites_manages_members_and_confirms_deletes() {
    let db = TestDb::new().await;
    let fake = FakeClerk::start().await;
    put_people(&fake);
    let run = cli(
        &db,
        &fake,
        &["hotels", "create", "Hotel Alpine", "--admin", "user_maria", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let hotel: Value = serde_json::from_str(&run.stdout).unwrap();
    let id = hotel["id"].as_str().unwrap().to_owned();
    assert_eq!(hotel["members"][0]["user_id"], "user_maria");
    let live: bool = sqlx::query_scalar("select deleted_at is null from hotels where id = $1")
        .bind(&id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(live, "the row is there when the command returns");

    let run = cli(&db, &fake, &["invite", &id, "ana@example.com", "--role", "org:member"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("pending"), "{run:?}");
    let run = cli(
        &db,
        &fake,
        &["members", "add", &id, "user_tom", "--role", "org:member", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = cli(
        &db,
        &fake,
        &["members", "set-role", &id, "user_tom", "--role", "org:admin"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let role: String = sqlx::query_scalar("select role from memberships where hotel_id = $1 and user_id = 'user_tom'")
        .bind(&id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(role, "org:admin");

    // Deletes: no terminal to confirm on and no --yes → refused, nothing sent.
    let sent = fake.log().len();
    let run = cli(&db, &fake, &["members", "remove", &id, "user_tom"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("--yes"), "{run:?}");
    let run = cli(&db, &fake, &["hotels", "delete", &id]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(fake.log().len(), sent, "nothing reached Clerk");
    let run = cli(&db, &fake, &["members", "remove", &id, "user_tom", "--yes"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = cli(&db, &fake, &["hotels", "delete", &id, "--yes", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let gone: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(gone["deleted_at"].is_string());

    // Clerk's refusal: exit 1 and the API's error body with --json.
    let run = cli(
        &db,
        &fake,
        &["members", "add", &id, "user_tom", "--role", "org:member", "--json"],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    let err: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(err["error"]["code"], "not_found", "{err}");
    // Malformed input never reaches Clerk.
    let sent = fake.log().len();
    let run = cli(&db, &fake, &["hotels", "create", "Hotel B", "--admin", "maria"]).await;
    assert_ne!(run.code, 0);
    let run = cli(&db, &fake, &["invite", &id, "not-an-email", "--role", "org:member"]).await;
    assert_ne!(run.code, 0);
    assert_eq!(fake.log().len(), sent);
}

/// The API listener makes room like the webhook listener (issue 19): filled twice over with
/// connections that never finish their request head, it still answers prompt requests, each
/// on a fresh connection, within 1 s, by closing the connection that has waited longest.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_listener_answers_prompt_requests_through_a_flood_of_stalled_connections() {
    use common::raw_clients::{connection_counter, open};
    orgsync::http::descriptors::raise_descriptor_limit();
    let db = TestDb::new().await;
    let cap = 32;
    let w = WriteApp::start_with(db.pool.clone(), FakeClerk::start().await, |c| {
        c.http = orgsync::http::server::HttpLimits {
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            max_connections: cap,
        };
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let hotel = w.create_hotel("Hotel Alpine").await;
    let path = format!("/v1/hotels/{}", hotel["id"].as_str().unwrap());

    let mut stalled = Vec::new();
    for _ in 0..2 * cap {
        stalled.push(open(w.api, b"GET /v1/hotels HTTP/1.1\r\nhost: orgsync\r\nauthoriz").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let prompt = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for i in 0..20 {
        let resp = prompt
            .get(w.url(&path))
            .bearer_auth(&w.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} was not answered within 1 s: {e:?}"));
        assert_eq!(resp.status(), 200, "request {i}");
    }
    let evicted = connection_counter(&w.app, "orgsync_http_connections_evicted_total", "api").await;
    assert!(
        evicted >= 20.0,
        "each prompt request took a stalled one's place ({evicted})"
    );
    drop(stalled);
    w.app.stop().await;
}

async fn holds(db: &TestDb, user: &str, permission: &str) -> bool {
    sqlx::query_scalar("select exists (select 1 from member_permissions where user_id = $1 and permission = $2)")
        .bind(user)
        .bind(permission)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn json_of(run: &cli::Run) -> Value {
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_administers_roles_and_permissions_with_the_view_right_when_it_returns() {
    let db = TestDb::new().await;
    let fake = FakeClerk::start().await;
    put_people(&fake);
    let perm = json_of(
        &cli(
            &db,
            &fake,
            &[
                "permissions",
                "create",
                "org:bookings:read",
                "--name",
                "Read bookings",
                "--json",
            ],
        )
        .await,
    );
    let role = json_of(
        &cli(
            &db,
            &fake,
            &["roles", "create", "org:night", "--name", "Night audit", "--json"],
        )
        .await,
    );
    let hotel = json_of(
        &cli(
            &db,
            &fake,
            &["hotels", "create", "Hotel Alpine", "--admin", "user_maria", "--json"],
        )
        .await,
    );
    let hotel_id = hotel["id"].as_str().unwrap();
    json_of(
        &cli(
            &db,
            &fake,
            &["members", "add", hotel_id, "user_tom", "--role", "org:night", "--json"],
        )
        .await,
    );
    assert!(!holds(&db, "user_tom", "org:bookings:read").await);

    let (role_id, perm_id) = (role["id"].as_str().unwrap(), perm["id"].as_str().unwrap());
    let granted = json_of(&cli(&db, &fake, &["roles", "grant", role_id, perm_id, "--json"]).await);
    assert_eq!(granted["permissions"], json!(["org:bookings:read"]), "{granted}");
    assert!(
        holds(&db, "user_tom", "org:bookings:read").await,
        "held when the command returns"
    );
    json_of(&cli(&db, &fake, &["roles", "revoke", role_id, perm_id, "--json"]).await);
    assert!(
        !holds(&db, "user_tom", "org:bookings:read").await,
        "gone when the command returns"
    );

    // A delete needs the id typed or --yes; without a terminal nothing reaches Clerk.
    let sent = fake.log().len();
    let run = cli(&db, &fake, &["permissions", "delete", perm_id]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(fake.log().len(), sent, "nothing reached Clerk");
    let deleted = json_of(&cli(&db, &fake, &["permissions", "delete", perm_id, "--yes", "--json"]).await);
    assert!(deleted["deleted_at"].is_string(), "{deleted}");
}
