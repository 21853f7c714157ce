//! Slow and stalled clients cannot hold the process's sockets: a connection that does not
//! finish its request head (or idles after a response) is closed within the header deadline, a
//! request whose body stalls is answered 408 and closed within the request deadline, both on the
//! webhook and the admin listener; beyond the connection cap new connections are answered 503
//! and counted; and signed deliveries are acknowledged all the while.
//!
//! The deadlines here are short so the tests are quick; the closes are awaited with generous
//! slack (they test that a close happens, not how fast).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use orgsync::http::server::HttpLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Added to every deadline before a connection still open counts as a failure.
const SLACK: Duration = Duration::from_secs(5);

/// A request head cut off in the middle of a header line.
const HALF_HEAD: &[u8] = b"POST /webhooks/clerk HTTP/1.1\r\nhost: orgsync\r\ncontent-type: appl";
/// A complete head announcing a body (under the receiver's 64 KiB limit) of which one byte comes.
const STALLED_BODY: &[u8] = b"POST /webhooks/clerk HTTP/1.1\r\nhost: orgsync\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{";
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: orgsync\r\n\r\n";

fn limits(header: Duration, request: Duration, max_connections: usize) -> HttpLimits {
    HttpLimits {
        header_timeout: header,
        request_timeout: request,
        max_connections,
    }
}

/// The receiver with `limits`, and its probes and metrics on a separate admin listener.
async fn app_with(pool: sqlx::PgPool, limits: HttpLimits) -> TestApp {
    let mut cfg = config(Some(SECRET), false);
    cfg.http = limits;
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    TestApp::spawn(pool, cfg).await
}

/// Opens a connection and writes `bytes` on it.
async fn open(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(bytes).await.expect("writes");
    s
}

/// Reads until the server closes the connection (end of stream or reset) and returns what it
/// sent; panics if it is still open at `deadline`.
async fn closed_by(mut s: TcpStream, deadline: Instant, what: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!(
                "{what}: still open at the deadline; received {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends one keep-alive request (`GET /healthz`: 200 on the admin listener, 404 on the webhook
/// one) and reads its whole response (head and `content-length` body), leaving the connection
/// idle.
async fn request_then_idle(addr: SocketAddr) -> TcpStream {
    let mut s = open(addr, HEALTHZ).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(SLACK, s.read(&mut buf))
            .await
            .expect("the response comes")
            .unwrap();
        assert!(n > 0, "closed before answering: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            assert!(head.starts_with("HTTP/1.1 "), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .expect("content-length")
                .parse()
                .unwrap();
            if body.len() >= len {
                return s;
            }
        }
    }
}

/// The value of `orgsync_http_connections_shed_total{listener="main"}` scraped from `admin`.
async fn shed_count(app: &TestApp) -> f64 {
    let admin = app.admin_addr.unwrap();
    let text = app
        .client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("orgsync_http_connections_shed_total{listener=\"main\"} "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_heads_and_idle_connections_are_closed_within_the_header_timeout_on_both_listeners() {
    let db = TestDb::new().await;
    let header = Duration::from_millis(300);
    // The request deadline is long: only the header deadline can close these in time.
    let app = app_with(db.pool.clone(), limits(header, Duration::from_secs(60), 512)).await;

    for (listener, addr, half_head) in [
        ("webhook", app.addr, HALF_HEAD),
        (
            "admin",
            app.admin_addr.unwrap(),
            &b"GET /healthz HTTP/1.1\r\nhost: orgs"[..],
        ),
    ] {
        let start = Instant::now();
        let mut stalled = Vec::new();
        for _ in 0..20 {
            stalled.push(("half a head", open(addr, half_head).await));
            stalled.push(("nothing sent", open(addr, b"").await));
        }
        stalled.push(("idle after a keep-alive request", request_then_idle(addr).await));
        let deadline = Instant::now() + header + SLACK;
        for (what, s) in stalled {
            let got = closed_by(s, deadline, &format!("{listener}: {what}")).await;
            assert!(
                got.is_empty(),
                "{listener}: {what}: closed without an answer, got {got:?}"
            );
        }
        eprintln!(
            "{listener}: 41 stalled connections closed {:?} after opening",
            start.elapsed()
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_or_dripping_body_is_answered_408_and_closed_within_the_request_timeout() {
    let db = TestDb::new().await;
    let request = Duration::from_millis(500);
    // The header deadline is long: only the request deadline can close these in time.
    let app = app_with(db.pool.clone(), limits(Duration::from_secs(60), request, 512)).await;

    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(open(app.addr, STALLED_BODY).await);
    }
    // A client sending a byte every 100 ms never stalls for long, yet is still cut off: the
    // deadline covers the whole body, not the gap between bytes.
    let mut drip = open(app.addr, STALLED_BODY).await;
    let dripping = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if drip.write_all(b" ").await.is_err() {
                break;
            }
        }
        drip
    });

    let deadline = Instant::now() + request + SLACK;
    for s in stalled {
        let got = closed_by(s, deadline, "stalled body").await;
        assert!(got.starts_with("HTTP/1.1 408"), "stalled body answered {got:?}");
    }
    let drip = tokio::time::timeout_at(deadline, dripping)
        .await
        .expect("the server stops the drip by closing")
        .unwrap();
    let got = closed_by(drip, deadline, "dripping body").await;
    assert!(got.starts_with("HTTP/1.1 408"), "dripping body answered {got:?}");
    assert_eq!(job_count(&app.pool).await, 0, "nothing of a cut-off body is stored");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_are_acknowledged_while_hundreds_of_stalled_connections_are_held() {
    let db = TestDb::new().await;
    let deadline_each = Duration::from_secs(3);
    let app = app_with(db.pool.clone(), limits(deadline_each, deadline_each, 512)).await;

    let mut stalled = Vec::new();
    for i in 0..500 {
        let bytes = if i % 5 < 3 { HALF_HEAD } else { STALLED_BODY };
        stalled.push(open(app.addr, bytes).await);
    }
    let body = fixture("organization.created");
    for i in 0..5 {
        let r = app.deliver(&format!("msg_held_{i}"), &body).await;
        assert_eq!(r.status(), 202, "delivery {i} while 500 stalled connections are held");
    }
    assert_eq!(job_count(&app.pool).await, 5);

    let deadline = Instant::now() + deadline_each + SLACK;
    for s in stalled {
        closed_by(s, deadline, "one of the 500 stalled connections").await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_the_connection_cap_new_connections_are_shed_with_503_and_counted() {
    let db = TestDb::new().await;
    let header = Duration::from_secs(5);
    let app = app_with(db.pool.clone(), limits(header, Duration::from_secs(5), 20)).await;
    let body = fixture("organization.created");
    let before = shed_count(&app).await;

    // Twenty silent connections take every place under the cap until the header deadline.
    let start = Instant::now();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(open(app.addr, b"").await);
    }
    // The next ones are answered 503 at once (not closed by the header deadline, which sends
    // nothing), in the order they were accepted.
    for i in 0..5 {
        let s = open(app.addr, b"").await;
        let got = closed_by(s, start + header, &format!("connection {} beyond the cap", 21 + i)).await;
        assert!(got.starts_with("HTTP/1.1 503"), "beyond the cap: {got:?}");
    }
    // A delivery beyond the cap gets the 503, or a reset if its request was already on the wire
    // when the unread connection was closed; either way Svix delivers it again later.
    let refused = app
        .client
        .post(app.url("/webhooks/clerk"))
        .headers(app.signer.sign("msg_shed", now_secs(), body.as_bytes()))
        .body(body.clone())
        .send()
        .await;
    assert!(
        refused.as_ref().map_or(true, |r| r.status() == 503),
        "a delivery beyond the cap is refused: {refused:?}"
    );
    // The admin listener has places of its own: the metric is readable meanwhile.
    assert_eq!(shed_count(&app).await - before, 6.0, "every shed connection is counted");

    // Once the held connections are closed, deliveries are served again.
    let deadline = start + header + SLACK;
    for s in held {
        closed_by(s, deadline, "a connection holding a place").await;
    }
    let r = app.deliver("msg_after", &body).await;
    assert_eq!(r.status(), 202);
    assert_eq!(job_count(&app.pool).await, 1);
    app.stop().await;
}

#[test]
fn the_limits_are_set_from_the_command_line_with_documented_defaults() {
    use clap::Parser;
    use orgsync::cli::{Cli, Command};
    let serve = |args: &[&str]| match Cli::try_parse_from([&["orgsync", "serve"][..], args].concat()) {
        Ok(Cli {
            command: Command::Serve(s),
            ..
        }) => Ok(s.config().http),
        Ok(_) => unreachable!(),
        Err(e) => Err(e.to_string()),
    };
    let defaults = serve(&[]).unwrap();
    assert_eq!(defaults, HttpLimits::default());
    assert_eq!(
        defaults,
        limits(Duration::from_secs(10), Duration::from_secs(30), 512),
        "as documented in the README"
    );
    assert_eq!(
        serve(&[
            "--header-timeout",
            "2s",
            "--request-timeout",
            "1m",
            "--max-connections",
            "7"
        ])
        .unwrap(),
        limits(Duration::from_secs(2), Duration::from_secs(60), 7)
    );
    for zero in [
        &["--header-timeout", "0s"][..],
        &["--request-timeout", "0s"],
        &["--max-connections", "0"],
    ] {
        assert!(serve(zero).is_err(), "{zero:?} is refused");
    }
}
