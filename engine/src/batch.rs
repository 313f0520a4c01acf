//! Batches: the unit of work that flows through a pipeline.
//!
//! Operators process a [`Batch`] of rows at a time, never a single event, so
//! per-event costs stay at the level of a few field look-ups. Each row is a
//! JSON-shaped object ([`Value::Object`]); rows decoded from a source hold
//! only the fields the pipeline reads (see [`crate::decode`]). Parallel
//! vectors carry per-row metadata: event time, source offset, the original
//! bytes (for dead letters), and for keyed data the group key and change kind.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::keys::GroupKey;
use crate::value::Value;

/// A shared buffer of original input bytes (rows point into it).
pub type RawBuf = Arc<Vec<u8>>;

/// What a row means to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RowKind {
    /// A new event (append).
    Insert,
    /// The current absolute value for its key (replaces any earlier one).
    Upsert,
    /// The key no longer has a value (e.g. a session window merged away).
    Delete,
}

/// Where a batch came from: one partition of one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The source's name.
    pub source: Arc<str>,
    /// The partition within the source (0 for unpartitioned sources).
    pub partition: u32,
}

/// Per-row metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMeta {
    /// Event time in epoch milliseconds (arrival time for processing-time pipelines).
    pub time: i64,
    /// The row's offset in its source partition (byte offset, Kafka offset,
    /// journal sequence...). Deterministic across replays.
    pub offset: u64,
    /// Start of the original bytes in [`Batch::raw`].
    pub raw_start: u32,
    /// Length of the original bytes (0 when unknown).
    pub raw_len: u32,
    /// The watermark in force when this row arrived: computed from the rows
    /// before it in its source partition's log (see
    /// `runtime::watermark::WatermarkTracker::observe_rows`), so it does
    /// not depend on how the input was batched. `i64::MIN` when unknown
    /// (rows made by operators); operators then use their own watermark.
    pub watermark: i64,
}

impl Default for RowMeta {
    fn default() -> Self {
        RowMeta {
            time: 0,
            offset: 0,
            raw_start: 0,
            raw_len: 0,
            watermark: i64::MIN,
        }
    }
}

/// A batch of rows plus their metadata; all vectors are parallel.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The rows' values.
    pub rows: Vec<Value>,
    /// One [`RowMeta`] per row.
    pub meta: Vec<RowMeta>,
    /// Group keys, for keyed data; empty otherwise.
    pub keys: Vec<GroupKey>,
    /// Change kinds; empty means every row is an [`RowKind::Insert`].
    pub kinds: Vec<RowKind>,
    /// The source partition the rows were read from; `None` for rows made by operators.
    pub origin: Option<Origin>,
    /// The original input bytes the rows were decoded from.
    pub raw: Option<RawBuf>,
}

impl Batch {
    /// An empty batch with room for `n` rows.
    pub fn with_capacity(n: usize) -> Self {
        Batch {
            rows: Vec::with_capacity(n),
            meta: Vec::with_capacity(n),
            ..Batch::default()
        }
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// True when every row carries a group key.
    pub fn is_keyed(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The change kind of row `i`.
    pub fn kind(&self, i: usize) -> RowKind {
        self.kinds.get(i).copied().unwrap_or(RowKind::Insert)
    }

    /// The original bytes of row `i`, if known.
    pub fn raw_bytes(&self, i: usize) -> Option<&[u8]> {
        let meta = self.meta.get(i)?;
        let raw = self.raw.as_ref()?;
        if meta.raw_len == 0 {
            return None;
        }
        let start = meta.raw_start as usize;
        raw.get(start..start + meta.raw_len as usize)
    }

    /// Appends a change row (keyed, with a kind).
    pub fn push_change(&mut self, kind: RowKind, key: GroupKey, row: Value, time: i64) {
        self.rows.push(row);
        self.meta.push(RowMeta {
            time,
            ..RowMeta::default()
        });
        self.keys.push(key);
        self.kinds.push(kind);
    }

    /// Keeps the rows for which `keep[i]` is true, preserving order and all
    /// parallel vectors.
    pub fn retain_mask(&mut self, keep: &[bool]) {
        debug_assert_eq!(keep.len(), self.rows.len());
        retain_by(&mut self.rows, keep);
        retain_by(&mut self.meta, keep);
        if !self.keys.is_empty() {
            retain_by(&mut self.keys, keep);
        }
        if !self.kinds.is_empty() {
            retain_by(&mut self.kinds, keep);
        }
    }
}

fn retain_by<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut i = 0;
    v.retain(|_| {
        let k = keep[i];
        i += 1;
        k
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::GroupKey;

    #[test]
    fn retain_keeps_vectors_parallel() {
        let mut b = Batch::default();
        for i in 0..4 {
            b.push_change(
                RowKind::Upsert,
                GroupKey::from_slice(&[i as u8]),
                Value::Int(i),
                i,
            );
        }
        b.retain_mask(&[true, false, true, false]);
        assert_eq!(b.rows, vec![Value::Int(0), Value::Int(2)]);
        assert_eq!(b.keys[1].as_slice(), &[2]);
        assert_eq!(b.meta[1].time, 2);
        assert_eq!(b.kinds.len(), 2);
    }
}
