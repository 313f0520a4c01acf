//! The receiving end: an HTTP/2 (h2c, prior knowledge) server that takes
//! batches on `POST /exchange/v1/batch` and answers 200 only once a batch
//! is durable in the inbound journal.
//!
//! Answers: 200 durable (also for a batch journaled before: a retry), with
//! the journaled marks of the sender's partitions as its body (see
//! [`super::marks::JournaledMarks`]); 409 with a reason for another
//! topology signature, format version, a stale sender session, or partial
//! results overlapping what is journaled (the sender must not retry it); 503 with `Retry-After`
//! when the inbound backlog is full or an earlier batch of the same sender
//! has not arrived yet; 400 for bytes that are not a batch; 413 for a batch
//! over the size limit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::inbound::{Appended, InboundLog};
use super::marks::PartitionMark;
use super::wire::{self, WireError};
use super::ExchangeError;
use crate::journal::JournalError;
use crate::value::Str;

/// The path batches are posted to.
pub const BATCH_PATH: &str = "/exchange/v1/batch";

/// How a receiver behaves.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    /// The topology signature this worker computed.
    pub signature: Str,
    /// Larger request bodies are refused (413).
    pub max_batch_bytes: usize,
    /// How long a batch waits for an earlier batch of its sender before it
    /// is answered 503 (the sender retries both).
    pub order_wait: Duration,
}

impl ReceiverOptions {
    /// Options for a worker with topology `signature`: batches up to
    /// 64 MiB, 2 s order wait.
    pub fn new(signature: impl Into<Str>) -> Self {
        ReceiverOptions {
            signature: signature.into(),
            max_batch_bytes: 64 << 20,
            order_wait: Duration::from_secs(2),
        }
    }
}

/// Requests answered, by outcome.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Batches made durable.
    pub durable: AtomicU64,
    /// 409 answers.
    pub refused: AtomicU64,
    /// 503 answers.
    pub busy: AtomicU64,
}

/// A running exchange server; stops when shut down or dropped.
pub struct ExchangeServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<ReceiverStats>,
}

struct Service {
    log: InboundLog,
    options: ReceiverOptions,
    stats: Arc<ReceiverStats>,
}

impl ExchangeServer {
    /// Listens on `listen` (`host:port`; port 0 picks one) and serves
    /// batches into `log`.
    ///
    /// # Errors
    /// [`ExchangeError::Listen`] when the address cannot be bound.
    pub async fn start(
        listen: &str,
        log: InboundLog,
        options: ReceiverOptions,
    ) -> Result<ExchangeServer, ExchangeError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ExchangeError::Listen {
                address: listen.to_string(),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ExchangeError::Listen {
                address: listen.to_string(),
                source,
            })?;
        let stats = Arc::new(ReceiverStats::default());
        let service = Arc::new(Service {
            log,
            options,
            stats: stats.clone(),
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, service, stopped));
        Ok(ExchangeServer {
            addr,
            stop: Some(stop),
            task,
            stats,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters since it started.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// Stops listening, drops every connection and waits until they are
    /// gone (the inbound journal is then free to reopen once the reader
    /// is dropped too).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for ExchangeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: Arc<Service>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "exchange: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                connections.spawn(async move {
                    let handler = hyper::service::service_fn(move |req| {
                        let service = service.clone();
                        async move { Ok::<_, std::convert::Infallible>(service.handle(req).await) }
                    });
                    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                    if let Err(error) = served {
                        tracing::debug!(%error, "exchange: connection ended");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// The body of a 200: the journaled marks of the sender's partitions
/// (bincode), which tell it from which offsets it may fold rows.
pub(crate) fn encode_marks(marks: &[PartitionMark]) -> Vec<u8> {
    bincode::serde::encode_to_vec(marks, bincode::config::standard()).unwrap_or_default()
}

/// Reads the body of a 200 (an empty or unreadable body: no marks).
pub(crate) fn decode_marks(body: &[u8]) -> Option<Vec<PartitionMark>> {
    bincode::serde::decode_from_slice(body, bincode::config::standard())
        .ok()
        .map(|(m, _)| m)
}

fn answer(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    response
}

impl Service {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != BATCH_PATH {
            return answer(StatusCode::NOT_FOUND, format!("use POST {BATCH_PATH}"));
        }
        if req.method() != Method::POST {
            return answer(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("use POST {BATCH_PATH}"),
            );
        }
        let body = match Limited::new(req.into_body(), self.options.max_batch_bytes)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(error) => {
                return answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("cannot read the batch: {error}"),
                )
            }
        };
        let response = self.take(body).await;
        let counter = match response.status() {
            StatusCode::OK => &self.stats.durable,
            StatusCode::CONFLICT => &self.stats.refused,
            StatusCode::SERVICE_UNAVAILABLE => &self.stats.busy,
            _ => return response,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        response
    }

    async fn take(&self, body: Bytes) -> Response<Full<Bytes>> {
        let header = match wire::decode_header(&body) {
            Ok((header, _)) => header,
            Err(e @ WireError::Version { .. }) => {
                return answer(StatusCode::CONFLICT, e.to_string())
            }
            Err(e) => return answer(StatusCode::BAD_REQUEST, e.to_string()),
        };
        if header.signature != self.options.signature {
            return answer(
                StatusCode::CONFLICT,
                format!(
                    "topology signature {} differs from this worker's {}: the workers run different pipelines",
                    header.signature, self.options.signature
                ),
            );
        }
        // Validate the records before they become durable: a batch the
        // reader cannot decode would stop it for good. Only this build's
        // version is taken from a peer (an earlier one is read only from
        // this worker's own journal).
        let spans = match wire::validate(&body) {
            Ok(spans) => spans,
            Err(e @ WireError::Version { .. }) => {
                return answer(StatusCode::CONFLICT, e.to_string())
            }
            Err(e) => return answer(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let sender = header.sender;
        match self
            .log
            .append(header, body.to_vec(), spans, self.options.order_wait)
            .await
        {
            Appended::Durable(marks) => {
                let mut response = Response::new(Full::new(Bytes::from(encode_marks(&marks))));
                *response.status_mut() = StatusCode::OK;
                response
            }
            Appended::Overlap(reason) => answer(StatusCode::CONFLICT, reason),
            Appended::Stale => answer(
                StatusCode::CONFLICT,
                format!("worker {sender} restarted since this batch was sent: a stale session"),
            ),
            Appended::OutOfOrder => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("an earlier batch of worker {sender} has not arrived"),
            ),
            Appended::Failed(e @ JournalError::Backlog { .. }) => {
                answer(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            Appended::Failed(e) => {
                tracing::warn!(sender, error = %e, "exchange: cannot journal a batch");
                answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}
