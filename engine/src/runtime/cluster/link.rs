//! The link to one other worker: batches sent in order with a bounded
//! number unacknowledged, acknowledgements counted in order, status for
//! readiness and metrics.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Label;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::exchange::marks::{PartitionId, PartitionMark};
use crate::exchange::wire::PartitionBatch;
use crate::exchange::{PeerSender, PeerStatus, SendError, SenderOptions};
use crate::metrics as m;

/// The link to one other worker.
pub(super) struct Peer {
    pub(super) worker: u32,
    pub(super) tx: mpsc::UnboundedSender<Arc<Vec<PartitionBatch>>>,
    /// Batches handed to the link.
    pub(super) enqueued: u64,
    /// `enqueued` after the last batch that carried records or the end of
    /// input (heartbeats alone need not arrive: a newer one replaces them).
    pub(super) enqueued_data: u64,
    /// The end of this worker's input went out to this peer.
    pub(super) finished_sent: bool,
    /// Batches the peer holds durably.
    pub(super) durable: watch::Receiver<u64>,
    pub(super) status: watch::Receiver<PeerStatus>,
    /// From the link's first acknowledgement (of this process's first
    /// session): per partition of this worker, the offset from which rows
    /// may be folded into partial results for this peer (see
    /// [`JournaledMarks`](crate::exchange::marks::JournaledMarks)); `None`
    /// until then. It stays for the life of the process: rows folded after
    /// it are past everything an earlier process sent, and a later session
    /// of this process (after a refusal) sends only rows past it too, so
    /// folding never stops and starts again (which would put records after
    /// partial results of lower offsets).
    pub(super) fold_from: watch::Receiver<Option<Arc<FoldFrom>>>,
    pub(super) labels: Vec<Label>,
}

/// Per partition, the first offset that may be folded (absent: any).
pub(super) type FoldFrom = HashMap<PartitionId, u64>;

type Waiting = Pin<Box<dyn Future<Output = Result<Vec<PartitionMark>, SendError>> + Send>>;

impl Peer {
    pub(super) fn start(
        worker: u32,
        address: String,
        options: SenderOptions,
        labels: Vec<Label>,
    ) -> Peer {
        let (tx, rx) = mpsc::unbounded_channel();
        let (durable_tx, durable) = watch::channel(0u64);
        let (status_tx, status) = watch::channel(PeerStatus::Connecting);
        let (fold_tx, fold_from) = watch::channel(None);
        let ends = LinkEnds {
            durable: durable_tx,
            status: status_tx,
            fold_from: fold_tx,
        };
        tokio::spawn(link(address, options, rx, ends, labels.clone()).in_current_span());
        Peer {
            worker,
            tx,
            enqueued: 0,
            enqueued_data: 0,
            finished_sent: false,
            durable,
            status,
            fold_from,
            labels,
        }
    }

    pub(super) fn send(&mut self, parts: Vec<PartitionBatch>, data: bool) {
        if self.tx.send(Arc::new(parts)).is_ok() {
            self.enqueued += 1;
            if data {
                self.enqueued_data = self.enqueued;
            }
        }
    }
}

/// One peer's link: sends batches in order with up to `max_in_flight`
/// unacknowledged, counts the durable ones in order, and after a refusal
/// (another topology) waits and starts over with a new session, sending
/// again everything not acknowledged (the peer drops what it holds).
/// What a link reports to the processor.
struct LinkEnds {
    durable: watch::Sender<u64>,
    status: watch::Sender<PeerStatus>,
    fold_from: watch::Sender<Option<Arc<FoldFrom>>>,
}

async fn link(
    address: String,
    mut options: SenderOptions,
    mut rx: mpsc::UnboundedReceiver<Arc<Vec<PartitionBatch>>>,
    ends: LinkEnds,
    labels: Vec<Label>,
) {
    let LinkEnds {
        durable,
        status,
        fold_from,
    } = ends;
    let max_in_flight = options.max_in_flight.max(1);
    let mut sender = PeerSender::new(address.clone(), options.clone());
    let mut unacked: VecDeque<(Arc<Vec<PartitionBatch>>, Waiting, Instant)> = VecDeque::new();
    let mut done = 0u64;
    let mut status_tick = tokio::time::interval(Duration::from_millis(100));
    let mut open = true;
    loop {
        tokio::select! {
            next = rx.recv(), if open && unacked.len() < max_in_flight => match next {
                Some(parts) => match sender.send(&parts).await {
                    Ok(d) => {
                        metrics::counter!(m::EXCHANGE_SENT_BYTES, labels.clone()).increment(d.bytes() as u64);
                        unacked.push_back((parts, Box::pin(d.wait()), Instant::now()));
                    }
                    Err(_) => {
                        // refused: queue it and start over below
                        unacked.push_back((parts, Box::pin(async { Err(SendError::Closed) }), Instant::now()));
                    }
                },
                None => open = false,
            },
            result = async { (&mut unacked.front_mut().expect("non-empty").1).await }, if !unacked.is_empty() => {
                match result {
                    Ok(marks) => {
                        if fold_from.borrow().is_none() {
                            // The first acknowledgement: no earlier process
                            // can journal anything more.
                            let from = marks
                                .into_iter()
                                .map(|m| ((m.source, m.partition), m.next_offset))
                                .collect();
                            fold_from.send_replace(Some(Arc::new(from)));
                        }
                        let (_, _, sent) = unacked.pop_front().expect("non-empty");
                        done += 1;
                        durable.send_replace(done);
                        metrics::counter!(m::EXCHANGE_ACKED_BATCHES, labels.clone()).increment(1);
                        metrics::histogram!(m::EXCHANGE_DELIVERY_LATENCY, labels.clone())
                            .record(sent.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        let reason = match &e {
                            SendError::Refused { reason, .. } => reason.clone(),
                            SendError::Closed => sender_status_reason(&sender),
                        };
                        tracing::error!(peer = %address, %reason,
                            "the worker refuses this worker's batches; waiting for it to run the same pipeline and worker count");
                        status.send_replace(PeerStatus::Refused { reason });
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        options.session = options.session.saturating_add(1).max(
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_nanos() as u64),
                        );
                        sender = PeerSender::new(address.clone(), options.clone());
                        let pending: Vec<Arc<Vec<PartitionBatch>>> =
                            unacked.drain(..).map(|(p, _, _)| p).collect();
                        for parts in pending {
                            match sender.send(&parts).await {
                                Ok(d) => unacked.push_back((parts, Box::pin(d.wait()), Instant::now())),
                                Err(_) => unacked.push_back((parts, Box::pin(async { Err(SendError::Closed) }), Instant::now())),
                            }
                        }
                    }
                }
            },
            _ = status_tick.tick(), if open => {
                let mut now = sender.status();
                // A peer that takes batches but never answers (a frozen
                // process) counts as unreachable once the oldest batch
                // waits longer than a request may take.
                if let (PeerStatus::Connected, Some((_, _, sent))) = (&now, unacked.front()) {
                    if sent.elapsed() > options.request_timeout {
                        now = PeerStatus::Unreachable {
                            error: format!("no answer for {} s", sent.elapsed().as_secs()),
                        };
                    }
                }
                if *status.borrow() != now {
                    status.send_replace(now);
                }
            },
        }
        if !open {
            // The run is over: what is not acknowledged is covered by the
            // last checkpoint's gate or sent again at the next start.
            break;
        }
    }
}

fn sender_status_reason(sender: &PeerSender) -> String {
    match sender.status() {
        PeerStatus::Refused { reason } => reason,
        other => format!("{other:?}"),
    }
}
