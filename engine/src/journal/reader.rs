//! Reading the journal back, from any retained sequence number, waiting
//! for new records when caught up. Readers only ever see durable records:
//! from the in-memory tail while they keep up with the writer, otherwise
//! from the segment files (checking each record's CRC).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use tokio::sync::watch;

use super::segment::{decode_header, record_crc, segment_path, HEADER};
use super::tail::Chunk;
use super::{lock, Journal, JournalError};
use crate::source::RawEvent;

/// Records read in one go: payloads back to back in `buf`, one
/// [`RawEvent`] each whose `offset` is the record's sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatch {
    /// The payloads, back to back.
    pub buf: Vec<u8>,
    /// One event per record, pointing into `buf`.
    pub events: Vec<RawEvent>,
    /// The sequence number after the last event (the position to resume from).
    pub next_seq: u64,
    /// Bytes of the records read, headers included.
    pub bytes: u64,
}

/// An open segment positioned at record `seq`.
struct Cursor {
    first_seq: u64,
    /// End of the segment as last looked up (it grows while active).
    end_seq: u64,
    seq: u64,
    offset: u64,
    file: BufReader<File>,
    /// A header already read whose record did not fit the last batch.
    header: Option<[u8; HEADER]>,
}

/// What a read from the in-memory tail did.
enum Memory {
    /// It took at least one record.
    Took,
    /// The next record does not fit the batch.
    Full,
    /// It does not hold the next record; it may hold records from `from` on.
    Missing { from: u64 },
}

/// Tails a journal from a sequence number. Not shared: one per consumer.
pub struct JournalReader {
    journal: Journal,
    next: u64,
    durable: watch::Receiver<u64>,
    cursor: Option<Cursor>,
    /// Where the last read from the in-memory tail stopped: the chunk, the
    /// byte offset and the sequence number there.
    memory: Option<(Arc<Chunk>, usize, u64)>,
}

impl JournalReader {
    pub(super) fn new(journal: Journal, from_seq: u64) -> Self {
        let durable = journal.shared().durable.subscribe();
        JournalReader {
            journal,
            next: from_seq,
            durable,
            cursor: None,
            memory: None,
        }
    }

    /// The sequence number of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Waits until at least one record is durable after the position, then
    /// returns up to `max_events` records and about `max_bytes` of payload
    /// (at least one record, however large).
    ///
    /// Cancel safety: cancelling while it waits loses nothing; reading
    /// itself does not yield.
    ///
    /// # Errors
    /// [`JournalError::Truncated`] if the position was deleted,
    /// [`JournalError::Corrupt`] for a record failing its checksum, I/O errors.
    pub async fn next_batch(
        &mut self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, JournalError> {
        loop {
            let durable = *self.durable.borrow_and_update();
            if self.next < durable {
                return self.read_until(durable, max_events, max_bytes);
            }
            if self.durable.changed().await.is_err() {
                return Err(JournalError::Closed);
            }
        }
    }

    /// Like [`next_batch`](Self::next_batch) without waiting: an empty batch
    /// when there is nothing new.
    pub fn try_next_batch(
        &mut self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, JournalError> {
        let durable = *self.durable.borrow_and_update();
        self.read_until(durable, max_events, max_bytes)
    }

    fn read_until(
        &mut self,
        limit: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, JournalError> {
        let mut out = ReadBatch {
            next_seq: self.next,
            ..ReadBatch::default()
        };
        let max_events = max_events.max(1);
        let dir = self.journal.dir().to_path_buf();
        // The next record the in-memory tail may hold.
        let mut memory_from = self.next;
        while self.next < limit && out.events.len() < max_events && out.buf.len() < max_bytes {
            if self.next >= memory_from {
                match self.read_memory(limit, max_events, max_bytes, &mut out) {
                    Memory::Took => continue,
                    Memory::Full => break,
                    Memory::Missing { from } => memory_from = from,
                }
            }
            let seq = self.next;
            let cur = self.cursor_at(seq)?;
            let (segment, at) = (cur.first_seq, cur.offset);
            let corrupt = |reason: &str| JournalError::Corrupt {
                path: segment_path(&dir, segment),
                offset: at,
                reason: reason.to_string(),
            };
            let h = match cur.header.take() {
                Some(h) => h,
                None => {
                    let mut h = [0u8; HEADER];
                    cur.file
                        .read_exact(&mut h)
                        .map_err(|_| corrupt("durable record cannot be read"))?;
                    h
                }
            };
            let (len, crc) = decode_header(h);
            let len = len as usize;
            let start = out.buf.len();
            if !out.events.is_empty()
                && (start + len > max_bytes || start + len > u32::MAX as usize)
            {
                cur.header = Some(h);
                break;
            }
            out.buf.resize(start + len, 0);
            cur.file
                .read_exact(&mut out.buf[start..])
                .map_err(|_| corrupt("durable record cannot be read"))?;
            if record_crc([h[0], h[1], h[2], h[3]], &out.buf[start..]) != crc {
                return Err(corrupt("checksum mismatch"));
            }
            out.events.push(RawEvent {
                start: start as u32,
                len: len as u32,
                offset: seq,
                oversized: None,
            });
            let record = (HEADER + len) as u64;
            cur.seq += 1;
            cur.offset += record;
            out.bytes += record;
            self.next += 1;
        }
        out.next_seq = self.next;
        Ok(out)
    }

    /// Takes records from the in-memory tail while it holds them.
    fn read_memory(
        &mut self,
        limit: u64,
        max_events: usize,
        max_bytes: usize,
        out: &mut ReadBatch,
    ) -> Memory {
        let seq = self.next;
        let (chunk, mut at, mut at_seq) = match self.memory.take() {
            Some((c, at, s)) if s == seq && seq < c.end_seq => (c, at, s),
            _ => match lock(&self.journal.shared().tail).find(seq) {
                Ok(c) => {
                    let at = c.offset_of(seq);
                    (c, at, seq)
                }
                Err(from) => return Memory::Missing { from },
            },
        };
        let taken = out.events.len();
        while self.next < limit
            && at_seq < chunk.end_seq
            && out.events.len() < max_events
            && out.buf.len() < max_bytes
        {
            let len = chunk.len_at(at);
            let start = out.buf.len();
            if !out.events.is_empty()
                && (start + len > max_bytes || start + len > u32::MAX as usize)
            {
                break;
            }
            out.buf
                .extend_from_slice(&chunk.records[at + HEADER..at + HEADER + len]);
            out.events.push(RawEvent {
                start: start as u32,
                len: len as u32,
                offset: at_seq,
                oversized: None,
            });
            let record = HEADER + len;
            out.bytes += record as u64;
            at += record;
            at_seq += 1;
            self.next += 1;
        }
        if at_seq < chunk.end_seq {
            self.memory = Some((chunk, at, at_seq));
        }
        if out.events.len() > taken {
            Memory::Took
        } else {
            Memory::Full
        }
    }

    /// The cursor positioned at `seq`, reusing the open segment when possible.
    fn cursor_at(&mut self, seq: u64) -> Result<&mut Cursor, JournalError> {
        let reuse = match &mut self.cursor {
            Some(c) if c.seq == seq => {
                if seq >= c.end_seq {
                    c.end_seq = lock(&self.journal.shared().segments)
                        .get(&c.first_seq)
                        .map_or(0, |m| m.end_seq);
                }
                seq < c.end_seq
            }
            _ => false,
        };
        if !reuse {
            self.cursor = None;
            let cursor = self.open_cursor(seq)?;
            return Ok(self.cursor.insert(cursor));
        }
        match self.cursor.as_mut() {
            Some(c) => Ok(c),
            None => Err(JournalError::Closed),
        }
    }

    fn open_cursor(&self, seq: u64) -> Result<Cursor, JournalError> {
        let dir = self.journal.dir();
        let (first_seq, end_seq, (mut at, offset)) = {
            let segs = lock(&self.journal.shared().segments);
            let first = segs.keys().next().copied().unwrap_or(0);
            match segs.range(..=seq).next_back() {
                Some((&f, m)) if seq < m.end_seq => (f, m.end_seq, m.seek_point(seq)),
                Some(_) => {
                    return Err(JournalError::Corrupt {
                        path: dir.to_path_buf(),
                        offset: 0,
                        reason: format!("no segment holds durable record {seq}"),
                    })
                }
                None => return Err(JournalError::Truncated { seq, first }),
            }
        };
        let path = segment_path(dir, first_seq);
        let io = |what: &str| JournalError::io(format!("cannot {what} {}", path.display()));
        let mut file = File::open(&path).map_err(io("open"))?;
        file.seek(SeekFrom::Start(offset)).map_err(io("seek in"))?;
        let mut file = BufReader::with_capacity(256 << 10, file);
        let mut offset = offset;
        while at < seq {
            let mut h = [0u8; HEADER];
            file.read_exact(&mut h).map_err(io("read"))?;
            let (len, _) = decode_header(h);
            file.seek_relative(i64::from(len)).map_err(io("seek in"))?;
            offset += (HEADER + len as usize) as u64;
            at += 1;
        }
        Ok(Cursor {
            first_seq,
            end_seq,
            seq,
            offset,
            file,
            header: None,
        })
    }
}
