//! One client connection: hyper serves HTTP/1.1 on it while a watchdog closes it when
//! the client keeps it without sending a request (the header and idle timeouts), and the
//! socket is closed by draining it, so an answer is never destroyed by a reset.
//!
//! The socket is shared between hyper and this module (`Arc<TcpStream>`): once hyper is
//! done with it, or has been dropped at a timeout, the connection can still write a last
//! answer and drain what the client was sending.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
    time::Instant,
};

use super::{Limits, Shutdown, request};
use crate::{
    error::{Code, envelope},
    metrics::Metrics,
};

/// How long a closing socket is drained at most: enough for a client that was still
/// sending to read the answer and close its side.
const LINGER: Duration = Duration::from_secs(2);
/// How long a last answer (a 408 or a 503) may take to write before the socket is closed.
const LAST_WORDS: Duration = Duration::from_secs(1);
/// hyper refuses heads with more fields than this itself (its default is 100).
const HYPER_MAX_HEADERS: usize = 128;
/// `Activity::request_began` when no byte of a next request has arrived.
const NONE: u64 = u64::MAX;

/// What a connection is doing, shared by its socket wrapper (bytes read), its requests
/// (in flight, done) and its watchdog.
pub(super) struct Activity {
    opened: Instant,
    in_flight: AtomicU32,
    served: AtomicU32,
    /// Milliseconds after `opened` when the last response ended.
    idle_since: AtomicU64,
    /// Milliseconds after `opened` of the first byte read since then, or [`NONE`].
    request_began: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            served: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            request_began: AtomicU64::new(NONE),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.opened).as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.opened + Duration::from_millis(millis)
    }

    fn bytes_read(&self) {
        if self.request_began.load(Ordering::Relaxed) == NONE {
            let now = self.millis(Instant::now());
            let _ = self.request_began.compare_exchange(NONE, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    pub(super) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn request_done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.millis(Instant::now()), Ordering::Relaxed);
            self.request_began.store(NONE, Ordering::Relaxed);
        }
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the connection may stay open at `now`, and until when at least.
    fn verdict(&self, now: Instant, limits: &Limits) -> Verdict {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // A request is being handled: its body has its own timer, and its answer may
            // rightly take long (a stream, a wait for a model).
            return Verdict::Wait(now + limits.header_timeout.min(limits.idle_timeout));
        }
        let began = self.request_began.load(Ordering::Relaxed);
        let (deadline, timeout) = if began != NONE {
            (self.at(began) + limits.header_timeout, Timeout::Headers)
        } else if self.served.load(Ordering::Relaxed) == 0 {
            // A new connection that has sent nothing yet gets the header timeout.
            (self.opened + limits.header_timeout, Timeout::Silent)
        } else {
            (self.at(self.idle_since.load(Ordering::Relaxed)) + limits.idle_timeout, Timeout::Idle)
        };
        if now >= deadline { Verdict::Close(timeout) } else { Verdict::Wait(deadline) }
    }
}

enum Verdict {
    Wait(Instant),
    Close(Timeout),
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy)]
enum Timeout {
    /// A request's headers started but did not finish in time.
    Headers,
    /// A new connection sent nothing.
    Silent,
    /// A keep-alive connection waited too long for its next request.
    Idle,
}

impl Timeout {
    fn as_str(self) -> &'static str {
        match self {
            Timeout::Headers => "headers",
            Timeout::Silent => "silent",
            Timeout::Idle => "idle",
        }
    }
}

/// The socket as hyper sees it: reads are counted as activity, and the stream stays
/// reachable through the shared handle after hyper lets go of it.
struct Watched {
    stream: Arc<TcpStream>,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(buf) {
                Ok(read) => {
                    if read > 0 {
                        self.activity.bytes_read();
                    }
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; polling again registers for the next one.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.stream))
    }
}

fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write) {
        // Already closed by the peer: nothing left to shut.
        Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// How a connection ended.
enum End {
    /// hyper finished with it (the client closed, or keep-alive ended).
    Done,
    TimedOut(Timeout),
    /// The grace period ran out.
    Forced,
}

/// Serves one connection until it ends, then closes it cleanly. Holds `_permit`, one of
/// the connection cap's, until the socket is closed.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    limits: Limits,
    shutdown: Arc<Shutdown>,
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
) {
    let _open = metrics.connection_opened();
    // Events and progress go out as small writes that must not wait for an ACK.
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { stream: Arc::clone(&stream), activity: Arc::clone(&activity) });
    let service = request::Service::new(app, Arc::clone(&activity), limits.body_timeout, Arc::clone(&shutdown), peer);
    let end = {
        let connection = hyper::server::conn::http1::Builder::new()
            // kiln's own watchdog times headers, with a separate idle timeout.
            .header_read_timeout(None)
            // Above kiln's own limit (`request::MAX_HEADERS`), so that kiln, not hyper,
            // refuses most heads with too many fields, in the envelope.
            .max_headers(HYPER_MAX_HEADERS)
            // While an answer is being sent, hyper would otherwise keep reading the socket
            // to notice a client that left, with an 8 KiB buffer of its own for every open
            // event stream. A client that left is noticed by the next write instead (an
            // event, or the heartbeat within 15 s); and a client that half-closes after
            // its request still gets its answer.
            .half_close(true)
            .serve_connection(io, service);
        tokio::pin!(connection);
        let watchdog = tokio::time::sleep_until(activity.opened + limits.header_timeout);
        tokio::pin!(watchdog);
        let mut draining = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                    break End::Done;
                }
                _ = shutdown.forced.cancelled() => break End::Forced,
                _ = shutdown.graceful.cancelled(), if !draining => {
                    draining = true;
                    // Closes the connection now when idle, else after the current answer.
                    connection.as_mut().graceful_shutdown();
                }
                _ = &mut watchdog => match activity.verdict(Instant::now(), &limits) {
                    Verdict::Wait(until) => watchdog.as_mut().reset(until),
                    Verdict::Close(timeout) => break End::TimedOut(timeout),
                },
            }
        }
    };
    match end {
        End::Done => {}
        End::Forced => return,
        End::TimedOut(timeout) => {
            metrics.connection_timed_out(timeout.as_str());
            tracing::debug!(%peer, timeout = timeout.as_str(), "closing a connection that sent no request in time");
            if matches!(timeout, Timeout::Headers) {
                let message = format!(
                    "The request's headers did not arrive within {} s.",
                    limits.header_timeout.as_secs_f64().ceil()
                );
                last_words(&stream, 408, "Request Timeout", Code::RequestTimeout, &message, &[]).await;
            }
        }
    }
    tokio::select! {
        _ = linger(&stream) => {}
        _ = shutdown.forced.cancelled() => {}
    }
}

/// Answers a connection over the cap with 503 and closes it.
pub(super) async fn refuse(stream: TcpStream, _permit: OwnedSemaphorePermit) {
    let message = "The server has too many open connections; retry shortly.";
    last_words(&stream, 503, "Service Unavailable", Code::TooManyConnections, message, &[("retry-after", "1")]).await;
    linger(&stream).await;
}

/// Writes a complete error answer, in the JSON envelope, straight to the socket: for
/// when there is no request to answer through the application (hyper has given the
/// connection up, or never had it).
async fn last_words(
    stream: &TcpStream,
    status: u16,
    reason: &str,
    code: Code,
    message: &str,
    headers: &[(&str, &str)],
) {
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = envelope(code, message, Some(&request_id));
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nx-request-id: {request_id}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    let _ = tokio::time::timeout(LAST_WORDS, write_all(stream, &bytes)).await;
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Closes our side for writing, then reads and discards what the client still sends
/// until it closes too (or [`LINGER`] passes). Closing a socket with unread data makes
/// the kernel send a reset, and a reset can destroy an answer the client has not read
/// yet — an early 413, 408 or 503 to a client still uploading.
async fn linger(stream: &TcpStream) {
    if shutdown_write(stream).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    // On the heap: this future lives as long as the connection, and most never linger.
    let mut sink = vec![0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Ok(Ok(())) => match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            },
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: 10,
            grace: Duration::from_secs(30),
        }
    }

    fn closes_at(activity: &Activity, limits: &Limits) -> (Instant, &'static str) {
        let mut now = activity.opened;
        loop {
            match activity.verdict(now, limits) {
                Verdict::Wait(until) => {
                    assert!(until > now, "the watchdog always moves forward");
                    now = until;
                }
                Verdict::Close(timeout) => return (now, timeout.as_str()),
            }
        }
    }

    #[test]
    fn a_silent_connection_gets_the_header_timeout() {
        let activity = Activity::new();
        let (at, why) = closes_at(&activity, &limits());
        assert_eq!((at - activity.opened, why), (Duration::from_secs(30), "silent"));
    }

    #[test]
    fn stalled_headers_count_from_their_first_byte_and_idle_from_the_last_answer() {
        let limits = limits();
        let activity = Activity::new();
        activity.request_began.store(5_000, Ordering::Relaxed);
        let (at, why) = closes_at(&activity, &limits);
        assert_eq!((at - activity.opened, why), (Duration::from_secs(35), "headers"));

        activity.request_started();
        assert!(matches!(activity.verdict(activity.opened + Duration::from_secs(3600), &limits), Verdict::Wait(_)));
        activity.request_done();
        let idle_since = Duration::from_millis(activity.idle_since.load(Ordering::Relaxed));
        let (at, why) = closes_at(&activity, &limits);
        assert_eq!((at - activity.opened - idle_since, why), (Duration::from_secs(60), "idle"));
    }
}
