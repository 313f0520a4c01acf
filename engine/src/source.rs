//! The source side: the [`Source`] trait every connector implements, the
//! [`SourceContext`] it runs with, and the messages it sends the processor.
//!
//! A source reads raw payloads from outside (a file, a queue, a socket) and
//! hands them to [`SourceOutput::emit`] as a [`RawBatch`] together with its
//! position *after* the batch. The output decodes the payloads in the
//! source's own task/thread (so parsing runs in parallel with the
//! operators), routes bad input to dead letters, and sends the batch over a
//! bounded channel: when the pipeline is busy, `emit` waits (backpressure).
//!
//! Positions are opaque bytes per partition; the engine stores them in every
//! checkpoint and gives them back in [`SourceContext::restored`] on restart.
//! A source releases upstream (acks, commits, journal truncation) only when
//! a [`Commit`] arrives, i.e. after the checkpoint covering those positions
//! is durable.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::batch::{Batch, RawBuf};
use crate::dead_letter::DeadLetter;
use crate::decode::Decoder;
pub use crate::health::SourceHealth;
use crate::operator::{Combiner, Emitter};

/// A boxed, sendable future (the return type of connector entry points).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One raw event inside a [`RawBatch`] buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEvent {
    /// Byte offset of the payload in the batch's buffer.
    pub start: u32,
    /// Length of the payload in the buffer, in bytes (of the kept prefix
    /// when `oversized`).
    pub len: u32,
    /// Offset of the event in its partition (deterministic across replays).
    pub offset: u64,
    /// When the event was larger than the source's limit: its full length
    /// (the buffer holds a truncated prefix). It becomes a dead letter.
    pub oversized: Option<u64>,
}

/// Raw payloads read from one partition, plus the position after them.
#[derive(Debug, Clone)]
pub struct RawBatch {
    /// The partition the payloads were read from.
    pub partition: u32,
    /// The shared buffer holding every payload of the batch.
    pub buf: RawBuf,
    /// Where each event lies in `buf`, in read order.
    pub events: Vec<RawEvent>,
    /// The position to resume from once this batch is processed.
    pub position: Vec<u8>,
    /// Bytes consumed from the source by this batch (for metrics/progress).
    pub bytes: u64,
}

impl RawBatch {
    /// A batch of partition 0 holding `lines` as its events, at offsets 0,
    /// 1, ..., with no position (for tests and tools).
    pub fn of_lines(lines: &[&str]) -> RawBatch {
        let mut buf = Vec::new();
        let mut events = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            events.push(RawEvent {
                start: buf.len() as u32,
                len: line.len() as u32,
                offset: i as u64,
                oversized: None,
            });
            buf.extend_from_slice(line.as_bytes());
        }
        RawBatch {
            partition: 0,
            buf: Arc::new(buf),
            events,
            position: Vec::new(),
            bytes: 0,
        }
    }
}

/// Sent to a source when a checkpoint covering `positions` is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The epoch of the checkpoint that became durable.
    pub epoch: u64,
    /// Partition -> position, as the source emitted them.
    pub positions: BTreeMap<u32, Vec<u8>>,
}

/// Errors that stop a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A user mistake (missing file, bad option) — not worth retrying.
    #[error("{0}")]
    Config(String),
    /// Reading from outside failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. the file being read.
        context: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else that failed outside sluice (broker gone for good...).
    #[error("{0}")]
    External(String),
    /// Something else outside sluice failed, with its cause.
    #[error("{context}")]
    ExternalCause {
        /// What was being done when it failed.
        context: String,
        /// The underlying error.
        #[source]
        source: crate::error::BoxError,
    },
    /// A bug: a broken invariant, a panic in the source's task.
    #[error("{0}")]
    Internal(String),
}

impl crate::error::Classify for SourceError {
    fn class(&self) -> crate::error::ErrorClass {
        use crate::error::ErrorClass;
        match self {
            SourceError::Config(_) => ErrorClass::User,
            SourceError::Io { .. }
            | SourceError::External(_)
            | SourceError::ExternalCause { .. } => ErrorClass::External,
            SourceError::Internal(_) => ErrorClass::Internal,
        }
    }
}

/// Messages from sources to the processor.
#[derive(Debug)]
pub enum SourceEvent {
    /// Decoded rows, their dead letters, and the position after them.
    Data {
        /// Index of the source among the pipeline's sources.
        source: usize,
        /// The partition the events were read from.
        partition: u32,
        /// The events that decoded, as rows.
        batch: Batch,
        /// The events that did not decode (or were oversized).
        dead: Vec<DeadLetter>,
        /// The position to resume from once this batch is processed.
        position: Vec<u8>,
        /// Bytes consumed from the source by this batch.
        bytes: u64,
        /// Raw events in the batch, decoded or dead.
        events: u64,
        /// When the source folds its rows ([`SourceOutput::with_fold`]):
        /// their partial results, for the one operator the source feeds.
        /// `batch` then holds no rows, only their metadata (times and
        /// offsets, for the watermarks).
        folded: Option<Box<Folded>>,
    },
    /// The source now reads these partitions (watermarks wait for all of them).
    Partitions {
        /// Index of the source among the pipeline's sources.
        source: usize,
        /// Every partition it reads from now on.
        partitions: Vec<u32>,
    },
    /// A partition reached its end (bounded input): it no longer holds the watermark back.
    PartitionDone {
        /// Index of the source among the pipeline's sources.
        source: usize,
        /// The partition fully read.
        partition: u32,
    },
    /// The source no longer reads these partitions (a consumer-group
    /// rebalance gave them to another worker). Unlike `PartitionDone` this
    /// is not the end of the input: they stop holding the watermark back,
    /// but if no partition is left the watermark stays where it is.
    PartitionsReleased {
        /// Index of the source among the pipeline's sources.
        source: usize,
        /// The partitions it stopped reading.
        partitions: Vec<u32>,
    },
    /// The source finished (bounded input fully read, or shutdown).
    Finished {
        /// Index of the source among the pipeline's sources.
        source: usize,
    },
    /// The source failed.
    Failed {
        /// Index of the source among the pipeline's sources.
        source: usize,
        /// Why it stopped.
        error: SourceError,
    },
}

/// Bytes done / bytes total, for progress bars (`sluice replay`).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes the source has emitted so far.
    pub done: AtomicU64,
    /// Bytes the source expects to read in all, as far as it has said
    /// (stays 0 for a source that does not report a size).
    pub total: AtomicU64,
}

impl Progress {
    /// Counts `n` more bytes as read (the output does this on every batch).
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` bytes to the expected total (a source that knows its input's
    /// size calls this, e.g. per file).
    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }
}

/// The rows of one batch folded into partial results where they were
/// decoded, for the one operator the source feeds.
pub struct Folded {
    /// The combiner holding the partial results.
    pub combiner: Box<dyn Combiner>,
    /// The rows the combiner refused, as the operator would have refused
    /// them (after the decoder's dead letters).
    pub dead: Vec<DeadLetter>,
    /// The batch as read, to decode again when the operator does not take
    /// the partial results of this batch ([`Folded::rows`]).
    raw: RawBatch,
    decoder: Arc<Decoder>,
}

impl Folded {
    /// The partial results of `combiner`, which folded the rows of `batch`
    /// (decoded from `raw`): either it folded some of them while they were
    /// decoded and `refused` holds the others, which it takes now, or it
    /// takes every row of `batch` now. Leaves `batch` with its metadata only.
    fn new(
        mut combiner: Box<dyn Combiner>,
        batch: &mut Batch,
        refused: Option<Batch>,
        raw: RawBatch,
        decoder: Arc<Decoder>,
    ) -> Self {
        let mut out = Vec::new();
        let mut dead = Vec::new();
        combiner.add_batch(
            refused.as_ref().unwrap_or(batch),
            &mut Emitter {
                out: &mut out,
                dead: &mut dead,
            },
        );
        batch.rows = Vec::new();
        batch.raw = None;
        Folded {
            combiner,
            dead,
            raw,
            decoder,
        }
    }

    /// The rows themselves, decoded again (the same rows, in the same
    /// order, as the first time); their dead letters were sent already.
    pub fn rows(&self) -> Batch {
        self.decoder.decode(&self.raw).0
    }
}

impl std::fmt::Debug for Folded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Folded")
            .field("partials", &self.combiner.len())
            .field("dead", &self.dead.len())
            .field("events", &self.raw.events.len())
            .finish()
    }
}

/// The channel closed: the pipeline is shutting down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the pipeline is shutting down")]
pub struct Closed;

/// A cloneable handle sources use to emit data (usable from async tasks
/// and from plain threads).
#[derive(Clone)]
pub struct SourceOutput {
    index: usize,
    decoder: Arc<Decoder>,
    tx: mpsc::Sender<SourceEvent>,
    progress: Arc<Progress>,
    health: Arc<SourceHealth>,
    fold: Option<Arc<dyn Combiner>>,
}

impl SourceOutput {
    /// An output sending to `tx` (the engine builds these; public for connector tests).
    pub fn new(
        index: usize,
        decoder: Arc<Decoder>,
        tx: mpsc::Sender<SourceEvent>,
        progress: Arc<Progress>,
    ) -> Self {
        SourceOutput {
            index,
            decoder,
            tx,
            progress,
            health: Arc::default(),
            fold: None,
        }
    }

    /// Folds the rows of every batch into partial results with a combiner
    /// like `combiner` where they are decoded (on the source's thread, or a
    /// decoding thread), so that the operator they go to merges one
    /// partial result per key instead of taking every row (the engine does
    /// this for a source whose only reader is an all-time aggregate).
    pub fn with_fold(mut self, combiner: Arc<dyn Combiner>) -> Self {
        self.fold = Some(combiner);
        self
    }

    /// Reports this source's health to `health` (the engine does this).
    pub fn with_health(mut self, health: Arc<SourceHealth>) -> Self {
        self.health = health;
        self
    }

    /// Where the source reports whether it is up and how far behind it is
    /// (for `/ready`). Declaring partitions counts as started and up unless
    /// the source said otherwise before.
    pub fn health(&self) -> &Arc<SourceHealth> {
        &self.health
    }

    /// Decodes a batch into the message for the processor.
    pub(crate) fn data(&self, mut raw: RawBatch) -> SourceEvent {
        let mut combiner = self.fold.as_ref().map(|proto| proto.fresh());
        let (mut batch, dead, refused) = self.decoder.decode_folding(&raw, combiner.as_deref_mut());
        self.progress.add_done(raw.bytes);
        self.health.emitted(raw.events.len() as u64);
        let (partition, events, bytes) = (raw.partition, raw.events.len() as u64, raw.bytes);
        let position = std::mem::take(&mut raw.position);
        let folded = match combiner {
            Some(combiner) if !batch.meta.is_empty() => {
                let decoder = self.decoder.clone();
                let folded = Folded::new(combiner, &mut batch, refused, raw, decoder);
                Some(Box::new(folded))
            }
            _ => None,
        };
        SourceEvent::Data {
            source: self.index,
            partition,
            events,
            batch,
            dead,
            position,
            bytes,
            folded,
        }
    }

    /// Decodes and sends a batch, waiting while the pipeline is busy.
    pub async fn emit(&self, raw: RawBatch) -> Result<(), Closed> {
        let msg = self.data(raw);
        self.tx.send(msg).await.map_err(|_| Closed)
    }

    /// [`emit`](Self::emit) for sources running on their own thread.
    pub fn emit_blocking(&self, raw: RawBatch) -> Result<(), Closed> {
        let msg = self.data(raw);
        self.tx.blocking_send(msg).map_err(|_| Closed)
    }

    /// Sends an already decoded message (see [`crate::decode_pool`]).
    pub(crate) fn send_blocking(&self, msg: SourceEvent) -> Result<(), Closed> {
        self.tx.blocking_send(msg).map_err(|_| Closed)
    }

    /// A pool decoding this source's batches on `threads` threads and
    /// sending them in order (see [`crate::decode_pool`]); for sources
    /// running on their own thread.
    pub fn decode_pool(&self, threads: usize) -> crate::decode_pool::DecodePool {
        crate::decode_pool::DecodePool::new(self.clone(), threads)
    }

    /// Declares the partitions this source reads.
    pub async fn partitions(&self, partitions: Vec<u32>) -> Result<(), Closed> {
        self.health.started();
        let msg = SourceEvent::Partitions {
            source: self.index,
            partitions,
        };
        self.tx.send(msg).await.map_err(|_| Closed)
    }

    /// [`partitions`](Self::partitions) for sources running on their own thread.
    pub fn partitions_blocking(&self, partitions: Vec<u32>) -> Result<(), Closed> {
        self.health.started();
        let msg = SourceEvent::Partitions {
            source: self.index,
            partitions,
        };
        self.tx.blocking_send(msg).map_err(|_| Closed)
    }

    /// Marks a partition as fully read (bounded input).
    pub async fn partition_done(&self, partition: u32) -> Result<(), Closed> {
        let msg = SourceEvent::PartitionDone {
            source: self.index,
            partition,
        };
        self.tx.send(msg).await.map_err(|_| Closed)
    }

    /// [`partition_done`](Self::partition_done) for sources running on their
    /// own thread.
    pub fn partition_done_blocking(&self, partition: u32) -> Result<(), Closed> {
        let msg = SourceEvent::PartitionDone {
            source: self.index,
            partition,
        };
        self.tx.blocking_send(msg).map_err(|_| Closed)
    }

    /// Stops reading `partitions` for now (see [`SourceEvent::PartitionsReleased`]);
    /// declare them again with [`Self::partitions_blocking`] when they come back.
    pub fn partitions_released_blocking(&self, partitions: Vec<u32>) -> Result<(), Closed> {
        let msg = SourceEvent::PartitionsReleased {
            source: self.index,
            partitions,
        };
        self.tx.blocking_send(msg).map_err(|_| Closed)
    }

    /// The byte counters of this source (see [`Progress`]).
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// The largest event the decoder accepts, in bytes.
    pub fn max_event_bytes(&self) -> usize {
        self.decoder.max_event_bytes()
    }
}

/// A shutdown signal: `true` once the pipeline is stopping.
pub type Shutdown = watch::Receiver<bool>;

/// Waits until `shutdown` turns true (or its sender is gone).
pub async fn wait_shutdown(shutdown: &mut Shutdown) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Everything a running source gets from the engine.
pub struct SourceContext {
    /// The source's name in the pipeline file (for logs and metric labels).
    pub name: Arc<str>,
    /// The pipeline's name (for metric labels).
    pub pipeline: Arc<str>,
    /// The pipeline's state directory in effect for this run (sources keep
    /// their own durable files, e.g. a journal, below it).
    pub state_dir: PathBuf,
    /// Positions from the last checkpoint, per partition (empty on a fresh start).
    pub restored: BTreeMap<u32, Vec<u8>>,
    /// Read only what is there now and finish (replay, bounded runs).
    pub bounded: bool,
    /// The operator accepted starting without the state of an earlier run
    /// (`sluice run --accept-empty-state`, `sluice replay`): a source that
    /// finds traces of one (e.g. journal records deleted by an earlier
    /// checkpoint) without a restored position may go on. Otherwise it must
    /// refuse to start rather than lose or repeat input silently.
    pub accept_empty_state: bool,
    /// The state was restored from the remote copy because the state
    /// directory was lost (`[state] remote`): files a source kept in the
    /// state directory (the HTTP journal) are gone with it, and its
    /// restored positions point into them.
    pub restored_remotely: bool,
    /// Turns true when the source must stop (see [`wait_shutdown`]).
    pub shutdown: Shutdown,
    /// Checkpoint completions, to release upstream.
    pub commits: mpsc::UnboundedReceiver<Commit>,
    /// Where the source emits its data and partition changes.
    pub output: SourceOutput,
}

/// A configured source, ready to run.
pub trait Source: Send + 'static {
    /// Runs until the input ends (bounded) or shutdown is signalled. Must
    /// resume from `ctx.restored` and must not release anything upstream
    /// before the matching [`Commit`] arrives.
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>>;

    /// How the workers of a multi-worker run share this source's input
    /// (see [`Distribution`]).
    fn distribution(&self) -> Distribution {
        Distribution::PerWorker
    }

    /// For a [`Distribution::SharedQueue`] source: how a worker that takes
    /// key groups over merges the positions its predecessors released into
    /// its own (see [`MergePositions`]). `None`: positions stay with the
    /// worker that wrote them.
    fn merge_positions(&self) -> Option<MergePositions> {
        None
    }
}

/// Merges source positions at a rescale: `mine` (the position this
/// worker's state directory holds, if any) and `released` (the positions
/// other workers released, one per worker) into one position that holds
/// every message any of them holds as read but possibly not yet
/// acknowledged upstream (a message held by two of them, two publishes of
/// one content, is held twice). Such a message may be redelivered to any
/// worker of the new count, and its effect is already in the state the
/// new owners took: the worker it reaches must skip it, as it would skip
/// a redelivery of its own. The engine merges each set of released
/// positions once (a start that redoes a takeover does not merge again).
pub type MergePositions = fn(mine: Option<&[u8]>, released: &[&[u8]]) -> Result<Vec<u8>, String>;

/// How the workers of a multi-worker run share a source's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Each worker reads input of its own (HTTP requests the Service sends
    /// it, AMQP messages the broker gives it, its own files): a partition
    /// number means something only on the worker that read it.
    PerWorker,
    /// The workers share the partitions of one log (a Kafka consumer
    /// group): partition `p` is the same everywhere and may move from one
    /// worker to another.
    SharedPartitions,
    /// The workers compete for the messages of one queue (AMQP): a message
    /// not yet acknowledged may be redelivered to any worker, and offsets
    /// are message ids, not positions in an order.
    SharedQueue,
    /// Only worker 0 runs the source (one resume token, e.g. a MongoDB
    /// change stream); the others skip it.
    FirstWorker,
}
