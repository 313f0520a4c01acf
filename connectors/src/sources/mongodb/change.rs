//! Pure decoding: change events to emitted JSON, positions to and from
//! bytes, and the message for a resume token that fell off the oplog.

use mongodb::bson::{Bson, Document};
use serde_json::{Map, Value as Json};

use crate::mongo::bson_to_json;
use crate::mongo::commands::{token_bytes, token_from_bytes};

/// Position format version.
const POSITION_V1: u8 = 1;

/// One decoded change event.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub op: String,
    /// The event's `_id` (its resume token).
    pub token: Bson,
    /// `clusterTime` seconds, when present.
    pub cluster_secs: Option<u32>,
    /// The JSON to emit; `None` for events that emit nothing.
    pub json: Option<Vec<u8>>,
    /// `invalidate`: the stream ended (collection dropped or renamed).
    pub invalidate: bool,
}

/// Decodes a raw change event.
pub fn decode_change(event: &Document) -> Result<Change, String> {
    let token = event
        .get("_id")
        .cloned()
        .ok_or("change event without `_id` (resume token)")?;
    let op = event
        .get_str("operationType")
        .map_err(|_| "change event without `operationType`")?
        .to_string();
    let cluster_secs = event.get_timestamp("clusterTime").ok().map(|t| t.time);
    let ns = event.get_document("ns").ok();
    let ns = match (
        ns.and_then(|n| n.get_str("db").ok()),
        ns.and_then(|n| n.get_str("coll").ok()),
    ) {
        (Some(d), Some(c)) => format!("{d}.{c}"),
        (Some(d), None) => d.to_string(),
        _ => String::new(),
    };
    let crud = matches!(op.as_str(), "insert" | "update" | "replace" | "delete");
    let json = if crud {
        let mut body = Map::new();
        let full = match event.get("fullDocument") {
            Some(Bson::Document(d)) if op != "delete" => Some(d),
            _ => None,
        };
        let source = match full {
            Some(d) => Some(d),
            None => event.get_document("documentKey").ok(),
        };
        if let Some(d) = source {
            if let Json::Object(m) = bson_to_json(&Bson::Document(d.clone())) {
                body = m;
            }
        }
        if full.is_none() && op == "update" {
            if let Ok(u) = event.get_document("updateDescription") {
                if let Some(f) = u.get("updatedFields") {
                    body.insert("_updated".into(), bson_to_json(f));
                }
                if let Some(r) = u.get("removedFields") {
                    body.insert("_removed".into(), bson_to_json(r));
                }
            }
        }
        body.insert("_op".into(), Json::String(op.clone()));
        body.insert("_ns".into(), Json::String(ns));
        Some(serde_json::to_vec(&Json::Object(body)).map_err(|e| e.to_string())?)
    } else {
        None
    };
    Ok(Change {
        invalidate: op == "invalidate",
        op,
        token,
        cluster_secs,
        json,
    })
}

/// Position bytes: version, the sequence number of the last event, the
/// resume token.
pub fn encode_position(seq: u64, token: &Bson) -> Vec<u8> {
    let mut out = vec![POSITION_V1];
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend(token_bytes(token));
    out
}

/// Reads [`encode_position`] bytes: `(seq, token bytes)`.
pub fn decode_position(bytes: &[u8]) -> Option<(u64, Vec<u8>)> {
    let (&v, rest) = bytes.split_first()?;
    if v != POSITION_V1 || rest.len() < 8 {
        return None;
    }
    let seq = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let token = &rest[8..];
    token_from_bytes(token)?;
    Some((seq, token.to_vec()))
}

/// The error for a resume token that is no longer in the oplog.
pub fn history_lost_message(name: &str, detail: &str) -> String {
    format!(
        "mongodb source `{name}`: cannot resume the change stream: the stored resume token is no \
         longer in the oplog (the source was stopped longer than the oplog window, or the oplog is \
         too small); events written in between cannot be read from the change stream any more. \
         Server said: {detail}. Options: (1) start fresh from now: clear the pipeline's state \
         directory so this source starts without a token (the events in the gap are skipped); \
         (2) set `start_at_operation_time` to a time still inside the oplog window, then clear \
         the state; (3) rebuild with `sluice replay` into a new state directory (the source \
         starts from `start_at_operation_time`, or now) and run from that. To avoid this, keep \
         the pipeline's downtime shorter than the oplog window or enlarge the oplog \
         (replSetResizeOplog) to avoid this."
    )
}
