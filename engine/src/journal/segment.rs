//! The on-disk format of journal segments, and the recovery scan.
//!
//! A segment is a file named `{first_seq:020}.log` holding consecutive
//! records, the first one having sequence number `first_seq`. A record is
//!
//! ```text
//! [len: u32 LE][crc: u32 LE][payload: len bytes]
//! ```
//!
//! where `crc` is the CRC-32 (IEEE) of the four length bytes followed by the
//! payload, so a corrupted length is detected as well as a corrupted payload.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{sync_dir, JournalError};

/// Bytes of a record header.
pub(crate) const HEADER: usize = 8;

/// One index entry is kept for every this many records of a segment, so a
/// reader can start anywhere after skipping at most this many records.
pub(crate) const INDEX_EVERY: u64 = 256;

/// The file of the segment starting at `first_seq`.
pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

/// The first sequence number encoded in a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The CRC of a record with this length field and payload.
pub(crate) fn record_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    h.finalize()
}

/// Appends one encoded record to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&record_crc(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Splits a header into (payload length, crc).
pub(crate) fn decode_header(h: [u8; HEADER]) -> (u32, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, crc)
}

/// What is known about one segment (shared by the writer and readers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    pub first_seq: u64,
    /// One past the last durable record.
    pub end_seq: u64,
    /// Bytes of durable records.
    pub bytes: u64,
    /// `index[k]` = byte offset of record `first_seq + k * INDEX_EVERY`.
    pub index: Vec<u64>,
}

impl SegmentMeta {
    pub(super) fn empty(first_seq: u64) -> Self {
        SegmentMeta {
            first_seq,
            end_seq: first_seq,
            bytes: 0,
            index: Vec::new(),
        }
    }

    /// The closest indexed record at or before `seq`: (its seq, its offset).
    pub(super) fn seek_point(&self, seq: u64) -> (u64, u64) {
        let k = ((seq.saturating_sub(self.first_seq)) / INDEX_EVERY) as usize;
        match self.index.get(k).or(self.index.last()) {
            Some(&offset) => {
                let k = k.min(self.index.len() - 1) as u64;
                (self.first_seq + k * INDEX_EVERY, offset)
            }
            None => (self.first_seq, 0),
        }
    }
}

/// Why a scan stopped before the end of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Offset of the first bad record (where the valid data ends).
    pub offset: u64,
    pub reason: &'static str,
}

/// Reads every record of a segment file, building its metadata. Stops at
/// the first record that is torn (cut short) or fails its checksum.
pub(crate) fn scan(
    path: &Path,
    first_seq: u64,
) -> Result<(SegmentMeta, Option<Damage>), JournalError> {
    let io = |context: &str| {
        let context = format!("{context} {}", path.display());
        move |source| JournalError::Io { context, source }
    };
    let file = File::open(path).map_err(io("cannot open"))?;
    let size = file.metadata().map_err(io("cannot stat"))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut meta = SegmentMeta::empty(first_seq);
    let mut payload = Vec::new();
    let damage = loop {
        let offset = meta.bytes;
        if offset == size {
            break None;
        }
        if size - offset < HEADER as u64 {
            break Some(Damage {
                offset,
                reason: "torn record header",
            });
        }
        let mut h = [0u8; HEADER];
        r.read_exact(&mut h).map_err(io("cannot read"))?;
        let (len, crc) = decode_header(h);
        if (len as u64) > size - offset - HEADER as u64 {
            break Some(Damage {
                offset,
                reason: "torn record (shorter than its length field)",
            });
        }
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload).map_err(io("cannot read"))?;
        if record_crc([h[0], h[1], h[2], h[3]], &payload) != crc {
            break Some(Damage {
                offset,
                reason: "checksum mismatch",
            });
        }
        if (meta.end_seq - first_seq).is_multiple_of(INDEX_EVERY) {
            meta.index.push(offset);
        }
        meta.end_seq += 1;
        meta.bytes += (HEADER + len as usize) as u64;
    };
    Ok((meta, damage))
}

/// The file naming the active (newest) segment: its first sequence number
/// in decimal. It is rewritten (atomically) whenever a new segment is
/// created, after the segment file itself, so that a missing newest segment
/// is detected instead of being taken for the end of the journal.
pub(crate) const HEAD: &str = "HEAD";

/// Records `first_seq` as the active segment, atomically (temporary file,
/// fsync, rename, fsync of the directory).
pub(crate) fn write_head(dir: &Path, first_seq: u64, fsync: bool) -> Result<(), JournalError> {
    let tmp = dir.join("HEAD.tmp");
    let io = |what: &str, p: &Path| JournalError::io(format!("cannot {what} {}", p.display()));
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(format!("{first_seq}\n").as_bytes())
        .map_err(io("write", &tmp))?;
    if fsync {
        f.sync_all().map_err(io("fsync", &tmp))?;
    }
    drop(f);
    let head = dir.join(HEAD);
    std::fs::rename(&tmp, &head).map_err(io("rename into", &head))?;
    if fsync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Reads the HEAD file, if there is one.
fn read_head(dir: &Path) -> Result<Option<u64>, JournalError> {
    let path = dir.join(HEAD);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| JournalError::Corrupt {
                path,
                offset: 0,
                reason: format!("HEAD holds {:?}, not a sequence number", text.trim()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JournalError::io(format!("cannot read {}", path.display()))(
            e,
        )),
    }
}

/// Whether a complete record with a valid checksum starts anywhere in
/// `path` after byte `damaged` (where a scan stopped). Returns its offset.
/// Used to tell a torn tail (nothing valid after it: a write cut short by
/// a crash) from damage in the middle of acknowledged records.
pub(crate) fn valid_record_after(path: &Path, damaged: u64) -> Result<Option<u64>, JournalError> {
    let io = |what: &str| JournalError::io(format!("cannot {what} {}", path.display()));
    let mut file = File::open(path).map_err(io("open"))?;
    file.seek(SeekFrom::Start(damaged)).map_err(io("seek in"))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(io("read"))?;
    for at in 1..tail.len() {
        let rest = &tail[at..];
        if rest.len() < HEADER {
            break;
        }
        let (len, crc) = decode_header(rest[..HEADER].try_into().expect("8 bytes"));
        let len = len as usize;
        if len > rest.len() - HEADER {
            continue;
        }
        if record_crc(
            [rest[0], rest[1], rest[2], rest[3]],
            &rest[HEADER..HEADER + len],
        ) == crc
        {
            return Ok(Some(damaged + at as u64));
        }
    }
    Ok(None)
}

/// Scans the segments of `dir` (creating the first one if there is none),
/// truncating a torn tail of the last one. `existed`: the directory held a
/// journal before this open (its LOCK file was there).
///
/// Errors ([`JournalError::Corrupt`]) rather than losing acknowledged
/// records: damage followed by a valid record, in any segment; a gap
/// between segments; a missing newest segment (HEAD names a later one);
/// a journal whose segments are all gone.
pub(crate) fn recover(
    dir: &Path,
    fsync: bool,
    existed: bool,
    start: u64,
) -> Result<BTreeMap<u64, SegmentMeta>, JournalError> {
    let mut firsts = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(JournalError::io(format!("cannot list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(JournalError::io(format!("cannot list {}", dir.display())))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match parse_segment_name(&name) {
            Some(first) => firsts.push(first),
            None if !matches!(&*name, "LOCK" | HEAD | "HEAD.tmp") => {
                tracing::warn!(dir = %dir.display(), file = %name, "ignoring a file that is not a journal segment")
            }
            None => {}
        }
    }
    firsts.sort_unstable();
    let head = read_head(dir)?;
    let mut segments = BTreeMap::new();
    if firsts.is_empty() {
        if existed || head.is_some() {
            return Err(JournalError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                reason: format!(
                    "the journal has no segment files left, but it held {}: its records were deleted",
                    match head {
                        Some(h) => format!("an active segment starting at sequence {h}"),
                        None => "a journal before (its LOCK file is there)".to_string(),
                    }
                ),
            });
        }
        let path = segment_path(dir, start);
        File::create(&path).map_err(JournalError::io(format!(
            "cannot create {}",
            path.display()
        )))?;
        if fsync {
            sync_dir(dir)?;
        }
        write_head(dir, start, fsync)?;
        segments.insert(start, SegmentMeta::empty(start));
        return Ok(segments);
    }
    let newest = *firsts.last().expect("not empty");
    if let Some(h) = head {
        if newest < h {
            return Err(JournalError::Corrupt {
                path: segment_path(dir, h),
                offset: 0,
                reason: format!(
                    "the newest segment file starts at sequence {newest}, but the journal's HEAD says \
                     the active segment starts at {h}: the newest segment(s) were deleted, with \
                     records that were acknowledged"
                ),
            });
        }
    }
    let mut expected: Option<u64> = None;
    for (i, &first) in firsts.iter().enumerate() {
        let path = segment_path(dir, first);
        if let Some(want) = expected {
            if want != first {
                return Err(JournalError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!(
                        "the previous segment ends at sequence {want}, this one starts at {first}"
                    ),
                });
            }
        }
        let (meta, damage) = scan(&path, first)?;
        if let Some(d) = damage {
            if i + 1 < firsts.len() {
                return Err(JournalError::Corrupt {
                    path,
                    offset: d.offset,
                    reason: d.reason.to_string(),
                });
            }
            if let Some(valid) = valid_record_after(&path, d.offset)? {
                return Err(JournalError::Corrupt {
                    path,
                    offset: d.offset,
                    reason: format!(
                        "{} after record {}, followed by a valid record at byte {valid}: \
                         this is damage, not a write cut short by a crash",
                        d.reason, meta.end_seq
                    ),
                });
            }
            tracing::warn!(
                segment = %path.display(),
                offset = d.offset,
                reason = d.reason,
                kept_records = meta.end_seq - first,
                "cutting off the torn tail of the journal (a write interrupted by a crash, never acknowledged)"
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(JournalError::io(format!("cannot open {}", path.display())))?;
            f.set_len(d.offset)
                .and_then(|()| if fsync { f.sync_all() } else { Ok(()) })
                .map_err(JournalError::io(format!(
                    "cannot truncate {}",
                    path.display()
                )))?;
        }
        expected = Some(meta.end_seq);
        segments.insert(first, meta);
    }
    if head != Some(newest) {
        write_head(dir, newest, fsync)?;
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = segment_path(Path::new("/j"), 42);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.log");
        assert_eq!(parse_segment_name(name), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.log"), None);
        assert_eq!(parse_segment_name("00000000000000000042.tmp"), None);
    }

    #[test]
    fn a_corrupted_length_fails_the_checksum() {
        let mut rec = Vec::new();
        encode_record(&mut rec, b"{\"a\":1}");
        let (len, crc) = decode_header(rec[..8].try_into().unwrap());
        assert_eq!(len, 7);
        assert_eq!(record_crc(rec[..4].try_into().unwrap(), &rec[8..]), crc);
        assert_ne!(record_crc(8u32.to_le_bytes(), &rec[8..]), crc);
        // an all-zero header (a zero-filled tail after a crash) is invalid
        assert_ne!(record_crc([0; 4], b""), 0);
    }

    #[test]
    fn seek_points_use_the_sparse_index() {
        let meta = SegmentMeta {
            first_seq: 1000,
            end_seq: 1000 + 3 * INDEX_EVERY,
            bytes: 0,
            index: vec![0, 5000, 9000],
        };
        assert_eq!(meta.seek_point(1000), (1000, 0));
        assert_eq!(meta.seek_point(1000 + INDEX_EVERY - 1), (1000, 0));
        assert_eq!(
            meta.seek_point(1000 + INDEX_EVERY),
            (1000 + INDEX_EVERY, 5000)
        );
        assert_eq!(
            meta.seek_point(1000 + 10 * INDEX_EVERY),
            (1000 + 2 * INDEX_EVERY, 9000)
        );
        assert_eq!(SegmentMeta::empty(7).seek_point(9), (7, 0));
    }
}
