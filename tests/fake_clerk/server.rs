//! How the fake answers on the wire: its own accept loop (so a connection can be closed
//! without an answer, as when Clerk's answer is lost), and the layer every request passes:
//! the fixed latency, lost answers of successful writes, the `Date` header from the fake's
//! clock and `x-fake-clerk-elapsed-us`. Also [`serve_standalone`], for a bench's child process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::admission::clerk_error;
use super::{FakeClerk, LostMode, Shared};

/// Every route of the fake, behind [`wire`].
pub(super) fn router(world: Shared) -> Router {
    let app: Router<Shared> = Router::new();
    let app = super::reads::routes(app);
    let app = super::access::routes(app);
    let app = super::orgs::routes(app);
    let app = super::memberships::routes(app);
    let app = super::invitations::routes(app);
    let app = super::rbac::routes(app);
    let app = super::role_sets::routes(app);
    app.layer(axum::middleware::from_fn_with_state(world.clone(), wire))
        .with_state(world)
}

/// Closes the request's connection without an answer when notified.
#[derive(Clone)]
struct ConnectionAbort(Arc<Notify>);

#[derive(Clone)]
struct WithAbort {
    inner: TowerToHyperService<Router>,
    abort: Arc<Notify>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for WithAbort {
    type Response = Response;
    type Error = Infallible;
    type Future = TowerToHyperServiceFuture<Router, hyper::Request<Incoming>>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectionAbort(self.abort.clone()));
        self.inner.call(req)
    }
}

/// Serves HTTP/1.1 connections until the runtime ends; a connection whose request asks
/// ([`ConnectionAbort`]) is dropped mid-request, which closes its socket unanswered.
pub(super) async fn serve(listener: TcpListener, app: Router) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let abort = Arc::new(Notify::new());
            let service = WithAbort {
                inner: TowerToHyperService::new(app),
                abort: abort.clone(),
            };
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = abort.notified() => {}
            }
        });
    }
}

/// The layer of every request: latency first, then the handler, then what becomes of its
/// answer.
async fn wire(State(world): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let abort = req.extensions().get::<ConnectionAbort>().cloned();
    let latency = world.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut resp = next.run(req).await;
    let lost = if resp.status().is_success() {
        world.lock().unwrap().take_lost(&method, &path)
    } else {
        None
    };
    match lost {
        Some(LostMode::Drop) => {
            if let Some(abort) = abort {
                abort.0.notify_one();
            }
            // The connection task drops this future with the connection.
            std::future::pending::<()>().await;
        }
        Some(LostMode::Late(after)) => tokio::time::sleep(after).await,
        Some(LostMode::Hold(gate)) => {
            let _permit = gate.open.acquire().await.expect("gate semaphore is never closed");
        }
        Some(LostMode::Status(status)) => {
            resp = clerk_error(
                StatusCode::from_u16(status).unwrap(),
                "Oops, an unexpected error occurred",
                "There was an internal error on our servers. We've been notified and are working on fixing it.",
                "internal_clerk_error",
            );
        }
        None => {}
    }
    let date = world.lock().unwrap().clock.http_date();
    resp.headers_mut().insert(axum::http::header::DATE, date);
    let elapsed = HeaderValue::from(started.elapsed().as_micros() as u64);
    resp.headers_mut().insert("x-fake-clerk-elapsed-us", elapsed);
    resp
}

/// What a standalone fake (a bench's child process) serves.
#[derive(Debug, Clone)]
pub struct Standalone {
    pub listen: SocketAddr,
    /// Added to every request (a nearby Clerk region: 20 ms).
    pub latency: Duration,
    /// [`FakeClerk::seed`]'s counts, dated `seed_base_ms`.
    pub orgs: usize,
    pub users: usize,
    pub memberships: usize,
    pub seed_base_ms: i64,
    /// Where webhooks go, with the `whsec_` secret that signs them.
    pub webhook_receiver: Option<(String, String)>,
}

impl Default for Standalone {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().unwrap(),
            latency: Duration::ZERO,
            orgs: 0,
            users: 0,
            memberships: 0,
            seed_base_ms: 1_764_000_000_000,
            webhook_receiver: None,
        }
    }
}

/// Runs a fake until the process ends: prints `fake-clerk listening on http://ADDR` (one
/// line on stdout, flushed) once it accepts connections, for the parent to read.
pub async fn serve_standalone(options: Standalone) -> ! {
    let fake = FakeClerk::start_on(options.listen).await;
    fake.set_latency(options.latency);
    fake.seed(options.orgs, options.users, options.memberships, options.seed_base_ms);
    if let Some((url, secret)) = &options.webhook_receiver {
        fake.set_webhook_receiver(url, secret);
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "fake-clerk listening on {}", fake.url()).unwrap();
        out.flush().unwrap();
    }
    std::future::pending::<()>().await;
    unreachable!()
}
