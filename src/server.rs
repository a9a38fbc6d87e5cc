//! The HTTP server: accepts TCP connections and serves the application on them over
//! HTTP/1.1, with what a port open to the public needs and `axum::serve` lacks:
//!
//! - a cap on open connections, below the process's open-file limit, with a 503 answer
//!   beyond it instead of a failing `accept` that starves every client;
//! - timeouts for a request's headers, an idle keep-alive connection, and a request
//!   body that stops arriving (a slow upload that keeps making progress is never cut);
//! - a configurable listen backlog;
//! - one shared router, cloned per connection by reference count (axum's `serve`
//!   rebuilds the router for every connection);
//! - a shutdown that closes idle connections at once, answers uploads that cannot finish
//!   in the grace period with 503 and `Retry-After` instead of cutting them off, and
//!   closes every socket by draining it first, so an answer sent before the client
//!   finished sending is not destroyed by a TCP reset.
//!
//! [`connection`] serves one connection and watches its timers; [`request`] wraps each
//! request (body guard, in-flight count, protocol limits); [`listener`] binds the socket
//! and sizes the connection cap from the open-file limit.

mod connection;
mod listener;
mod request;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{net::TcpListener, sync::Semaphore, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use listener::{bind, connection_cap, raise_open_files_limit};

use crate::{config::ServerConfig, metrics::Metrics};

/// Connections answered 503 at once beyond the cap; more than that are dropped unanswered
/// (each answer costs a file descriptor for a moment).
const MAX_REFUSALS: usize = 64;

/// The limits the server enforces, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// How long requests get after shutdown begins, before the rest are closed.
    pub grace: Duration,
}

impl Limits {
    /// The limits of `server`, with the connection cap lowered to `cap` when the process's
    /// open-file limit allows fewer.
    pub fn new(server: &ServerConfig, cap: usize) -> Self {
        Self {
            header_timeout: server.header_timeout,
            idle_timeout: server.idle_timeout,
            body_timeout: server.body_timeout,
            max_connections: cap,
            grace: server.shutdown_grace,
        }
    }

    /// When, after shutdown begins, request bodies still arriving are given up and
    /// answered 503: early enough in the grace period that the answer is still written.
    fn body_cutoff(&self) -> Duration {
        self.grace.saturating_sub((self.grace / 5).min(Duration::from_secs(3)))
    }
}

/// The server's shutdown, as connections and request bodies see it.
pub(crate) struct Shutdown {
    /// Graceful: stop accepting, close idle connections, let requests finish.
    graceful: CancellationToken,
    /// Forced: close every connection now (the grace period is over).
    forced: CancellationToken,
    /// Request bodies still arriving after this are answered 503.
    body_cutoff: OnceLock<Instant>,
}

impl Shutdown {
    fn began(&self) -> bool {
        self.graceful.is_cancelled()
    }

    fn body_cutoff(&self) -> Option<Instant> {
        self.body_cutoff.get().copied()
    }
}

/// The HTTP server, bound and ready to run.
pub struct HttpServer {
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: Arc<Shutdown>,
    metrics: Arc<Metrics>,
}

impl HttpServer {
    /// `stop` begins a graceful shutdown; [`HttpServer::force_close`] ends it.
    pub fn new(
        listener: TcpListener,
        app: axum::Router,
        limits: Limits,
        stop: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        let shutdown =
            Arc::new(Shutdown { graceful: stop, forced: CancellationToken::new(), body_cutoff: OnceLock::new() });
        Self { listener, app, limits, shutdown, metrics }
    }

    /// Cancel it to close every connection at once, when the grace period is over.
    pub fn force_close(&self) -> CancellationToken {
        self.shutdown.forced.clone()
    }

    /// Accepts and serves connections until the shutdown token fires, then waits for the
    /// open ones to finish (or to be closed by [`HttpServer::force_close`]).
    pub async fn run(self) {
        let Self { listener, app, limits, shutdown, metrics } = self;
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
        let tracker = TaskTracker::new();
        let mut accept_errors = AcceptErrors::default();
        loop {
            let (stream, peer): (_, SocketAddr) = tokio::select! {
                _ = shutdown.graceful.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        accept_errors.wait(err, &shutdown.graceful).await;
                        continue;
                    }
                },
            };
            match Arc::clone(&connections).try_acquire_owned() {
                Ok(permit) => {
                    let served = connection::serve(
                        stream,
                        peer,
                        app.clone(),
                        limits,
                        Arc::clone(&shutdown),
                        Arc::clone(&metrics),
                        permit,
                    );
                    tracker.spawn(served);
                }
                Err(_) => {
                    metrics.connection_refused();
                    match Arc::clone(&refusals).try_acquire_owned() {
                        Ok(permit) => {
                            tracker.spawn(connection::refuse(stream, permit));
                        }
                        Err(_) => drop(stream),
                    }
                }
            }
        }
        // No new connections: the listening socket closes now, so clients get a refusal
        // from the kernel rather than a queue nobody serves.
        drop(listener);
        let _ = shutdown.body_cutoff.set(Instant::now() + limits.body_cutoff());
        tracker.close();
        tracker.wait().await;
    }
}

/// `accept` failed. Errors about one connection (it was reset before it was taken) are
/// skipped; running out of file descriptors or memory is waited out, logged once a
/// second at most, since accepting again at once would spin.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    since_logged: u64,
}

impl AcceptErrors {
    async fn wait(&mut self, err: std::io::Error, stop: &CancellationToken) {
        use std::io::ErrorKind;
        if matches!(err.kind(), ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted) {
            return;
        }
        self.since_logged += 1;
        if self.last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            tracing::error!(error = %err, failures = self.since_logged, "cannot accept connections; retrying");
            self.last_logged = Some(Instant::now());
            self.since_logged = 0;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.cancelled() => {}
        }
    }
}
