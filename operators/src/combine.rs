//! The combiner of all-time aggregates: rows bound for another worker are
//! folded into one partial result per group key before they cross the
//! exchange, and the owner merges the partial results into its slots.
//!
//! This gives the owner the results the rows themselves would: count,
//! min, max, count_distinct and integer sums merge exactly; float sums and
//! averages up to the rounding of another order of additions, and first
//! and last up to which of two rows with the same time counts as earlier,
//! both of which already depend on how rows from several partitions
//! interleave. Rows of the wrong type become dead letters on the worker
//! that folds them, the same dead letters (same id, same reason) the owner
//! would make. The retractable forms (an aggregate reading a changelog)
//! never fold.

use rustc_hash::FxHashMap;
use sluice_engine::batch::Batch;
use sluice_engine::keys::GroupKey;
use sluice_engine::operator::{Combiner, Emitter};
use sluice_engine::time::now_ms;
use sluice_engine::value::Value;

use crate::accumulator::{Acc, AggFn};
use crate::aggregate::Common;
use crate::key_by::missing_key;
use crate::window::assign;

/// Partial results of one aggregate, per group key (or, folding whole
/// batches of a windowed aggregate, per window and group key).
pub struct AggCombiner {
    c: Common,
    /// (size, slide) of fixed windows, in ms: keys are then
    /// [`slot_key`]s. None: all-time, keys are group keys.
    window: Option<(i64, i64)>,
    /// The partial results in the order of each key's first row, so that
    /// the operator merging them marks its results changed in the order
    /// the rows would have.
    partials: Vec<(GroupKey, Vec<Acc>)>,
    index: FxHashMap<GroupKey, u32>,
    /// A reused buffer for the key of a window.
    slot: GroupKey,
}

/// The key of the result of `group` in the window starting at `start`:
/// the start (sign bit flipped, so byte order is numeric order) then the
/// group key, as the aggregate's state stores it.
pub fn slot_key(start: i64, group: &[u8], out: &mut GroupKey) {
    out.clear();
    out.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(group);
}

/// The window start and group key of a [`slot_key`].
pub fn split_slot_key(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let (start, group) = bytes.split_first_chunk::<8>()?;
    Some(((u64::from_be_bytes(*start) ^ (1 << 63)) as i64, group))
}

impl AggCombiner {
    /// A combiner for the aggregate described by `c` (reading events):
    /// all-time when `window` is None, else fixed windows of (size, slide).
    pub fn new(c: Common, window: Option<(i64, i64)>) -> Self {
        AggCombiner {
            c,
            window,
            partials: Vec::new(),
            index: FxHashMap::default(),
            slot: GroupKey::new(),
        }
    }

    /// Folds `row` at time `t` into the partial result of `key`.
    fn fold(&mut self, key: &[u8], batch: &Batch, i: usize, t: i64) {
        let at = match self.index.get(key) {
            Some(&at) => at as usize,
            None => {
                let accs = self.c.aggregates.iter().map(|a| a.init()).collect();
                self.partials.push((GroupKey::from_slice(key), accs));
                self.index
                    .insert(GroupKey::from_slice(key), (self.partials.len() - 1) as u32);
                self.partials.len() - 1
            }
        };
        let row = &batch.rows[i];
        for (agg, acc) in self.c.aggregates.iter().zip(self.partials[at].1.iter_mut()) {
            acc.update(agg.input(row), t);
        }
    }
}

impl Combiner for AggCombiner {
    fn add(&mut self, key: &[u8], batch: &Batch, i: usize, out: &mut Emitter<'_>) {
        if let Err(dead) = self.c.check_row(batch, i) {
            out.dead_letter(dead);
            return;
        }
        let now = if self.c.processing_time { now_ms() } else { 0 };
        let t = self.c.time_of(batch, i, now);
        match self.window {
            None => self.fold(key, batch, i, t),
            Some((size, slide)) => {
                let mut slot = std::mem::take(&mut self.slot);
                for start in assign(t, size, slide) {
                    slot_key(start, key, &mut slot);
                    self.fold(&slot, batch, i, t);
                }
                self.slot = slot;
            }
        }
    }

    fn add_batch(&mut self, batch: &Batch, out: &mut Emitter<'_>) {
        let mut keys = Vec::with_capacity(batch.len());
        self.c.keys(batch, &mut keys);
        for (i, key) in keys.iter().enumerate() {
            match key {
                Ok(k) => self.add(k, batch, i, out),
                Err(f) => out.dead_letter(missing_key(
                    batch,
                    i,
                    &self.c.name,
                    &self.c.group.names()[*f],
                )),
            }
        }
    }

    fn fresh(&self) -> Box<dyn Combiner> {
        Box::new(AggCombiner::new(self.c.clone(), self.window))
    }

    fn rounds_differently(&self) -> bool {
        self.c
            .aggregates
            .iter()
            .any(|a| matches!(a.func, AggFn::Sum | AggFn::Avg))
    }

    fn len(&self) -> usize {
        self.partials.len()
    }

    fn drain(&mut self, out: &mut Vec<(GroupKey, Value)>) {
        self.index.clear();
        out.extend(self.partials.drain(..).map(|(key, accs)| {
            let partial = accs
                .iter()
                .map(|a| a.to_partial().expect("a combiner holds plain accumulators"))
                .collect();
            (key, Value::Array(partial))
        }));
    }
}

/// The accumulators a partial value made by [`AggCombiner::drain`] holds,
/// one per aggregate of `c`; `None` when it is not such a value.
pub fn partial_accs(c: &Common, v: &Value) -> Option<Vec<Acc>> {
    let Value::Array(items) = v else {
        return None;
    };
    if items.len() != c.aggregates.len() {
        return None;
    }
    c.aggregates
        .iter()
        .zip(items)
        .map(|(a, v)| Acc::from_partial(a, v))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use sluice_engine::keys::GroupKey;
    use sluice_engine::operator::{Emitter, Operator, OperatorSpec};

    use crate::aggregate::{AggregateConfig, AggregateSpec};
    use crate::testing::{batch_of, build_ctx, checkpoint, rows, run_op};

    const ALL_TIME: &str = r#"
group_by = ["k"]
aggregates = { n = "count", total = { fn = "sum", field = "v" }, mean = { fn = "avg", field = "v" }, low = { fn = "min", field = "v" }, high = { fn = "max", field = "v" }, kinds = { fn = "count_distinct", field = "c" }, earliest = { fn = "first", field = "v" }, latest = { fn = "last", field = "v" } }
"#;

    fn build(config: &str) -> Box<dyn Operator> {
        let c: AggregateConfig = toml::from_str(config).unwrap();
        AggregateSpec::new(&c).unwrap().build(&build_ctx()).unwrap()
    }

    /// The results an operator holds, by group key.
    fn results(op: &mut dyn Operator) -> BTreeMap<String, String> {
        rows(&checkpoint(op))
            .into_iter()
            .map(|r| (r[..r.find(',').unwrap_or(r.len())].to_string(), r))
            .collect()
    }

    /// Folds the rows of `batch` whose index `fold` picks into partial
    /// results (as a sender does for another worker), returns the rest as
    /// a batch and the partials as a partial batch for `merge_partials`.
    fn split(
        op: &dyn Operator,
        batch: &sluice_engine::batch::Batch,
        fold: impl Fn(usize) -> bool,
        dead: &mut Vec<sluice_engine::dead_letter::DeadLetter>,
    ) -> (sluice_engine::batch::Batch, sluice_engine::batch::Batch) {
        let mut combiner = op.combiner().expect("an all-time aggregate combines");
        let mut keys = Vec::new();
        assert!(op.routing_keys(batch, &mut keys));
        let mut keep = vec![true; batch.len()];
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if let (true, Ok(k)) = (fold(i), key) {
                combiner.add(
                    k,
                    batch,
                    i,
                    &mut Emitter {
                        out: &mut out,
                        dead,
                    },
                );
                keep[i] = false;
            }
        }
        assert!(out.is_empty());
        let mut rest = batch.clone();
        rest.retain_mask(&keep);
        let mut partials = Vec::new();
        combiner.drain(&mut partials);
        assert!(combiner.is_empty());
        let mut merged = sluice_engine::batch::Batch::default();
        for (key, value) in partials {
            merged.keys.push(key);
            merged.rows.push(value);
        }
        (rest, merged)
    }

    proptest! {
        /// Rows taken one by one, or some of them folded into partial
        /// results elsewhere and merged: the same results, the same dead
        /// letters (a row of the wrong type included).
        #[test]
        fn partial_results_merge_to_what_the_rows_give(
            events in proptest::collection::vec((0u8..4, -50i64..50, 0u8..3, 0u8..20), 1..60),
            mask in proptest::collection::vec(any::<bool>(), 60),
            cut in 1usize..60,
        ) {
            // distinct times: which of two rows at the same time is first
            // depends on the order rows arrive in, with or without folding
            let lines: Vec<String> = events
                .iter()
                .enumerate()
                .map(|(t, (k, v, c, bad))| if *bad == 0 {
                    format!(r#"{{"k":"{k}","t":{t},"v":"not a number","c":{c}}}"#)
                } else {
                    format!(r#"{{"k":"{k}","t":{t},"v":{v},"c":{c}}}"#)
                })
                .collect();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let cut = cut.min(refs.len());
            // one operator takes every row
            let mut whole = build(ALL_TIME);
            let mut dead_whole = Vec::new();
            for part in [&refs[..cut], &refs[cut..]] {
                let (_, dead) = run_op(whole.as_mut(), batch_of(part));
                dead_whole.extend(dead);
            }
            // another takes some rows, and partial results of the others
            let mut owner = build(ALL_TIME);
            let mut dead_split = Vec::new();
            for (p, part) in [&refs[..cut], &refs[cut..]].into_iter().enumerate() {
                let base = if p == 0 { 0 } else { cut };
                let batch = batch_of(part);
                let (rest, partials) = split(owner.as_ref(), &batch, |i| mask[base + i], &mut dead_split);
                let (_, dead) = run_op(owner.as_mut(), rest);
                dead_split.extend(dead);
                let (mut out, mut dead) = (Vec::new(), Vec::new());
                owner.merge_partials(partials, &mut Emitter { out: &mut out, dead: &mut dead });
                prop_assert!(dead.is_empty());
            }
            prop_assert_eq!(results(owner.as_mut()), results(whole.as_mut()));
            let letters = |d: &Vec<sluice_engine::dead_letter::DeadLetter>| {
                let mut v: Vec<(u64, String, Vec<u8>)> = d.iter().map(|d| (d.offset, d.reason.clone(), d.raw.clone())).collect();
                v.sort();
                v
            };
            prop_assert_eq!(letters(&dead_split), letters(&dead_whole));
        }
    }

    #[test]
    fn only_all_time_aggregates_of_events_combine() {
        assert!(build(ALL_TIME).combiner().unwrap().rounds_differently());
        let exact = "group_by = [\"k\"]\naggregates = { n = \"count\", low = { fn = \"min\", field = \"v\" }, kinds = { fn = \"count_distinct\", field = \"c\" }, latest = { fn = \"last\", field = \"v\" } }";
        assert!(!build(exact).combiner().unwrap().rounds_differently());
        let windowed = r#"
group_by = ["k"]
window = { type = "tumbling", size = "1m" }
aggregates = { n = "count" }
"#;
        assert!(build(windowed).combiner().is_none());
        // whole batches of fixed windows fold where they are decoded (the
        // operator checks each batch's watermarks first), not across the
        // exchange; nor with processing time, read when a row is taken
        assert!(build(windowed).batch_combiner().is_some());
        let c: AggregateConfig = toml::from_str(windowed).unwrap();
        let mut ctx = build_ctx();
        ctx.event_time = false;
        let processing = AggregateSpec::new(&c).unwrap().build(&ctx).unwrap();
        assert!(processing.batch_combiner().is_none());
        let sessions = r#"
group_by = ["k"]
window = { type = "session", gap = "1m" }
aggregates = { n = "count" }
"#;
        assert!(build(sessions).combiner().is_none());
        assert!(build(sessions).batch_combiner().is_none());
        let mut ctx = build_ctx();
        ctx.input = sluice_engine::operator::Stream::Changelog {
            settles_after: None,
        };
        let c: AggregateConfig = toml::from_str("aggregates = { n = \"count\" }").unwrap();
        let changelog = AggregateSpec::new(&c).unwrap().build(&ctx).unwrap();
        assert!(changelog.combiner().is_none());
        assert!(changelog.batch_combiner().is_none());
    }

    #[test]
    fn a_partial_result_of_another_shape_is_ignored() {
        let mut op = build(ALL_TIME);
        let mut batch = sluice_engine::batch::Batch::default();
        batch.keys.push(GroupKey::from_slice(b"x"));
        batch.rows.push(sluice_engine::value::Value::Int(3));
        let (mut out, mut dead) = (Vec::new(), Vec::new());
        op.merge_partials(
            batch,
            &mut Emitter {
                out: &mut out,
                dead: &mut dead,
            },
        );
        assert!(results(op.as_mut()).is_empty());
    }
}
