//! The HTTP/1.1 server of the HTTP source: accepts at most
//! `max_connections` connections at a time (at the cap it stops accepting,
//! so further clients wait in the listen queue), gives each client
//! `header_read_timeout` to send a request's headers, and bounds hyper's
//! per-connection read buffer. With `tls`, each connection first completes
//! a TLS handshake (within `header_read_timeout`). Shuts down gracefully:
//! no new connections, requests in flight finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use metrics::{Counter, Gauge, Label};
use sluice_engine::metrics as m;
use sluice_engine::source::SourceError;
use sluice_engine::tls::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest read buffer of one connection (hyper's `max_buf_size`): request
/// headers beyond it get 431, so a connection holds at most this much
/// besides its body.
const MAX_READ_BUFFER: usize = 64 << 10;
/// Connections the kernel completes and queues before sluice accepts them
/// (the listen backlog; Linux caps it at `net.core.somaxconn`). Tokio's
/// default of 128 overflowed when a few hundred clients connected at once
/// (or waited at `max_connections`): the kernel then drops their SYNs and
/// they retry only after a second.
const LISTEN_BACKLOG: u32 = 1024;
/// Pause after an accept error that is not about one connection (e.g. out
/// of file descriptors), so that the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connection limits of the server.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// What the accept loop hands every connection.
struct Conn {
    http: http1::Builder,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    counters: ConnMetrics,
}

/// The running HTTP server.
pub(super) struct Server {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `address` and serves `app` on it.
    pub(super) async fn start(
        address: &str,
        name: &str,
        limits: Limits,
        tls: Option<TlsAcceptor>,
        app: Router,
        labels: &[Label],
    ) -> Result<Server, SourceError> {
        let listener = bind(address)
            .await
            .map_err(|source| SourceError::Io {
                context: format!("source `{name}`: cannot listen on {address}"),
                source,
            })?;
        let counters = ConnMetrics {
            open: metrics::gauge!(m::HTTP_CONNECTIONS, labels.to_vec()),
            header_timeouts: metrics::counter!(m::ERRORS, m::with_error(labels, "header_timeout")),
            tls_failures: metrics::counter!(m::ERRORS, m::with_error(labels, "tls_handshake")),
        };
        counters.open.set(0.0);
        let (stop, stopped) = oneshot::channel::<()>();
        let name = name.to_string();
        let task = tokio::spawn(serve(listener, app, limits, tls, stopped, counters, name));
        Ok(Server {
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Graceful stop: no new connections, in-flight requests finish (up
    /// to a timeout, after which they are cut: their clients never got a
    /// 202, so nothing accepted is lost).
    pub(super) async fn shutdown(mut self, name: &str) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(DRAIN_TIMEOUT, &mut task)
                .await
                .is_err()
            {
                tracing::warn!(source = %name, "in-flight HTTP requests did not finish in time; closing them");
                task.abort();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct ConnMetrics {
    open: Gauge,
    header_timeouts: Counter,
    tls_failures: Counter,
}

/// One open connection: its slot under `max_connections`, counted in
/// `sluice_http_connections` until dropped.
struct Open {
    _slot: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Open {
    fn new(slot: OwnedSemaphorePermit, gauge: Gauge) -> Open {
        gauge.increment(1.0);
        Open { _slot: slot, gauge }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// The accept loop. Connections run in a `JoinSet`, so aborting this task
/// closes them all.
async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    mut stop: oneshot::Receiver<()>,
    counters: ConnMetrics,
    name: String,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_READ_BUFFER);
    let conn = Arc::new(Conn {
        http,
        app,
        tls,
        limits,
        counters,
    });
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        // At the cap, wait for a slot before accepting anything.
        let slot = tokio::select! {
            biased;
            _ = &mut stop => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let stream = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(source = %name, error = %e, "cannot accept connections; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let open = Open::new(slot, conn.counters.open.clone());
        let conn = Arc::clone(&conn);
        // Taken now, so that a connection still in its TLS handshake at
        // shutdown is closed gracefully once it is done.
        let watcher = graceful.watcher();
        conns.spawn(async move {
            conn.handle(stream, watcher).await;
            drop(open);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    while conns.join_next().await.is_some() {}
}

impl Conn {
    /// Serves one connection, after its TLS handshake if the server has TLS.
    async fn handle(&self, stream: TcpStream, watcher: Watcher) {
        match &self.tls {
            None => self.serve(stream, watcher).await,
            Some(tls) => match tls.accept(stream, self.limits.header_read_timeout).await {
                Ok(stream) => self.serve(stream, watcher).await,
                Err(e) => {
                    self.counters.tls_failures.increment(1);
                    tracing::debug!(error = %e, "TLS handshake failed");
                }
            },
        }
    }

    async fn serve<S>(&self, stream: S, watcher: Watcher)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = self.http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(self.app.clone()),
        );
        if let Err(e) = watcher.watch(conn).await {
            if e.is_timeout() {
                self.counters.header_timeouts.increment(1);
            } else {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
    }
}

/// Listens on the first address `address` resolves to that can be bound,
/// with a backlog of [`LISTEN_BACKLOG`].
async fn bind(address: &str) -> std::io::Result<TcpListener> {
    let mut error = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restart can bind while old
        // connections are in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => error = Some(e),
        }
    }
    Err(error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to no address",
        )
    }))
}

/// Errors about one connection that leave the listener fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
