//! The aggregate operator for session windows: per key, activity sessions
//! that close after `gap` without events. A new event opens `[t, t + gap)`
//! and merges every session it overlaps. Results are keyed by (group key,
//! session start); when a merge moves a start, the old result is deleted.

use serde::{Deserialize, Serialize};
use sluice_engine::batch::{Batch, RowKind};
use sluice_engine::dead_letter::{DeadLetter, ErrorType};
use sluice_engine::keys::{decode_key, encode_component, GroupKey};
use sluice_engine::operator::{Emitter, Operator, StateEntry, StateError, StateStats, StateWriter};
use sluice_engine::table::{restore_tables, KeyedTable, MetaCell, TableSpec};
use sluice_engine::time::now_ms;
use sluice_engine::value::{Map, Value};

use crate::accumulator::Acc;
use crate::aggregate::{Common, EmitMode};

/// The open sessions of every group key, oldest first.
const SESSIONS: TableSpec<Vec<Session>> = TableSpec::bincode("sessions", 1, 1);
const META_WATERMARK: &[u8] = b"\0wm";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    start: i64,
    /// Last event time + gap.
    end: i64,
    accs: Vec<Acc>,
    /// Whether a result for (key, start) reached the outbox.
    emitted: bool,
    /// Whether the result changed since it was last emitted.
    changed: bool,
}

pub struct SessionAggregate {
    c: Common,
    gap: i64,
    sessions: KeyedTable<GroupKey, Vec<Session>>,
    /// Results to delete: (key, old session start).
    retract: Vec<(GroupKey, i64)>,
    watermark: MetaCell<i64>,
    keys: Vec<Result<GroupKey, usize>>,
}

impl SessionAggregate {
    pub fn new(c: Common, gap: i64) -> Self {
        SessionAggregate {
            sessions: KeyedTable::new(SESSIONS, c.key_groups),
            c,
            gap,
            retract: Vec::new(),
            watermark: MetaCell::new("watermark", META_WATERMARK, i64::MIN),
            keys: Vec::new(),
        }
    }

    fn id(key: &GroupKey, start: i64) -> GroupKey {
        let mut id = key.clone();
        encode_component(&mut id, &Value::Int(start));
        id
    }

    fn key_row(&self, key: &GroupKey) -> Value {
        key_row(&self.c, key)
    }

    fn emit(&self, key: &GroupKey, s: &Session, batch: &mut Batch) {
        emit_session(&self.c, key, s, batch);
    }

    /// Emits retractions and changed sessions: all changed ones in
    /// `updates` mode, closed ones (end <= watermark) in `on_close` mode.
    fn flush(&mut self, out: &mut Emitter<'_>) {
        let mut batch = Batch::default();
        for (key, start) in std::mem::take(&mut self.retract) {
            let mut row = self.key_row(&key);
            row.set_path(&self.c.start_field, Value::Int(start));
            batch.push_change(RowKind::Delete, Self::id(&key, start), row, start);
        }
        let updates = self.c.emit == EmitMode::Updates;
        let wm = self.watermark.get();
        let mut sessions: Vec<(&GroupKey, &Vec<Session>)> = self.sessions.iter().collect();
        sessions.sort_unstable_by_key(|(key, _)| *key);
        let mut emitted = Vec::new();
        for (key, list) in sessions {
            for (i, s) in list.iter().enumerate() {
                if s.changed && (updates || s.end <= wm) {
                    self.emit(key, s, &mut batch);
                    emitted.push((key.clone(), i));
                }
            }
        }
        // Not marked: these flags reach the store with the key's next
        // change (a restore may emit such a session once more).
        for (key, i) in emitted {
            if let Some(s) = self
                .sessions
                .get_mut_unmarked(&key)
                .and_then(|v| v.get_mut(i))
            {
                s.emitted = true;
                s.changed = false;
            }
        }
        out.emit(batch);
    }
}

fn key_row(c: &Common, key: &GroupKey) -> Value {
    let mut row = Value::Object(Map::new());
    if let Some(values) = decode_key(key) {
        for (path, v) in c.group.names().iter().zip(values) {
            row.set_path(path, v);
        }
    }
    row
}

/// Appends the result row of session `s` of `key`.
fn emit_session(c: &Common, key: &GroupKey, s: &Session, batch: &mut Batch) {
    let mut row = key_row(c, key);
    row.set_path(&c.start_field, Value::Int(s.start));
    row.set_path(&c.end_field, Value::Int(s.end));
    if let Value::Object(m) = &mut row {
        for (agg, acc) in c.aggregates.iter().zip(&s.accs) {
            m.insert(agg.name.as_str(), acc.result());
        }
    }
    batch.push_change(
        RowKind::Upsert,
        SessionAggregate::id(key, s.start),
        row,
        s.end - 1,
    );
}

impl Operator for SessionAggregate {
    fn routing_keys(&self, batch: &Batch, keys: &mut Vec<Result<GroupKey, usize>>) -> bool {
        self.c.keys(batch, keys);
        true
    }

    fn process(&mut self, batch: Batch, out: &mut Emitter<'_>) {
        self.c.keys(&batch, &mut self.keys);
        let now = now_ms();
        let keys = std::mem::take(&mut self.keys);
        for (i, key) in keys.iter().enumerate() {
            let Some((key, t)) = self.c.admit(&batch, i, key, now, out) else {
                continue;
            };
            let row = &batch.rows[i];
            // The watermark in force when this row arrived in its
            // partition's log (independent of batching).
            let wm = self.watermark.get().max(batch.meta[i].watermark);
            let (start, end) = (t, t.saturating_add(self.gap));
            if end.saturating_add(self.c.lateness) <= wm {
                let reason = format!(
                    "late event: its session would end at {end} (time {t} + gap {} ms), \
                     and end + allowed lateness {} ms <= watermark {wm}",
                    self.gap, self.c.lateness
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
            let list = self.sessions.get_or_insert_with(key, Vec::new);
            // Sessions of this key that closed for good before this row
            // arrived are gone for it, as if the watermark had been applied
            // row by row: emit what they still owe, then drop them, so the
            // row cannot merge into them.
            if list
                .iter()
                .any(|s| s.end.saturating_add(self.c.lateness) <= wm)
            {
                let mut expired = Batch::default();
                list.retain(|s| {
                    if s.end.saturating_add(self.c.lateness) > wm {
                        return true;
                    }
                    if s.changed {
                        emit_session(&self.c, key, s, &mut expired);
                    }
                    false
                });
                out.emit(expired);
            }
            let mut merged = Session {
                start,
                end,
                accs: self.c.aggregates.iter().map(|a| a.init()).collect(),
                emitted: false,
                changed: true,
            };
            for (agg, acc) in self.c.aggregates.iter().zip(merged.accs.iter_mut()) {
                acc.update(agg.input(row), t);
            }
            let mut kept = Vec::with_capacity(list.len() + 1);
            let mut emitted_starts = Vec::new();
            for s in list.drain(..) {
                if s.start < merged.end && merged.start < s.end {
                    if s.emitted {
                        emitted_starts.push(s.start);
                    }
                    merged.start = merged.start.min(s.start);
                    merged.end = merged.end.max(s.end);
                    for (a, b) in merged.accs.iter_mut().zip(s.accs) {
                        a.merge(b);
                    }
                } else {
                    kept.push(s);
                }
            }
            for e in emitted_starts {
                if e == merged.start {
                    merged.emitted = true;
                } else {
                    self.retract.push((key.clone(), e));
                }
            }
            kept.push(merged);
            kept.sort_by_key(|s| s.start);
            *list = kept;
        }
        self.keys = keys;
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Emitter<'_>) {
        if watermark <= self.watermark.get() {
            return;
        }
        self.watermark.set(watermark);
        self.flush(out);
        let lateness = self.c.lateness;
        let closed = |s: &Session| s.end.saturating_add(lateness) <= watermark;
        let expiring: Vec<GroupKey> = self
            .sessions
            .iter()
            .filter(|(_, list)| list.iter().any(closed))
            .map(|(key, _)| key.clone())
            .collect();
        for key in expiring {
            let Some(list) = self.sessions.get_mut(&key) else {
                continue;
            };
            list.retain(|s| !closed(s));
            if list.is_empty() {
                self.sessions.remove(&key);
            }
        }
    }

    fn on_checkpoint(&mut self, out: &mut Emitter<'_>) {
        self.flush(out);
    }

    fn snapshot(&mut self, w: &mut StateWriter) {
        self.sessions.snapshot(w);
        self.watermark.snapshot(w);
    }

    fn snapshot_all(&self, w: &mut StateWriter) -> bool {
        self.sessions.snapshot_all(w) && self.watermark.snapshot_all(w)
    }

    fn restore(&mut self, entries: Vec<StateEntry>) -> Result<(), StateError> {
        restore_tables(entries, &mut [&mut self.sessions, &mut self.watermark])
    }

    /// Keys are sessions, not group keys.
    fn state_stats(&self) -> StateStats {
        StateStats {
            keys: self
                .sessions
                .iter()
                .map(|(_, list)| list.len() as u64)
                .sum(),
            bytes: self.sessions.stats().bytes,
        }
    }
}

#[cfg(test)]
mod tests;
