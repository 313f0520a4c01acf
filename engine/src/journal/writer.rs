//! The writer thread: group commit.
//!
//! It blocks for one request, then takes every other request already
//! queued, writes all their records (rolling segments as they fill up),
//! fsyncs once, publishes the new durable end to readers, and only then
//! completes each request with its sequence range.
//!
//! A group that fails (a write or fsync error, e.g. a full disk) is rolled
//! back: the files are cut back to where the group started (segments it
//! created are deleted), so that none of its records can be read after a
//! restart, and the writer continues from there. Every request of the
//! group is answered with [`JournalError::WriteFailed`]; a client retry
//! cannot count anything twice. Only if the rollback itself fails does the
//! journal stop accepting appends until it is reopened.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::segment::{
    encode_record, parse_segment_name, segment_path, write_head, SegmentMeta, HEADER, INDEX_EVERY,
};
use super::tail::Chunk;
use super::{lock, sync_dir, AppendBatch, JournalError, Shared};

/// Write to the file whenever this much is buffered.
const FLUSH_BYTES: usize = 4 << 20;
/// Stop adding requests to a group beyond this many payload bytes.
const MAX_GROUP_BYTES: usize = 64 << 20;
/// The smallest write buffer started (it grows as needed).
const MIN_BUF: usize = 4 << 10;

/// The events of one append.
pub(super) enum Payload {
    Owned(Vec<Vec<u8>>),
    Batch(AppendBatch),
}

impl Payload {
    pub(super) fn len(&self) -> usize {
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
    /// The sequence number of the first record in `buf`.
    buf_first: u64,
    /// What this group wrote so far, for the in-memory tail once durable.
    written: Vec<Chunk>,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        file: File,
        active: SegmentMeta,
        segment_bytes: u64,
    ) -> Self {
        Writer {
            shared,
            file,
            meta: active,
            segment_bytes,
            buf: Vec::new(),
            buf_first: 0,
            written: Vec::new(),
        }
    }

    /// Serves requests until every sender is gone.
    pub(super) fn run(mut self, rx: mpsc::Receiver<Request>) {
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
                Some(msg) => Err(JournalError::Failed(msg)),
                None => self.write_group(&group).map_err(|e| self.roll_back(e)),
            };
            match result {
                Ok((ranges, sealed)) => {
                    lock(&self.shared.tail).extend(self.written.drain(..));
                    self.publish(sealed);
                    self.shared.groups.fetch_add(1, Ordering::Relaxed);
                    self.shared.queued.fetch_sub(events, Ordering::AcqRel);
                    for (req, range) in group.drain(..).zip(ranges) {
                        let _ = req.done.send(Ok(range));
                    }
                }
                Err(e) => {
                    self.shared.queued.fetch_sub(events, Ordering::AcqRel);
                    let msg = e.to_string();
                    let failed = matches!(e, JournalError::Failed(_));
                    for req in group.drain(..) {
                        let _ = req.done.send(Err(if failed {
                            JournalError::Failed(msg.clone())
                        } else {
                            JournalError::WriteFailed(msg.clone())
                        }));
                    }
                }
            }
        }
    }

    /// After a failed group: cuts the journal back to the last published
    /// (durable) state and returns the error to answer the group with. If
    /// that fails too, the journal stops accepting appends
    /// ([`JournalError::Failed`]).
    fn roll_back(&mut self, error: JournalError) -> JournalError {
        let dir = self.shared.dir.display().to_string();
        self.buf.clear();
        self.written.clear();
        match self.restore_published() {
            Ok(()) => {
                tracing::error!(dir = %dir, error = %error,
                    "journal write failed; the failed appends were removed and answered with an error");
                error
            }
            Err(rollback) => {
                let msg = format!("{error}; removing the failed appends failed too: {rollback}");
                tracing::error!(dir = %dir, error = %msg,
                    "journal write failed; refusing further appends until restart");
                *lock(&self.shared.failed) = Some(msg.clone());
                JournalError::Failed(msg)
            }
        }
    }

    /// Makes the files and the writer's state what the readers see: the
    /// active segment as last published, nothing after it.
    fn restore_published(&mut self) -> Result<(), JournalError> {
        let dir = self.shared.dir.clone();
        let fsync = self.shared.fsync;
        let active = {
            let segs = lock(&self.shared.segments);
            segs.values().next_back().cloned()
        }
        .ok_or(JournalError::Closed)?;
        let path = segment_path(&dir, active.first_seq);
        if self.meta.first_seq != active.first_seq {
            // Segments created by the failed group: HEAD first, so that a
            // crash in between never makes a deleted segment look missing.
            write_head(&dir, active.first_seq, fsync)?;
            let entries = std::fs::read_dir(&dir)
                .map_err(JournalError::io(format!("cannot list {}", dir.display())))?;
            for entry in entries {
                let entry =
                    entry.map_err(JournalError::io(format!("cannot list {}", dir.display())))?;
                let name = entry.file_name();
                if parse_segment_name(&name.to_string_lossy()).is_some_and(|f| f > active.first_seq)
                {
                    std::fs::remove_file(entry.path()).map_err(JournalError::io(format!(
                        "cannot delete {}",
                        entry.path().display()
                    )))?;
                }
            }
            if fsync {
                sync_dir(&dir)?;
            }
            self.file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(JournalError::io(format!("cannot open {}", path.display())))?;
        }
        self.file
            .set_len(active.bytes)
            .and_then(|()| if fsync { self.file.sync_all() } else { Ok(()) })
            .map_err(JournalError::io(format!(
                "cannot truncate {}",
                path.display()
            )))?;
        self.meta = active;
        Ok(())
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
                if self.buf.is_empty() {
                    self.buf_first = self.meta.end_seq;
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
        #[cfg(test)]
        {
            // A disk with `budget` bytes free: once they are used up, the
            // write stores what fits and fails.
            let mut fault = lock(&self.shared.fault);
            if let Some(budget) = fault.as_mut() {
                if self.buf.len() > *budget {
                    let n = *budget;
                    *fault = None;
                    let written = self.file.write_all(&self.buf[..n]);
                    self.buf.clear();
                    return written
                        .and(Err(std::io::Error::from(std::io::ErrorKind::StorageFull)))
                        .map_err(JournalError::io("cannot write (injected fault)"));
                }
                *budget -= self.buf.len();
            }
        }
        let result = self.file.write_all(&self.buf);
        // The buffer becomes a chunk of the in-memory tail (once the group
        // is durable); the next one starts at about its size.
        let next = Vec::with_capacity(self.buf.len().max(MIN_BUF));
        let records = std::mem::replace(&mut self.buf, next);
        if result.is_ok() {
            self.written.push(Chunk {
                first_seq: self.buf_first,
                end_seq: self.meta.end_seq,
                records,
            });
        }
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
        write_head(&self.shared.dir, first, self.shared.fsync)?;
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
