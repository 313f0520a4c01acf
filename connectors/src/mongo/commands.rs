//! Pure builders and parsers: the command documents the driver client
//! sends for a bulk write, how it reads their replies, how server error
//! codes are classified, and how resume tokens are stored as bytes.

use mongodb::bson::{doc, Bson, Document};

use super::client::{ErrorClass, MongoError, OpError, WriteOp};

/// The field holding the fence a document was written with.
pub const FENCE_FIELD: &str = "sluice_epoch";
/// Duplicate key.
pub const DUPLICATE_KEY: i32 = 11000;
/// `ChangeStreamHistoryLost`.
pub const HISTORY_LOST: i32 = 286;

/// Codes worth retrying: network/failover/step-down/shutdown/overload
/// (the driver's retryable sets plus write-concern and lock timeouts).
const RETRYABLE_CODES: &[i32] = &[
    6, 7, 24, 50, 63, 64, 89, 91, 112, 133, 134, 150, 189, 202, 234, 251, 262, 9001, 10107, 11600,
    11602, 13388, 13435, 13436, 46841,
];
/// Codes that mean the change stream cannot resume from its token.
const HISTORY_LOST_CODES: &[i32] = &[HISTORY_LOST, 136, 280];

/// Classifies a server error by code, message and labels.
pub fn classify(code: i32, message: &str, labels: &[&str]) -> ErrorClass {
    let lower = message.to_ascii_lowercase();
    let lost = lower.contains("no longer be in the oplog")
        || lower.contains("resume point may no longer")
        || lower.contains("resume of change stream was not possible");
    if code == HISTORY_LOST || (HISTORY_LOST_CODES.contains(&code) && lost) || (code == 0 && lost) {
        return ErrorClass::HistoryLost;
    }
    if RETRYABLE_CODES.contains(&code)
        || labels.iter().any(|l| {
            matches!(
                *l,
                "RetryableWriteError" | "ResumableChangeStreamError" | "RetryableError"
            )
        })
    {
        return ErrorClass::Retryable;
    }
    ErrorClass::Fatal
}

/// The filter that lets a write through only over an older (or no) fence.
pub fn fence_filter(id: &str, fence: i64) -> Document {
    doc! {
        "_id": id,
        "$or": [
            { FENCE_FIELD: { "$lte": fence } },
            { FENCE_FIELD: { "$exists": false } },
        ],
    }
}

/// The write commands for `ops`, each with the op indices its statements
/// stand for (statement `i` of a command is op `indices[i]`).
pub fn write_commands(collection: &str, ops: &[WriteOp]) -> Vec<(Document, Vec<usize>)> {
    let (mut updates, mut deletes, mut inserts) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ui, mut di, mut ii) = (Vec::new(), Vec::new(), Vec::new());
    for (i, op) in ops.iter().enumerate() {
        match op {
            WriteOp::FencedUpsert { id, doc, fence } => {
                updates.push(Bson::Document(doc! {
                    "q": fence_filter(id, *fence),
                    "u": doc.clone(),
                    "upsert": true,
                    "multi": false,
                }));
                ui.push(i);
            }
            WriteOp::FencedDelete { id, fence } => {
                deletes.push(Bson::Document(
                    doc! { "q": fence_filter(id, *fence), "limit": 1 },
                ));
                di.push(i);
            }
            WriteOp::Insert { doc } => {
                inserts.push(Bson::Document(doc.clone()));
                ii.push(i);
            }
        }
    }
    let mut out = Vec::new();
    if !updates.is_empty() {
        out.push((
            doc! { "update": collection, "updates": updates, "ordered": false },
            ui,
        ));
    }
    if !deletes.is_empty() {
        out.push((
            doc! { "delete": collection, "deletes": deletes, "ordered": false },
            di,
        ));
    }
    if !inserts.is_empty() {
        out.push((
            doc! { "insert": collection, "documents": inserts, "ordered": false },
            ii,
        ));
    }
    out
}

fn int_of(b: Option<&Bson>) -> Option<i64> {
    match b? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

/// Reads the reply of one write command: per-statement `writeErrors`
/// mapped back to op indices; a `writeConcernError` (the writes may not
/// be durable) is a retryable error for the whole command.
pub fn parse_write_reply(reply: &Document, indices: &[usize]) -> Result<Vec<OpError>, MongoError> {
    if let Ok(wce) = reply.get_document("writeConcernError") {
        let code = int_of(wce.get("code")).unwrap_or(0) as i32;
        let msg = wce.get_str("errmsg").unwrap_or("write concern error");
        return Err(MongoError::new(
            ErrorClass::Retryable,
            Some(code),
            format!("write concern not satisfied ({code}): {msg}"),
        ));
    }
    let mut errors = Vec::new();
    if let Ok(list) = reply.get_array("writeErrors") {
        for e in list {
            let Bson::Document(e) = e else { continue };
            let at = int_of(e.get("index")).unwrap_or(-1);
            let Some(&index) = usize::try_from(at).ok().and_then(|a| indices.get(a)) else {
                return Err(MongoError::new(
                    ErrorClass::Fatal,
                    None,
                    format!("server reported a write error for statement {at}, which was not sent"),
                ));
            };
            errors.push(OpError {
                index,
                code: int_of(e.get("code")).unwrap_or(0) as i32,
                message: e.get_str("errmsg").unwrap_or("").to_string(),
            });
        }
    }
    Ok(errors)
}

/// The `findAndModify` that draws the next write generation.
pub fn generation_command(collection: &str) -> Document {
    doc! {
        "findAndModify": "sluice_generations",
        "query": { "_id": collection },
        "update": { "$inc": { "generation": 1_i64 } },
        "upsert": true,
        "new": true,
    }
}

/// Where the writer of every generation drawn by a worker of a
/// multi-worker run is recorded.
pub const GENERATION_OWNERS: &str = "sluice_generation_owners";

/// The record of who drew `generation` for `collection`: `_id` =
/// `<collection>/<generation>`, plus the fields of `writer` (pipeline,
/// sink, worker, workers).
pub fn generation_owner(collection: &str, generation: u64, writer: Document) -> Document {
    let mut d = doc! {
        "_id": format!("{collection}/{generation}"),
        "collection": collection,
        "generation": generation as i64,
    };
    d.extend(writer);
    d
}

/// The `update` that upserts an owner record made by [`generation_owner`].
pub fn owner_command(owner: &Document) -> Document {
    let id = owner.get("_id").cloned().unwrap_or(Bson::Null);
    doc! {
        "update": GENERATION_OWNERS,
        "updates": [{ "q": { "_id": id }, "u": owner.clone(), "upsert": true }],
    }
}

/// Reads the generation from the reply of [`generation_command`].
pub fn parse_generation(reply: &Document) -> Option<u64> {
    let value = reply.get_document("value").ok()?;
    int_of(value.get("generation")).and_then(|g| u64::try_from(g).ok())
}

/// A resume token (an event's `_id`) as position bytes: the BSON of
/// `{t: token}`.
pub fn token_bytes(token: &Bson) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing a document to a Vec cannot fail.
    let _ = doc! { "t": token.clone() }.to_writer(&mut out);
    out
}

/// Reads bytes written by [`token_bytes`].
pub fn token_from_bytes(bytes: &[u8]) -> Option<Bson> {
    let d = Document::from_reader(bytes).ok()?;
    d.get("t").cloned()
}
