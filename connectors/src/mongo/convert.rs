//! Conversions between sluice values and BSON / relaxed extended JSON.

use mongodb::bson::{Bson, Document};
use sluice_engine::value::Value;

/// A sluice value as BSON; `None` for a missing value (the field is left
/// out). Integers become Int64, other numbers Double.
pub fn value_to_bson(v: &Value) -> Option<Bson> {
    Some(match v {
        Value::Missing => return None,
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Int(i) => Bson::Int64(*i),
        Value::Float(f) => Bson::Double(*f),
        Value::Str(s) => Bson::String(s.to_string()),
        Value::Array(items) => Bson::Array(
            items
                .iter()
                .map(|i| value_to_bson(i).unwrap_or(Bson::Null))
                .collect(),
        ),
        Value::Object(m) => {
            let mut d = Document::new();
            for (k, v) in m.iter() {
                if let Some(b) = value_to_bson(v) {
                    d.insert(k.to_string(), b);
                }
            }
            Bson::Document(d)
        }
    })
}

/// BSON as relaxed extended JSON (`ObjectId` -> `{"$oid": ..}`, dates ->
/// `{"$date": "RFC 3339"}`, numbers as plain JSON numbers).
pub fn bson_to_json(b: &Bson) -> serde_json::Value {
    b.clone().into_relaxed_extjson()
}
