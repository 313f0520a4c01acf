//! Reading the journal back, from any retained sequence number, waiting
//! for new records when caught up. Readers only ever see durable records.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use tokio::sync::watch;

use super::segment::{decode_header, record_crc, segment_path, HEADER};
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
    /// Bytes read from disk (records including headers).
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

/// Tails a journal from a sequence number. Not shared: one per consumer.
pub struct JournalReader {
    journal: Journal,
    next: u64,
    durable: watch::Receiver<u64>,
    cursor: Option<Cursor>,
}

impl JournalReader {
    pub(super) fn new(journal: Journal, from_seq: u64) -> Self {
        let durable = journal.shared().durable.subscribe();
        JournalReader {
            journal,
            next: from_seq,
            durable,
            cursor: None,
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
        while self.next < limit && out.events.len() < max_events && out.buf.len() < max_bytes {
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
