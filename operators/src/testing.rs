//! Test helpers: batches from JSON lines, running an operator.

use std::sync::Arc;

use sluice_engine::batch::{Batch, Origin, RowMeta};
use sluice_engine::dead_letter::DeadLetter;
use sluice_engine::json::parse_value;
use sluice_engine::operator::{BuildContext, Emitter, Operator};

pub(crate) fn build_ctx() -> BuildContext {
    BuildContext {
        name: Arc::from("op"),
        key_groups: 8,
        upstream_key: None,
        event_time: true,
        input: sluice_engine::operator::Stream::Events,
    }
}

/// A batch of rows with event time = the row's `t` field (or its index) and
/// offset = its index; the raw bytes are kept for dead letters.
pub(crate) fn batch_of(lines: &[&str]) -> Batch {
    let mut raw = Vec::new();
    let mut b = Batch::default();
    for (i, l) in lines.iter().enumerate() {
        let row = parse_value(l.as_bytes()).unwrap();
        let time = row.get_path(&["t".into()]).as_i64().unwrap_or(i as i64);
        b.meta.push(RowMeta {
            time,
            offset: i as u64,
            raw_start: raw.len() as u32,
            raw_len: l.len() as u32,
            ..RowMeta::default()
        });
        raw.extend_from_slice(l.as_bytes());
        b.rows.push(row);
    }
    b.raw = Some(Arc::new(raw));
    b.origin = Some(Origin {
        source: Arc::from("test"),
        partition: 0,
    });
    b
}

pub(crate) fn run_op(op: &mut dyn Operator, batch: Batch) -> (Vec<Batch>, Vec<DeadLetter>) {
    let (mut out, mut dead) = (Vec::new(), Vec::new());
    op.process(
        batch,
        &mut Emitter {
            out: &mut out,
            dead: &mut dead,
        },
    );
    (out, dead)
}

pub(crate) fn watermark(op: &mut dyn Operator, wm: i64) -> Vec<Batch> {
    let (mut out, mut dead) = (Vec::new(), Vec::new());
    op.on_watermark(
        wm,
        &mut Emitter {
            out: &mut out,
            dead: &mut dead,
        },
    );
    assert!(dead.is_empty());
    out
}

pub(crate) fn checkpoint(op: &mut dyn Operator) -> Vec<Batch> {
    let (mut out, mut dead) = (Vec::new(), Vec::new());
    op.on_checkpoint(&mut Emitter {
        out: &mut out,
        dead: &mut dead,
    });
    out
}

/// Every row of `batches` rendered as JSON.
pub(crate) fn rows(batches: &[Batch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| b.rows.iter().map(|r| r.to_string()))
        .collect()
}
