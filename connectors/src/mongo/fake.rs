//! An in-memory [`MongoClient`] for tests: collections as maps, the fenced
//! write semantics the real commands have on a server (including the
//! duplicate-key error of a fenced-out upsert), a change-event log with a
//! truncatable start (the oplog window), and injectable failures.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use mongodb::bson::{doc, Bson, Document, Timestamp};

use super::client::{
    BulkOutcome, ChangeEvents, ErrorClass, MongoClient, MongoError, OpError, WatchSpec, WriteOp,
};
use super::commands::{token_from_bytes, DUPLICATE_KEY, FENCE_FIELD, HISTORY_LOST};

#[derive(Default)]
pub struct FakeState {
    pub collections: BTreeMap<(String, String), BTreeMap<String, Document>>,
    pub generations: BTreeMap<(String, String), u64>,
    /// `(database, _id)` -> the owner record of a generation.
    pub generation_owners: BTreeMap<(String, String), Document>,
    /// The change log; events before `first_kept` fell off the oplog.
    pub events: Vec<Document>,
    pub first_kept: usize,
    /// Whole-request failures returned by the next bulk writes / watches / stream reads.
    pub write_failures: VecDeque<MongoError>,
    pub watch_failures: VecDeque<MongoError>,
    pub read_failures: VecDeque<MongoError>,
    /// While true the server is unreachable: every write request fails
    /// with a retryable error, counted in `refused_while_unavailable`.
    pub unavailable: bool,
    pub refused_while_unavailable: usize,
    /// `_id` -> (code, message): the server refuses writes of that document.
    pub refuse: BTreeMap<String, (i32, String)>,
    /// Every watch opened, for assertions.
    pub watches: Vec<WatchSpec>,
    pub bulk_calls: usize,
}

impl FakeState {
    /// The failure the next write request gets, if any.
    fn write_failure(&mut self) -> Option<MongoError> {
        if self.unavailable {
            self.refused_while_unavailable += 1;
            return Some(MongoError::new(
                ErrorClass::Retryable,
                None,
                "connection refused (the fake server is unavailable)",
            ));
        }
        self.write_failures.pop_front()
    }
}

/// A shared fake server.
#[derive(Clone, Default)]
pub struct FakeMongo(pub Arc<Mutex<FakeState>>);

impl FakeMongo {
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    /// The stored documents of `db.coll`, by `_id` (as a string).
    pub fn docs(&self, db: &str, coll: &str) -> BTreeMap<String, Document> {
        let key = (db.to_string(), coll.to_string());
        self.state()
            .collections
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// Appends a raw change event to the log.
    pub fn push_event(&self, event: Document) {
        self.state().events.push(event);
    }
}

fn id_key(b: &Bson) -> String {
    match b {
        Bson::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn fence_of(d: &Document) -> Option<i64> {
    d.get_i64(FENCE_FIELD).ok()
}

fn duplicate(db: &str, coll: &str, id: &str) -> (i32, String) {
    (
        DUPLICATE_KEY,
        format!("E11000 duplicate key error collection: {db}.{coll} index: _id_ dup key: {{ _id: \"{id}\" }}"),
    )
}

impl MongoClient for FakeMongo {
    type Stream = FakeStream;

    async fn bulk_write(
        &self,
        database: &str,
        collection: &str,
        ops: &[WriteOp],
    ) -> Result<BulkOutcome, MongoError> {
        let mut st = self.state();
        st.bulk_calls += 1;
        if let Some(e) = st.write_failure() {
            return Err(e);
        }
        let refuse = st.refuse.clone();
        let coll = st
            .collections
            .entry((database.to_string(), collection.to_string()))
            .or_default();
        let mut out = BulkOutcome::default();
        for (index, op) in ops.iter().enumerate() {
            let id = match op {
                WriteOp::FencedUpsert { id, .. } | WriteOp::FencedDelete { id, .. } => id.clone(),
                WriteOp::Insert { doc } => doc.get("_id").map(id_key).unwrap_or_default(),
            };
            if let Some((code, message)) = refuse.get(&id) {
                out.errors.push(OpError {
                    index,
                    code: *code,
                    message: message.clone(),
                });
                continue;
            }
            let passes = |fence: i64, stored: Option<&Document>| !matches!(stored.and_then(fence_of), Some(s) if s > fence);
            let refused = match op {
                WriteOp::FencedUpsert { doc, fence, .. } => {
                    if passes(*fence, coll.get(&id)) {
                        coll.insert(id.clone(), doc.clone());
                        None
                    } else {
                        Some(duplicate(database, collection, &id))
                    }
                }
                WriteOp::FencedDelete { fence, .. } => {
                    if coll.contains_key(&id) && passes(*fence, coll.get(&id)) {
                        coll.remove(&id);
                    }
                    None
                }
                WriteOp::Insert { doc } => {
                    if coll.contains_key(&id) {
                        Some(duplicate(database, collection, &id))
                    } else {
                        coll.insert(id.clone(), doc.clone());
                        None
                    }
                }
            };
            if let Some((code, message)) = refused {
                out.errors.push(OpError {
                    index,
                    code,
                    message,
                });
            }
        }
        Ok(out)
    }

    async fn next_generation(&self, database: &str, collection: &str) -> Result<u64, MongoError> {
        let mut st = self.state();
        if let Some(e) = st.write_failure() {
            return Err(e);
        }
        let g = st
            .generations
            .entry((database.to_string(), collection.to_string()))
            .or_default();
        *g += 1;
        Ok(*g)
    }

    async fn record_generation_owner(
        &self,
        database: &str,
        owner: &Document,
    ) -> Result<(), MongoError> {
        let mut st = self.state();
        if let Some(e) = st.write_failure() {
            return Err(e);
        }
        let id = owner.get("_id").map(id_key).unwrap_or_default();
        st.generation_owners
            .insert((database.to_string(), id), owner.clone());
        Ok(())
    }

    async fn watch(&self, spec: &WatchSpec) -> Result<FakeStream, MongoError> {
        let mut st = self.state();
        st.watches.push(spec.clone());
        if let Some(e) = st.watch_failures.pop_front() {
            return Err(e);
        }
        let next = if let Some(bytes) = &spec.resume_after {
            let token = token_from_bytes(bytes)
                .ok_or_else(|| MongoError::new(ErrorClass::Fatal, Some(9), "bad resume token"))?;
            let at = st.events.iter().position(|e| e.get("_id") == Some(&token));
            match at {
                Some(i) if i >= st.first_kept => i + 1,
                _ => {
                    return Err(MongoError::new(
                        ErrorClass::HistoryLost,
                        Some(HISTORY_LOST),
                        "Executor error during getMore :: caused by :: Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
                    ))
                }
            }
        } else if let Some((time, increment)) = spec.start_at {
            let ts = Timestamp { time, increment };
            st.events
                .iter()
                .position(|e| {
                    e.get_timestamp("clusterTime")
                        .is_ok_and(|t| (t.time, t.increment) >= (ts.time, ts.increment))
                })
                .unwrap_or(st.events.len())
                .max(st.first_kept)
        } else {
            st.events.len()
        };
        Ok(FakeStream {
            server: self.clone(),
            next,
            database: spec.database.clone(),
            collection: spec.collection.clone(),
        })
    }
}

/// A change stream over the fake's log.
pub struct FakeStream {
    server: FakeMongo,
    next: usize,
    database: String,
    collection: Option<String>,
}

impl ChangeEvents for FakeStream {
    async fn next(&mut self) -> Result<Option<Document>, MongoError> {
        if let Some(found) = self.take() {
            return found;
        }
        tokio::task::yield_now().await;
        Ok(None)
    }
}

impl FakeStream {
    /// The next matching event, an injected failure, or None when the log
    /// is exhausted.
    fn take(&mut self) -> Option<Result<Option<Document>, MongoError>> {
        let mut st = self.server.state();
        if let Some(e) = st.read_failures.pop_front() {
            return Some(Err(e));
        }
        while let Some(e) = st.events.get(self.next) {
            self.next += 1;
            let ns = e.get_document("ns").ok();
            let db = ns.and_then(|n| n.get_str("db").ok());
            let coll = ns.and_then(|n| n.get_str("coll").ok());
            let matches = db == Some(self.database.as_str())
                && (self.collection.is_none() || coll == self.collection.as_deref());
            if matches {
                return Some(Ok(Some(e.clone())));
            }
        }
        None
    }
}

/// A change event the way a server sends it; `n` makes the resume token.
pub fn change_event(
    n: u32,
    op: &str,
    ns: (&str, &str),
    id: Bson,
    full: Option<Document>,
    update: Option<Document>,
) -> Document {
    let mut d = doc! {
        "_id": { "_data": format!("8263{n:08X}000000012B022C0100296E5A1004") },
        "operationType": op,
        "clusterTime": Timestamp { time: 1_700_000_000 + n, increment: 1 },
        "ns": { "db": ns.0, "coll": ns.1 },
        "documentKey": { "_id": id },
    };
    if let Some(f) = full {
        d.insert("fullDocument", f);
    }
    if let Some(u) = update {
        d.insert("updateDescription", u);
    }
    d
}
