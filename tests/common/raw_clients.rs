//! Raw TCP clients for the slow-client tests: connections that stall, and what the server did
//! with them; and the HTTP connection counters read from `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::TestApp;

/// Added to every deadline before a connection still open counts as a failure.
pub const SLACK: Duration = Duration::from_secs(5);

/// A request head cut off in the middle of a header line.
pub const HALF_HEAD: &[u8] = b"POST /webhooks/clerk HTTP/1.1\r\nhost: orgsync\r\ncontent-type: appl";
/// A complete head announcing a body (under the receiver's 64 KiB limit) of which one byte comes.
pub const STALLED_BODY: &[u8] = b"POST /webhooks/clerk HTTP/1.1\r\nhost: orgsync\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{";
pub const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: orgsync\r\n\r\n";

/// Opens a connection and writes `bytes` on it.
pub async fn open(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(bytes).await.expect("writes");
    s
}

/// Reads until the server closes the connection (end of stream or reset) and returns what it
/// sent; panics if it is still open at `deadline`.
pub async fn closed_by(mut s: TcpStream, deadline: Instant, what: &str) -> String {
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

/// True when the server has closed `s` (or sent something on it); false when it is silent and
/// open for `wait`.
pub async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(wait, s.read(&mut buf)).await.is_ok()
}

/// Writes `request` (a complete request without body) on `s` and reads its whole response (head
/// and `content-length` body); returns the status line. The connection stays open (kept alive).
pub async fn request_on(s: &mut TcpStream, request: &[u8]) -> String {
    s.write_all(request).await.expect("writes");
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
                return head.lines().next().unwrap().to_owned();
            }
        }
    }
}

/// Sends one keep-alive request (`GET /healthz`: 200 on the admin listener, 404 on the webhook
/// one) and reads its whole response, leaving the connection idle.
pub async fn request_then_idle(addr: SocketAddr) -> TcpStream {
    let mut s = open(addr, b"").await;
    request_on(&mut s, HEALTHZ).await;
    s
}

/// The value of `metric{listener="<listener>"}` scraped from the app's admin listener (0 when
/// absent).
pub async fn connection_counter(app: &TestApp, metric: &str, listener: &str) -> f64 {
    let admin = app.admin_addr.expect("an admin listener");
    let text = app
        .client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{metric}{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}
