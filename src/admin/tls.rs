//! The admin server over HTTPS: its own accept loop, so that a client slow
//! to finish its TLS handshake holds up only its own connection (probes keep
//! being answered), and graceful shutdown as with plain HTTP.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use sluice_engine::tls::TlsAcceptor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Time a client has for its TLS handshake, and then for each request's
/// headers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` over TLS on `listener` until `stop` turns true.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    tls: TlsAcceptor,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = tokio::select! {
            biased;
            _ = sluice_engine::source::wait_shutdown(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin server cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let (tls, app, http) = (tls.clone(), app.clone(), http.clone());
        let watcher = graceful.watcher();
        conns.spawn(async move {
            match tls.accept(stream, CLIENT_TIMEOUT).await {
                Ok(stream) => {
                    let conn =
                        http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "admin TLS handshake failed"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin requests did not finish in time; closing them");
    }
    conns.shutdown().await;
}
