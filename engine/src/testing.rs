//! In-memory sources and sinks for running whole pipelines inside a test
//! process (cargo feature `testing`). Put them in a [`PipelineSpec`] in
//! place of the configured ones with [`feed`] and [`collect`], then call
//! [`crate::runtime::run`].
//!
//! The source keeps a position like a real one, so a run restarted on the
//! same state directory resumes after the last checkpoint. The sink's
//! [`Collected`] outlives a run like a real destination, and a re-delivered
//! epoch replaces what that epoch wrote.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::batch::RowKind;
use crate::runtime::PipelineSpec;
use crate::sink::{Sink, SinkError, SinkRecord, WriteOutcome};
use crate::source::{
    wait_shutdown, BoxFuture, RawBatch, RawEvent, Source, SourceContext, SourceError,
};
use crate::value::Value;

/// A source reading events (one JSON document each) from a list, in
/// batches, on partition 0. Its position is the index of the next event.
/// Bounded runs end after the last event; others then wait for shutdown.
pub struct MemorySource {
    events: Arc<Vec<Vec<u8>>>,
    batch: usize,
}

impl MemorySource {
    /// A source over `events`, sent `batch` at a time.
    pub fn new(events: impl IntoIterator<Item = impl Into<Vec<u8>>>, batch: usize) -> Self {
        MemorySource {
            events: Arc::new(events.into_iter().map(Into::into).collect()),
            batch: batch.max(1),
        }
    }

    fn raw_batch(&self, from: usize, to: usize, max_event_bytes: usize) -> RawBatch {
        let mut buf = Vec::new();
        let mut events = Vec::with_capacity(to - from);
        for (i, event) in self.events[from..to].iter().enumerate() {
            let kept = &event[..event.len().min(max_event_bytes)];
            events.push(RawEvent {
                start: buf.len() as u32,
                len: kept.len() as u32,
                offset: (from + i) as u64,
                oversized: (kept.len() < event.len()).then_some(event.len() as u64),
            });
            buf.extend_from_slice(kept);
        }
        let bytes = buf.len() as u64;
        RawBatch {
            partition: 0,
            buf: Arc::new(buf),
            events,
            position: (to as u64).to_be_bytes().to_vec(),
            bytes,
        }
    }
}

fn decode_position(position: &[u8]) -> Result<usize, SourceError> {
    let bytes: [u8; 8] = position
        .try_into()
        .map_err(|_| SourceError::Config("the restored position is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes) as usize)
}

impl Source for MemorySource {
    fn run(self: Box<Self>, mut ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move {
            if ctx.output.partitions(vec![0]).await.is_err() {
                return Ok(());
            }
            let mut next = match ctx.restored.get(&0) {
                Some(p) => decode_position(p)?,
                None => 0,
            };
            let max_event_bytes = ctx.output.max_event_bytes();
            while next < self.events.len() && !*ctx.shutdown.borrow() {
                let to = (next + self.batch).min(self.events.len());
                let raw = self.raw_batch(next, to, max_event_bytes);
                if ctx.output.emit(raw).await.is_err() {
                    return Ok(());
                }
                // Nothing to release upstream: the list is the log.
                while ctx.commits.try_recv().is_ok() {}
                next = to;
            }
            if ctx.bounded {
                let _ = ctx.output.partition_done(0).await;
            } else {
                wait_shutdown(&mut ctx.shutdown).await;
            }
            Ok(())
        })
    }
}

/// What a [`MemorySink`] was given, by epoch.
#[derive(Debug, Default, Clone)]
pub struct Collected {
    /// The records of every written epoch (a re-delivery replaces them).
    pub epochs: BTreeMap<u64, Vec<SinkRecord>>,
}

impl Collected {
    /// The table the upserts and deletes leave, by id, applied in epoch order.
    pub fn table(&self) -> BTreeMap<String, Value> {
        let mut table = BTreeMap::new();
        for record in self.epochs.values().flatten() {
            match record.kind {
                RowKind::Upsert => {
                    table.insert(record.id.to_string(), record.value.clone());
                }
                RowKind::Delete => {
                    table.remove(record.id.as_str());
                }
                RowKind::Insert => {}
            }
        }
        table
    }

    /// The inserted records (events), in epoch order.
    pub fn inserts(&self) -> Vec<&SinkRecord> {
        self.epochs
            .values()
            .flatten()
            .filter(|r| r.kind == RowKind::Insert)
            .collect()
    }
}

/// A sink keeping what it is given in a shared [`Collected`]; every write
/// is acknowledged at once.
pub struct MemorySink {
    out: Arc<Mutex<Collected>>,
}

impl MemorySink {
    /// A sink writing into `out`.
    pub fn new(out: Arc<Mutex<Collected>>) -> Self {
        MemorySink { out }
    }

    fn out(&self) -> MutexGuard<'_, Collected> {
        self.out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Sink for MemorySink {
    fn write<'a>(
        &'a mut self,
        epoch: u64,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<WriteOutcome, SinkError>> {
        self.out().epochs.insert(epoch, records.to_vec());
        Box::pin(async { Ok(WriteOutcome::default()) })
    }
}

/// Replaces the source `name` of `spec` by a [`MemorySource`].
///
/// # Panics
/// If `spec` has no source of that name.
pub fn feed(spec: &mut PipelineSpec, name: &str, source: MemorySource) {
    let s = spec
        .sources
        .iter_mut()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("the pipeline has no source `{name}`"));
    s.source = Box::new(source);
}

/// Replaces the sink `name` of `spec` (or the dead-letter sink, named
/// `dead_letter`) by a [`MemorySink`] writing into `out`.
///
/// # Panics
/// If `spec` has no sink of that name.
pub fn collect(spec: &mut PipelineSpec, name: &str, out: Arc<Mutex<Collected>>) {
    let s = spec
        .sinks
        .iter_mut()
        .chain([&mut spec.dead_letter])
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("the pipeline has no sink `{name}`"));
    s.sink = Box::new(MemorySink::new(out));
}
