//! The records section of a version 3 batch: a hand-written binary layout
//! that costs a few bytes per record and decodes without a serde visitor
//! per value (the exchange carries every record that changes worker, so
//! its cost is the price of scaling out).
//!
//! Integers are LEB128 varints; signed ones zigzag-encoded first. Within a
//! partition, a record's offset, time and watermark are written as the
//! (wrapping) difference from the previous record's, which is small for the
//! increasing positions and times of a stream.
//!
//! ```text
//! records section = varint(#partitions) partition*
//! partition       = str(source) varint(partition) zigzag(watermark)
//!                   combined varint(#records) record*
//! combined        = varint(0)              records (version 2: absent)
//!                 | varint(first + 1)      partial results folded from
//!                                          the offsets first..=offset
//! record          = zigzag(Δoffset) varint(key_group) bytes(key)
//!                   zigzag(Δtime) zigzag(Δwatermark) value
//! value           = 0 missing | 1 null | 2 false | 3 true
//!                 | 4 zigzag(int) | 5 f64 (8 bytes, little endian)
//!                 | 6 str | 7 varint(n) value{n} | 8 varint(n) (name value){n}
//! name            = varint(0) str      a new field name (remembered while
//!                                      fewer than MAX_NAMES are)
//!                 | varint(i + 1)      the i-th name remembered in this batch
//! str, bytes      = varint(length) the bytes (str: UTF-8)
//! ```
//!
//! Decoding checks everything (tags, lengths, UTF-8, nesting depth, name
//! references, the end of the input); [`validate`] runs the same reader
//! without building values.

use super::{PartitionBatch, Record, Span, WireError};
use crate::value::{Map, Str, Value};

/// Field names a batch remembers for later references (objects in one
/// stream mostly repeat a handful of names).
const MAX_NAMES: usize = 64;

/// Nesting depth of values past which a batch is malformed (events come
/// from JSON, which the decoder limits to 128 levels).
const MAX_DEPTH: usize = 256;

const MISSING: u8 = 0;
const NULL: u8 = 1;
const FALSE: u8 = 2;
const TRUE: u8 = 3;
const INT: u8 = 4;
const FLOAT: u8 = 5;
const STR: u8 = 6;
const ARRAY: u8 = 7;
const OBJECT: u8 = 8;

/// Appends the records section for `partitions` to `out`.
pub(super) fn encode(partitions: &[PartitionBatch], out: &mut Vec<u8>) {
    let mut names = Vec::new();
    varint(out, partitions.len() as u64);
    for part in partitions {
        string(out, &part.source);
        varint(out, u64::from(part.partition));
        zigzag(out, part.watermark);
        varint(out, part.combined_from.map_or(0, |f| f.saturating_add(1)));
        varint(out, part.records.len() as u64);
        let (mut offset, mut time, mut watermark) = (0u64, 0i64, 0i64);
        for r in &part.records {
            zigzag(out, r.offset.wrapping_sub(offset) as i64);
            varint(out, u64::from(r.key_group));
            varint(out, r.key.len() as u64);
            out.extend_from_slice(&r.key);
            zigzag(out, r.time.wrapping_sub(time));
            zigzag(out, r.watermark.wrapping_sub(watermark));
            value(out, &r.value, &mut names);
            (offset, time, watermark) = (r.offset, r.time, r.watermark);
        }
    }
}

fn value<'a>(out: &mut Vec<u8>, v: &'a Value, names: &mut Vec<&'a str>) {
    match v {
        Value::Missing => out.push(MISSING),
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Int(i) => {
            out.push(INT);
            zigzag(out, *i);
        }
        Value::Float(f) => {
            out.push(FLOAT);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Str(s) => {
            out.push(STR);
            string(out, s);
        }
        Value::Array(items) => {
            out.push(ARRAY);
            varint(out, items.len() as u64);
            for item in items {
                value(out, item, names);
            }
        }
        Value::Object(Map(fields)) => {
            out.push(OBJECT);
            varint(out, fields.len() as u64);
            for (name, item) in fields {
                match names.iter().position(|n| *n == name.as_str()) {
                    Some(i) => varint(out, i as u64 + 1),
                    None => {
                        varint(out, 0);
                        string(out, name);
                        if names.len() < MAX_NAMES {
                            names.push(name);
                        }
                    }
                }
                value(out, item, names);
            }
        }
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(out: &mut Vec<u8>, v: i64) {
    varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Decodes the records section, which must end `bytes` (`v3`: of this
/// version, else of version 2).
pub(super) fn decode(bytes: &[u8], v3: bool) -> Result<Vec<PartitionBatch>, WireError> {
    read::<true>(bytes, v3, &mut Vec::new())
}

/// Checks that [`decode`] accepts `bytes` (this version) without building
/// anything; returns the offsets each partition with records covers.
pub(super) fn validate(bytes: &[u8]) -> Result<Vec<Span>, WireError> {
    let mut spans = Vec::new();
    read::<false>(bytes, true, &mut spans)?;
    Ok(spans)
}

/// Reads the records section; builds the partitions only with `BUILD`
/// (otherwise returns an empty vector after the same checks, and the
/// partitions' spans in `spans`).
fn read<const BUILD: bool>(
    bytes: &[u8],
    v3: bool,
    spans: &mut Vec<Span>,
) -> Result<Vec<PartitionBatch>, WireError> {
    let mut r = Reader { bytes, at: 0 };
    let mut names = Names::default();
    let count = r.len()?;
    let mut partitions = Vec::with_capacity(if BUILD { count } else { 0 });
    for _ in 0..count {
        let source = r.str()?;
        let partition =
            u32::try_from(r.varint()?).map_err(|_| r.malformed("a partition number over u32"))?;
        let watermark = r.zigzag()?;
        let combined_from = match if v3 { r.varint()? } else { 0 } {
            0 => None,
            f => Some(f - 1),
        };
        let n = r.len()?;
        let mut records = Vec::with_capacity(if BUILD { n } else { 0 });
        let (mut offset, mut time, mut mark) = (0u64, 0i64, 0i64);
        let mut first = 0;
        for k in 0..n {
            offset = offset.wrapping_add(r.zigzag()? as u64);
            if k == 0 {
                first = offset;
            }
            let key_group =
                u16::try_from(r.varint()?).map_err(|_| r.malformed("a key group over u16"))?;
            let key = r.bytes()?;
            time = time.wrapping_add(r.zigzag()?);
            mark = mark.wrapping_add(r.zigzag()?);
            let v = r.value::<BUILD>(&mut names, 0)?;
            if BUILD {
                records.push(Record {
                    offset,
                    key_group,
                    key: key.to_vec(),
                    time,
                    watermark: mark,
                    value: v,
                });
            }
        }
        if BUILD {
            partitions.push(PartitionBatch {
                source: Str::from(source),
                partition,
                watermark,
                records,
                combined_from,
            });
        } else if n > 0 {
            spans.push(Span {
                source: Str::from(source),
                partition,
                first: combined_from.unwrap_or(first),
                last: offset,
                combined: combined_from.is_some(),
            });
        }
    }
    if r.at != bytes.len() {
        return Err(WireError::Malformed(format!(
            "{} bytes after the records",
            bytes.len() - r.at
        )));
    }
    Ok(partitions)
}

/// The field names a batch has remembered so far.
#[derive(Default)]
struct Names<'a> {
    names: Vec<&'a str>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn malformed(&self, what: &str) -> WireError {
        WireError::Malformed(format!("records: {what} at byte {}", self.at))
    }

    fn byte(&mut self) -> Result<u8, WireError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| self.malformed("the end of the input"))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            // the tenth byte may only carry the top bit of a u64
            if shift == 63 && bits > 1 {
                return Err(self.malformed("a varint over 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.malformed("a varint over 10 bytes"))
    }

    fn zigzag(&mut self) -> Result<i64, WireError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// A count of items that follow, each at least one byte long (so a
    /// damaged count cannot make the reader reserve more than the input).
    fn len(&mut self) -> Result<usize, WireError> {
        let n = self.varint()?;
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(self.malformed("a count past the end of the input"));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(self.malformed("a length past the end of the input"));
        }
        let s = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }

    fn str(&mut self) -> Result<&'a str, WireError> {
        let at = self.at;
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| {
            WireError::Malformed(format!("records: a string that is not UTF-8 at byte {at}"))
        })
    }

    fn value<const BUILD: bool>(
        &mut self,
        names: &mut Names<'a>,
        depth: usize,
    ) -> Result<Value, WireError> {
        if depth >= MAX_DEPTH {
            return Err(self.malformed("values nested too deeply"));
        }
        let v = match self.byte()? {
            MISSING => Value::Missing,
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            INT => Value::Int(self.zigzag()?),
            FLOAT => {
                let end = self.at + 8;
                let b = self
                    .bytes
                    .get(self.at..end)
                    .ok_or_else(|| self.malformed("the end of the input"))?;
                let f = f64::from_le_bytes(b.try_into().expect("8 bytes"));
                self.at = end;
                Value::Float(f)
            }
            STR => {
                let s = self.str()?;
                if BUILD {
                    Value::Str(Str::from(s))
                } else {
                    Value::Null
                }
            }
            ARRAY => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(if BUILD { n } else { 0 });
                for _ in 0..n {
                    let item = self.value::<BUILD>(names, depth + 1)?;
                    if BUILD {
                        items.push(item);
                    }
                }
                Value::Array(items)
            }
            OBJECT => {
                let n = self.len()?;
                let mut fields = Vec::with_capacity(if BUILD { n } else { 0 });
                for _ in 0..n {
                    let name = match self.varint()? {
                        0 => {
                            let name = self.str()?;
                            if names.names.len() < MAX_NAMES {
                                names.names.push(name);
                            }
                            name
                        }
                        i => *names
                            .names
                            .get(i as usize - 1)
                            .ok_or_else(|| self.malformed("an unknown field name reference"))?,
                    };
                    let item = self.value::<BUILD>(names, depth + 1)?;
                    if BUILD {
                        fields.push((Str::from(name), item));
                    }
                }
                Value::Object(Map(fields))
            }
            tag => return Err(self.malformed(&format!("value tag {tag}"))),
        };
        Ok(v)
    }
}
