//! The aggregate operator for all-time and fixed windows (tumbling,
//! hopping). State: a table of result slots (window start, group key) ->
//! accumulators, indexed by window, and for changelog input a table of the
//! last applied row of every upstream key.

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use sluice_engine::batch::{Batch, RowKind, RowMeta};
use sluice_engine::dead_letter::{DeadLetter, ErrorType};
use sluice_engine::keys::{decode_key, encode_component, GroupKey};
use sluice_engine::operator::{
    Combiner, Emitter, Operator, StateEntry, StateError, StateStats, StateWriter, Stream,
};
use sluice_engine::table::{
    decode_bincode, encode_bincode, restore_tables, KeyedTable, MetaCell, StateTable, TableKey,
    TableSpec,
};
use sluice_engine::time::now_ms;
use sluice_engine::value::{Map, Value};

use crate::accumulator::Acc;
use crate::aggregate::{Common, EmitMode};
use crate::combine::{partial_accs, split_slot_key, start_bytes, AggCombiner};
use crate::window::{align, assign};

/// The start used for the single all-time "window".
const GLOBAL: i64 = i64::MIN;
/// State key tag of a slot; of the last applied row of an upstream key.
const TAG_SLOT: u8 = 1;
const TAG_PREV: u8 = 2;
/// The result slots of an aggregate reading events.
const SLOTS: TableSpec<Slot> = TableSpec {
    name: "slots",
    tag: TAG_SLOT,
    version: 1,
    migrations: &[],
    encode: Slot::encode_events,
    decode: Slot::decode_events,
};
/// The result slots of an aggregate reading a changelog (retractable
/// accumulators plus the number of rows they hold). The version tells them
/// from [`SLOTS`]: a rewiring between the two is refused, not misread.
const CHANGELOG_SLOTS: TableSpec<Slot> = TableSpec {
    name: "slots",
    tag: TAG_SLOT,
    version: 2,
    migrations: &[],
    encode: Slot::encode_changelog,
    decode: Slot::decode_changelog,
};
/// The last applied row of every upstream key (changelog input).
const PREV: TableSpec<Prev> = TableSpec::bincode("previous rows", TAG_PREV, 2);
/// State key of the operator's watermark.
const META_WATERMARK: &[u8] = b"\0wm";

/// A result: one group key in one window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SlotKey {
    start: i64,
    group: GroupKey,
}

impl SlotKey {
    /// Makes this the key of `group` in the window at `start`, reusing its
    /// buffer (no allocation per row for long group keys).
    fn set(&mut self, start: i64, group: &[u8]) {
        self.start = start;
        self.group.clear();
        self.group.extend_from_slice(group);
    }
}

/// Stored as the window start (sign bit flipped, so that byte order is
/// numeric order) then the group key; in the group key's key group.
impl TableKey for SlotKey {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&start_bytes(self.start));
        out.extend_from_slice(&self.group);
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (start, group) = split_slot_key(bytes)?;
        Some(SlotKey {
            start,
            group: GroupKey::from_slice(group),
        })
    }

    fn routing_bytes(&self) -> &[u8] {
        &self.group
    }
}

struct Slot {
    accs: Vec<Acc>,
    /// Changed since last emitted (not stored).
    emit_dirty: bool,
    /// Rows applied and not taken back (changelog input only): at zero the
    /// group has no result any more.
    rows: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredSlot {
    accs: Vec<Acc>,
}

#[derive(Serialize, Deserialize)]
struct StoredChangelogSlot {
    accs: Vec<Acc>,
    rows: u64,
}

impl Slot {
    fn new(accs: Vec<Acc>, rows: u64) -> Slot {
        Slot {
            accs,
            emit_dirty: false,
            rows,
        }
    }

    fn encode_events(&self, out: &mut Vec<u8>) {
        let accs = self.accs.clone();
        encode_bincode(&StoredSlot { accs }, out);
    }

    fn decode_events(bytes: &[u8]) -> Result<Slot, StateError> {
        let s: StoredSlot = decode_bincode(bytes)?;
        Ok(Slot::new(s.accs, 0))
    }

    fn encode_changelog(&self, out: &mut Vec<u8>) {
        let (accs, rows) = (self.accs.clone(), self.rows);
        encode_bincode(&StoredChangelogSlot { accs, rows }, out);
    }

    fn decode_changelog(bytes: &[u8]) -> Result<Slot, StateError> {
        let s: StoredChangelogSlot = decode_bincode(bytes)?;
        Ok(Slot::new(s.accs, s.rows))
    }
}

/// An open window: the group keys with a slot in it.
///
/// All-time results (one window that never closes) keep no set of group
/// keys: every slot is in that window, so the slot table is the set. A
/// second copy of every key would double the memory of a large all-time
/// aggregate and the time to restore it.
#[derive(Default)]
struct Window {
    fired: bool,
    groups: FxHashSet<GroupKey>,
}

/// The row of an upstream key as last applied (changelog input), so that
/// the next row of that key can take it back first.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Prev {
    /// Its group key here.
    group: Vec<u8>,
    /// Its time (to know when it settles).
    time: i64,
    /// The windows it was added to.
    starts: Vec<i64>,
    /// Each aggregate's input (None for a plain count; Null when missing).
    inputs: Vec<Option<Value>>,
}

/// The end of the window starting at `start` (`window`: size and slide;
/// None for all-time, which never ends).
fn window_end(window: Option<(i64, i64)>, start: i64) -> i64 {
    match window {
        Some((size, _)) => start.saturating_add(size),
        None => i64::MAX,
    }
}

pub struct FixedAggregate {
    c: Common,
    /// (size, slide) in ms; None for all-time.
    window: Option<(i64, i64)>,
    slots: KeyedTable<SlotKey, Slot>,
    /// A reused key for looking slots up.
    lookup: SlotKey,
    /// The slots by window start.
    windows: BTreeMap<i64, Window>,
    /// Slots to emit at the next flush (first change first).
    emit_dirty: Vec<SlotKey>,
    watermark: MetaCell<i64>,
    keys: Vec<Result<GroupKey, usize>>,
    starts: Vec<i64>,
    /// Changelog input: the last applied row of every upstream key.
    prev: KeyedTable<GroupKey, Prev>,
    /// Results whose every row was taken back: deleted at the next flush.
    emptied: Vec<SlotKey>,
}

impl FixedAggregate {
    pub fn new(c: Common, window: Option<(i64, i64)>) -> Self {
        let slots = if c.input.is_changelog() {
            CHANGELOG_SLOTS
        } else {
            SLOTS
        };
        FixedAggregate {
            slots: KeyedTable::new(slots, c.key_groups),
            lookup: SlotKey {
                start: GLOBAL,
                group: GroupKey::new(),
            },
            prev: KeyedTable::new(PREV, c.key_groups),
            c,
            window,
            windows: BTreeMap::new(),
            emit_dirty: Vec::new(),
            watermark: MetaCell::new("watermark", META_WATERMARK, i64::MIN),
            keys: Vec::new(),
            starts: Vec::new(),
            emptied: Vec::new(),
        }
    }

    fn changelog(&self) -> bool {
        self.c.input.is_changelog()
    }

    /// Takes back the previous row of an upstream key from the windows it
    /// was added to, unless they closed for good (`wm`): those results are
    /// final, as the new row could not reach them either.
    fn retract(&mut self, prev: Prev, wm: i64) {
        for start in prev.starts {
            if self.window.is_some() && self.end_of(start).saturating_add(self.c.lateness) <= wm {
                continue;
            }
            let updates = self.c.emit == EmitMode::Updates;
            let Some(window) = self.windows.get_mut(&start) else {
                continue;
            };
            let fired = window.fired;
            self.lookup.set(start, &prev.group);
            let Some(slot) = self.slots.get_mut(&self.lookup) else {
                continue;
            };
            for (acc, input) in slot.accs.iter_mut().zip(&prev.inputs) {
                acc.retract(input.as_ref());
            }
            slot.rows = slot.rows.saturating_sub(1);
            if slot.rows == 0 {
                self.slots.remove(&self.lookup);
                window.groups.remove(&self.lookup.group);
                if updates || fired {
                    self.emptied.push(self.lookup.clone());
                }
                continue;
            }
            if (updates || fired) && !slot.emit_dirty {
                slot.emit_dirty = true;
                self.emit_dirty.push(self.lookup.clone());
            }
        }
    }

    fn end_of(&self, start: i64) -> i64 {
        window_end(self.window, start)
    }

    /// The result row of one slot.
    fn result(&self, start: i64, key: &GroupKey, accs: &[Acc]) -> (GroupKey, Value, i64) {
        let mut row = Value::Object(Map::new());
        if let Some(values) = decode_key(key) {
            for (path, v) in self.c.group.names().iter().zip(values) {
                row.set_path(path, v);
            }
        }
        let mut id = key.clone();
        let mut time = 0;
        if self.window.is_some() {
            let end = self.end_of(start);
            row.set_path(&self.c.start_field, Value::Int(start));
            row.set_path(&self.c.end_field, Value::Int(end));
            encode_component(&mut id, &Value::Int(start));
            time = end - 1;
        }
        for (agg, acc) in self.c.aggregates.iter().zip(accs) {
            if let Value::Object(m) = &mut row {
                m.insert(agg.name.as_str(), acc.result());
            }
        }
        (id, row, time)
    }

    fn emit_slot(&self, start: i64, key: &GroupKey, accs: &[Acc], out: &mut Batch) {
        let (id, row, time) = self.result(start, key, accs);
        out.push_change(RowKind::Upsert, id, row, time);
    }

    /// Emits every result whose emit flag is set.
    fn flush_dirty(&mut self, out: &mut Emitter<'_>) {
        let mut batch = Batch::default();
        for key in std::mem::take(&mut self.emptied) {
            if !self.slots.contains_key(&key) {
                let (id, row, time) = self.result(key.start, &key.group, &[]);
                batch.push_change(RowKind::Delete, id, row, time);
            }
        }
        for key in std::mem::take(&mut self.emit_dirty) {
            let Some(slot) = self.slots.get(&key) else {
                continue;
            };
            if slot.emit_dirty {
                self.emit_slot(key.start, &key.group, &slot.accs, &mut batch);
            }
            if let Some(slot) = self.slots.get_mut_unmarked(&key) {
                slot.emit_dirty = false;
            }
        }
        out.emit(batch);
    }
}

impl FixedAggregate {
    /// Merges the accumulators `partial` folded elsewhere into the result of
    /// `key` (a group key; a slot key, see `combine::start_bytes`, when
    /// windowed).
    fn merge_one(&mut self, key: &[u8], partial: impl IntoIterator<Item = Acc>) {
        let windowed = self.window.is_some();
        let (start, group) = match windowed {
            false => (GLOBAL, key),
            true => match split_slot_key(key) {
                Some(slot) => slot,
                None => {
                    tracing::error!(operator = %self.c.name, "a partial result without a window; ignored");
                    return;
                }
            },
        };
        let window = self.windows.entry(start).or_default();
        let fired = window.fired;
        self.lookup.set(start, group);
        let aggregates = &self.c.aggregates;
        let slot = self.slots.get_or_insert_with(&self.lookup, || {
            if windowed {
                window.groups.insert(GroupKey::from_slice(group));
            }
            Slot::new(aggregates.iter().map(|a| a.init()).collect(), 0)
        });
        for (acc, p) in slot.accs.iter_mut().zip(partial) {
            acc.merge(p);
        }
        let updates = self.c.emit == EmitMode::Updates;
        if (updates || fired) && !slot.emit_dirty {
            slot.emit_dirty = true;
            self.emit_dirty.push(self.lookup.clone());
        }
    }
}

impl Operator for FixedAggregate {
    fn routing_keys(&self, batch: &Batch, keys: &mut Vec<Result<GroupKey, usize>>) -> bool {
        self.c.keys(batch, keys);
        true
    }

    fn combiner(&self) -> Option<Box<dyn Combiner>> {
        // Windows decide lateness per row at the owner, and a changelog's
        // rows take back earlier ones: only all-time results of events
        // can be folded before they cross.
        let plain = self.window.is_none() && !self.changelog();
        plain.then(|| Box::new(AggCombiner::new(self.c.clone(), None)) as Box<dyn Combiner>)
    }

    fn batch_combiner(&self) -> Option<Box<dyn Combiner>> {
        // Whole batches of one partition, windows included: the batch's
        // watermarks are checked before its partial results are taken
        // (`takes_folded`). Processing time is read when a row is taken,
        // so those windows are not folded ahead.
        let foldable = !self.changelog() && (self.window.is_none() || !self.c.processing_time);
        foldable
            .then(|| Box::new(AggCombiner::new(self.c.clone(), self.window)) as Box<dyn Combiner>)
    }

    fn takes_folded(&self, meta: &[RowMeta]) -> bool {
        let Some((size, slide)) = self.window else {
            return true; // all-time results are never late
        };
        // Every window of every row must still be open when the row comes
        // (`process` would take the row into all of them): the oldest
        // window holding time t starts at align(t) + slide - size.
        let own = self.watermark.get();
        let lateness = self.c.lateness;
        meta.iter().all(|m| {
            let oldest = align(m.time, slide)
                .saturating_add(slide)
                .saturating_sub(size);
            oldest.saturating_add(size).saturating_add(lateness) > own.max(m.watermark)
        })
    }

    fn merge_partials(&mut self, batch: Batch, _out: &mut Emitter<'_>) {
        for (key, value) in batch.keys.iter().zip(&batch.rows) {
            let Some(partial) = partial_accs(&self.c, value) else {
                // Only a peer running another build could send this; the
                // topology signature and wire version rule that out.
                tracing::error!(operator = %self.c.name, partial = %value,
                    "a partial result from another worker does not match this aggregate; ignored");
                continue;
            };
            self.merge_one(key, partial);
        }
    }

    fn merge_folded(&mut self, combiner: Box<dyn Combiner>, _out: &mut Emitter<'_>) {
        let combiner = match combiner.into_any().downcast::<AggCombiner>() {
            Ok(combiner) => combiner,
            Err(_) => {
                debug_assert!(false, "an aggregate folds with its own combiner");
                return;
            }
        };
        combiner.merge_into(|key, partial| self.merge_one(key, partial));
    }

    fn process(&mut self, batch: Batch, out: &mut Emitter<'_>) {
        self.c.keys(&batch, &mut self.keys);
        let now = if self.c.processing_time { now_ms() } else { 0 };
        let keys = std::mem::take(&mut self.keys);
        let changelog = self.changelog() && batch.is_keyed();
        for (i, key) in keys.iter().enumerate() {
            // The watermark this row is judged by: the one in force when it
            // arrived in its partition's log (independent of batching).
            let wm = self.watermark.get().max(batch.meta[i].watermark);
            if changelog {
                // A changelog row replaces the previous row of its key:
                // take that one back first.
                let id = &batch.keys[i];
                if let Some(prev) = self.prev.remove(id) {
                    self.retract(prev, wm);
                }
                if batch.kind(i) == RowKind::Delete {
                    continue;
                }
            }
            let Some((key, t)) = self.c.admit(&batch, i, key, now, out) else {
                continue;
            };
            let row = &batch.rows[i];
            self.starts.clear();
            match self.window {
                None => self.starts.push(GLOBAL),
                Some((size, slide)) => {
                    let mut latest = i64::MIN;
                    for s in assign(t, size, slide) {
                        latest = latest.max(s);
                        if s.saturating_add(size).saturating_add(self.c.lateness) > wm {
                            self.starts.push(s);
                        }
                    }
                    if self.starts.is_empty() {
                        let end = latest.saturating_add(size);
                        let reason = format!(
                            "late event: time {t} falls only in closed windows; the last one, [{latest}, {end}), \
                             closed for good because its end {end} + allowed lateness {} ms <= watermark {wm}",
                            self.c.lateness
                        );
                        out.dead_letter(DeadLetter::from_row(
                            &batch,
                            i,
                            &self.c.name,
                            ErrorType::Late,
                            reason,
                        ));
                        continue;
                    }
                }
            }
            for si in 0..self.starts.len() {
                let start = self.starts[si];
                let window = self.windows.entry(start).or_default();
                let fired = window.fired;
                let aggregates = &self.c.aggregates;
                let retractable = self.c.input.is_changelog();
                self.lookup.set(start, key);
                let windowed = self.window.is_some();
                let slot = self.slots.get_or_insert_with(&self.lookup, || {
                    if windowed {
                        window.groups.insert(key.clone());
                    }
                    let accs = if retractable {
                        aggregates.iter().map(|a| a.init_retractable()).collect()
                    } else {
                        aggregates.iter().map(|a| a.init()).collect()
                    };
                    Slot::new(accs, 0)
                });
                slot.rows += 1;
                for (agg, acc) in aggregates.iter().zip(slot.accs.iter_mut()) {
                    acc.update(agg.input(row), t);
                }
                let emit = self.c.emit == EmitMode::Updates || fired;
                if emit && !slot.emit_dirty {
                    slot.emit_dirty = true;
                    self.emit_dirty.push(self.lookup.clone());
                }
            }
            if changelog {
                let id = batch.keys[i].clone();
                let inputs = self
                    .c
                    .aggregates
                    .iter()
                    .map(|a| {
                        a.input(row).map(|v| match v {
                            Value::Missing => Value::Null,
                            v => v.clone(),
                        })
                    })
                    .collect();
                self.prev.insert(
                    id,
                    Prev {
                        group: key.to_vec(),
                        time: t,
                        starts: self.starts.clone(),
                        inputs,
                    },
                );
            }
        }
        self.keys = keys;
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Emitter<'_>) {
        if watermark <= self.watermark.get() {
            return;
        }
        self.watermark.set(watermark);
        let mut batch = Batch::default();
        // Fire windows whose end passed.
        let due: Vec<i64> = self
            .windows
            .iter()
            .filter(|(&s, w)| !w.fired && self.end_of(s) <= watermark)
            .map(|(&s, _)| s)
            .collect();
        for start in due {
            let Some(w) = self.windows.get_mut(&start) else {
                continue;
            };
            w.fired = true;
            if self.c.emit == EmitMode::Updates {
                continue; // its changes were emitted as they came
            }
            let mut groups: Vec<GroupKey> = if self.window.is_some() {
                w.groups.iter().cloned().collect()
            } else {
                self.slots.iter().map(|(k, _)| k.group.clone()).collect()
            };
            groups.sort_unstable();
            for group in groups {
                let key = SlotKey { start, group };
                if let Some(slot) = self.slots.get(&key) {
                    self.emit_slot(start, &key.group, &slot.accs, &mut batch);
                }
                if let Some(slot) = self.slots.get_mut_unmarked(&key) {
                    slot.emit_dirty = false;
                }
            }
        }
        out.emit(batch);
        if let Stream::Changelog {
            settles_after: Some(d),
        } = self.c.input
        {
            // Upstream rows that can no longer change need no taking back.
            self.prev
                .retain(|_, p| p.time.saturating_add(1).saturating_add(d) > watermark);
        }
        if self.window.is_none() {
            // All-time results are never purged.
            return;
        }
        // Purge windows past the allowed lateness (emitting pending updates first).
        let lateness = self.c.lateness;
        let expired: Vec<i64> = self
            .windows
            .keys()
            .copied()
            .filter(|&s| self.end_of(s).saturating_add(lateness) <= watermark)
            .collect();
        if expired.is_empty() {
            return;
        }
        self.flush_dirty(out);
        for start in expired {
            if let Some(w) = self.windows.remove(&start) {
                for group in w.groups {
                    self.slots.remove(&SlotKey { start, group });
                }
            }
        }
    }

    fn on_checkpoint(&mut self, out: &mut Emitter<'_>) {
        self.flush_dirty(out);
    }

    fn snapshot(&mut self, w: &mut StateWriter) {
        self.slots.snapshot(w);
        self.prev.snapshot(w);
        self.watermark.snapshot(w);
    }

    fn snapshot_all(&self, w: &mut StateWriter) -> bool {
        self.slots.snapshot_all(w) && self.prev.snapshot_all(w) && self.watermark.snapshot_all(w)
    }

    fn restore(&mut self, entries: Vec<StateEntry>) -> Result<(), StateError> {
        let mut tables: Vec<&mut dyn StateTable> = vec![&mut self.slots, &mut self.watermark];
        if self.c.input.is_changelog() {
            tables.push(&mut self.prev);
        }
        restore_tables(entries, &mut tables)?;
        let watermark = self.watermark.get();
        if self.window.is_some() {
            for (key, _) in self.slots.iter() {
                let window = self.windows.entry(key.start).or_default();
                window.groups.insert(key.group.clone());
            }
        } else if !self.slots.is_empty() {
            self.windows.entry(GLOBAL).or_default();
        }
        for (&start, window) in self.windows.iter_mut() {
            window.fired = window_end(self.window, start) <= watermark;
        }
        Ok(())
    }

    fn state_stats(&self) -> StateStats {
        let (slots, prev) = (self.slots.stats(), self.prev.stats());
        StateStats {
            keys: slots.keys + prev.keys,
            bytes: slots.bytes + prev.bytes,
        }
    }
}

#[cfg(test)]
mod tests;
