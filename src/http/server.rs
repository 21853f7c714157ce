//! The accept loop of every listener: HTTP/1.1 connections served by hyper under deadlines and a
//! cap, so that no number of slow or stalled clients can keep a prompt request out.
//!
//! - A connection must send a complete request head within [`HttpLimits::header_timeout`] of
//!   opening, or of the end of its previous response, else hyper closes it without an answer.
//!   Hyper starts this deadline as soon as a connection waits for a request, so it is also the
//!   idle timeout of kept-alive connections.
//! - From the end of the head, the request (reading its body and handling it) must be answered
//!   within [`HttpLimits::request_timeout`]: beyond it the answer is 408, the handler and the
//!   unread body are dropped, and hyper closes the connection.
//! - At most [`HttpLimits::max_connections`] connections are open at once on a listener. A
//!   newcomer beyond it takes the place of the connection that has waited longest without
//!   completing a request (an incomplete head or body first, then an idle keep-alive), which is
//!   closed unanswered and counted by `orgsync_http_connections_evicted_total` (see
//!   [`super::connections`]). A request being handled is never cut off: only when every place
//!   holds one does the newcomer wait for room, up to the header deadline, and is then answered
//!   `503` and counted by `orgsync_http_connections_shed_total`.

use std::io;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

use super::connections::{Admission, Place, Registry, Tracker};
use super::tracked::{TrackedIo, TrackedService};

/// The deadlines and the connection cap of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest wait for a complete request head, counted from when the connection opens or its
    /// previous response was sent (so also the keep-alive idle timeout). Default 10 s.
    pub header_timeout: Duration,
    /// Longest time from the end of a request head to its answer, reading the body included;
    /// 408 beyond. Default 30 s.
    pub request_timeout: Duration,
    /// Most connections open at once on the listener; beyond it a newcomer takes the place of
    /// the one that has waited longest without completing a request. Default
    /// [`DEFAULT_MAX_CONNECTIONS`] (lowered at start to what the descriptor limit allows).
    pub max_connections: usize,
}

/// The default cap of the main listener: `orgsync serve` holding 10,000 stalled connections
/// has about 180 MiB resident, 16.8 KiB each (the bench's `stalled` phase,
/// docs/operations.md).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Most connections open at once on the separate admin listener (probes and scrapes need few);
/// its deadlines are those of the main listener.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Most connections open at once on the `/v1` API listener (one application's backend, kept
/// alive; a flood of stalled connections is evicted there as on the main listener). Reserved
/// from the open-files limit before the main listener's cap is fitted into it.
pub const API_MAX_CONNECTIONS: usize = 1024;

/// What a newcomer receives when it found no room within the header deadline, before it is
/// closed.
const SHED_RESPONSE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// How often at most a listener that keeps evicting or shedding says so in the log.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` under `limits` until `cancel` fires; then stops accepting, asks
/// every open connection to finish its current request and close, and returns once all have
/// (at most the two deadlines later). `name` labels the metrics (`main`, `admin`, ...).
/// Err only if the listener's address cannot be read; accept errors are logged and retried.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    name: &'static str,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let router = router.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let registry = Registry::new(
        limits.max_connections,
        metrics::gauge!("orgsync_http_connections_open", "listener" => name),
    );
    let shed = metrics::counter!("orgsync_http_connections_shed_total", "listener" => name);
    let evicted = metrics::counter!("orgsync_http_connections_evicted_total", "listener" => name);
    let header_timeouts = metrics::counter!("orgsync_http_header_timeouts_total", "listener" => name);
    let graceful = GracefulShutdown::new();
    let mut evicting = ThrottledWarn::default();
    let mut shedding = ThrottledWarn::default();

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
        let tracker = match admit(&registry, limits.header_timeout, &cancel).await {
            Some((tracker, by_evicting)) => {
                if by_evicting {
                    evicted.increment(1);
                    if let Some(n) = evicting.hit() {
                        tracing::warn!(
                            listener = name,
                            max_connections = registry.cap(),
                            evicted = n,
                            "connection limit reached: closing the connections waiting longest without a complete request to make room"
                        );
                    }
                }
                tracker
            }
            None if cancel.is_cancelled() => break,
            None => {
                shed.increment(1);
                if let Some(n) = shedding.hit() {
                    tracing::warn!(
                        listener = name,
                        max_connections = registry.cap(),
                        shed = n,
                        "connection limit reached with every connection handling a request: new connections are answered 503"
                    );
                }
                refuse(stream);
                continue;
            }
        };
        let io = TokioIo::new(TrackedIo::new(stream, tracker.clone()));
        let service = TrackedService::new(router.clone(), tracker.clone());
        let conn = graceful.watch(builder.serve_connection(io, service));
        let header_timeouts = header_timeouts.clone();
        tokio::spawn(async move {
            let place = Place(tracker);
            tokio::select! {
                biased;
                // Dropping the connection closes its socket.
                () = place.0.evicted().cancelled() => {}
                closed = conn => {
                    if let Err(e) = closed {
                        if e.is_timeout() {
                            header_timeouts.increment(1);
                        }
                        tracing::debug!(listener = name, error = %e, "connection closed on an error");
                    }
                }
            }
            drop(place);
        });
    }

    drop(listener);
    tracing::debug!(listener = name, %addr, open = registry.open(), "stopped accepting; draining connections");
    graceful.shutdown().await;
    Ok(())
}

/// A place for a newly accepted connection (and whether a connection was evicted for it): at
/// once when one is free or evictable, else as soon as one is, waiting up to `patience`. None
/// when there was none by then, or `cancel` fired.
async fn admit(
    registry: &std::sync::Arc<Registry>,
    patience: Duration,
    cancel: &CancellationToken,
) -> Option<(Tracker, bool)> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match registry.admit() {
            Admission::Admitted(t) => return Some((t, false)),
            Admission::AdmittedByEvicting(t) => return Some((t, true)),
            Admission::Full => {}
        }
        tokio::select! {
            () = registry.room() => {}
            () = tokio::time::sleep_until(deadline) => return None,
            () = cancel.cancelled() => return None,
        }
    }
}

/// Answers 503 to a connection that found no room and closes it. The write never waits: a fresh
/// socket's send buffer is empty, and if it cannot take the bytes the client just sees a close.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(SHED_RESPONSE);
}

/// Lets a warning through at its first occurrence, then at most every [`WARN_INTERVAL`] with
/// the number of occurrences since (the counters have the exact numbers).
#[derive(Default)]
struct ThrottledWarn {
    last_warned: Option<Instant>,
    since_warned: u64,
}

impl ThrottledWarn {
    /// Counts one occurrence; Some(occurrences to report) when the warning is due.
    fn hit(&mut self) -> Option<u64> {
        self.since_warned += 1;
        if self.last_warned.is_none_or(|t| t.elapsed() >= WARN_INTERVAL) {
            self.last_warned = Some(Instant::now());
            return Some(std::mem::take(&mut self.since_warned));
        }
        None
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
