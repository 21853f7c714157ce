//! The accept loop of both listeners: HTTP/1.1 connections served by hyper under deadlines and a
//! cap, so that slow or stalled clients cannot hold the process's sockets.
//!
//! - A connection must send a complete request head within [`HttpLimits::header_timeout`] of
//!   opening, or of the end of its previous response, else hyper closes it without an answer.
//!   Hyper starts this deadline as soon as a connection waits for a request, so it is also the
//!   idle timeout of kept-alive connections.
//! - From the end of the head, the request (reading its body and handling it) must be answered
//!   within [`HttpLimits::request_timeout`]: beyond it the answer is 408, the handler and the
//!   unread body are dropped, and hyper closes the connection.
//! - At most [`HttpLimits::max_connections`] connections are open at once on a listener. Beyond
//!   it a new connection is answered `503` at once and closed, without reading it, and
//!   `orgsync_http_connections_shed_total` counts it.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

/// The deadlines and the connection cap of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest wait for a complete request head, counted from when the connection opens or its
    /// previous response was sent (so also the keep-alive idle timeout). Default 10 s.
    pub header_timeout: Duration,
    /// Longest time from the end of a request head to its answer, reading the body included;
    /// 408 beyond. Default 30 s.
    pub request_timeout: Duration,
    /// Most connections open at once on the listener; more are answered 503 and closed.
    /// Default 512.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// Most connections open at once on the separate admin listener (probes and scrapes need few);
/// its deadlines are those of the main listener.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// What a connection beyond the cap receives before it is closed.
const SHED_RESPONSE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// How often at most a listener that keeps shedding says so in the log.
const SHED_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` under `limits` until `cancel` fires; then stops accepting, asks
/// every open connection to finish its current request and close, and returns once all have
/// (at most the two deadlines later). `name` labels the metrics (`main` or `admin`).
/// Err only if the listener's address cannot be read; accept errors are logged and retried.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    name: &'static str,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let service = TowerToHyperService::new(router.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    )));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let shed = metrics::counter!("orgsync_http_connections_shed_total", "listener" => name);
    let open = metrics::gauge!("orgsync_http_connections_open", "listener" => name);
    let header_timeouts = metrics::counter!("orgsync_http_header_timeouts_total", "listener" => name);
    let graceful = GracefulShutdown::new();
    let mut shedding = ShedLog::default();

    loop {
        let stream = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_failed(e, &cancel).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shed.increment(1);
            shedding.shed(name, limits.max_connections);
            refuse(stream);
            continue;
        };
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service.clone()));
        let slot = Slot::take(permit, open.clone());
        let header_timeouts = header_timeouts.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    header_timeouts.increment(1);
                }
                tracing::debug!(listener = name, error = %e, "connection closed on an error");
            }
            drop(slot);
        });
    }

    drop(listener);
    tracing::debug!(listener = name, %addr, open = graceful.count(), "stopped accepting; draining connections");
    graceful.shutdown().await;
    Ok(())
}

/// Answers 503 to a connection beyond the cap and closes it. The write never waits: a fresh
/// socket's send buffer is empty, and if it cannot take the bytes the client just sees a close.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(SHED_RESPONSE);
}

/// One open connection: holds its place under the cap and in the open-connections gauge until
/// dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl Slot {
    fn take(permit: OwnedSemaphorePermit, open: metrics::Gauge) -> Self {
        open.increment(1.0);
        Self { _permit: permit, open }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// Warns at the first shed, then at most every [`SHED_WARN_INTERVAL`] with the number shed
/// since (the counter has the exact numbers).
#[derive(Default)]
struct ShedLog {
    last_warned: Option<Instant>,
    since_warned: u64,
}

impl ShedLog {
    fn shed(&mut self, name: &'static str, max_connections: usize) {
        self.since_warned += 1;
        if self.last_warned.is_none_or(|t| t.elapsed() >= SHED_WARN_INTERVAL) {
            tracing::warn!(
                listener = name,
                max_connections,
                shed = self.since_warned,
                "connection limit reached: new connections are answered 503 and closed"
            );
            self.last_warned = Some(Instant::now());
            self.since_warned = 0;
        }
    }
}

/// A failed accept. Errors of one connection (reset before it was accepted) are skipped; others
/// (such as running out of descriptors) are logged and retried after a second, as hyper and
/// axum do, unless `cancel` fires first.
async fn accept_failed(e: io::Error, cancel: &CancellationToken) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1s");
    tokio::select! {
        () = cancel.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}
