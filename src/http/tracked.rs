//! What tells a connection's [`Tracker`] its phase: the socket (bytes arriving while idle), the
//! service hyper calls once a request head is parsed, the request body (read to its end) and
//! the response body (dropped by hyper once it has taken all of it).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connections::Tracker;

/// A socket that tells its tracker when bytes arrive.
pub struct TrackedIo<S> {
    inner: S,
    tracker: Tracker,
}

impl<S> TrackedIo<S> {
    pub fn new(inner: S, tracker: Tracker) -> Self {
        Self { inner, tracker }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.tracker.bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One connection's service: the router, with the request's progress reported to the tracker.
#[derive(Clone)]
pub struct TrackedService {
    inner: TowerToHyperService<Router>,
    tracker: Tracker,
}

impl TrackedService {
    pub fn new(router: Router, tracker: Tracker) -> Self {
        Self {
            inner: TowerToHyperService::new(router),
            tracker,
        }
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<TrackedResponseBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for TrackedService {
    type Response = Response<TrackedResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let tracker = self.tracker.clone();
        if !tracker.head_received(req.body().is_end_stream()) {
            // Evicted meanwhile: the connection is being dropped; nothing is handled.
            let refused = Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Body::empty())
                .expect("a valid response");
            return Box::pin(std::future::ready(Ok(
                refused.map(|b| TrackedResponseBody::new(b, tracker))
            )));
        }
        let req = req.map(|body| TrackedRequestBody {
            inner: body,
            tracker: Some(tracker.clone()),
        });
        let answer = hyper::service::Service::call(&self.inner, req);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|b| TrackedResponseBody::new(b, tracker)))
        })
    }
}

/// The connection was evicted while its request body was being read.
#[derive(Debug, thiserror::Error)]
#[error("connection closed to make room for another")]
struct Evicted;

/// A request body that tells the tracker when it has been read to its end.
pub struct TrackedRequestBody {
    inner: Incoming,
    /// Until the body is complete.
    tracker: Option<Tracker>,
}

impl TrackedRequestBody {
    /// Reports completion; false when the connection was evicted first.
    fn complete(&mut self) -> bool {
        self.tracker.take().is_none_or(|t| t.request_complete())
    }
}

impl HttpBody for TrackedRequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended && self.tracker.is_some() && !self.complete() {
            // The last bytes arrived after the connection was chosen for eviction: the handler
            // sees a failed read rather than a request it would act on unanswered.
            return Poll::Ready(Some(Err(Box::new(Evicted))));
        }
        polled.map(|frame| frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells the tracker the answer was produced when hyper drops it (at once
/// for an empty body, after its last frame otherwise).
pub struct TrackedResponseBody {
    inner: Body,
    tracker: Tracker,
}

impl TrackedResponseBody {
    fn new(inner: Body, tracker: Tracker) -> Self {
        Self { inner, tracker }
    }
}

impl Drop for TrackedResponseBody {
    fn drop(&mut self) {
        self.tracker.answered();
    }
}

impl HttpBody for TrackedResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
