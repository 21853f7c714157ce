//! api: the `/v1` write path of the real `orgsync serve` (receiver, workers and API) against the
//! tests' write-capable fake Clerk running in a child process (this bench binary re-executed,
//! see [`serve_fake_if_asked`]) that answers every request after a fixed 20 ms, like a nearby
//! Clerk region, and sends its webhooks back to the service. [`CONCURRENCY`] clients at once:
//! `POST /v1/hotels` (each with a new admin: create, the creator's memberships, the creator's
//! user: three Clerk calls), then `DELETE /v1/hotels/{id}/members/{user_id}` (one call), each
//! timed end to end by the client, and orgsync's own share of each: the total minus the time
//! orgsync spent waiting for Clerk's answers, which every answer reports
//! (`Server-Timing: clerk;dur=`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::AsyncBufReadExt;

use crate::measure::{ms, percentile};
use crate::serve::{free_port, Serve, SECRET};
use crate::test_fake_clerk::{serve_standalone, Standalone, KEY};
use crate::Row;

/// Concurrent requests.
pub const CONCURRENCY: usize = 50;
/// Requests timed one at a time first.
const SOLO: usize = 50;
/// The fake's answer delay.
const CLERK_LATENCY: Duration = Duration::from_millis(20);
/// Set in the child's environment: `listen,users,webhook_url` (see [`serve_fake_if_asked`]).
const FAKE_ENV: &str = "ORGSYNC_BENCH_FAKE_CLERK";

/// In the child: serves the fake Clerk until killed. In the bench itself: returns at once.
pub async fn serve_fake_if_asked() {
    let Ok(spec) = std::env::var(FAKE_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ',');
    let listen = parts.next().unwrap().parse().unwrap();
    let users: usize = parts.next().unwrap().parse().unwrap();
    let receiver = parts.next().unwrap().to_owned();
    serve_standalone(Standalone {
        listen,
        latency: CLERK_LATENCY,
        users,
        webhook_receiver: Some((receiver, SECRET.to_owned())),
        ..Standalone::default()
    })
    .await
}

/// The fake in a child process; killed when dropped.
pub struct FakeChild {
    _child: tokio::process::Child,
    pub url: String,
}

/// Starts the fake with `users` users (`user_s…`) sending its webhooks to `webhook_url`.
pub async fn start_fake(users: usize, webhook_url: &str) -> FakeChild {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env(FAKE_ENV, format!("127.0.0.1:0,{users},{webhook_url}"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the fake Clerk child starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(stdout).read_line(&mut line).await.unwrap();
    let url = line
        .trim()
        .strip_prefix("fake-clerk listening on ")
        .expect("the fake says where it listens")
        .to_owned();
    FakeChild { _child: child, url }
}

/// The real `orgsync serve` with its API against the fake Clerk in a child process (which
/// sends its webhooks back to it), and a read-write token.
pub struct Rig {
    pub fake: FakeChild,
    pub serve: Serve,
    pub token: String,
    pub api_port: u16,
}

impl Rig {
    /// The fake holds `users` users (`user_s…`); `env` is added to `serve`'s environment.
    pub async fn start(pool: &PgPool, db_url: &str, users: usize, env: &[(&str, String)]) -> Self {
        let port = free_port();
        let api_port = free_port();
        let fake = start_fake(users, &format!("http://127.0.0.1:{port}/webhooks/clerk")).await;
        let name = format!("bench-{api_port}");
        let token = orgsync::tokens::create(
            pool,
            &orgsync::tokens::TokenName::parse(&name).unwrap(),
            orgsync::tokens::Access::ReadWrite,
        )
        .await
        .unwrap()
        .token;
        let mut all = vec![
            ("CLERK_SECRET_KEY", KEY.to_owned()),
            ("CLERK_API_URL", fake.url.clone()),
            ("CLERK_RATE_LIMIT", "1000000".to_owned()),
            ("ORGSYNC_API_LISTEN", format!("127.0.0.1:{api_port}")),
        ];
        all.extend(env.iter().cloned());
        let serve = Serve::start_at(port, db_url, &[], &all).await;
        Self {
            fake,
            serve,
            token,
            api_port,
        }
    }
}

/// One timed request: (end to end, orgsync's own share).
type Timed = (Duration, Duration);

async fn timed(req: reqwest::RequestBuilder, expect: u16) -> (Timed, serde_json::Value) {
    let started = Instant::now();
    let resp = req.send().await.expect("the API answers");
    let status = resp.status().as_u16();
    let clerk_ms: f64 = resp
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("clerk;dur="))
        .and_then(|v| v.parse().ok())
        .expect("every answer reports Clerk's time");
    let body: serde_json::Value = resp.json().await.unwrap();
    let total = started.elapsed();
    assert_eq!(status, expect, "{body}");
    let own = total.saturating_sub(Duration::from_secs_f64(clerk_ms / 1000.0));
    ((total, own), body)
}

fn rows_for(what: &str, at_once: usize, mut samples: Vec<Timed>, seconds: f64) -> Vec<Row> {
    let n = samples.len();
    let mut total: Vec<Duration> = samples.iter().map(|s| s.0).collect();
    samples.sort_by_key(|s| s.1);
    let own: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    total.sort();
    let p99 = percentile(&own, 0.99);
    vec![
        Row::new(
            format!("api: {what}, {n} requests, {at_once} at once, Clerk 20 ms: end to end p50 / p99"),
            format!(
                "{} / {} ({:.0}/s)",
                ms(percentile(&total, 0.5)),
                ms(percentile(&total, 0.99)),
                n as f64 / seconds
            ),
            "",
            "",
        ),
        Row::new(
            format!("api: {what}, {at_once} at once: orgsync's own share p50 / p99"),
            format!("{} / {}", ms(percentile(&own, 0.5)), ms(p99)),
            "",
            format!(
                "p99 ≤ 5 ms{}",
                if p99 <= Duration::from_millis(5) {
                    ""
                } else {
                    " (missed)"
                }
            ),
        ),
    ]
}

pub async fn run(pool: &PgPool, db_url: &str, scale: f64) -> Vec<Row> {
    let n = ((500.0 * scale) as usize).max(CONCURRENCY);
    let Rig {
        fake,
        serve,
        token,
        api_port,
    } = Rig::start(pool, db_url, n + 1, &[("ORGSYNC_DB_POOL_SIZE", "32".to_owned())]).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let url = |p: &str| format!("http://127.0.0.1:{api_port}{p}");
    let user = |i: usize| format!("user_s{i:07}");

    // Warm up connections (and the first-use paths) with requests that are not counted.
    let warm: Vec<_> = futures::stream::iter(0..CONCURRENCY)
        .map(|i| {
            let req = http
                .post(url("/v1/hotels"))
                .bearer_auth(&token)
                .json(&json!({"name": format!("Warm-up {i}"), "created_by": user(n)}));
            timed(req, 201)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    drop(warm);

    // One at a time: orgsync's own share without queueing for the machine's cores (which the
    // fake Clerk, the receiver of its webhooks, Postgres and this client share).
    let started = Instant::now();
    let mut solo_created = Vec::new();
    let mut solo_hotels = Vec::new();
    for i in 0..SOLO {
        let req = http
            .post(url("/v1/hotels"))
            .bearer_auth(&token)
            .json(&json!({"name": format!("Solo Hotel {i}"), "created_by": user(n)}));
        let (t, body) = timed(req, 201).await;
        solo_created.push(t);
        solo_hotels.push(body["id"].as_str().unwrap().to_owned());
    }
    let solo_create_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut solo_removed = Vec::new();
    for hotel in &solo_hotels {
        let req = http
            .delete(url(&format!("/v1/hotels/{hotel}/members/{}", user(n))))
            .bearer_auth(&token);
        solo_removed.push(timed(req, 200).await.0);
    }
    let solo_remove_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let created: Vec<(Timed, serde_json::Value)> = futures::stream::iter(0..n)
        .map(|i| {
            let req = http
                .post(url("/v1/hotels"))
                .bearer_auth(&token)
                .json(&json!({"name": format!("Bench Hotel {i}"), "created_by": user(i)}));
            timed(req, 201)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let create_secs = started.elapsed().as_secs_f64();
    let hotels: Vec<(String, String)> = created
        .iter()
        .map(|(_, b)| {
            (
                b["id"].as_str().unwrap().to_owned(),
                b["members"][0]["user_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let started = Instant::now();
    let removed: Vec<(Timed, serde_json::Value)> = futures::stream::iter(hotels.iter())
        .map(|(hotel, admin)| {
            let req = http
                .delete(url(&format!("/v1/hotels/{hotel}/members/{admin}")))
                .bearer_auth(&token);
            timed(req, 200)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let remove_secs = started.elapsed().as_secs_f64();

    // Read your writes: every removal is in the rows (nothing waits for a webhook).
    let ids: Vec<String> = hotels.iter().map(|h| h.0.clone()).collect();
    let live: i64 =
        sqlx::query_scalar("select count(*) from memberships where hotel_id = any($1) and deleted_at is null")
            .bind(&ids)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(live, 0, "every removed member is removed in the mirror at the answer");
    serve.stop().await;
    drop(fake);
    crate::truncate(pool).await;
    sqlx::query("truncate api_tokens, api_idempotency, invitations cascade")
        .execute(pool)
        .await
        .unwrap();

    let mut rows = rows_for("POST /v1/hotels", 1, solo_created, solo_create_secs);
    rows.extend(rows_for(
        "DELETE /v1/hotels/{id}/members/{user_id}",
        1,
        solo_removed,
        solo_remove_secs,
    ));
    rows.extend(rows_for(
        "POST /v1/hotels",
        CONCURRENCY,
        created.into_iter().map(|c| c.0).collect(),
        create_secs,
    ));
    rows.extend(rows_for(
        "DELETE /v1/hotels/{id}/members/{user_id}",
        CONCURRENCY,
        removed.into_iter().map(|c| c.0).collect(),
        remove_secs,
    ));
    rows
}
