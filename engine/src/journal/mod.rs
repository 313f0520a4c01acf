//! A durable, append-only journal on local disk: the ordered log behind
//! the HTTP source (which cannot replay its input) and behind each worker's
//! inbound exchange traffic (`exchange::inbound`).
//!
//! Events are appended as records to segment files `{first_seq:020}.log` in
//! one directory (format in [`segment`]); each record gets the next sequence
//! number, starting at 0. A source appends what it receives, answers its
//! client only once [`Journal::append`] has resolved (the data is on disk),
//! reads the journal back with a [`JournalReader`] (positions = sequence
//! numbers), and deletes what a checkpoint covers with
//! [`Journal::truncate_before`].
//!
//! Guarantees:
//! - **Durability**: `append` resolves only after the records are written
//!   and, with `fsync` on, fsynced. A dedicated writer thread does *group
//!   commit*: it takes every request queued at that moment, writes them all,
//!   fsyncs once, then completes each request. Concurrent appends share
//!   fsyncs, so throughput grows with concurrency.
//! - **Order**: each append gets a gapless range of sequence numbers;
//!   readers see records in sequence order, and only durable ones.
//! - **Recovery**: [`Journal::open`] validates every record (length and
//!   CRC-32). A torn tail of the *last* segment (damage with no valid record
//!   after it: a crash during a write, before that write was acknowledged)
//!   is cut off with a warning; damage anywhere else is an error, never
//!   skipped silently.
//! - **Recovery never drops acknowledged records**: damage followed by a
//!   valid record, a gap between segments, a missing newest segment (the
//!   `HEAD` file names the active segment) or a journal whose segments are
//!   all gone is an error, never silently skipped.
//! - **Failure is all or nothing**: if a write or fsync fails (a full
//!   disk), the whole group is cut back off the files (segments it created
//!   are deleted) and its requests are answered with
//!   [`JournalError::WriteFailed`]; none of their records exist after a
//!   restart, and later appends continue normally. Only if that cleanup
//!   fails too does the journal stop accepting appends
//!   ([`JournalError::Failed`]) until it is reopened. (A crash in the middle
//!   of the cleanup can leave some of the failed records behind.)
//! - One process at a time: the directory is locked while open.

mod reader;
mod segment;
mod tail;
mod writer;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use metrics::Label;
use tokio::sync::{oneshot, watch};

pub use reader::{JournalReader, ReadBatch};
use segment::{recover, segment_path, SegmentMeta};
use writer::{Payload, Request, Writer};

/// How a journal behaves.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// A segment is closed and a new one started once it would exceed this
    /// size (a single larger record still gets a segment of its own).
    pub segment_bytes: u64,
    /// fsync each group commit before acknowledging it. Without it, an
    /// acknowledged append survives a process crash but not an OS crash.
    pub fsync: bool,
    /// Refuse appends ([`JournalError::Backlog`]) while more than this many
    /// events are appended but not yet committed (see
    /// [`truncate_before`](Journal::truncate_before)).
    pub max_backlog_events: Option<u64>,
    /// Labels of the `sluice_journal_*` gauges; empty: no metrics.
    pub metric_labels: Vec<Label>,
    /// Checkpointed segments to keep anyway (the newest ones), so that
    /// `sluice replay` can rebuild state from them; 0 deletes every segment
    /// as soon as a checkpoint covers it.
    pub retain_segments: usize,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: 64 << 20,
            fsync: true,
            max_backlog_events: None,
            metric_labels: Vec::new(),
            retain_segments: 0,
        }
    }
}

/// What can go wrong with a journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A record failed validation where it cannot be a torn tail.
    #[error("the journal is damaged: {path} at byte {offset}: {reason}")]
    Corrupt {
        /// The damaged segment file.
        path: PathBuf,
        /// Where in it the bad record starts.
        offset: u64,
        /// What is wrong with the record.
        reason: String,
    },
    /// Another process (or another `Journal` in this one) has the directory open.
    #[error("the journal {0} is in use by another process")]
    Locked(PathBuf),
    /// Too many events wait for a checkpoint; retry later.
    #[error("the journal backlog is full: {backlog} events wait for a checkpoint (limit {limit})")]
    Backlog {
        /// Events waiting for a checkpoint.
        backlog: u64,
        /// The configured limit.
        limit: u64,
    },
    /// This append could not be written (e.g. the disk is full). None of
    /// its records were kept: retrying it cannot duplicate anything.
    #[error("cannot write to the journal (nothing of this append was kept): {0}")]
    WriteFailed(String),
    /// A write failed and removing its partial records failed too; reopen
    /// the journal to continue.
    #[error("the journal stopped accepting writes after a failure: {0}")]
    Failed(String),
    /// A record larger than the format allows (4 GiB).
    #[error("a record of {0} bytes is too large for the journal")]
    TooLarge(usize),
    /// Reading from a sequence number whose segment was deleted.
    #[error("journal records before {first} were deleted; cannot read from {seq}")]
    Truncated {
        /// The sequence number asked for.
        seq: u64,
        /// The oldest sequence number still stored.
        first: u64,
    },
    /// The writer thread is gone (the journal is closing).
    #[error("the journal is closed")]
    Closed,
}

impl JournalError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> JournalError {
        let context = context.into();
        move |source| JournalError::Io { context, source }
    }
}

/// Events to append, stored back to back in one buffer (no allocation per
/// event). Build with [`push`](Self::push) or [`from_spans`](Self::from_spans).
#[derive(Debug, Clone, Default)]
pub struct AppendBatch {
    buf: Vec<u8>,
    spans: Vec<Range<usize>>,
}

impl AppendBatch {
    /// An empty batch.
    pub fn new() -> Self {
        AppendBatch::default()
    }

    /// Takes `buf` as is; event `i` is `buf[spans[i]]`.
    ///
    /// # Errors
    /// [`JournalError::TooLarge`] if a span is out of `buf` or longer than a record can be.
    pub fn from_spans(buf: Vec<u8>, spans: Vec<Range<usize>>) -> Result<Self, JournalError> {
        for s in &spans {
            if s.start > s.end || s.end > buf.len() || s.len() > u32::MAX as usize {
                return Err(JournalError::TooLarge(s.end.saturating_sub(s.start)));
            }
        }
        Ok(AppendBatch { buf, spans })
    }

    /// Copies one event in.
    pub fn push(&mut self, event: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(event);
        self.spans.push(start..self.buf.len());
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there are no events.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub(crate) fn event(&self, i: usize) -> &[u8] {
        &self.buf[self.spans[i].clone()]
    }
}

/// Figures for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Bytes of durable records on disk.
    pub bytes: u64,
    /// Segment files on disk.
    pub segments: usize,
    /// The oldest sequence number still stored.
    pub first_seq: u64,
    /// The sequence number the next record will get (= durable records end).
    pub next_seq: u64,
    /// The highest position passed to `truncate_before`.
    pub committed_seq: u64,
    /// Events appended but not committed: `next_seq - committed_seq`.
    pub backlog: u64,
    /// fsync calls made by the writer (data files).
    pub fsyncs: u64,
    /// Group commits done.
    pub group_commits: u64,
}

/// State shared by the handle, the writer thread and readers.
pub(crate) struct Shared {
    dir: PathBuf,
    segments: Mutex<BTreeMap<u64, SegmentMeta>>,
    /// One past the last durable record.
    durable: watch::Sender<u64>,
    committed: AtomicU64,
    /// Events handed to the writer and not yet written.
    queued: AtomicU64,
    failed: Mutex<Option<String>>,
    fsyncs: AtomicU64,
    groups: AtomicU64,
    /// The newest durable records in memory, for readers that keep up.
    tail: Mutex<tail::Tail>,
    fsync: bool,
    labels: Vec<Label>,
    /// Test hook: bytes the disk can still take; a flush beyond them
    /// writes what fits and fails.
    #[cfg(test)]
    pub(crate) fault: Mutex<Option<usize>>,
}

/// Locks a mutex, ignoring poisoning (the protected data stays consistent:
/// every update is a plain assignment).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn durable_seq(&self) -> u64 {
        *self.durable.borrow()
    }

    fn failure(&self) -> Option<String> {
        lock(&self.failed).clone()
    }

    /// Updates the gauges (when labels were given).
    fn export(&self, bytes: u64) {
        if self.labels.is_empty() {
            return;
        }
        let backlog = self
            .durable_seq()
            .saturating_sub(self.committed.load(Ordering::Acquire));
        metrics::gauge!(crate::metrics::JOURNAL_BYTES, self.labels.clone()).set(bytes as f64);
        metrics::gauge!(crate::metrics::JOURNAL_BACKLOG, self.labels.clone()).set(backlog as f64);
        // For a journaled source, its lag is the journal backlog.
        metrics::gauge!(crate::metrics::SOURCE_LAG, self.labels.clone()).set(backlog as f64);
    }
}

/// fsyncs a directory, making file creations and deletions in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(JournalError::io(format!("cannot fsync {}", dir.display())))
}

/// A handle on an open journal; clones share it. The writer thread stops
/// when the last handle (or reader) is dropped.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    max_backlog: Option<u64>,
    retain_segments: usize,
    /// Holds the directory lock while open.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` and recovers it:
    /// every record is validated, a torn tail of the last segment is cut
    /// off. Blocking: call it from a blocking context in async code.
    ///
    /// # Errors
    /// I/O errors, [`JournalError::Locked`] if the directory is in use,
    /// [`JournalError::Corrupt`] for damage other than a torn tail.
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<Journal, JournalError> {
        Journal::open_from(dir, opts, 0)
    }

    /// [`Journal::open`], except that a journal created here (the
    /// directory holds none) numbers its first record `start` rather than
    /// 0: a journal that replaces one lost with its volume continues its
    /// numbering, so that positions and the ids derived from them never
    /// repeat.
    ///
    /// # Errors
    /// As [`Journal::open`].
    pub fn open_from(
        dir: &Path,
        opts: JournalOptions,
        start: u64,
    ) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir)
            .map_err(JournalError::io(format!("cannot create {}", dir.display())))?;
        let lock_path = dir.join("LOCK");
        let existed = lock_path.exists();
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(JournalError::io(format!(
                "cannot open {}",
                lock_path.display()
            )))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked(dir.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(JournalError::io(format!(
                    "cannot lock {}",
                    lock_path.display()
                ))(e))
            }
        }
        let segments = recover(dir, opts.fsync, existed, start)?;
        let (&active_first, active) = segments.iter().next_back().ok_or(JournalError::Closed)?;
        let next_seq = active.end_seq;
        let active = active.clone();
        let first_seq = segments.keys().next().copied().unwrap_or(active_first);
        let path = segment_path(dir, active_first);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(JournalError::io(format!("cannot open {}", path.display())))?;
        let bytes = segments.values().map(|s| s.bytes).sum();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            segments: Mutex::new(segments),
            durable: watch::Sender::new(next_seq),
            committed: AtomicU64::new(first_seq),
            queued: AtomicU64::new(0),
            failed: Mutex::new(None),
            fsyncs: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            tail: Mutex::new(tail::Tail::default()),
            fsync: opts.fsync,
            labels: opts.metric_labels,
            #[cfg(test)]
            fault: Mutex::new(None),
        });
        shared.export(bytes);
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(shared.clone(), file, active, opts.segment_bytes.max(1));
        let handle = std::thread::Builder::new()
            .name("sluice-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(JournalError::io("cannot start the journal writer thread"))?;
        Ok(Journal {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                writer: Some(handle),
                max_backlog: opts.max_backlog_events,
                retain_segments: opts.retain_segments,
                _lock: lock_file,
            }),
        })
    }

    /// Appends `events` (one record each) and resolves once they are
    /// durable, with the sequence numbers they got. Cancelling the future
    /// does not cancel the write.
    ///
    /// # Errors
    /// [`JournalError::Backlog`] when the backlog limit would be exceeded
    /// (nothing is written), [`JournalError::Failed`] after a disk failure,
    /// [`JournalError::TooLarge`] for a record over 4 GiB.
    pub async fn append(&self, events: Vec<Vec<u8>>) -> Result<Range<u64>, JournalError> {
        if let Some(e) = events.iter().find(|e| e.len() > u32::MAX as usize) {
            return Err(JournalError::TooLarge(e.len()));
        }
        self.submit(Payload::Owned(events)).await
    }

    /// [`append`](Self::append) for events stored in one buffer.
    pub async fn append_batch(&self, batch: AppendBatch) -> Result<Range<u64>, JournalError> {
        self.submit(Payload::Batch(batch)).await
    }

    async fn submit(&self, payload: Payload) -> Result<Range<u64>, JournalError> {
        let shared = &self.inner.shared;
        if let Some(msg) = shared.failure() {
            return Err(JournalError::Failed(msg));
        }
        let n = payload.len() as u64;
        if n == 0 {
            let next = shared.durable_seq();
            return Ok(next..next);
        }
        let queued = shared.queued.fetch_add(n, Ordering::AcqRel) + n;
        if let Some(limit) = self.inner.max_backlog {
            let backlog = self.backlog() + queued;
            if backlog > limit {
                shared.queued.fetch_sub(n, Ordering::AcqRel);
                return Err(JournalError::Backlog {
                    backlog: backlog - n,
                    limit,
                });
            }
        }
        let (done, rx) = oneshot::channel();
        let sent = self
            .inner
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Request { payload, done }).is_ok());
        if !sent {
            shared.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(JournalError::Closed);
        }
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Records that everything before `seq` is committed (checkpointed) and
    /// deletes the segments whose records are all before `seq`. The active
    /// (last) segment is never deleted. Returns how many segments went.
    ///
    /// # Errors
    /// An I/O error deleting a file (the segments not deleted stay usable).
    pub fn truncate_before(&self, seq: u64) -> Result<usize, JournalError> {
        let shared = &self.inner.shared;
        shared.committed.fetch_max(seq, Ordering::AcqRel);
        lock(&shared.tail).commit(seq);
        let doomed: Vec<u64> = {
            let segs = lock(&shared.segments);
            let firsts: Vec<u64> = segs.keys().copied().collect();
            let mut deletable: Vec<u64> = firsts
                .windows(2)
                .take_while(|w| w[1] <= seq)
                .map(|w| w[0])
                .collect();
            // keep the newest checkpointed segments for replays
            let keep = deletable.len().saturating_sub(self.inner.retain_segments);
            deletable.truncate(keep);
            deletable
        };
        let mut deleted = 0;
        let mut result = Ok(());
        for first in &doomed {
            let path = segment_path(&shared.dir, *first);
            // Oldest first, one at a time, so that a failure leaves a
            // contiguous journal behind.
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    result = Err(JournalError::io(format!(
                        "cannot delete {}",
                        path.display()
                    ))(e));
                    break;
                }
            }
            lock(&shared.segments).remove(first);
            deleted += 1;
        }
        if deleted > 0 {
            tracing::debug!(dir = %shared.dir.display(), deleted, before = seq, "deleted committed journal segments");
            if shared.fsync {
                sync_dir(&shared.dir)?;
            }
        }
        shared.export(self.stats().bytes);
        result.map(|()| deleted)
    }

    /// Reads records from `from_seq` on (see [`JournalReader`]).
    pub fn reader(&self, from_seq: u64) -> JournalReader {
        JournalReader::new(self.clone(), from_seq)
    }

    /// The sequence number the next appended record will get; every record
    /// before it is durable.
    pub fn next_seq(&self) -> u64 {
        self.inner.shared.durable_seq()
    }

    /// The oldest sequence number still stored.
    pub fn first_seq(&self) -> u64 {
        lock(&self.inner.shared.segments)
            .keys()
            .next()
            .copied()
            .unwrap_or(0)
    }

    /// Durable events not yet committed.
    pub fn backlog(&self) -> u64 {
        let shared = &self.inner.shared;
        shared
            .durable_seq()
            .saturating_sub(shared.committed.load(Ordering::Acquire))
    }

    /// The failure that stopped appends, if any.
    pub fn failure(&self) -> Option<String> {
        self.inner.shared.failure()
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Sizes and sequence numbers, for metrics and tests.
    pub fn stats(&self) -> JournalStats {
        let shared = &self.inner.shared;
        let (bytes, segments, first_seq) = {
            let segs = lock(&shared.segments);
            (
                segs.values().map(|s| s.bytes).sum(),
                segs.len(),
                segs.keys().next().copied().unwrap_or(0),
            )
        };
        let next_seq = shared.durable_seq();
        let committed_seq = shared.committed.load(Ordering::Acquire);
        JournalStats {
            bytes,
            segments,
            first_seq,
            next_seq,
            committed_seq,
            backlog: next_seq.saturating_sub(committed_seq),
            fsyncs: shared.fsyncs.load(Ordering::Relaxed),
            group_commits: shared.groups.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }
}
