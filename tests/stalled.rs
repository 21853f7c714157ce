//! Slow and stalled clients cannot hold the process's sockets: a connection that does not
//! finish its request head (or idles after a response) is closed within the header deadline, a
//! request whose body stalls is answered 408 and closed within the request deadline, both on the
//! webhook and the admin listener; beyond the connection cap the oldest stalled connections are
//! closed to make room and counted; and signed deliveries are acknowledged all the while.
//! (tests/slowloris.rs: floods and attackers.)
//!
//! The deadlines here are short so the tests are quick; the closes are awaited with generous
//! slack (they test that a close happens, not how fast).

mod common;

use std::time::Duration;

use common::raw_clients::*;
use common::*;
use orgsync::http::server::HttpLimits;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

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
async fn beyond_the_connection_cap_the_oldest_stalled_connections_are_closed_to_make_room_and_counted() {
    let db = TestDb::new().await;
    let header = Duration::from_secs(30);
    let app = app_with(db.pool.clone(), limits(header, Duration::from_secs(30), 20)).await;
    let body = fixture("organization.created");
    let evicted = || connection_counter(&app, "orgsync_http_connections_evicted_total", "main");
    let shed = || connection_counter(&app, "orgsync_http_connections_shed_total", "main");
    let (evicted_before, shed_before) = (evicted().await, shed().await);

    // Twenty silent connections take every place under the cap.
    let start = Instant::now();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(open(app.addr, b"").await);
    }
    // Each newcomer takes the place of the oldest: the first five are closed unanswered at once,
    // long before the header deadline, in the order they opened.
    let mut newcomers = Vec::new();
    for _ in 0..5 {
        newcomers.push(open(app.addr, HALF_HEAD).await);
    }
    let soon = start + Duration::from_secs(10);
    for (i, s) in held.drain(..5).enumerate() {
        let got = closed_by(s, soon, &format!("held connection {i}, evicted for a newcomer")).await;
        assert!(got.is_empty(), "an evicted connection gets no answer: {got:?}");
    }
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            !closed_within(s, Duration::from_millis(20)).await,
            "held connection {} is still open",
            i + 5
        );
    }
    // A delivery beyond the cap is served: it evicts the oldest still held.
    let r = app.deliver("msg_beyond_the_cap", &body).await;
    assert_eq!(r.status(), 202, "a delivery beyond the cap is served");
    assert_eq!(job_count(&app.pool).await, 1);
    closed_by(held.remove(0), soon, "the held connection evicted for the delivery").await;
    // The admin listener has places of its own: the metrics are readable meanwhile.
    assert_eq!(evicted().await - evicted_before, 6.0, "every eviction is counted");
    assert_eq!(shed().await - shed_before, 0.0, "nothing was refused");
    for s in newcomers.iter_mut() {
        assert!(
            !closed_within(s, Duration::from_millis(20)).await,
            "the newcomers are kept"
        );
    }
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
        limits(Duration::from_secs(10), Duration::from_secs(30), 10_000),
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
