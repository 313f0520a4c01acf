//! Rows bound for another worker folded into partial results (see
//! [`crate::operator::Combiner`]) and the partition of a batch they become.

use crate::batch::Batch;
use crate::dead_letter::DeadLetter;
use crate::exchange::wire::{PartitionBatch, Record};
use crate::keys::key_group;
use crate::operator::{Combiner, Emitter};
use crate::value::Str;

/// Rows of one partition bound for one worker, folded into partial results.
pub(super) struct Folding {
    pub(super) combiner: Box<dyn Combiner>,
    /// The offsets of the first and last row folded since the last send.
    first: u64,
    last: u64,
    pub(super) rows: usize,
    /// `combiner.len()` as counted in `ClusterRun::folded_keys`.
    pub(super) keys_counted: usize,
}

impl Folding {
    pub(super) fn new(combiner: Box<dyn Combiner>) -> Self {
        Folding {
            combiner,
            first: 0,
            last: 0,
            rows: 0,
            keys_counted: 0,
        }
    }

    pub(super) fn add(
        &mut self,
        key: &[u8],
        batch: &Batch,
        i: usize,
        offset: u64,
        out: &mut Vec<Batch>,
        dead: &mut Vec<DeadLetter>,
    ) {
        if self.rows == 0 {
            self.first = offset;
        }
        self.last = offset;
        self.rows += 1;
        self.combiner.add(key, batch, i, &mut Emitter { out, dead });
    }

    /// The partial results folded since the last call, as a partition of a
    /// batch (its watermark is set by the caller); `None` if none.
    pub(super) fn take(
        &mut self,
        stream: &Str,
        partition: u32,
        key_groups: u16,
    ) -> Option<PartitionBatch> {
        if self.rows == 0 {
            return None;
        }
        let mut partials = Vec::with_capacity(self.combiner.len());
        self.combiner.drain(&mut partials);
        let (first, last) = (self.first, self.last);
        self.rows = 0;
        self.keys_counted = 0;
        if partials.is_empty() {
            // every row was refused (dead letters here)
            return None;
        }
        Some(PartitionBatch {
            source: stream.clone(),
            partition,
            watermark: i64::MIN,
            records: partials
                .into_iter()
                .map(|(key, value)| Record {
                    offset: last,
                    key_group: key_group(&key, key_groups),
                    key: key.into_vec(),
                    time: 0,
                    watermark: i64::MIN,
                    value,
                })
                .collect(),
            combined_from: Some(first),
        })
    }
}
