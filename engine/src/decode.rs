//! Turning raw payloads into rows: JSON decoding (only the fields the
//! pipeline reads, when it can), event-time extraction, and dead letters for
//! input that is malformed, oversized or lacks a usable timestamp.

use std::sync::Arc;

use crate::batch::{Batch, Origin, RowMeta};
use crate::dead_letter::{DeadLetter, ErrorType};
use crate::json::{self, Projection, Span};
use crate::operator::{Combiner, FieldPath, FieldSet, Fields};
use crate::source::RawBatch;
use crate::time::{event_time_ms, now_ms, TimeFormat};
use crate::value::{Map, Str, Value};

/// Where event time comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTimeSpec {
    /// The field holding the time.
    pub field: FieldPath,
    /// How the time is written.
    pub format: TimeFormat,
}

enum Mode {
    /// Parse the whole document.
    Full,
    /// Parse only these paths (slot i = paths[i]).
    Projected {
        projection: Projection,
        paths: Vec<FieldPath>,
        /// The slot of the event-time field, if there is one.
        time_slot: Option<usize>,
    },
}

/// Decodes raw events of one source.
pub struct Decoder {
    source: Arc<str>,
    mode: Mode,
    event_time: Option<EventTimeSpec>,
    max_event_bytes: usize,
}

impl Decoder {
    /// A decoder reading `fields` (plus the event-time field) of each event.
    pub fn new(
        source: Arc<str>,
        fields: &FieldSet,
        event_time: Option<EventTimeSpec>,
        max_event_bytes: usize,
    ) -> Self {
        let mode = match fields {
            FieldSet::All => Mode::Full,
            FieldSet::Paths(set) => {
                let mut paths: Vec<FieldPath> = set.iter().cloned().collect();
                if let Some(t) = &event_time {
                    if !paths.contains(&t.field) {
                        paths.push(t.field.clone());
                    }
                }
                if paths.iter().any(Vec::is_empty) {
                    Mode::Full
                } else {
                    let time_slot = event_time
                        .as_ref()
                        .and_then(|t| paths.iter().position(|p| *p == t.field));
                    Mode::Projected {
                        projection: Projection::new(&paths),
                        paths,
                        time_slot,
                    }
                }
            }
        };
        Decoder {
            source,
            mode,
            event_time,
            max_event_bytes,
        }
    }

    /// Events longer than this are dead letters.
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// True when only some fields are parsed.
    pub fn is_projected(&self) -> bool {
        matches!(self.mode, Mode::Projected { .. })
    }

    /// Decodes every event of `raw`; bad ones become dead letters.
    pub fn decode(&self, raw: &RawBatch) -> (Batch, Vec<DeadLetter>) {
        let (batch, dead, _) = self.decode_folding(raw, None);
        (batch, dead)
    }

    /// [`decode`](Self::decode), folding what it can into `combiner` on the
    /// way when the decoder projects fields the combiner can fold from
    /// ([`Combiner::bind_fields`]): the events it folds get no row (the
    /// batch then holds every event's metadata and no rows), and the ones
    /// it refuses come back as rows in the third batch, for
    /// [`Combiner::add`]. Without a combiner, or one that cannot bind, the
    /// batch holds every row and there is no third batch.
    pub fn decode_folding(
        &self,
        raw: &RawBatch,
        mut combiner: Option<&mut (dyn Combiner + 'static)>,
    ) -> (Batch, Vec<DeadLetter>, Option<Batch>) {
        if let (Some(c), Mode::Projected { paths, .. }) = (combiner.as_deref_mut(), &self.mode) {
            if !c.bind_fields(paths) {
                combiner = None;
            }
        } else {
            combiner = None;
        }
        let mut refused = combiner.is_some().then(|| Batch {
            origin: Some(Origin {
                source: self.source.clone(),
                partition: raw.partition,
            }),
            raw: Some(raw.buf.clone()),
            ..Batch::default()
        });
        let mut batch = Batch::with_capacity(raw.events.len());
        batch.origin = Some(Origin {
            source: self.source.clone(),
            partition: raw.partition,
        });
        batch.raw = Some(raw.buf.clone());
        let mut dead = Vec::new();
        let arrival = now_ms();
        let mut slots = match &self.mode {
            Mode::Projected { paths, .. } => vec![Value::Missing; paths.len()],
            Mode::Full => Vec::new(),
        };
        // Strings the combiner takes only as key bytes stay in the input
        // (never the event time, which is read from its value).
        let keep = match (&combiner, &self.mode) {
            (Some(c), Mode::Projected { time_slot, .. }) => {
                c.key_only_slots() & !time_slot.map_or(0, |t| 1u64.wrapping_shl(t as u32))
            }
            _ => 0,
        };
        let mut spans = vec![Span::default(); if keep == 0 { 0 } else { slots.len() }];
        for ev in &raw.events {
            let start = ev.start as usize;
            let bytes = &raw.buf[start..start + ev.len as usize];
            let reject = |kind: ErrorType, reason: String| DeadLetter {
                error_type: kind,
                reason,
                component: self.source.clone(),
                source: Some(self.source.clone()),
                partition: raw.partition,
                offset: ev.offset,
                event_time: None,
                raw: bytes.to_vec(),
            };
            if let Some(full_len) = ev.oversized {
                dead.push(reject(
                    ErrorType::Oversized,
                    format!(
                        "event of {full_len} bytes exceeds the limit of {} bytes (the raw bytes are truncated)",
                        self.max_event_bytes
                    ),
                ));
                continue;
            }
            let decoded = match &self.mode {
                Mode::Full => self.parse_full(bytes).and_then(|row| {
                    let spec = self.event_time.as_ref();
                    let time =
                        spec.map_or(Ok(arrival), |s| event_time(s, row.get_path(&s.field)))?;
                    Ok((Some(row), time))
                }),
                Mode::Projected {
                    projection,
                    paths,
                    time_slot,
                } => match projection.decode_spans(bytes, &mut slots, keep, &mut spans) {
                    Err(e) => Err((ErrorType::MalformedJson, e.to_string())),
                    // Event time straight from its slot, before the row is built.
                    Ok(raw) => match (&self.event_time, time_slot) {
                        (Some(spec), Some(i)) => event_time(spec, &slots[*i]),
                        _ => Ok(arrival),
                    }
                    .map(|time| {
                        let fields = Fields::with_spans(&slots, bytes, &spans, raw);
                        let folded = combiner
                            .as_deref_mut()
                            .is_some_and(|c| c.add_fields(&fields, time));
                        let row = if folded {
                            None
                        } else {
                            fill_spans(bytes, &spans, raw, &mut slots);
                            Some(row_of(paths, &mut slots))
                        };
                        (row, time)
                    }),
                },
            };
            let (row, time) = match decoded {
                Ok(decoded) => decoded,
                Err((kind, reason)) => {
                    dead.push(reject(kind, reason));
                    continue;
                }
            };
            let meta = RowMeta {
                time,
                offset: ev.offset,
                raw_start: ev.start,
                raw_len: ev.len,
                ..RowMeta::default()
            };
            match (row, &mut refused) {
                (None, _) => {}
                (Some(row), Some(refused)) => {
                    refused.rows.push(row);
                    refused.meta.push(meta);
                }
                (Some(row), None) => batch.rows.push(row),
            }
            batch.meta.push(meta);
        }
        (batch, dead, refused)
    }

    /// Parses a whole event, which must be an object.
    fn parse_full(&self, bytes: &[u8]) -> Result<Value, (ErrorType, String)> {
        match json::parse_value(bytes) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(other) => Err((
                ErrorType::MalformedJson,
                format!(
                    "expected a JSON object, found {}",
                    article(other.type_name())
                ),
            )),
            Err(e) => Err((ErrorType::MalformedJson, e.to_string())),
        }
    }
}

/// The event time in `v`, the value of `spec`'s field.
fn event_time(spec: &EventTimeSpec, v: &Value) -> Result<i64, (ErrorType, String)> {
    match v {
        Value::Missing => Err((
            ErrorType::MissingField,
            format!("event-time field `{}` is missing", spec.field.join(".")),
        )),
        v => event_time_ms(v, spec.format).map_err(|reason| {
            (
                ErrorType::BadEventTime,
                format!("event-time field `{}`: {reason}", spec.field.join(".")),
            )
        }),
    }
}

/// Decodes the strings left as spans of `doc` (the slots in `raw`) into
/// their slots.
fn fill_spans(doc: &[u8], spans: &[Span], raw: u64, slots: &mut [Value]) {
    for (i, slot) in slots.iter_mut().enumerate().take(64) {
        if raw & (1 << i) != 0 {
            let Span { start, end } = spans[i];
            // Validated with the document: never lossy.
            *slot = Value::Str(Str::from(String::from_utf8_lossy(&doc[start..end])));
        }
    }
}

/// The row holding the projected `slots` (taken out) at their `paths`.
fn row_of(paths: &[FieldPath], slots: &mut [Value]) -> Value {
    let mut row = Value::Object(Map(Vec::with_capacity(paths.len())));
    for (path, slot) in paths.iter().zip(slots.iter_mut()) {
        if slot.exists() {
            if path.len() == 1 {
                if let Value::Object(m) = &mut row {
                    m.0.push((path[0].clone(), std::mem::take(slot)));
                }
            } else {
                row.set_path(path, std::mem::take(slot));
            }
        }
    }
    row
}

fn article(type_name: &str) -> String {
    match type_name {
        "array" | "integer" | "object" => format!("an {type_name}"),
        other => format!("a {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_path;

    fn raw(lines: &[&str]) -> RawBatch {
        RawBatch::of_lines(lines)
    }

    #[test]
    fn projected_decode_and_dead_letters() {
        let mut fields = FieldSet::empty();
        fields.insert(parse_path("country"));
        let d = Decoder::new(
            Arc::from("src"),
            &fields,
            Some(EventTimeSpec {
                field: parse_path("ts"),
                format: TimeFormat::Auto,
            }),
            1 << 20,
        );
        assert!(d.is_projected());
        let (batch, dead) = d.decode(&raw(&[
            r#"{"country":"GT","ts":5,"x":[1,2]}"#,
            r#"{"country":"GT","ts":5"#,
            r#"{"country":"GT"}"#,
            r#"{"country":"GT","ts":true}"#,
            r#"[1]"#,
        ]));
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.meta[0].time, 5);
        assert_eq!(
            batch.rows[0].get_path(&parse_path("country")),
            &Value::from("GT")
        );
        assert_eq!(batch.rows[0].get_path(&parse_path("x")), &Value::Missing);
        let kinds: Vec<_> = dead.iter().map(|d| d.error_type).collect();
        assert_eq!(
            kinds,
            vec![
                ErrorType::MalformedJson,
                ErrorType::MissingField,
                ErrorType::BadEventTime,
                ErrorType::MalformedJson
            ]
        );
        assert_eq!(dead[0].offset, 1);
        assert_eq!(dead[0].raw, br#"{"country":"GT","ts":5"#.to_vec());
    }

    #[test]
    fn full_decode_keeps_everything() {
        let d = Decoder::new(Arc::from("src"), &FieldSet::All, None, 1 << 20);
        let (batch, dead) = d.decode(&raw(&[r#"{"a":{"b":1},"c":"x"}"#, "[]"]));
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.rows[0].get_path(&parse_path("a.b")), &Value::Int(1));
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0].reason.contains("found an array"),
            "{}",
            dead[0].reason
        );
    }

    /// The projected decoder reads event time from its slot, before the row
    /// is built; it must judge every event as the full decoder does: same
    /// times, same dead letters (kind and reason), same projected fields,
    /// with a nested time field, a repeated key, and bad or missing times.
    #[test]
    fn projected_event_time_agrees_with_full_decoding() {
        let lines = [
            r#"{"country":"GT","meta":{"ts":5}}"#,
            r#"{"meta":{"ts":5},"meta":{"ts":9},"country":"NO"}"#,
            r#"{"meta":{"ts":5},"meta":{"x":1},"country":"NO"}"#,
            r#"{"meta":{"ts":"2024-11-21T00:00:00Z"},"country":"FR"}"#,
            r#"{"meta":{"ts":null},"country":"GT"}"#,
            r#"{"meta":{"ts":"soon"},"country":"GT"}"#,
            r#"{"meta":7,"country":"GT"}"#,
            r#"{"country":"GT"}"#,
            r#"{"country":"GT","meta":{"ts":1e3}}"#,
            r#"{"country":"GT","meta":{"ts":5}"#,
        ];
        let time = || {
            Some(EventTimeSpec {
                field: parse_path("meta.ts"),
                format: TimeFormat::Auto,
            })
        };
        let mut fields = FieldSet::empty();
        fields.insert(parse_path("country"));
        let projected = Decoder::new(Arc::from("src"), &fields, time(), 1 << 20);
        let full = Decoder::new(Arc::from("src"), &FieldSet::All, time(), 1 << 20);
        assert!(projected.is_projected() && !full.is_projected());
        let (pb, pd) = projected.decode(&raw(&lines));
        let (fb, fd) = full.decode(&raw(&lines));
        let judged = |dead: &[DeadLetter]| {
            dead.iter()
                .map(|d| (d.offset, d.error_type, d.reason.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(judged(&pd), judged(&fd));
        assert_eq!(pd.len(), 6, "{:?}", judged(&pd));
        assert_eq!(pb.meta, fb.meta);
        assert_eq!(pb.len(), 4);
        for (p, f) in pb.rows.iter().zip(&fb.rows) {
            for path in ["country", "meta.ts"] {
                assert_eq!(p.get_path(&parse_path(path)), f.get_path(&parse_path(path)));
            }
        }
    }
}
