//! Dead letters: input the pipeline could not process, with the reason.
//!
//! Nothing is dropped silently: every rejected event becomes a
//! [`DeadLetter`], is counted in `sluice_dead_letters_total{error_type}`, and
//! is written (exactly once, through the checkpoint outbox like any sink
//! output) to the pipeline's dead-letter sink with the original bytes.

use std::sync::Arc;

use crate::batch::Batch;
use crate::value::{Map, Str, Value};

/// Why an event was rejected; the `error_type` label of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Not valid JSON, or not a JSON object.
    MalformedJson,
    /// A field the pipeline needs (key, event time...) is absent.
    MissingField,
    /// A field has the wrong type (e.g. a string where a number is summed).
    WrongType,
    /// The event is larger than the configured limit.
    Oversized,
    /// The event's time is behind the watermark by more than the allowed lateness.
    Late,
    /// The event time field could not be read.
    BadEventTime,
    /// A sink refused the record permanently (constraint violation, bad type).
    SinkRejected,
}

impl ErrorType {
    /// The name used in metrics labels and dead-letter records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::MalformedJson => "malformed_json",
            ErrorType::MissingField => "missing_field",
            ErrorType::WrongType => "wrong_type",
            ErrorType::Oversized => "oversized",
            ErrorType::Late => "late",
            ErrorType::BadEventTime => "bad_event_time",
            ErrorType::SinkRejected => "sink_rejected",
        }
    }
}

/// One rejected event.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The kind of error, for metrics and routing.
    pub error_type: ErrorType,
    /// What was wrong, for a person.
    pub reason: String,
    /// The component that rejected it.
    pub component: Arc<str>,
    /// The source it came from and its position there, when known.
    pub source: Option<Arc<str>>,
    /// The partition in `source`.
    pub partition: u32,
    /// The event's offset in that partition.
    pub offset: u64,
    /// The event's time, when it was read.
    pub event_time: Option<i64>,
    /// The original bytes (the serialized row when the bytes are gone).
    pub raw: Vec<u8>,
}

impl DeadLetter {
    /// A dead letter for row `i` of `batch`.
    pub fn from_row(
        batch: &Batch,
        i: usize,
        component: &Arc<str>,
        error_type: ErrorType,
        reason: impl Into<String>,
    ) -> Self {
        let raw = match batch.raw_bytes(i) {
            Some(bytes) => bytes.to_vec(),
            None => {
                let mut out = Vec::new();
                crate::json::write_value(&mut out, &batch.rows[i]);
                out
            }
        };
        let meta = batch.meta.get(i).copied().unwrap_or_default();
        DeadLetter {
            error_type,
            reason: reason.into(),
            component: component.clone(),
            source: batch.origin.as_ref().map(|o| o.source.clone()),
            partition: batch.origin.as_ref().map_or(0, |o| o.partition),
            offset: meta.offset,
            event_time: Some(meta.time),
            raw,
        }
    }

    /// The record written to the dead-letter sink: `error_type`, `reason`,
    /// `component`, `source`, `partition`, `offset`, `event_time`, and `raw`
    /// (the original text) or `raw_base64` when the bytes are not UTF-8.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("error_type", Value::from(self.error_type.as_str()));
        m.insert("reason", Value::Str(Str::from(self.reason.as_str())));
        m.insert("component", Value::Str(Str::from(&*self.component)));
        if let Some(source) = &self.source {
            m.insert("source", Value::Str(Str::from(&**source)));
            m.insert("partition", Value::Int(i64::from(self.partition)));
            m.insert("offset", Value::Int(self.offset as i64));
        }
        if let Some(t) = self.event_time {
            m.insert("event_time", Value::Int(t));
        }
        match std::str::from_utf8(&self.raw) {
            Ok(text) => m.insert("raw", Value::Str(Str::from(text))),
            Err(_) => m.insert("raw_base64", Value::Str(Str::from(base64(&self.raw)))),
        }
        Value::Object(m)
    }
}

/// Standard base64 with padding (dead letters of binary payloads).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn binary_raw_is_base64() {
        let d = DeadLetter {
            error_type: ErrorType::MalformedJson,
            reason: "bad".into(),
            component: Arc::from("src"),
            source: None,
            partition: 0,
            offset: 0,
            event_time: None,
            raw: vec![0xff, 0xfe],
        };
        let v = d.to_value();
        assert_eq!(v.get_path(&["raw_base64".into()]), &Value::from("//4="));
        assert_eq!(
            v.get_path(&["error_type".into()]),
            &Value::from("malformed_json")
        );
    }
}
