//! The HTTP server under every fake: hyper's HTTP/1.1 on `127.0.0.1:0`, on a runtime of
//! its own (so a fake works from sync code, from any test runtime and from benchmarks),
//! with one extra power a framework does not give: a handler can answer [`Reply::Reset`]
//! to drop the connection without a response, which the client sees as a transport
//! error (the socket is closed with `SO_LINGER` 0, i.e. a TCP reset).

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener as StdListener},
    sync::Arc,
    time::Duration,
};

use axum::{
    body::Body,
    http::{Request, Response},
};
use futures::future::BoxFuture;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, runtime::Runtime, sync::Notify};

/// What a fake's handler answers.
pub(crate) enum Reply {
    /// An HTTP response.
    Answer(Response<Body>),
    /// No response: the connection is reset.
    Reset,
}

pub(crate) type Handler = Arc<dyn Fn(Request<Body>) -> BoxFuture<'static, Reply> + Send + Sync>;

/// A listening fake. Dropping it stops the runtime, and with it every connection.
pub(crate) struct Server {
    pub addr: SocketAddr,
    runtime: Option<Runtime>,
}

impl Server {
    /// Binds `127.0.0.1:0`, then builds the handler from the base URL
    /// (`http://127.0.0.1:PORT`) and serves it on `threads` worker threads.
    pub fn start(threads: usize, make: impl FnOnce(String) -> Handler) -> Server {
        let listener = StdListener::bind("127.0.0.1:0").expect("fake: bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("fake: non-blocking listener");
        let addr = listener.local_addr().expect("fake: local address");
        let handler = make(format!("http://{addr}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("fake-upstream")
            .enable_all()
            .build()
            .expect("fake: runtime");
        runtime.spawn(accept_loop(listener, handler));
        Server { addr, runtime: Some(runtime) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Allowed inside an async context, unlike dropping the runtime.
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: StdListener, handler: Handler) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("fake upstream: cannot listen: {e}");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&handler)));
            }
            // Out of file descriptors, for example: wait a little, keep serving.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn serve_connection(stream: TcpStream, handler: Handler) {
    let _ = stream.set_nodelay(true);
    // A second handle on the same socket, to set SO_LINGER on it when the connection is
    // reset: hyper owns the first.
    let Ok(std_stream) = stream.into_std() else { return };
    let Ok(twin) = std_stream.try_clone() else { return };
    let Ok(stream) = TcpStream::from_std(std_stream) else { return };
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = Arc::clone(&kill);
        service_fn(move |request: Request<Incoming>| {
            let handler = Arc::clone(&handler);
            let kill = Arc::clone(&kill);
            async move {
                match handler(request.map(Body::new)).await {
                    Reply::Answer(response) => Ok::<_, Infallible>(response),
                    Reply::Reset => {
                        kill.notify_one();
                        std::future::pending().await
                    }
                }
            }
        })
    };
    let mut connection = Box::pin(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
    let killed = tokio::select! {
        _ = connection.as_mut() => false,
        _ = kill.notified() => true,
    };
    if killed {
        let _ = socket2::SockRef::from(&twin).set_linger(Some(Duration::ZERO));
    }
    // The connection (and hyper's handle) goes first, then the twin: the last close
    // sends the FIN, or the RST when lingering was set to zero.
    drop(connection);
    drop(twin);
}
