//! The writer thread: group commit.
//!
//! It blocks for one request, then takes every other request already
//! queued, writes all their records (rolling segments as they fill up),
//! fsyncs once, publishes the new durable end to readers, and only then
//! completes each request with its sequence range.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::segment::{encode_record, segment_path, SegmentMeta, HEADER, INDEX_EVERY};
use super::{lock, sync_dir, AppendBatch, JournalError, Shared};

/// Write to the file whenever this much is buffered.
const FLUSH_BYTES: usize = 4 << 20;
/// Stop adding requests to a group beyond this many payload bytes.
const MAX_GROUP_BYTES: usize = 64 << 20;

/// The events of one append.
pub(super) enum Payload {
    Owned(Vec<Vec<u8>>),
    Batch(AppendBatch),
}

impl Payload {
    pub fn len(&self) -> usize {
        match self {
            Payload::Owned(v) => v.len(),
            Payload::Batch(b) => b.len(),
        }
    }

    fn event(&self, i: usize) -> &[u8] {
        match self {
            Payload::Owned(v) => &v[i],
            Payload::Batch(b) => b.event(i),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Payload::Owned(v) => v.iter().map(Vec::len).sum(),
            Payload::Batch(b) => b.buf.len(),
        }
    }
}

/// One append waiting for its group commit.
pub(super) struct Request {
    pub payload: Payload,
    pub done: oneshot::Sender<Result<Range<u64>, JournalError>>,
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    /// The active segment, opened for appending.
    file: File,
    /// The active segment as written (ahead of the published copy until
    /// the group is durable).
    meta: SegmentMeta,
    segment_bytes: u64,
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(shared: Arc<Shared>, file: File, active: SegmentMeta, segment_bytes: u64) -> Self {
        Writer {
            shared,
            file,
            meta: active,
            segment_bytes,
            buf: Vec::new(),
        }
    }

    /// Serves requests until every sender is gone.
    pub fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut group = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut bytes = first.payload.bytes();
            group.push(first);
            while bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.payload.bytes();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            let events: u64 = group.iter().map(|r| r.payload.len() as u64).sum();
            let result = match self.shared.failure() {
                Some(msg) => Err(msg),
                None => self.write_group(&group).map_err(|e| {
                    let msg = e.to_string();
                    tracing::error!(dir = %self.shared.dir.display(), error = %msg,
                        "journal write failed; refusing further appends until restart");
                    *lock(&self.shared.failed) = Some(msg.clone());
                    msg
                }),
            };
            match result {
                Ok((ranges, sealed)) => {
                    self.publish(sealed);
                    self.shared.groups.fetch_add(1, Ordering::Relaxed);
                    self.shared.queued.fetch_sub(events, Ordering::AcqRel);
                    for (req, range) in group.drain(..).zip(ranges) {
                        let _ = req.done.send(Ok(range));
                    }
                }
                Err(msg) => {
                    self.shared.queued.fetch_sub(events, Ordering::AcqRel);
                    for req in group.drain(..) {
                        let _ = req.done.send(Err(JournalError::Failed(msg.clone())));
                    }
                }
            }
        }
    }

    /// Writes every record of `group` and makes it durable. Returns each
    /// request's range and the segments closed on the way.
    fn write_group(
        &mut self,
        group: &[Request],
    ) -> Result<(Vec<Range<u64>>, Vec<SegmentMeta>), JournalError> {
        let mut ranges = Vec::with_capacity(group.len());
        let mut sealed = Vec::new();
        for req in group {
            let start = self.meta.end_seq;
            for i in 0..req.payload.len() {
                let event = req.payload.event(i);
                let record = (HEADER + event.len()) as u64;
                if self.meta.bytes > 0 && self.meta.bytes + record > self.segment_bytes {
                    self.flush()?;
                    sealed.push(self.roll()?);
                }
                if (self.meta.end_seq - self.meta.first_seq).is_multiple_of(INDEX_EVERY) {
                    self.meta.index.push(self.meta.bytes);
                }
                encode_record(&mut self.buf, event);
                self.meta.end_seq += 1;
                self.meta.bytes += record;
                if self.buf.len() >= FLUSH_BYTES {
                    self.flush()?;
                }
            }
            ranges.push(start..self.meta.end_seq);
        }
        self.flush()?;
        self.sync()?;
        Ok((ranges, sealed))
    }

    fn flush(&mut self) -> Result<(), JournalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.buf);
        self.buf.clear();
        result.map_err(JournalError::io(format!(
            "cannot write {}",
            segment_path(&self.shared.dir, self.meta.first_seq).display()
        )))
    }

    fn sync(&mut self) -> Result<(), JournalError> {
        if !self.shared.fsync {
            return Ok(());
        }
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.file.sync_data().map_err(JournalError::io(format!(
            "cannot fsync {}",
            segment_path(&self.shared.dir, self.meta.first_seq).display()
        )))
    }

    /// Closes the active segment (durably) and starts a new one; returns
    /// the closed segment's metadata.
    fn roll(&mut self) -> Result<SegmentMeta, JournalError> {
        self.sync()?;
        let first = self.meta.end_seq;
        let path = segment_path(&self.shared.dir, first);
        self.file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(JournalError::io(format!(
                "cannot create {}",
                path.display()
            )))?;
        if self.shared.fsync {
            sync_dir(&self.shared.dir)?;
        }
        Ok(std::mem::replace(&mut self.meta, SegmentMeta::empty(first)))
    }

    /// Makes the group visible: segment metadata first, then the durable
    /// end readers wait on.
    fn publish(&self, sealed: Vec<SegmentMeta>) {
        let bytes = {
            let mut segs = lock(&self.shared.segments);
            for s in sealed {
                segs.insert(s.first_seq, s);
            }
            let active = segs
                .entry(self.meta.first_seq)
                .or_insert_with(|| SegmentMeta::empty(self.meta.first_seq));
            active.end_seq = self.meta.end_seq;
            active.bytes = self.meta.bytes;
            let have = active.index.len();
            active
                .index
                .extend_from_slice(self.meta.index.get(have..).unwrap_or_default());
            segs.values().map(|s| s.bytes).sum()
        };
        self.shared.durable.send_replace(self.meta.end_seq);
        self.shared.export(bytes);
    }
}
