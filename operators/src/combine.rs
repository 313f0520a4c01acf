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

use indexmap::IndexSet;
use rustc_hash::FxBuildHasher;
use sluice_engine::batch::Batch;
use sluice_engine::keys::GroupKey;
use sluice_engine::operator::{Combiner, Emitter, FieldPath, Fields};
use sluice_engine::time::now_ms;
use sluice_engine::value::Value;

use crate::accumulator::{Acc, AggFn, Aggregate};
use crate::aggregate::{Common, Grouping};
use crate::key_by::missing_key;
use crate::window::assign;

/// Partial results of one aggregate, per group key (or, folding whole
/// batches of a windowed aggregate, per window and group key).
pub struct AggCombiner {
    c: Common,
    /// (size, slide) of fixed windows, in ms: keys are then
    /// slot keys ([`start_bytes`]). None: all-time, keys are group keys.
    window: Option<(i64, i64)>,
    /// The partial results in the order of each key's first row, so that
    /// the operator merging them marks its results changed in the order
    /// the rows would have.
    partials: Partials,
    /// A reused buffer for an event's key: the slot key (window start
    /// first) when windowed, else the group key.
    key: Vec<u8>,
    /// Set by `bind_fields`: the slots of the group key fields and of each
    /// aggregate's input (None: a plain count).
    fields: Option<(Vec<usize>, Vec<Option<usize>>)>,
    /// On processing time, the clock as read once for the batch being
    /// folded from fields (by `bind_fields`, which the decoder calls
    /// before each batch), instead of once per event.
    now: i64,
}

/// Sets the window start of the slot key `key` (see [`start_bytes`]).
fn set_start(key: &mut [u8], start: i64) {
    key[..8].copy_from_slice(&start_bytes(start));
}

/// The first 8 bytes of a slot key, the key of a group's result in the
/// window starting at `start`: the start with its sign bit flipped (so
/// that byte order is numeric order), then the group key, as the
/// aggregate's state stores it.
pub fn start_bytes(start: i64) -> [u8; 8] {
    ((start as u64) ^ (1 << 63)).to_be_bytes()
}

/// The window start and group key of a slot key (see [`start_bytes`]).
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
            partials: Partials::default(),
            key: Vec::new(),
            fields: None,
            now: 0,
        }
    }

    /// [`Combiner::add`] with `now` as the processing time.
    fn add_at(&mut self, key: &[u8], batch: &Batch, i: usize, now: i64, out: &mut Emitter<'_>) {
        if let Err(dead) = self.c.check_row(batch, i) {
            out.dead_letter(dead);
            return;
        }
        let t = self.c.time_of(batch, i, now);
        let row = &batch.rows[i];
        Self::start_key(&mut self.key, self.window);
        self.key.extend_from_slice(key);
        let aggs = &self.c.aggregates;
        fold_event(
            &mut self.partials,
            aggs,
            self.window,
            &mut self.key,
            t,
            |agg, _| agg.input(row),
        );
    }

    /// The clock when on processing time, else 0 (not read).
    fn clock(&self) -> i64 {
        if self.c.processing_time {
            now_ms()
        } else {
            0
        }
    }

    /// Hands `merge` each key's partial result (keys as
    /// [`drain`](Combiner::drain) gives them, one accumulator per
    /// aggregate), in the order of each key's first row.
    pub fn merge_into<F>(self, mut merge: F)
    where
        F: FnMut(&[u8], std::iter::Take<&mut std::vec::IntoIter<Acc>>),
    {
        let per_key = self.c.aggregates.len();
        let mut accs = self.partials.accs.into_iter();
        for key in self.partials.keys {
            merge(&key, accs.by_ref().take(per_key));
        }
    }

    /// Starts `key` as the key of an event's results: room for the
    /// window start when windowed, then the group key (appended by the
    /// caller).
    fn start_key(key: &mut Vec<u8>, window: Option<(i64, i64)>) {
        key.clear();
        if window.is_some() {
            key.extend_from_slice(&[0; 8]);
        }
    }
}

/// Folds an event at time `t` whose aggregate inputs `input` gives into the
/// partial results of its group (of each of its windows): `key` comes from
/// [`AggCombiner::start_key`], its group key appended.
fn fold_event<'v>(
    partials: &mut Partials,
    aggregates: &[Aggregate],
    window: Option<(i64, i64)>,
    key: &mut [u8],
    t: i64,
    input: impl Fn(&Aggregate, usize) -> Option<&'v Value>,
) {
    match window {
        None => fold(partials, aggregates, key, t, &input),
        Some((size, slide)) => {
            for start in assign(t, size, slide) {
                set_start(key, start);
                fold(partials, aggregates, key, t, &input);
            }
        }
    }
}

/// Folds an event at time `t` into the partial result of `key`.
#[inline(always)]
fn fold<'v>(
    partials: &mut Partials,
    aggregates: &[Aggregate],
    key: &[u8],
    t: i64,
    input: &impl Fn(&Aggregate, usize) -> Option<&'v Value>,
) {
    let accs = partials.accs_of(key, aggregates);
    for (a, (agg, acc)) in aggregates.iter().zip(accs.iter_mut()).enumerate() {
        acc.update(input(agg, a), t);
    }
}

impl Combiner for AggCombiner {
    fn add(&mut self, key: &[u8], batch: &Batch, i: usize, out: &mut Emitter<'_>) {
        let now = self.clock();
        self.add_at(key, batch, i, now, out);
    }

    fn bind_fields(&mut self, paths: &[FieldPath]) -> bool {
        // A path inside another would read differently from the slot
        // than from the row.
        let nested = paths
            .iter()
            .any(|p| paths.iter().any(|q| q.len() > p.len() && q.starts_with(p)));
        if nested {
            return false;
        }
        self.now = self.clock();
        let slot_of = |f: &FieldPath| paths.iter().position(|p| p == f);
        let keys = match &self.c.group {
            Grouping::Fields(fields) => fields.iter().map(slot_of).collect(),
            Grouping::Global => Some(Vec::new()),
            Grouping::Upstream(_) => None,
        };
        let inputs = self
            .c
            .aggregates
            .iter()
            .map(|a| match &a.field {
                None => Some(None),
                Some(f) => slot_of(f).map(Some),
            })
            .collect();
        self.fields = keys.zip(inputs);
        self.fields.is_some()
    }

    fn add_fields(&mut self, fields: &Fields<'_>, time: i64) -> bool {
        let Some((keys, inputs)) = &self.fields else {
            return false;
        };
        let key = &mut self.key;
        Self::start_key(key, self.window);
        let input = |a: usize| inputs[a].map(|slot| fields.value(slot));
        let aggs = &self.c.aggregates;
        let admitted = keys.iter().all(|&slot| fields.encode_key(slot, key))
            && aggs
                .iter()
                .enumerate()
                .all(|(a, agg)| agg.check(input(a)).is_ok());
        let time = if self.c.processing_time {
            self.now
        } else {
            time
        };
        if admitted {
            fold_event(&mut self.partials, aggs, self.window, key, time, |_, a| {
                input(a)
            });
        }
        admitted
    }

    fn key_only_slots(&self) -> u64 {
        let Some((keys, inputs)) = &self.fields else {
            return 0;
        };
        let bits = |slots: &mut dyn Iterator<Item = usize>| {
            slots
                .filter(|&s| s < 64)
                .fold(0u64, |mask, s| mask | (1 << s))
        };
        bits(&mut keys.iter().copied()) & !bits(&mut inputs.iter().flatten().copied())
    }

    fn add_batch(&mut self, batch: &Batch, out: &mut Emitter<'_>) {
        let mut keys = Vec::with_capacity(batch.len());
        self.c.keys(batch, &mut keys);
        let now = self.clock();
        for (i, key) in keys.iter().enumerate() {
            match key {
                Ok(k) => self.add_at(k, batch, i, now, out),
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

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
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
        let per_key = self.c.aggregates.len();
        let Partials { keys, accs } = &mut self.partials;
        let mut accs = accs.drain(..);
        out.extend(keys.drain(..).map(|key| {
            let partial = accs
                .by_ref()
                .take(per_key)
                .map(|a| a.to_partial().expect("a combiner holds plain accumulators"))
                .collect();
            (key, Value::Array(partial))
        }));
    }
}

/// Partial results by key: the keys in the order of their first row, and
/// their accumulators side by side in one vector (one per aggregate, key
/// after key), so that a new key costs no allocation of its own.
#[derive(Default)]
struct Partials {
    keys: IndexSet<GroupKey, FxBuildHasher>,
    accs: Vec<Acc>,
}

impl Partials {
    /// The accumulators of `key`, new ones from `aggregates` if it has none.
    #[inline(always)]
    fn accs_of(&mut self, key: &[u8], aggregates: &[Aggregate]) -> &mut [Acc] {
        let at = match self.keys.get_index_of(key) {
            Some(at) => at,
            None => {
                self.accs.extend(aggregates.iter().map(Aggregate::init));
                self.keys.insert_full(GroupKey::from_slice(key)).0
            }
        };
        let n = aggregates.len();
        &mut self.accs[at * n..(at + 1) * n]
    }

    fn len(&self) -> usize {
        self.keys.len()
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
    use sluice_engine::operator::{Emitter, Fields, Operator, OperatorSpec};
    use sluice_engine::value::Value;

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

    proptest! {
        /// Folding events straight from their projected fields gives the
        /// partial results (in the same order) and the dead letters of
        /// folding their rows, all-time and in hopping windows; the events
        /// refused (missing key, wrong type) are exactly those `add` refuses.
        #[test]
        fn events_fold_from_their_fields_as_from_their_rows(
            events in proptest::collection::vec((0u8..5, -50i64..50, 0u8..3, 0u8..12), 1..60),
            windowed in any::<bool>(),
        ) {
            let lines: Vec<String> = events
                .iter()
                .enumerate()
                .map(|(t, (k, v, c, bad))| match (*bad, *k) {
                    (0, _) => format!(r#"{{"k":"{k}","t":{t},"v":"not a number","c":{c}}}"#),
                    (_, 4) => format!(r#"{{"t":{t},"v":{v},"c":{c}}}"#),
                    (1, _) => format!(r#"{{"k":{k},"t":{t},"c":null}}"#),
                    // an escape: the key is decoded, not taken as bytes
                    (2, _) => format!(r#"{{"k":"\u00e9{k}","t":{t},"v":{v},"c":{c}}}"#),
                    _ => format!(r#"{{"k":"{k}","t":{t},"v":{v},"c":{c}}}"#),
                })
                .collect();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let batch = batch_of(&refs);
            let config = if windowed {
                ALL_TIME.replace("aggregates", "window = { type = \"hopping\", size = 20, slide = 5 }\naggregates")
            } else {
                ALL_TIME.to_string()
            };
            let op = build(&config);
            let paths: Vec<Vec<sluice_engine::Str>> = ["c", "v", "k", "t"]
                .iter()
                .map(|f| vec![sluice_engine::Str::from(*f)])
                .collect();
            let drained = |mut c: Box<dyn sluice_engine::operator::Combiner>| {
                let mut out = Vec::new();
                c.drain(&mut out);
                out
            };
            // every row folded as a row
            let (mut dead_rows, mut out) = (Vec::new(), Vec::new());
            let mut by_rows = op.batch_combiner().unwrap();
            by_rows.add_batch(&batch, &mut Emitter { out: &mut out, dead: &mut dead_rows });
            // from the fields, the refused ones as rows afterwards
            let mut by_fields = op.batch_combiner().unwrap();
            prop_assert!(by_fields.bind_fields(&paths));
            // `k` (slot 2) is only read as the key: plain strings there
            // come as spans of the line.
            prop_assert_eq!(by_fields.key_only_slots(), 1 << 2);
            let projection = sluice_engine::json::Projection::new(&paths);
            let mut values = vec![Value::Missing; paths.len()];
            let mut spans = vec![sluice_engine::json::Span::default(); paths.len()];
            let mut refused = Vec::new();
            let mut kept = 0;
            for (i, line) in lines.iter().enumerate() {
                let raw = projection
                    .decode_spans(line.as_bytes(), &mut values, 1 << 2, &mut spans)
                    .unwrap();
                kept += raw.count_ones();
                let fields = Fields::with_spans(&values, line.as_bytes(), &spans, raw);
                if !by_fields.add_fields(&fields, batch.meta[i].time) {
                    refused.push(i);
                }
            }
            let plain_keys = lines.iter().filter(|l| l.starts_with(r#"{"k":""#) && !l.contains('\\')).count();
            prop_assert_eq!(kept as usize, plain_keys);
            let mut rest = batch.clone();
            rest.retain_mask(&(0..batch.len()).map(|i| refused.contains(&i)).collect::<Vec<_>>());
            let mut dead_fields = Vec::new();
            by_fields.add_batch(&rest, &mut Emitter { out: &mut out, dead: &mut dead_fields });
            prop_assert_eq!(refused.len(), dead_rows.len());
            prop_assert_eq!(drained(by_fields), drained(by_rows));
            let letters = |d: &Vec<sluice_engine::dead_letter::DeadLetter>| {
                d.iter().map(|d| (d.offset, d.reason.clone())).collect::<Vec<_>>()
            };
            prop_assert_eq!(letters(&dead_fields), letters(&dead_rows));
        }
    }

    /// On processing time, events fold from their fields too, at the
    /// clock as read for their batch (not at the time the decoder gives,
    /// which is their event time), as their rows would.
    #[test]
    fn processing_time_folds_from_fields_at_the_batch_clock() {
        use sluice_engine::time::now_ms;

        let op = build(
            r#"
time = "processing"
group_by = ["k"]
aggregates = { earliest = { fn = "first", field = "v" }, latest = { fn = "last", field = "v" } }
"#,
        );
        let paths: Vec<Vec<sluice_engine::Str>> = ["k", "v", "c"]
            .iter()
            .map(|f| vec![sluice_engine::Str::from(*f)])
            .collect();
        let lines = [r#"{"k":"a","v":1,"c":1}"#, r#"{"k":"a","v":2,"c":2}"#];
        let projection = sluice_engine::json::Projection::new(&paths);
        let mut values = vec![Value::Missing; paths.len()];
        let mut combiner = op.batch_combiner().unwrap();
        let before = now_ms();
        assert!(combiner.bind_fields(&paths));
        let after = now_ms();
        for line in lines {
            projection.decode(line.as_bytes(), &mut values).unwrap();
            // an event time long before the clock
            assert!(combiner.add_fields(&Fields::new(&values), 7));
        }
        let mut out = Vec::new();
        combiner.drain(&mut out);
        assert_eq!(out.len(), 1);
        let Value::Array(partial) = &out[0].1 else {
            panic!("a partial result is an array: {:?}", out[0].1);
        };
        // earliest and latest: [value, time]
        for (at, value) in [(0, 1), (1, 2)] {
            let Value::Array(pair) = &partial[at] else {
                panic!("first and last are [value, time]: {:?}", partial[at]);
            };
            assert_eq!(pair[0], Value::Int(value));
            let Value::Int(t) = pair[1] else {
                panic!("a time: {:?}", pair[1]);
            };
            assert!(
                (before..=after).contains(&t),
                "{t} not in {before}..={after}"
            );
        }
    }

    /// Events the combiner refuses come back as rows holding every field
    /// the decoder projected, including the key strings it had left in
    /// the input for the combiner.
    #[test]
    fn refused_events_come_back_with_their_key_strings() {
        use sluice_engine::decode::Decoder;
        use sluice_engine::operator::FieldSet;
        use sluice_engine::source::RawBatch;

        let op = build(ALL_TIME);
        let lines = [
            r#"{"k":"a","v":1,"c":1}"#,
            r#"{"k":"b","v":"not a number","c":2}"#,
            r#"{"k":"c\u00e9","v":true,"c":3}"#,
        ];
        let raw = RawBatch::of_lines(&lines);
        let fields = ["k", "v", "c"]
            .iter()
            .map(|f| sluice_engine::value::parse_path(f))
            .collect();
        let decoder = Decoder::new("in".into(), &FieldSet::Paths(fields), None, 1 << 20);
        let mut combiner = op.batch_combiner().unwrap();
        let (batch, dead, refused) = decoder.decode_folding(&raw, Some(&mut *combiner));
        assert!(dead.is_empty());
        assert_eq!(batch.meta.len(), 3);
        let refused = refused.expect("the combiner binds to the projected fields");
        let keys: Vec<_> = refused
            .rows
            .iter()
            .map(|r| r.get_path(&["k".into()]).clone())
            .collect();
        assert_eq!(keys, [Value::from("b"), Value::from("cé")]);
        assert_eq!(
            refused.rows[0].get_path(&["v".into()]),
            &Value::from("not a number")
        );
        assert_eq!(combiner.len(), 1);
    }

    #[test]
    fn fields_bind_only_when_every_field_read_is_projected() {
        let op = build(ALL_TIME);
        let path = |f: &str| sluice_engine::value::parse_path(f);
        let all = [path("k"), path("v"), path("c")];
        assert!(op.batch_combiner().unwrap().bind_fields(&all));
        assert!(!op.batch_combiner().unwrap().bind_fields(&all[..2]));
        let nested = [path("k"), path("v"), path("c"), path("k.x")];
        assert!(!op.batch_combiner().unwrap().bind_fields(&nested));
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
