//! The aggregate operator for all-time and fixed windows (tumbling,
//! hopping). State: window start -> group key -> accumulators, in memory,
//! with dirty tracking so a checkpoint writes only what changed.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use sluice_engine::batch::{Batch, RowKind};
use sluice_engine::dead_letter::{DeadLetter, ErrorType};
use sluice_engine::keys::{decode_key, encode_component, key_group, GroupKey};
use sluice_engine::operator::{
    decode_versioned, encode_versioned, Emitter, Operator, StateEntry, StateError, StateStats,
    StateWriter, Stream,
};
use sluice_engine::time::now_ms;
use sluice_engine::value::{Map, Value};

use crate::accumulator::Acc;
use crate::aggregate::{Common, EmitMode};
use crate::window::assign;

/// The start used for the single all-time "window".
const GLOBAL: i64 = i64::MIN;
const STATE_VERSION: u8 = 1;
/// Slots of an aggregate reading a changelog (retractable accumulators
/// plus the number of rows they hold).
const CHANGELOG_STATE_VERSION: u8 = 2;
/// State key tag of a slot; of the last applied row of an upstream key.
const TAG_SLOT: u8 = 1;
const TAG_PREV: u8 = 2;
/// State key tag of the operator's own metadata (its watermark).
const META_WATERMARK: &[u8] = b"\0wm";

struct Slot {
    accs: Vec<Acc>,
    state_dirty: bool,
    emit_dirty: bool,
    /// Rows applied and not taken back (changelog input only): at zero the
    /// group has no result any more.
    rows: u64,
}

#[derive(Default)]
struct Window {
    fired: bool,
    slots: FxHashMap<GroupKey, Slot>,
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

pub struct FixedAggregate {
    c: Common,
    /// (size, slide) in ms; None for all-time.
    window: Option<(i64, i64)>,
    windows: BTreeMap<i64, Window>,
    state_dirty: Vec<(i64, GroupKey)>,
    emit_dirty: Vec<(i64, GroupKey)>,
    purged: Vec<(i64, GroupKey)>,
    watermark: i64,
    watermark_dirty: bool,
    keys: Vec<Result<GroupKey, usize>>,
    starts: Vec<i64>,
    /// Changelog input: the last applied row of every upstream key.
    prev: FxHashMap<GroupKey, Prev>,
    /// Upstream keys whose `prev` entry changed since the last snapshot.
    prev_dirty: FxHashSet<GroupKey>,
    /// Results whose every row was taken back: deleted at the next flush.
    emptied: Vec<(i64, GroupKey)>,
}

impl FixedAggregate {
    pub fn new(c: Common, window: Option<(i64, i64)>) -> Self {
        FixedAggregate {
            c,
            window,
            windows: BTreeMap::new(),
            state_dirty: Vec::new(),
            emit_dirty: Vec::new(),
            purged: Vec::new(),
            watermark: i64::MIN,
            watermark_dirty: false,
            keys: Vec::new(),
            starts: Vec::new(),
            prev: FxHashMap::default(),
            prev_dirty: FxHashSet::default(),
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
        let group = GroupKey::from_slice(&prev.group);
        for start in prev.starts {
            if self.window.is_some() && self.end_of(start).saturating_add(self.c.lateness) <= wm {
                continue;
            }
            let updates = self.c.emit == EmitMode::Updates;
            let Some(window) = self.windows.get_mut(&start) else {
                continue;
            };
            let fired = window.fired;
            let Some(slot) = window.slots.get_mut(&group) else {
                continue;
            };
            for (acc, input) in slot.accs.iter_mut().zip(&prev.inputs) {
                acc.retract(input.as_ref());
            }
            slot.rows = slot.rows.saturating_sub(1);
            if slot.rows == 0 {
                window.slots.remove(&group);
                self.purged.push((start, group.clone()));
                if updates || fired {
                    self.emptied.push((start, group.clone()));
                }
                continue;
            }
            if !slot.state_dirty {
                slot.state_dirty = true;
                self.state_dirty.push((start, group.clone()));
            }
            if (updates || fired) && !slot.emit_dirty {
                slot.emit_dirty = true;
                self.emit_dirty.push((start, group.clone()));
            }
        }
    }

    fn end_of(&self, start: i64) -> i64 {
        match self.window {
            Some((size, _)) => start.saturating_add(size),
            None => i64::MAX,
        }
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
        for (start, key) in std::mem::take(&mut self.emptied) {
            let exists = self
                .windows
                .get(&start)
                .is_some_and(|w| w.slots.contains_key(&key));
            if !exists {
                let (id, row, time) = self.result(start, &key, &[]);
                batch.push_change(RowKind::Delete, id, row, time);
            }
        }
        for (start, key) in std::mem::take(&mut self.emit_dirty) {
            let Some(slot) = self.windows.get(&start).and_then(|w| w.slots.get(&key)) else {
                continue;
            };
            if slot.emit_dirty {
                self.emit_slot(start, &key, &slot.accs, &mut batch);
            }
            if let Some(slot) = self
                .windows
                .get_mut(&start)
                .and_then(|w| w.slots.get_mut(&key))
            {
                slot.emit_dirty = false;
            }
        }
        out.emit(batch);
    }

    fn state_key(start: i64, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(9 + key.len());
        k.push(TAG_SLOT);
        // flip the sign bit so that byte order is numeric order
        k.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
        k.extend_from_slice(key);
        k
    }
}

impl Operator for FixedAggregate {
    fn process(&mut self, batch: Batch, out: &mut Emitter<'_>) {
        self.c.keys(&batch, &mut self.keys);
        let now = if self.c.processing_time { now_ms() } else { 0 };
        let keys = std::mem::take(&mut self.keys);
        let changelog = self.changelog() && batch.is_keyed();
        for (i, key) in keys.iter().enumerate() {
            // The watermark this row is judged by: the one in force when it
            // arrived in its partition's log (independent of batching).
            let wm = self.watermark.max(batch.meta[i].watermark);
            if changelog {
                // A changelog row replaces the previous row of its key:
                // take that one back first.
                let id = &batch.keys[i];
                if let Some(prev) = self.prev.remove(id) {
                    self.prev_dirty.insert(id.clone());
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
                if !window.slots.contains_key(key) {
                    let accs = if self.c.input.is_changelog() {
                        self.c
                            .aggregates
                            .iter()
                            .map(|a| a.init_retractable())
                            .collect()
                    } else {
                        self.c.aggregates.iter().map(|a| a.init()).collect()
                    };
                    window.slots.insert(
                        key.clone(),
                        Slot {
                            accs,
                            state_dirty: false,
                            emit_dirty: false,
                            rows: 0,
                        },
                    );
                }
                let slot = window.slots.get_mut(key).expect("inserted above");
                slot.rows += 1;
                for (agg, acc) in self.c.aggregates.iter().zip(slot.accs.iter_mut()) {
                    acc.update(agg.input(row), t);
                }
                if !slot.state_dirty {
                    slot.state_dirty = true;
                    self.state_dirty.push((start, key.clone()));
                }
                let emit = self.c.emit == EmitMode::Updates || fired;
                if emit && !slot.emit_dirty {
                    slot.emit_dirty = true;
                    self.emit_dirty.push((start, key.clone()));
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
                    id.clone(),
                    Prev {
                        group: key.to_vec(),
                        time: t,
                        starts: self.starts.clone(),
                        inputs,
                    },
                );
                self.prev_dirty.insert(id);
            }
        }
        self.keys = keys;
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Emitter<'_>) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        self.watermark_dirty = true;
        let mut batch = Batch::default();
        // Fire windows whose end passed.
        let due: Vec<i64> = self
            .windows
            .iter()
            .filter(|(&s, w)| !w.fired && self.end_of(s) <= watermark)
            .map(|(&s, _)| s)
            .collect();
        for start in &due {
            if self.c.emit == EmitMode::OnClose {
                let w = &self.windows[start];
                let mut keys: Vec<&GroupKey> = w.slots.keys().collect();
                keys.sort_unstable();
                for key in keys {
                    self.emit_slot(*start, key, &w.slots[key].accs, &mut batch);
                }
            }
            if let Some(w) = self.windows.get_mut(start) {
                w.fired = true;
                for slot in w.slots.values_mut() {
                    slot.emit_dirty = self.c.emit == EmitMode::Updates && slot.emit_dirty;
                }
            }
        }
        out.emit(batch);
        if let Stream::Changelog {
            settles_after: Some(d),
        } = self.c.input
        {
            // Upstream rows that can no longer change need no taking back.
            let dirty = &mut self.prev_dirty;
            self.prev.retain(|id, p| {
                let keep = p.time.saturating_add(1).saturating_add(d) > watermark;
                if !keep {
                    dirty.insert(id.clone());
                }
                keep
            });
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
                self.purged.extend(w.slots.into_keys().map(|k| (start, k)));
            }
        }
    }

    fn on_checkpoint(&mut self, out: &mut Emitter<'_>) {
        self.flush_dirty(out);
    }

    fn snapshot(&mut self, w: &mut StateWriter) {
        for (start, key) in std::mem::take(&mut self.purged) {
            w.delete(
                key_group(&key, self.c.key_groups),
                Self::state_key(start, &key),
            );
        }
        for (start, key) in std::mem::take(&mut self.state_dirty) {
            let Some(slot) = self
                .windows
                .get_mut(&start)
                .and_then(|w| w.slots.get_mut(&key))
            else {
                continue;
            };
            slot.state_dirty = false;
            let value = if self.c.input.is_changelog() {
                encode_versioned(
                    CHANGELOG_STATE_VERSION,
                    &StoredChangelogSlot {
                        accs: slot.accs.clone(),
                        rows: slot.rows,
                    },
                )
            } else {
                encode_versioned(
                    STATE_VERSION,
                    &StoredSlot {
                        accs: slot.accs.clone(),
                    },
                )
            };
            w.put(
                key_group(&key, self.c.key_groups),
                Self::state_key(start, &key),
                value,
            );
        }
        for id in std::mem::take(&mut self.prev_dirty) {
            let kg = key_group(&id, self.c.key_groups);
            let mut k = Vec::with_capacity(id.len() + 1);
            k.push(TAG_PREV);
            k.extend_from_slice(&id);
            match self.prev.get(&id) {
                Some(p) => w.put(kg, k, encode_versioned(CHANGELOG_STATE_VERSION, p)),
                None => w.delete(kg, k),
            }
        }
        if self.watermark_dirty {
            self.watermark_dirty = false;
            w.put(
                0,
                META_WATERMARK.to_vec(),
                self.watermark.to_be_bytes().to_vec(),
            );
        }
    }

    fn restore(&mut self, entries: Vec<StateEntry>) -> Result<(), StateError> {
        for (_, key, value) in entries {
            if key == META_WATERMARK {
                let bytes: [u8; 8] = value
                    .as_slice()
                    .try_into()
                    .map_err(|_| StateError::Corrupt("watermark".into()))?;
                self.watermark = i64::from_be_bytes(bytes);
                continue;
            }
            if key.first() == Some(&TAG_PREV) && self.c.input.is_changelog() {
                let prev: Prev = decode_versioned(CHANGELOG_STATE_VERSION, &value)?;
                self.prev.insert(GroupKey::from_slice(&key[1..]), prev);
                continue;
            }
            if key.len() < 9 || key[0] != TAG_SLOT {
                return Err(StateError::Corrupt(format!(
                    "unexpected state key {key:02x?}"
                )));
            }
            let start =
                (u64::from_be_bytes(key[1..9].try_into().expect("8 bytes")) ^ (1 << 63)) as i64;
            // The version tells events from changelog state: a rewiring
            // between the two is refused, not misread.
            let (accs, rows) = if self.c.input.is_changelog() {
                let s: StoredChangelogSlot = decode_versioned(CHANGELOG_STATE_VERSION, &value)?;
                (s.accs, s.rows)
            } else {
                let s: StoredSlot = decode_versioned(STATE_VERSION, &value)?;
                (s.accs, 0)
            };
            let group = GroupKey::from_slice(&key[9..]);
            self.windows.entry(start).or_default().slots.insert(
                group,
                Slot {
                    accs,
                    state_dirty: false,
                    emit_dirty: false,
                    rows,
                },
            );
        }
        let watermark = self.watermark;
        let ends: Vec<(i64, i64)> = self.windows.keys().map(|&s| (s, self.end_of(s))).collect();
        for (start, end) in ends {
            if end <= watermark {
                if let Some(w) = self.windows.get_mut(&start) {
                    w.fired = true;
                }
            }
        }
        Ok(())
    }

    fn state_stats(&self) -> StateStats {
        let mut stats = StateStats::default();
        stats.keys += self.prev.len() as u64;
        stats.bytes += self
            .prev
            .iter()
            .map(|(k, p)| (k.len() + p.group.len() + 32 + p.inputs.len() * 24) as u64)
            .sum::<u64>();
        for w in self.windows.values() {
            stats.keys += w.slots.len() as u64;
            for (k, s) in &w.slots {
                stats.bytes +=
                    (k.len() + 16 + s.accs.iter().map(Acc::approx_bytes).sum::<usize>()) as u64;
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests;
