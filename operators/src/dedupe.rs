//! `dedupe`: drops exact redeliveries, e.g. messages a publisher re-sent
//! with the same id, before they are aggregated.
//!
//! ```toml
//! [transforms.unique]
//! type = "dedupe"
//! inputs = ["orders"]
//! fields = ["order_id"]
//! within = "10m"
//! max_keys = 1000000
//! ```
//!
//! The values of `fields` together are an event's identity. The first event
//! with an identity passes; later ones are dropped while the identity is
//! remembered, and counted in `sluice_dedupe_dropped_total{component}`.
//! Dropping is this operator's purpose, so they are not dead letters.
//!
//! How long an identity is remembered:
//! - `within`: from the time of its first sighting (event time, or the
//!   wall clock when the rows have no event time) until that time plus
//!   `within`. An event is a duplicate if its identity was seen and its own
//!   time is before that end. An identity is forgotten once the watermark
//!   reaches the end; a later event with it passes and starts a new period.
//!   Sightings within the period do not extend it.
//! - `max_keys`: at most this many identities; inserting one more forgets
//!   the one first seen longest ago.
//!
//! At least one bound is required, so memory stays bounded. Events missing
//! a field of the identity go to the dead-letter output (`missing_field`).
//!
//! State: one entry per remembered identity (the time and order of its
//! first sighting), in the key group of the identity, written at
//! checkpoints like every operator's state, so a restart decides every
//! event as an uninterrupted run would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_engine::batch::Batch;
use sluice_engine::error::Invalid;
use sluice_engine::keys::GroupKey;
use sluice_engine::metrics::DEDUPE_DROPPED;
use sluice_engine::operator::{
    BuildContext, BuildError, Emitter, FieldPath, FieldSet, Operator, OperatorSpec, StateEntry,
    StateError, StateStats, StateWriter, Stream, TimeUse,
};
use sluice_engine::table::{restore_tables, KeyedTable, MetaCell, TableSpec};
use sluice_engine::time::{now_ms, HumanDuration};
use sluice_engine::value::parse_path;

use crate::key_by::{compute_keys, missing_key};

/// State key tag of a remembered identity.
const TAG_SEEN: u8 = 1;
/// The remembered identities.
const SEEN: TableSpec<Seen> = TableSpec::bincode("seen", TAG_SEEN, 1);
/// State key of the next sighting number (so a restart numbers new
/// sightings exactly as an uninterrupted run).
const META_NEXT_SEQ: &[u8] = b"\0seq";

/// Configuration of a `dedupe` transform.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// The fields (dotted paths) whose values together identify an event,
    /// e.g. `["id"]` or `["publisher", "seq"]`.
    pub fields: Vec<String>,
    /// How long after its first sighting an identity is remembered (event
    /// time, or processing time when the rows carry no event time).
    #[serde(default)]
    pub within: Option<HumanDuration>,
    /// The most identities remembered at once; one more forgets the oldest.
    #[serde(default)]
    pub max_keys: Option<u64>,
}

/// A validated dedupe.
#[derive(Debug)]
pub struct DedupeSpec {
    fields: Vec<FieldPath>,
    within: Option<i64>,
    max_keys: Option<u64>,
}

impl DedupeSpec {
    pub fn new(config: &DedupeConfig) -> Result<Self, Invalid> {
        if config.fields.is_empty() {
            return Err("`fields` must name at least one field, e.g. [\"id\"]".into());
        }
        if config.within.is_none() && config.max_keys.is_none() {
            return Err("a dedupe needs a bound: `within` (e.g. \"10m\") and/or `max_keys`".into());
        }
        if config.within.is_some_and(|w| w.0.is_zero()) {
            return Err("`within` must be positive".into());
        }
        if config.max_keys == Some(0) {
            return Err("`max_keys` must be at least 1".into());
        }
        Ok(DedupeSpec {
            fields: config.fields.iter().map(|f| parse_path(f)).collect(),
            within: config.within.map(|w| w.as_millis().max(1)),
            max_keys: config.max_keys,
        })
    }
}

impl OperatorSpec for DedupeSpec {
    fn input_reads(&self, downstream: &FieldSet) -> FieldSet {
        let mut reads = downstream.clone();
        for f in &self.fields {
            reads.insert(f.clone());
        }
        reads
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn time_use(&self) -> TimeUse {
        if self.within.is_some() {
            TimeUse::Period
        } else {
            TimeUse::Untimed
        }
    }

    fn check_input(&self, input: Stream) -> Result<(), Invalid> {
        if input.is_changelog() {
            return Err(
                "reads the changelog of an aggregate, whose rows are updates of \
                 earlier rows, not redeliveries. Put `dedupe` before the aggregate"
                    .into(),
            );
        }
        Ok(())
    }

    /// Rows pass through unchanged, with the key they came with.
    fn output_key(&self, input: Option<&[FieldPath]>) -> Option<Vec<FieldPath>> {
        input.map(<[FieldPath]>::to_vec)
    }

    /// The identity fields give the stored keys their meaning; `within` and
    /// `max_keys` may change between runs (the stored first-sighting times
    /// stay valid).
    fn state_signature(&self) -> String {
        let fields: Vec<String> = self.fields.iter().map(|f| f.join(".")).collect();
        format!("dedupe v1 fields={fields:?}")
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Operator>, BuildError> {
        // `component` and `component_kind` (an operator is not told the
        // pipeline's name; a process runs one pipeline).
        let labels = vec![
            metrics::Label::new("component", ctx.name.to_string()),
            metrics::Label::new("component_kind", "transform"),
        ];
        let dropped = metrics::counter!(DEDUPE_DROPPED, labels);
        dropped.increment(0);
        Ok(Box::new(Dedupe {
            name: ctx.name.clone(),
            fields: self.fields.clone(),
            within: self.within,
            max_keys: self.max_keys,
            processing_time: !ctx.event_time,
            seen: KeyedTable::new(SEEN, ctx.key_groups),
            by_seq: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            next_seq: MetaCell::new("dedupe sequence", META_NEXT_SEQ, 0),
            keys: Vec::new(),
            dropped,
        }))
    }
}

/// A remembered identity: the time and the order of its first sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    time: i64,
    seq: u64,
}

struct Dedupe {
    name: Arc<str>,
    fields: Vec<FieldPath>,
    within: Option<i64>,
    max_keys: Option<u64>,
    processing_time: bool,
    seen: KeyedTable<GroupKey, Seen>,
    /// Identities in order of first sighting (for `max_keys`).
    by_seq: BTreeMap<u64, GroupKey>,
    /// `(end of the period, seq)` of every identity (for `within`).
    by_expiry: BTreeSet<(i64, u64)>,
    next_seq: MetaCell<u64>,
    keys: Vec<Result<GroupKey, usize>>,
    dropped: metrics::Counter,
}

impl Dedupe {
    fn expiry(&self, time: i64) -> i64 {
        self.within.map_or(i64::MAX, |w| time.saturating_add(w))
    }

    /// Forgets every identity whose period ended at or before `watermark`.
    fn expire(&mut self, watermark: i64) {
        if self.within.is_none() {
            return;
        }
        while let Some(&(end, seq)) = self.by_expiry.first() {
            if end > watermark {
                break;
            }
            let Some(key) = self.by_seq.get(&seq).cloned() else {
                self.by_expiry.pop_first();
                continue;
            };
            self.forget(&key);
        }
    }

    fn forget(&mut self, key: &GroupKey) {
        if let Some(s) = self.seen.remove(key) {
            self.by_seq.remove(&s.seq);
            self.by_expiry.remove(&(self.expiry(s.time), s.seq));
        }
    }

    /// Remembers `key` as first seen at `time` (replacing an expired entry).
    fn remember(&mut self, key: GroupKey, time: i64) {
        self.forget(&key);
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        self.by_seq.insert(seq, key.clone());
        self.by_expiry.insert((self.expiry(time), seq));
        self.seen.insert(key, Seen { time, seq });
        self.evict_over_max();
    }

    /// Forgets the identities first seen longest ago while over `max_keys`.
    fn evict_over_max(&mut self) {
        let Some(max) = self.max_keys else {
            return;
        };
        while self.seen.len() as u64 > max {
            let Some((_, oldest)) = self.by_seq.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            self.forget(&oldest);
        }
    }
}

impl Operator for Dedupe {
    fn routing_keys(&self, batch: &Batch, keys: &mut Vec<Result<GroupKey, usize>>) -> bool {
        compute_keys(&self.fields, batch, keys);
        true
    }

    fn process(&mut self, mut batch: Batch, out: &mut Emitter<'_>) {
        let mut keys = std::mem::take(&mut self.keys);
        compute_keys(&self.fields, &batch, &mut keys);
        let now = if self.processing_time { now_ms() } else { 0 };
        let mut keep = Vec::with_capacity(batch.len());
        let mut dropped = 0u64;
        for (i, key) in keys.drain(..).enumerate() {
            let key = match key {
                Ok(k) => k,
                Err(f) => {
                    out.dead_letter(missing_key(&batch, i, &self.name, &self.fields[f]));
                    keep.push(false);
                    continue;
                }
            };
            let t = if self.processing_time {
                now
            } else {
                batch.meta[i].time
            };
            // Identities whose period ended before this row arrived are
            // forgotten for it, as if the watermark moved row by row (the
            // row's stamp, see `RowMeta::watermark`): the same decisions
            // whatever the batching.
            self.expire(batch.meta[i].watermark);
            let duplicate = self.seen.get(&key).is_some_and(|s| t < self.expiry(s.time));
            if duplicate {
                dropped += 1;
                keep.push(false);
            } else {
                self.remember(key, t);
                keep.push(true);
            }
        }
        self.keys = keys;
        if dropped > 0 {
            self.dropped.increment(dropped);
        }
        if keep.iter().all(|&k| k) {
            out.emit(batch);
            return;
        }
        batch.retain_mask(&keep);
        out.emit(batch);
    }

    /// Forgets every identity whose period ended at or before `watermark`.
    fn on_watermark(&mut self, watermark: i64, _out: &mut Emitter<'_>) {
        self.expire(watermark);
    }

    fn snapshot(&mut self, w: &mut StateWriter) {
        self.seen.snapshot(w);
        self.next_seq.snapshot(w);
    }

    fn snapshot_all(&self, w: &mut StateWriter) -> bool {
        self.seen.snapshot_all(w) && self.next_seq.snapshot_all(w)
    }

    fn restore(&mut self, entries: Vec<StateEntry>) -> Result<(), StateError> {
        restore_tables(entries, &mut [&mut self.seen, &mut self.next_seq])?;
        let mut next_seq = self.next_seq.get();
        for (id, s) in self.seen.iter() {
            next_seq = next_seq.max(s.seq + 1);
            self.by_seq.insert(s.seq, id.clone());
            self.by_expiry.insert((self.expiry(s.time), s.seq));
        }
        self.next_seq.set(next_seq);
        // A smaller `max_keys` than the stored run's applies at once.
        self.evict_over_max();
        Ok(())
    }

    fn state_stats(&self) -> StateStats {
        self.seen.stats()
    }
}

#[cfg(test)]
mod tests;
