//! One request on its way through the server: refused early when its head is over the
//! limits kiln sets (so the answer carries the JSON envelope, unlike hyper's own bare
//! refusals at its higher limits), counted as in flight until its answer is sent, and
//! its body guarded: a body that stops arriving ends with 408, and one still arriving at
//! shutdown ends with 503 and `Retry-After` — whatever the handler made of the cut body.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    body::Body,
    http::{HeaderValue, Request, Response, header},
    response::IntoResponse,
};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tower::Service as _;

use super::{Shutdown, connection::Activity};
use crate::{
    api::request_id,
    error::{ApiError, Code, ErrorShape},
};

/// The longest request target kiln reads; longer ones get 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header bytes (names and values) kiln reads; more get 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// The most header fields kiln reads; more get 431. hyper refuses more than 100 itself.
pub const MAX_HEADERS: usize = 64;
/// After shutdown began, a body that has started arriving may pause this long at most.
const SHUTDOWN_PAUSE: Duration = Duration::from_secs(1);
/// Seconds a client is told to wait before retrying after a shutdown refusal.
const RETRY_AFTER_SHUTDOWN: u64 = 5;

/// The per-connection service hyper calls for each request.
#[derive(Clone)]
pub(super) struct Service {
    app: axum::Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
    shutdown: Arc<Shutdown>,
    /// The client's address, handed to handlers as axum's `ConnectInfo` (sign-in limits
    /// and the audit log use it).
    peer: std::net::SocketAddr,
}

impl Service {
    pub(super) fn new(
        app: axum::Router,
        activity: Arc<Activity>,
        body_timeout: Duration,
        shutdown: Arc<Shutdown>,
        peer: std::net::SocketAddr,
    ) -> Self {
        Self { app, activity, body_timeout, shutdown, peer }
    }
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.activity.request_started();
        let done = Done(Arc::clone(&self.activity));
        if let Some(refusal) = over_limits(&request) {
            return Box::pin(async move { Ok(refusal.map(|body| Tracked { body, _done: done })) });
        }
        let cut = Arc::new(Cut::default());
        let mut request = request;
        request.extensions_mut().insert(axum::extract::ConnectInfo(self.peer));
        let request = request.map(|incoming| Guarded {
            inner: incoming,
            timeout: self.body_timeout,
            last_data: Instant::now(),
            started: false,
            timer: None,
            shutdown: Arc::clone(&self.shutdown),
            shutdown_signal: None,
            cut: Arc::clone(&cut),
        });
        let mut app = self.app.clone();
        let body_timeout = self.body_timeout;
        Box::pin(async move {
            let Ok(response) = app.call(request).await;
            let response = match cut.get() {
                Some(reason) => replace_answer(response, reason, body_timeout),
                None => response,
            };
            Ok(response.map(|body| Tracked { body, _done: done }))
        })
    }
}

/// A 414 or 431 for a request head over kiln's limits.
fn over_limits(request: &Request<Incoming>) -> Option<Response<Body>> {
    let uri_bytes = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let (code, message) = if uri_bytes > MAX_URI_BYTES {
        (Code::UriTooLong, format!("The request target is {uri_bytes} bytes; at most {MAX_URI_BYTES} are read."))
    } else {
        let headers = request.headers();
        let bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
        if headers.len() > MAX_HEADERS {
            (
                Code::HeadersTooLarge,
                format!("The request has {} header fields; at most {MAX_HEADERS} are read.", headers.len()),
            )
        } else if bytes > MAX_HEADER_BYTES {
            (
                Code::HeadersTooLarge,
                format!("The request's headers are {bytes} bytes; at most {MAX_HEADER_BYTES} are read."),
            )
        } else {
            return None;
        }
    };
    let mut response = ApiError::with_message(code, message).into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    request_id::stamp(&mut response, &request_id::generate());
    Some(response)
}

/// The handler's answer to a request whose body was cut, replaced by what the cut means.
fn replace_answer(original: Response<Body>, reason: CutReason, body_timeout: Duration) -> Response<Body> {
    let error = match reason {
        CutReason::Stalled => ApiError::with_message(
            Code::RequestTimeout,
            format!("The request body stopped arriving: nothing came for {} s.", body_timeout.as_secs_f64().ceil()),
        ),
        CutReason::ShuttingDown => ApiError::with_message(
            Code::ShuttingDown,
            "The server is shutting down and stopped reading this request; send it again.",
        )
        .retry_after(RETRY_AFTER_SHUTDOWN),
    };
    let id = original
        .headers()
        .get(request_id::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(request_id::generate);
    // In the shape of the face that answered (OpenAI's envelope on its face).
    let mut response = match original.extensions().get::<ErrorShape>() {
        Some(shape) => (shape.0)(error),
        None => error.into_response(),
    };
    // The rest of the body will not be read, so the connection cannot carry another
    // request.
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    request_id::stamp(&mut response, &id);
    response
}

/// Why a request body was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutReason {
    Stalled = 1,
    ShuttingDown = 2,
}

/// Set by a [`Guarded`] body when it cuts itself short, read when the answer is ready.
#[derive(Default)]
struct Cut(AtomicU8);

impl Cut {
    fn set(&self, reason: CutReason) {
        self.0.store(reason as u8, Ordering::Relaxed);
    }

    fn get(&self) -> Option<CutReason> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(CutReason::Stalled),
            2 => Some(CutReason::ShuttingDown),
            _ => None,
        }
    }
}

/// Why a request body failed, as its reader sees it.
#[derive(Debug, thiserror::Error)]
enum BodyCut {
    #[error("the request body stopped arriving")]
    Stalled,
    #[error("the server is shutting down")]
    ShuttingDown,
}

pin_project! {
    /// A request body that fails when the client stops sending it for `timeout`, or,
    /// after shutdown began, when it has not started, pauses, or runs past the cutoff.
    pub(super) struct Guarded {
        #[pin]
        inner: Incoming,
        timeout: Duration,
        last_data: Instant,
        started: bool,
        timer: Option<Pin<Box<Sleep>>>,
        shutdown: Arc<Shutdown>,
        shutdown_signal: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        cut: Arc<Cut>,
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_data() {
                    *this.last_data = Instant::now();
                    *this.started = true;
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        // Waiting for the client. Shutdown first: a body that has not started, or has
        // paused, is not waited for; one arriving steadily may go on until the cutoff.
        if !this.shutdown.began() {
            let signal =
                this.shutdown_signal.get_or_insert_with(|| Box::pin(this.shutdown.graceful.clone().cancelled_owned()));
            let _ = signal.as_mut().poll(cx);
        }
        let now = Instant::now();
        let deadline = if this.shutdown.began() {
            if !*this.started || now.duration_since(*this.last_data) >= SHUTDOWN_PAUSE {
                return cut(this.cut, CutReason::ShuttingDown);
            }
            let cutoff = this.shutdown.body_cutoff().unwrap_or(now + SHUTDOWN_PAUSE);
            if now >= cutoff {
                return cut(this.cut, CutReason::ShuttingDown);
            }
            cutoff.min(*this.last_data + SHUTDOWN_PAUSE)
        } else {
            let deadline = *this.last_data + *this.timeout;
            if now >= deadline {
                return cut(this.cut, CutReason::Stalled);
            }
            deadline
        };
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        // Wakes this body at the deadline, where the checks above run again.
        ready!(timer.as_mut().poll(cx));
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn cut(flag: &Cut, reason: CutReason) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    flag.set(reason);
    let error = match reason {
        CutReason::Stalled => BodyCut::Stalled,
        CutReason::ShuttingDown => BodyCut::ShuttingDown,
    };
    Poll::Ready(Some(Err(Box::new(error))))
}

/// Marks the request done on its connection when dropped: when the answer has been
/// sent, or abandoned.
struct Done(Arc<Activity>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

pin_project! {
    /// An answer's body, holding its request's place among the connection's requests in
    /// flight until it has been sent.
    pub(super) struct Tracked {
        #[pin]
        body: Body,
        _done: Done,
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
