//! Splitting a byte stream into NDJSON lines, with a limit on line length.
//! Shared by the file and stdin sources.

use std::sync::Arc;

use memchr::memchr;
use sluice_engine::source::{RawBatch, RawEvent};

/// How much of an oversized line is kept for its dead letter.
pub const OVERSIZED_KEEP: usize = 4096;

/// A batch of lines: the buffer holding them and where each one lies.
pub type Lines = (Arc<Vec<u8>>, Vec<RawEvent>);

/// Incremental line splitter. Feed it chunks; it returns batches of
/// complete lines with their byte offsets.
#[derive(Debug)]
pub struct LineSplitter {
    /// Bytes of an incomplete line carried to the next chunk.
    carry: Vec<u8>,
    /// Offset (in the stream) of `carry[0]`.
    carry_offset: u64,
    max_line: usize,
    /// Inside an oversized line: skipping to its end. (offset, length so far, prefix)
    oversized: Option<(u64, u64, Vec<u8>)>,
}

impl LineSplitter {
    pub fn new(start_offset: u64, max_line: usize) -> Self {
        LineSplitter {
            carry: Vec::new(),
            carry_offset: start_offset,
            max_line: max_line.max(1),
            oversized: None,
        }
    }

    /// Offset just after the last complete line returned.
    /// While skipping an oversized line this stays at the line's start, so
    /// that a restart re-reads (and reports) the whole line once.
    pub fn committed_offset(&self) -> u64 {
        match &self.oversized {
            Some((start, _, _)) => *start,
            None => self.carry_offset,
        }
    }

    /// Splits `chunk` (the bytes following what was fed before). Returns
    /// the buffer and the events of complete lines (blank lines skipped).
    pub fn feed(&mut self, chunk: &[u8]) -> (Arc<Vec<u8>>, Vec<RawEvent>) {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        self.split(buf)
    }

    /// Reads up to `max` bytes from `input` straight behind the carried
    /// bytes (no copy through a separate chunk) and splits them as
    /// [`feed`](Self::feed) does. Returns the buffer, the events and the
    /// number of bytes read, or `None` at the end of the input.
    pub fn read_from(
        &mut self,
        input: &mut impl std::io::Read,
        max: usize,
    ) -> std::io::Result<Option<(Lines, usize)>> {
        use std::io::Read;
        let mut buf = std::mem::take(&mut self.carry);
        let carried = buf.len();
        buf.reserve_exact(max);
        let read = input.take(max as u64).read_to_end(&mut buf);
        match read {
            Ok(0) | Err(_) => {
                buf.truncate(carried);
                self.carry = buf;
                read.map(|_| None)
            }
            Ok(n) => Ok(Some((self.split(buf), n))),
        }
    }

    /// Splits `buf` (the carried bytes followed by new ones) into lines.
    fn split(&mut self, mut buf: Vec<u8>) -> (Arc<Vec<u8>>, Vec<RawEvent>) {
        let base = self.carry_offset;
        let mut events = Vec::new();
        let mut extra = Vec::new();
        let mut pos = 0usize;
        while pos < buf.len() {
            let nl = memchr(b'\n', &buf[pos..]);
            if let Some((off, len, prefix)) = &mut self.oversized {
                match nl {
                    Some(i) => {
                        *len += i as u64;
                        let (o, l, p) = (*off, *len, std::mem::take(prefix));
                        self.oversized = None;
                        extra.push((o, l, p));
                        pos += i + 1;
                        continue;
                    }
                    None => {
                        *len += (buf.len() - pos) as u64;
                        pos = buf.len();
                        break;
                    }
                }
            }
            let Some(i) = nl else {
                if buf.len() - pos > self.max_line {
                    let keep = OVERSIZED_KEEP.min(buf.len() - pos);
                    self.oversized = Some((
                        base + pos as u64,
                        (buf.len() - pos) as u64,
                        buf[pos..pos + keep].to_vec(),
                    ));
                    pos = buf.len();
                }
                break;
            };
            let line = &buf[pos..pos + i];
            let trimmed_len = if line.last() == Some(&b'\r') {
                i - 1
            } else {
                i
            };
            if trimmed_len > self.max_line {
                let keep = OVERSIZED_KEEP.min(trimmed_len);
                extra.push((base + pos as u64, trimmed_len as u64, line[..keep].to_vec()));
            } else if !line[..trimmed_len].iter().all(u8::is_ascii_whitespace) {
                events.push(RawEvent {
                    start: pos as u32,
                    len: trimmed_len as u32,
                    offset: base + pos as u64,
                    oversized: None,
                });
            }
            pos += i + 1;
        }
        self.carry = buf[pos..].to_vec();
        buf.truncate(pos);
        self.carry_offset = base + pos as u64;
        if self.oversized.is_some() {
            // the skipped bytes are consumed; resume after the line ends
            self.carry.clear();
        }
        // Oversized lines: append their kept prefix to the buffer.
        let has_extra = !extra.is_empty();
        for (offset, full, prefix) in extra {
            events.push(RawEvent {
                start: buf.len() as u32,
                len: prefix.len() as u32,
                offset,
                oversized: Some(full),
            });
            buf.extend_from_slice(&prefix);
        }
        if has_extra {
            events.sort_by_key(|e| e.offset);
        }
        (Arc::new(buf), events)
    }

    /// At the end of input: the trailing line without a newline, if any.
    pub fn finish(&mut self) -> Option<(Arc<Vec<u8>>, Vec<RawEvent>)> {
        if let Some((offset, full, prefix)) = self.oversized.take() {
            let len = prefix.len() as u32;
            return Some((
                Arc::new(prefix),
                vec![RawEvent {
                    start: 0,
                    len,
                    offset,
                    oversized: Some(full),
                }],
            ));
        }
        if self.carry.iter().all(u8::is_ascii_whitespace) {
            self.carry_offset += self.carry.len() as u64;
            self.carry.clear();
            return None;
        }
        let mut tail = std::mem::take(&mut self.carry);
        tail.push(b'\n');
        let (buf, events) = self.feed(&tail);
        // feed counted the synthetic newline: the stream ends one byte earlier
        self.carry_offset -= 1;
        Some((buf, events))
    }
}

/// A [`RawBatch`] of one partition.
pub fn raw_batch(
    partition: u32,
    buf: Arc<Vec<u8>>,
    events: Vec<RawEvent>,
    position: Vec<u8>,
    bytes: u64,
) -> RawBatch {
    RawBatch {
        partition,
        buf,
        events,
        position,
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(buf: &[u8], events: &[RawEvent]) -> Vec<(u64, String, bool)> {
        events
            .iter()
            .map(|e| {
                let s = &buf[e.start as usize..(e.start + e.len) as usize];
                (
                    e.offset,
                    String::from_utf8_lossy(s).into_owned(),
                    e.oversized.is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn splits_across_chunks_and_tracks_offsets() {
        let mut s = LineSplitter::new(100, 1000);
        let (b, e) = s.feed(b"{\"a\":1}\n{\"a\"");
        assert_eq!(lines(&b, &e), vec![(100, "{\"a\":1}".into(), false)]);
        assert_eq!(s.committed_offset(), 108);
        let (b, e) = s.feed(b":2}\r\n\n  \n{\"a\":3}");
        assert_eq!(lines(&b, &e), vec![(108, "{\"a\":2}".into(), false)]);
        // 108 + `{"a":2}\r\n` (9) + `\n` (1) + `  \n` (3)
        assert_eq!(s.committed_offset(), 121);
        let (b, e) = s.finish().unwrap();
        assert_eq!(lines(&b, &e), vec![(121, "{\"a\":3}".into(), false)]);
        assert_eq!(s.committed_offset(), 128);
        assert!(s.finish().is_none());
    }

    #[test]
    fn oversized_lines_are_reported_not_buffered() {
        let mut s = LineSplitter::new(0, 8);
        let (b, e) = s.feed(b"{\"ok\":1}\n0123456789abcdef");
        assert_eq!(lines(&b, &e), vec![(0, "{\"ok\":1}".into(), false)]);
        assert_eq!(
            s.committed_offset(),
            9,
            "stays at the start of the oversized line"
        );
        let (b, e) = s.feed(b"ghij\n{\"b\":2}\n");
        let got = lines(&b, &e);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (9, "0123456789abcdef".into(), true));
        assert_eq!(e[0].oversized, Some(20));
        assert_eq!(got[1], (30, "{\"b\":2}".into(), false));
        assert_eq!(s.committed_offset(), 38);
    }

    #[test]
    fn oversized_complete_line_in_one_chunk() {
        let mut s = LineSplitter::new(0, 4);
        let (b, e) = s.feed(b"toolongline\nok\n");
        let got = lines(&b, &e);
        assert_eq!(
            got,
            vec![(0, "toolongline".into(), true), (12, "ok".into(), false)]
        );
    }

    /// Reading straight into the batch buffer splits exactly as feeding
    /// the same bytes in chunks of the same size: lines, offsets, oversized
    /// lines and the committed offset after each batch.
    #[test]
    fn reading_in_place_splits_as_feeding_chunks() {
        let mut text = Vec::new();
        for i in 0..300u32 {
            match i % 11 {
                3 => text.extend_from_slice(b"\r\n  \n"),
                7 => text.extend_from_slice(&vec![b'x'; 40 + i as usize]),
                _ => text.extend_from_slice(format!("{{\"i\":{i}}}").as_bytes()),
            }
            text.push(b'\n');
        }
        text.extend_from_slice(b"{\"tail\":1}");
        for max in [1, 7, 64, 1000, 100_000] {
            let mut fed = LineSplitter::new(5, 30);
            let mut read = LineSplitter::new(5, 30);
            let mut input = std::io::Cursor::new(&text);
            for chunk in text.chunks(max) {
                let (fb, fe) = fed.feed(chunk);
                let ((rb, re), n) = read.read_from(&mut input, max).unwrap().unwrap();
                assert_eq!(n, chunk.len());
                assert_eq!(lines(&rb, &re), lines(&fb, &fe), "max {max}");
                assert_eq!(
                    re.iter().map(|e| e.oversized).collect::<Vec<_>>(),
                    fe.iter().map(|e| e.oversized).collect::<Vec<_>>()
                );
                assert_eq!(read.committed_offset(), fed.committed_offset());
            }
            assert!(read.read_from(&mut input, max).unwrap().is_none());
            let (fb, fe) = fed.finish().unwrap();
            let (rb, re) = read.finish().unwrap();
            assert_eq!(lines(&rb, &re), lines(&fb, &fe));
        }
    }
}
