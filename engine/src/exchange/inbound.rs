//! The receive side's durable part: the inbound journal, the order in
//! which batches may enter it, and the reader that hands their new records
//! to the caller.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::marks::{
    Admission, AppliedMarks, InboundCheckpoint, JournaledMarks, PartitionId, PartitionMark,
    RangeAdmission, SenderCursors,
};
use super::watermarks::InboundWatermarks;
use super::wire::{self, BatchHeader, PartitionBatch, Span};
use super::ExchangeError;
use crate::journal::{lock, Journal, JournalError, JournalOptions, JournalReader};
use crate::value::Str;

/// Opens the inbound journal in `dir` and resumes from `restored` (the
/// checkpoint stored with the caller's state; the default one for a fresh
/// start). Blocking: it reads the journal after the checkpoint.
///
/// Returns the log the server appends to and the reader of new records.
///
/// # Errors
/// Journal errors; [`ExchangeError::CheckpointTruncated`] when the journal
/// no longer holds the checkpoint's position; a malformed journal record.
pub fn open_inbound(
    dir: &Path,
    options: JournalOptions,
    restored: &InboundCheckpoint,
) -> Result<(InboundLog, InboundReader), ExchangeError> {
    let journal = Journal::open(dir, options)?;
    let first = journal.first_seq();
    if restored.position < first {
        return Err(ExchangeError::CheckpointTruncated {
            position: restored.position,
            first,
        });
    }
    // The server's view of the senders and partitions is as of the
    // journal's end: replay the batches journaled after the checkpoint.
    let mut appended = restored.sender_cursors();
    let mut journaled = JournaledMarks::from_checkpoint(restored);
    let mut scan = journal.reader(restored.position);
    loop {
        let batch = scan.try_next_batch(1024, 16 << 20)?;
        if batch.events.is_empty() {
            break;
        }
        for e in &batch.events {
            let bytes = &batch.buf[e.start as usize..(e.start + e.len) as usize];
            let decoded = wire::decode(bytes).map_err(|error| ExchangeError::CorruptInbound {
                seq: e.offset,
                error,
            })?;
            appended.taken(&decoded.header);
            journaled.journaled(&wire::spans_of(&decoded.partitions));
        }
    }
    let (changed, _) = watch::channel(0);
    let taken = Arc::new(AtomicU64::new(restored.position));
    let log = InboundLog {
        taken: taken.clone(),
        max_unapplied: None,
        journal: journal.clone(),
        gate: Arc::new(Gate {
            state: Mutex::new(GateState {
                cursors: appended,
                journaled,
                busy: Vec::new(),
            }),
            changed,
        }),
    };
    let reader = InboundReader {
        tail: InboundTail {
            reader: journal.reader(restored.position),
        },
        state: InboundState {
            taken,
            journal: journal.clone(),
            position: restored.position,
            marks: restored.applied_marks(),
            senders: restored.sender_cursors(),
            watermarks: InboundWatermarks::restore(&restored.watermarks, crate::time::now_ms()),
        },
    };
    Ok((log, reader))
}

/// How an append request ended.
#[derive(Debug)]
pub(crate) enum Appended {
    /// Durable in the journal (now or before), with the journaled marks of
    /// the sender's partitions (see [`JournaledMarks`]).
    Durable(Vec<PartitionMark>),
    /// From a stale session of its sender.
    Stale,
    /// Partial results overlapping what is journaled (the reason).
    Overlap(String),
    /// An earlier batch of the sender did not arrive in time.
    OutOfOrder,
    /// The journal refused it.
    Failed(JournalError),
}

struct GateState {
    /// The senders' positions as of the journal's end.
    cursors: SenderCursors,
    /// The partitions' offsets as of the journal's end.
    journaled: JournaledMarks,
    /// Senders with an append under way.
    busy: Vec<u32>,
}

/// Lets each sender's batches into the journal one at a time, in order.
struct Gate {
    state: Mutex<GateState>,
    /// Bumped whenever a sender's position or busy flag changes.
    changed: watch::Sender<u64>,
}

/// The inbound journal as the exchange server writes it. Clones share it.
#[derive(Clone)]
pub struct InboundLog {
    journal: Journal,
    gate: Arc<Gate>,
    /// The journal position the reader's owner has taken batches up to.
    taken: Arc<AtomicU64>,
    max_unapplied: Option<u64>,
}

impl InboundLog {
    /// Appends a batch (its wire bytes, already validated) once every
    /// earlier batch of its sender is in, waiting up to `order_wait` for
    /// them. Not cancellable half way: the append runs on its own task.
    /// Refuses appends (the server answers 503) while more than `limit`
    /// batches are journaled and not yet taken by [`InboundState::take`].
    /// Unlike the journal's own backlog limit, this does not wait for a
    /// checkpoint: a checkpoint may itself wait for the senders' peers
    /// (each worker's checkpoint waits until its own batches are durable
    /// at their owners), and counting checkpoints here could make two
    /// workers wait for each other.
    pub fn limit_unapplied(&mut self, limit: u64) {
        self.max_unapplied = Some(limit);
    }

    pub(crate) async fn append(
        &self,
        header: BatchHeader,
        bytes: Vec<u8>,
        spans: Vec<Span>,
        order_wait: Duration,
    ) -> Appended {
        if let Some(limit) = self.max_unapplied {
            let unapplied = self
                .journal
                .next_seq()
                .saturating_sub(self.taken.load(Ordering::Acquire));
            if unapplied > limit {
                return Appended::Failed(JournalError::Backlog {
                    backlog: unapplied,
                    limit,
                });
            }
        }
        let deadline = tokio::time::Instant::now() + order_wait;
        let mut changed = self.gate.changed.subscribe();
        loop {
            {
                let mut st = lock(&self.gate.state);
                if !st.busy.contains(&header.sender) {
                    match st.cursors.admission(&header) {
                        Admission::Take => {
                            if let Err(reason) = st.journaled.check(&spans) {
                                return Appended::Overlap(reason);
                            }
                            st.busy.push(header.sender);
                            break;
                        }
                        Admission::Duplicate => {
                            return Appended::Durable(st.journaled.of_sender(header.sender))
                        }
                        Admission::Stale => return Appended::Stale,
                        Admission::NotYet => {}
                    }
                }
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return Appended::OutOfOrder,
            }
        }
        let log = self.clone();
        let task = tokio::spawn(async move {
            let result = log.journal.append(vec![bytes]).await;
            let marks = {
                let mut st = lock(&log.gate.state);
                st.busy.retain(|s| *s != header.sender);
                if result.is_ok() {
                    st.cursors.taken(&header);
                    st.journaled.journaled(&spans);
                }
                st.journaled.of_sender(header.sender)
            };
            log.gate.changed.send_modify(|n| *n += 1);
            result.map(|_| marks)
        });
        match task.await {
            Ok(Ok(marks)) => Appended::Durable(marks),
            Ok(Err(e)) => Appended::Failed(e),
            Err(e) => Appended::Failed(JournalError::WriteFailed(e.to_string())),
        }
    }

    /// Batches journaled and not yet covered by a committed checkpoint.
    pub fn backlog(&self) -> u64 {
        self.journal.backlog()
    }
}

/// New records of one source partition, in offset order.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// The worker id of the sender that journaled the batch.
    pub sender: u32,
    /// The partition's records not applied before (possibly none: a
    /// heartbeat, or a replay).
    pub records: PartitionBatch,
    /// Records of this batch dropped as already applied.
    pub replayed: usize,
}

/// Reads the inbound journal in order and hands out each record once: an
/// [`InboundTail`] (the journal reader, which may wait) and an
/// [`InboundState`] (what was applied), used together or, split, on two
/// tasks.
pub struct InboundReader {
    tail: InboundTail,
    state: InboundState,
}

/// The reading end of the inbound journal: batches in journal order.
pub struct InboundTail {
    reader: JournalReader,
}

/// A journaled batch: the journal position after it, and the batch.
pub type Journaled = (u64, wire::Batch);

impl InboundTail {
    /// Waits for journaled batches (at most `max_batches`) and decodes them.
    ///
    /// Cancel safety: cancelling while it waits loses nothing.
    ///
    /// # Errors
    /// Journal errors; a journal record that is not a batch.
    pub async fn next(&mut self, max_batches: usize) -> Result<Vec<Journaled>, ExchangeError> {
        let read = self.reader.next_batch(max_batches, 16 << 20).await?;
        let mut out = Vec::with_capacity(read.events.len());
        for e in &read.events {
            let bytes = &read.buf[e.start as usize..(e.start + e.len) as usize];
            let batch = wire::decode(bytes).map_err(|error| ExchangeError::CorruptInbound {
                seq: e.offset,
                error,
            })?;
            out.push((e.offset + 1, batch));
        }
        Ok(out)
    }
}

/// What a receiver has taken in: the journal position, the applied marks,
/// the senders' positions and the reported watermarks. Checkpointed with
/// the receiver's state ([`InboundState::checkpoint`]).
pub struct InboundState {
    taken: Arc<AtomicU64>,
    journal: Journal,
    position: u64,
    marks: AppliedMarks,
    senders: SenderCursors,
    watermarks: InboundWatermarks,
}

impl InboundState {
    /// Takes in a batch read by the tail (in journal order): returns its
    /// partitions with the records not applied before; those records count
    /// as applied from now on. Each partition's watermark is recorded under
    /// `(partition's source, sender)` (see [`InboundState::watermarks`]).
    pub fn take(&mut self, (position, batch): Journaled, now_ms: i64) -> Vec<Delivered> {
        self.position = self.position.max(position);
        self.taken.store(self.position, Ordering::Release);
        self.senders.taken(&batch.header);
        let mut out = Vec::with_capacity(batch.partitions.len());
        for mut part in batch.partitions {
            let id: PartitionId = (part.source.clone(), part.partition);
            let before = part.records.len();
            match (part.combined_from, part.records.last()) {
                (Some(first), Some(last)) => {
                    match self.marks.admit_range(&id, first, last.offset) {
                        RangeAdmission::New => {}
                        RangeAdmission::Applied => part.records.clear(),
                        RangeAdmission::Overlap => tracing::error!(
                            source = %part.source, partition = part.partition, first, last = last.offset,
                            "partial results overlap records applied before (the receiver refuses such batches; this one was journaled anyway); applied"
                        ),
                    }
                }
                _ => self.marks.retain_new(&id, &mut part.records, |r| r.offset),
            }
            self.watermarks.observe(
                &(part.source.clone(), batch.header.sender),
                part.watermark,
                now_ms,
            );
            out.push(Delivered {
                sender: batch.header.sender,
                replayed: before - part.records.len(),
                records: part,
            });
        }
        out
    }

    /// Whether a record this worker read itself (from a source whose
    /// partitions move between workers) is new; if so it counts as applied.
    pub fn admit(&mut self, partition: &PartitionId, offset: u64) -> bool {
        self.marks.admit(partition, offset)
    }

    /// Takes the records of `streams` by id rather than by offset order
    /// (see [`AppliedMarks`]).
    pub fn set_unordered(&mut self, streams: impl IntoIterator<Item = Str>) {
        self.marks.set_unordered(streams);
    }

    /// The watermarks reported, keyed `(source, sender)`.
    pub fn watermarks(&self) -> &InboundWatermarks {
        &self.watermarks
    }

    /// The receive side's checkpoint as of the batches taken so far.
    pub fn checkpoint(&self) -> InboundCheckpoint {
        InboundCheckpoint::new(
            self.position,
            &self.marks,
            &self.senders,
            self.watermarks.snapshot(),
        )
    }

    /// Deletes the journal up to a checkpoint once it is durable (never
    /// further: a crash restores from it and reads on from its position).
    ///
    /// # Errors
    /// An I/O error deleting a segment.
    pub fn commit(&self, checkpoint: &InboundCheckpoint) -> Result<(), ExchangeError> {
        self.journal.truncate_before(checkpoint.position)?;
        Ok(())
    }

    /// Batches journaled and not taken yet.
    pub fn pending(&self) -> u64 {
        self.journal.next_seq().saturating_sub(self.position)
    }
}

impl InboundReader {
    /// Waits for journaled batches and returns their partitions with the
    /// records not applied before; those records count as applied from now
    /// on (checkpoint them with the state they go into).
    ///
    /// Cancel safety: cancelling while it waits loses nothing.
    ///
    /// # Errors
    /// Journal errors; a journal record that is not a batch.
    pub async fn next(&mut self, max_batches: usize) -> Result<Vec<Delivered>, ExchangeError> {
        let read = self.tail.next(max_batches).await?;
        let now = crate::time::now_ms();
        let mut out = Vec::new();
        for journaled in read {
            out.extend(self.state.take(journaled, now));
        }
        Ok(out)
    }

    /// The two halves, to read on one task and apply on another.
    pub fn split(self) -> (InboundTail, InboundState) {
        (self.tail, self.state)
    }

    /// The receive side's checkpoint as of the records handed out so far.
    pub fn checkpoint(&self) -> InboundCheckpoint {
        self.state.checkpoint()
    }

    /// Deletes the journal up to a durable checkpoint (see
    /// [`InboundState::commit`]).
    ///
    /// # Errors
    /// An I/O error deleting a segment.
    pub fn commit(&self, checkpoint: &InboundCheckpoint) -> Result<(), ExchangeError> {
        self.state.commit(checkpoint)
    }

    /// Batches journaled and not handed out yet.
    pub fn pending(&self) -> u64 {
        self.state.pending()
    }

    /// The receiver's watermark at `now_ms` (see [`InboundWatermarks::current`]).
    pub fn watermark(&mut self, now_ms: i64, idle_timeout_ms: Option<i64>) -> i64 {
        self.state.watermarks.current(now_ms, idle_timeout_ms)
    }
}
