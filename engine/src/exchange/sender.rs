//! The sending end: one HTTP/2 connection per peer, batches posted to
//! [`BATCH_PATH`], at most K unacknowledged at a time, retried until the
//! peer holds them durably.
//!
//! A connection that fails is re-established with exponential backoff
//! (capped); the peer's name is resolved again at each attempt. A batch is
//! retried after a timeout, a broken connection or a 503; the receiver
//! recognises a retry of a batch it already holds. A 409 (another topology,
//! format version, or a stale session) stops the sender for good: it
//! reports why and never sends again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::marks::PartitionMark;
use super::server::{decode_marks, BATCH_PATH};
use super::wire::{self, BatchHeader, PartitionBatch};
use super::SendError;
use crate::journal::lock;
use crate::value::Str;

/// How a sender behaves.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// The topology signature this worker computed.
    pub signature: Str,
    /// This worker's id.
    pub worker: u32,
    /// This run's session: larger than any earlier run's (see
    /// [`BatchHeader::session`]).
    pub session: u64,
    /// Batches sent and not yet acknowledged, at most; `send` waits beyond.
    pub max_in_flight: usize,
    /// A request not answered within this is retried.
    pub request_timeout: Duration,
    /// Connecting (resolving, TCP, HTTP/2 handshake) takes at most this.
    pub connect_timeout: Duration,
    /// The wait after the first failure; doubled after each further one.
    pub backoff_initial: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
}

impl SenderOptions {
    /// Defaults, with the session taken from the wall clock.
    pub fn new(signature: impl Into<Str>, worker: u32) -> Self {
        let session = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SenderOptions {
            signature: signature.into(),
            worker,
            session,
            max_in_flight: 8,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// The state of the link to one peer, for readiness and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerStatus {
    /// Not connected yet.
    Connecting,
    /// Connected; batches are being sent.
    Connected,
    /// The last attempt failed; retrying with backoff.
    Unreachable {
        /// The last attempt's error, as text.
        error: String,
    },
    /// The peer refused this worker's batches (409); nothing more is sent.
    Refused {
        /// The peer's answer body, or why the request could not be made.
        reason: String,
    },
}

/// Counters of one peer link.
#[derive(Debug, Default)]
pub struct SenderStats {
    /// Connection attempts (successful or not).
    pub connects: AtomicU64,
    /// Requests made (first tries and retries).
    pub requests: AtomicU64,
    /// Batches the peer holds durably.
    pub acked: AtomicU64,
}

struct Link {
    send: Option<SendRequest<Full<Bytes>>>,
    /// Counts connections made, to tell the current one from older ones.
    generation: u64,
    /// Connection failures in a row.
    failures: u32,
    retry_at: Option<Instant>,
}

struct Peer {
    address: String,
    options: SenderOptions,
    in_flight: Arc<Semaphore>,
    next_seq: AtomicU64,
    link: tokio::sync::Mutex<Link>,
    status: Mutex<PeerStatus>,
    stats: SenderStats,
}

/// Sends batches to one peer. Dropping the last clone stops every
/// delivery not acknowledged yet (like a crash: the receiver may or may not
/// hold them).
#[derive(Clone)]
pub struct PeerSender {
    peer: Arc<Peer>,
    /// Deliveries end when this is dropped (they hold receivers only).
    alive: Arc<watch::Sender<()>>,
}

/// A batch on its way; [`wait`](Self::wait) resolves once the peer holds it durably.
pub struct Delivery {
    task: tokio::task::JoinHandle<Result<Vec<PartitionMark>, SendError>>,
    bytes: usize,
}

impl Delivery {
    /// The size of the batch's request body.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Waits for the acknowledgement; returns the journaled marks of this
    /// worker's partitions at the peer (see
    /// [`JournaledMarks`](super::marks::JournaledMarks)).
    ///
    /// # Errors
    /// [`SendError::Refused`] (the peer will not take it),
    /// [`SendError::Closed`] (the sender was dropped first).
    pub async fn wait(self) -> Result<Vec<PartitionMark>, SendError> {
        self.task.await.unwrap_or(Err(SendError::Closed))
    }
}

impl PeerSender {
    /// A sender to the peer at `address` (`host:port`, resolved at each
    /// connection attempt). Connects lazily, on the first batch.
    pub fn new(address: impl Into<String>, options: SenderOptions) -> Self {
        let peer = Peer {
            address: address.into(),
            in_flight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            options,
            next_seq: AtomicU64::new(0),
            link: tokio::sync::Mutex::new(Link {
                send: None,
                generation: 0,
                failures: 0,
                retry_at: None,
            }),
            status: Mutex::new(PeerStatus::Connecting),
            stats: SenderStats::default(),
        };
        PeerSender {
            peer: Arc::new(peer),
            alive: Arc::new(watch::Sender::new(())),
        }
    }

    /// Queues a batch of partitions. Waits while `max_in_flight` batches are
    /// unacknowledged (backpressure), then returns the delivery under way.
    /// Batches are numbered in the order `send` returns: send a partition's
    /// records from one task, in offset order.
    ///
    /// # Errors
    /// [`SendError::Refused`] once the peer has refused this worker.
    pub async fn send(&self, partitions: &[PartitionBatch]) -> Result<Delivery, SendError> {
        let permit = self
            .peer
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SendError::Closed)?;
        if let PeerStatus::Refused { reason } = self.status() {
            return Err(self.peer.refused(reason));
        }
        let header = BatchHeader {
            signature: self.peer.options.signature.clone(),
            sender: self.peer.options.worker,
            session: self.peer.options.session,
            seq: self.peer.next_seq.fetch_add(1, Ordering::AcqRel),
        };
        let body = Bytes::from(wire::encode(&header, partitions));
        let bytes = body.len();
        let peer = self.peer.clone();
        let mut alive = self.alive.subscribe();
        let task = tokio::spawn(async move {
            tokio::select! {
                done = peer.deliver(body, permit) => done,
                _ = alive.changed() => Err(SendError::Closed),
            }
        });
        Ok(Delivery { task, bytes })
    }

    /// The link's current state.
    pub fn status(&self) -> PeerStatus {
        lock(&self.peer.status).clone()
    }

    /// The link's counters since the sender was created.
    pub fn stats(&self) -> &SenderStats {
        &self.peer.stats
    }

    /// The peer's address as configured.
    pub fn address(&self) -> &str {
        &self.peer.address
    }
}

/// What one attempt at a request gave.
enum Attempt {
    Acked(Vec<PartitionMark>),
    Refused(String),
    /// Try again after the backoff (or at least `Retry-After`).
    Retry(String),
}

impl Peer {
    async fn deliver(
        &self,
        body: Bytes,
        _permit: OwnedSemaphorePermit,
    ) -> Result<Vec<PartitionMark>, SendError> {
        let mut failures = 0;
        loop {
            match self.attempt(body.clone()).await {
                Attempt::Acked(marks) => {
                    self.stats.acked.fetch_add(1, Ordering::Relaxed);
                    return Ok(marks);
                }
                Attempt::Refused(reason) => {
                    tracing::error!(peer = %self.address, %reason, "exchange: the peer refuses this worker's batches");
                    *lock(&self.status) = PeerStatus::Refused {
                        reason: reason.clone(),
                    };
                    return Err(self.refused(reason));
                }
                Attempt::Retry(error) => {
                    failures += 1;
                    tracing::debug!(peer = %self.address, %error, failures, "exchange: retrying a batch");
                    tokio::time::sleep(self.options.backoff(failures)).await;
                }
            }
        }
    }

    fn refused(&self, reason: String) -> SendError {
        SendError::Refused {
            peer: self.address.clone(),
            reason,
        }
    }

    async fn attempt(&self, body: Bytes) -> Attempt {
        let (mut send, generation) = match self.connection().await {
            Ok(link) => link,
            Err(error) => return Attempt::Retry(error),
        };
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let request = Request::post(format!("http://{}{BATCH_PATH}", self.address))
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(body));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Attempt::Refused(format!("invalid peer address: {e}")),
        };
        let exchange = async {
            send.ready().await?;
            let response = send.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let text = |body: &Bytes| String::from_utf8_lossy(body).into_owned();
        match tokio::time::timeout(self.options.request_timeout, exchange).await {
            Ok(Ok((StatusCode::OK, body))) => {
                Attempt::Acked(decode_marks(&body).unwrap_or_default())
            }
            Ok(Ok((StatusCode::CONFLICT, reason))) => Attempt::Refused(text(&reason)),
            Ok(Ok((status, body))) => Attempt::Retry(format!("{status}: {}", text(&body))),
            Ok(Err(error)) => {
                self.drop_connection(generation).await;
                Attempt::Retry(error.to_string())
            }
            Err(_) => {
                // A peer that stopped answering (a paused process) leaves
                // the connection open: start a new one.
                self.drop_connection(generation).await;
                Attempt::Retry(format!(
                    "no answer within {:?}",
                    self.options.request_timeout
                ))
            }
        }
    }

    /// The current connection, or a new one (waiting out the backoff of
    /// earlier failures first).
    async fn connection(&self) -> Result<(SendRequest<Full<Bytes>>, u64), String> {
        let mut link = self.link.lock().await;
        if let Some(send) = &link.send {
            if !send.is_closed() {
                return Ok((send.clone(), link.generation));
            }
            link.send = None;
        }
        if let Some(at) = link.retry_at {
            tokio::time::sleep_until(at).await;
        }
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.options.connect_timeout, self.connect()).await {
            Ok(Ok(send)) => {
                link.failures = 0;
                link.retry_at = None;
                link.send = Some(send.clone());
                link.generation += 1;
                self.set_status(PeerStatus::Connected);
                tracing::info!(peer = %self.address, "exchange: connected");
                Ok((send, link.generation))
            }
            result => {
                let error = match result {
                    Ok(Err(e)) => e,
                    _ => format!("no connection within {:?}", self.options.connect_timeout),
                };
                link.failures += 1;
                link.retry_at = Some(Instant::now() + self.options.backoff(link.failures));
                self.set_status(PeerStatus::Unreachable {
                    error: error.clone(),
                });
                Err(error)
            }
        }
    }

    fn set_status(&self, status: PeerStatus) {
        let mut current = lock(&self.status);
        if !matches!(*current, PeerStatus::Refused { .. }) {
            *current = status;
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = TcpStream::connect(self.address.as_str())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.address))?;
        let _ = stream.set_nodelay(true);
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP/2 handshake with {} failed: {e}", self.address))?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(peer = %address, %error, "exchange: connection closed");
            }
        });
        Ok(send)
    }

    /// Forgets a broken connection (unless another delivery replaced it already).
    async fn drop_connection(&self, generation: u64) {
        let mut link = self.link.lock().await;
        if link.generation == generation {
            link.send = None;
        }
    }
}
