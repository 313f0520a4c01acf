//! Moving data through the operator graph: batches from node to node, the
//! rows reaching a sink into its outbox (through the checkpoint protocol),
//! watermarks into the operators, and dead letters to the dead-letter sink.

use std::sync::Arc;

use super::Processor;
use crate::batch::{Batch, RowKind};
use crate::checkpoint::Event;
use crate::dead_letter::{DeadLetter, ErrorType};
use crate::keys::{decode_key, GroupKey};
use crate::metrics as m;
use crate::operator::{Emitter, Operator};
use crate::sink::SinkRecord;
use crate::source::Folded;
use crate::time::now_ms;
use crate::value::{Str, Value};

impl Processor {
    /// Sends `batch`, the output of `from`, to every node reading it.
    pub(super) fn forward(&mut self, from: usize, batch: Batch) {
        let n = self.graph.outputs[from].len();
        let mut batch = Some(batch);
        for k in 0..n {
            let child = self.graph.outputs[from][k];
            let b = if k + 1 == n {
                batch.take().expect("taken once")
            } else {
                batch.clone().expect("present until the last")
            };
            self.push(child, b);
        }
    }

    fn push(&mut self, node: usize, batch: Batch) {
        let t = node.wrapping_sub(self.n_sources);
        let mut dead = Vec::new();
        let batch = match (&mut self.cluster, self.operators.get(t)) {
            (Some(c), Some(Some(op))) if c.is_point(node) && batch.origin.is_some() => {
                c.route(node, &self.names[node], batch, op.as_ref(), &mut dead)
            }
            _ => batch,
        };
        self.dead_letters(dead);
        if batch.is_empty() && self.sink_of[node].is_none() {
            return;
        }
        self.apply(node, batch);
    }

    /// Runs `batch` through `node` (rows already at their owner).
    pub(super) fn apply(&mut self, node: usize, batch: Batch) {
        if let Some(sink) = self.sink_of[node] {
            self.add_to_outbox(sink, batch);
            return;
        }
        self.run_operator(node, |op, out| op.process(batch, out));
    }

    /// Merges partial results other workers folded for `node` (an
    /// operator with a combiner).
    pub(super) fn apply_partials(&mut self, node: usize, batch: Batch) {
        self.run_operator(node, |op, out| op.merge_partials(batch, out));
    }

    /// Takes the rows of one source batch that were folded where they were
    /// decoded: `node` merges the partial results when it accepts them for
    /// this batch (`meta`, the rows' metadata, watermarks stamped), else
    /// the rows are decoded again and processed one by one.
    pub(super) fn apply_folded(&mut self, source: usize, node: usize, meta: Batch, folded: Folded) {
        let takes = self.operators[node - self.n_sources]
            .as_ref()
            .is_some_and(|op| op.takes_folded(&meta.meta));
        if takes {
            self.dead_letters(folded.dead);
            let combiner = folded.combiner;
            self.run_operator(node, |op, out| op.merge_folded(combiner, out));
            return;
        }
        let mut rows = folded.rows();
        debug_assert_eq!(
            rows.len(),
            meta.meta.len(),
            "decoding again gives the same rows"
        );
        rows.meta = meta.meta;
        rows.origin = meta.origin;
        self.forward(source, rows);
    }

    /// Calls `f` on the operator of `node`, then sends on what it emitted.
    fn run_operator(&mut self, node: usize, f: impl FnOnce(&mut dyn Operator, &mut Emitter<'_>)) {
        let mut out = Vec::new();
        let mut dead = Vec::new();
        if let Some(op) = self.operators[node - self.n_sources].as_mut() {
            f(
                op.as_mut(),
                &mut Emitter {
                    out: &mut out,
                    dead: &mut dead,
                },
            );
        }
        self.dead_letters(dead);
        for b in out {
            self.forward(node, b);
        }
    }

    pub(super) fn advance_watermarks(&mut self) {
        let now = now_ms();
        for i in 0..self.timed.len() {
            let (node, ref sources, last) = self.timed[i];
            let mut wm = self.tracker.watermark_of(sources, now);
            if let Some(c) = &self.cluster {
                for &s in sources {
                    wm = wm.min(c.peer_watermark(s, now));
                }
            }
            if wm <= last {
                continue;
            }
            self.timed[i].2 = wm;
            if wm != i64::MAX && wm != i64::MIN {
                let labels = m::component_labels(&self.pipeline, &self.names[node], "transform");
                metrics::gauge!(m::WATERMARK_DELAY, labels.clone()).set((now - wm) as f64 / 1000.0);
            }
            let mut out = Vec::new();
            let mut dead = Vec::new();
            if let Some(op) = self.operators[node - self.n_sources].as_mut() {
                op.on_watermark(
                    wm,
                    &mut Emitter {
                        out: &mut out,
                        dead: &mut dead,
                    },
                );
            }
            if !out.is_empty() {
                self.protocol.handle(Event::StateChanged);
            }
            self.dead_letters(dead);
            for b in out {
                self.forward(node, b);
            }
        }
    }

    /// Turns the rows of `batch` into records of `sink`'s outbox. Changes
    /// of a keyed stream (upserts, deletes) replace each other by key.
    fn add_to_outbox(&mut self, sink: usize, batch: Batch) {
        let origin = batch.origin.clone();
        let keyed = batch.is_keyed();
        let Batch {
            rows,
            meta,
            keys,
            kinds,
            ..
        } = batch;
        for (i, (value, meta)) in rows.into_iter().zip(meta).enumerate() {
            let kind = kinds.get(i).copied().unwrap_or(RowKind::Insert);
            let id = match (&origin, keyed) {
                (_, true) => key_id(&keys[i]),
                (Some(o), false) => {
                    Str::from(format!("{}:{}:{}", o.source, o.partition, meta.offset))
                }
                (None, false) => Str::from(format!(
                    "{}:{}",
                    self.protocol.next_epoch(),
                    self.protocol.outbox_len(sink)
                )),
            };
            let record = SinkRecord {
                kind,
                id,
                value,
                time: meta.time,
            };
            let upsert_key = (kind != RowKind::Insert && keyed).then(|| &keys[i]);
            self.protocol.record(sink, record, upsert_key);
        }
        self.protocol.handle(Event::StateChanged);
    }

    pub(super) fn dead_letters(&mut self, dead: Vec<DeadLetter>) {
        let dlq = self.sink_names.len() - 1;
        for d in dead {
            self.dead_letters += 1;
            let count = self
                .dead_count
                .entry((d.component.clone(), d.error_type))
                .or_default();
            *count += 1;
            let labels = m::with_error(
                &m::component_labels(&self.pipeline, &d.component, "pipeline"),
                d.error_type.as_str(),
            );
            metrics::counter!(m::DEAD_LETTERS, labels.clone()).increment(1);
            if count.is_power_of_two() {
                tracing::warn!(component = %d.component, error_type = d.error_type.as_str(),
                    reason = %d.reason, total = *count, "event sent to the dead-letter output");
            }
            let id = Str::from(format!(
                "{}:{}:{}:{}:{}",
                d.source.as_deref().unwrap_or("-"),
                d.partition,
                d.offset,
                d.component,
                d.error_type.as_str()
            ));
            let record = SinkRecord {
                kind: RowKind::Insert,
                id,
                value: d.to_value(),
                time: d.event_time.unwrap_or(0),
            };
            self.protocol.record(dlq, record, None);
        }
    }

    /// Records a sink refused: dead letters, unless the dead-letter sink
    /// itself refused them (then only a log line is left).
    pub(super) fn sink_rejected(&mut self, sink: usize, rejected: Vec<(SinkRecord, String)>) {
        let name: Arc<str> = self.sink_names[sink].clone();
        if sink == self.sink_names.len() - 1 {
            for (record, reason) in rejected {
                tracing::error!(sink = %name, %reason, record = %record.value,
                    "the dead-letter sink refused a record; it is only in this log");
            }
            return;
        }
        let dead = rejected
            .into_iter()
            .map(|(record, reason)| {
                let mut raw = Vec::new();
                crate::json::write_value(&mut raw, &record.value);
                DeadLetter {
                    error_type: ErrorType::SinkRejected,
                    reason,
                    component: name.clone(),
                    source: None,
                    partition: 0,
                    offset: 0,
                    event_time: Some(record.time),
                    raw,
                }
            })
            .collect();
        self.dead_letters(dead);
    }
}

/// A readable id for an upsert key: its values joined by `|` (strings as
/// they are, other values as JSON); `all` for the empty key.
fn key_id(key: &GroupKey) -> Str {
    if key.is_empty() {
        // the single group of an aggregate without group_by
        return Str::from("all");
    }
    let Some(values) = decode_key(key) else {
        return Str::from(format!("{key:02x?}"));
    };
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        match v {
            Value::Str(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
    }
    Str::from(out)
}
