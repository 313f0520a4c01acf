//! The newest durable records, kept in memory as the writer wrote them.
//!
//! A reader that keeps up with the writer (the usual case: a source reads
//! each group right after its commit) takes records from here instead of
//! reading the segment back: no read calls, no copy through the page cache,
//! and no second CRC check of bytes that never left memory. A reader that
//! falls further behind than the tail holds, or asks for records before the
//! committed position, reads the files as before.
//!
//! Only whole groups that were written *and* made durable are added, before
//! the writer publishes their end to readers; a failed group never is.

use std::collections::VecDeque;
use std::sync::Arc;

use super::segment::{decode_header, HEADER};

/// Memory the tail may hold (the buffers' capacity), oldest dropped first.
pub(super) const TAIL_BYTES: usize = 8 << 20;
/// Chunks the tail may hold (small groups make many).
const TAIL_CHUNKS: usize = 4096;

/// Consecutive records as written to a segment (header and payload each).
pub(super) struct Chunk {
    pub first_seq: u64,
    /// One past the last record.
    pub end_seq: u64,
    pub records: Vec<u8>,
}

impl Chunk {
    /// The byte offset of record `seq` (which the chunk holds).
    pub(super) fn offset_of(&self, seq: u64) -> usize {
        let mut at = 0;
        for _ in self.first_seq..seq {
            at += HEADER + self.len_at(at);
        }
        at
    }

    /// The payload length of the record at byte offset `at`.
    pub(super) fn len_at(&self, at: usize) -> usize {
        let mut h = [0u8; HEADER];
        h.copy_from_slice(&self.records[at..at + HEADER]);
        decode_header(h).0 as usize
    }
}

#[derive(Default)]
pub(super) struct Tail {
    chunks: VecDeque<Arc<Chunk>>,
    bytes: usize,
    /// Records before it are only read from the files: a checkpoint covers
    /// them and their segment may be gone.
    floor: u64,
}

impl Tail {
    /// Adds chunks just made durable (in sequence order, following the
    /// chunks already held), dropping the oldest beyond the limits.
    pub(super) fn extend(&mut self, chunks: impl IntoIterator<Item = Chunk>) {
        for c in chunks {
            if c.first_seq == c.end_seq {
                continue;
            }
            self.bytes += c.records.capacity();
            self.chunks.push_back(Arc::new(c));
        }
        while self.bytes > TAIL_BYTES || self.chunks.len() > TAIL_CHUNKS {
            match self.chunks.pop_front() {
                Some(c) => self.bytes -= c.records.capacity(),
                None => break,
            }
        }
    }

    /// The chunk holding record `seq`; if the tail does not hold it, the
    /// first record after it that the tail may hold (reading the files up
    /// to there, a reader need not ask again).
    pub(super) fn find(&self, seq: u64) -> Result<Arc<Chunk>, u64> {
        if seq < self.floor {
            return Err(self.floor);
        }
        let i = self.chunks.partition_point(|c| c.end_seq <= seq);
        match self.chunks.get(i) {
            Some(c) if c.first_seq <= seq => Ok(c.clone()),
            Some(c) => Err(c.first_seq),
            // Past the newest chunk, or none: chunks go oldest first and
            // every group made durable since the open is added before its
            // records can be read, so the records before the reader's limit
            // from here on were written before the open, or went.
            None => Err(u64::MAX),
        }
    }

    /// Everything before `seq` is committed: it is read from the files only.
    pub(super) fn commit(&mut self, seq: u64) {
        self.floor = self.floor.max(seq);
        while self.chunks.front().is_some_and(|c| c.end_seq <= self.floor) {
            if let Some(c) = self.chunks.pop_front() {
                self.bytes -= c.records.capacity();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::segment::encode_record;

    fn chunk(first: u64, n: u64, capacity: usize) -> Chunk {
        let mut records = Vec::with_capacity(capacity);
        for i in first..first + n {
            encode_record(&mut records, format!("event {i}").as_bytes());
        }
        Chunk {
            first_seq: first,
            end_seq: first + n,
            records,
        }
    }

    #[test]
    fn finds_the_chunk_of_a_record_and_its_offset() {
        let mut t = Tail::default();
        t.extend([chunk(10, 3, 0), chunk(13, 2, 0)]);
        assert_eq!(t.find(9).err(), Some(10), "before the tail: read up to 10");
        let c = t.find(11).expect("held");
        assert_eq!(c.first_seq, 10);
        let at = c.offset_of(11);
        let len = c.len_at(at);
        assert_eq!(&c.records[at + HEADER..at + HEADER + len], b"event 11");
        assert_eq!(t.find(14).expect("held").first_seq, 13);
        assert_eq!(t.find(15).err(), Some(u64::MAX));
    }

    #[test]
    fn the_oldest_chunks_go_beyond_the_memory_limit() {
        let mut t = Tail::default();
        t.extend([chunk(0, 1, TAIL_BYTES / 2), chunk(1, 1, TAIL_BYTES / 2)]);
        assert!(t.find(0).is_ok());
        t.extend([chunk(2, 1, 16)]);
        assert_eq!(t.find(0).err(), Some(1), "over the limit: the oldest goes");
        assert!(t.find(1).is_ok() && t.find(2).is_ok());
    }

    #[test]
    fn committed_records_are_not_served() {
        let mut t = Tail::default();
        t.extend([chunk(0, 4, 0), chunk(4, 4, 0)]);
        t.commit(5);
        assert_eq!(t.find(4).err(), Some(5), "below the committed position");
        assert!(t.find(5).is_ok());
        assert_eq!(t.chunks.len(), 1, "a chunk partly committed stays");
        t.commit(8);
        assert!(t.chunks.is_empty());
    }
}
