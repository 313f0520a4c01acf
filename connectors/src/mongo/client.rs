//! The [`MongoClient`] trait and the plain data it exchanges.

use std::future::Future;
use std::time::Duration;

use mongodb::bson::Document;

/// One write of a sink epoch. Every op of a bulk write names a distinct
/// `_id`, so the order inside a bulk does not matter.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Replace document `_id = id` by `doc` (which carries `sluice_epoch =
    /// fence`) if the stored `sluice_epoch` is `<= fence` or absent; insert
    /// it when there is no such document. A fenced-out upsert fails with a
    /// duplicate-key error (11000): a newer value is stored.
    FencedUpsert {
        id: String,
        doc: Document,
        fence: i64,
    },
    /// Delete `_id = id` unless it carries a newer fence.
    FencedDelete { id: String, fence: i64 },
    /// Insert `doc` (with its `_id`); a duplicate key means it is there.
    Insert { doc: Document },
}

impl WriteOp {
    /// The op's kind, for messages.
    pub fn verb(&self) -> &'static str {
        match self {
            WriteOp::FencedUpsert { .. } => "upsert",
            WriteOp::FencedDelete { .. } => "delete",
            WriteOp::Insert { .. } => "insert",
        }
    }
}

/// A write the server refused, by op index in the bulk.
#[derive(Debug, Clone, PartialEq)]
pub struct OpError {
    pub index: usize,
    pub code: i32,
    pub message: String,
}

/// What a bulk write reports: the ops that failed (all others applied).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkOutcome {
    pub errors: Vec<OpError>,
}

/// How a failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network, failover, primary stepping down, write concern timeout:
    /// retry with backoff.
    Retryable,
    /// Bad credentials, bad options, unauthorized: stop.
    Fatal,
    /// The change stream cannot resume from the stored token: it has fallen
    /// off the oplog.
    HistoryLost,
}

/// A MongoDB failure, classified.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct MongoError {
    pub class: ErrorClass,
    pub code: Option<i32>,
    pub message: String,
}

impl MongoError {
    pub fn new(class: ErrorClass, code: Option<i32>, message: impl Into<String>) -> Self {
        MongoError {
            class,
            code,
            message: message.into(),
        }
    }
}

/// Which document change events carry (the `fullDocument` option).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullDocument {
    /// Inserts and replaces carry the document; updates only the change.
    #[default]
    Default,
    /// Updates carry the current document, looked up when read.
    UpdateLookup,
    /// Post-images when the collection records them (MongoDB 6.0+).
    WhenAvailable,
    /// Post-images, or the stream fails (MongoDB 6.0+).
    Required,
}

/// What to watch and where to start.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSpec {
    pub database: String,
    /// None: the whole database.
    pub collection: Option<String>,
    pub full_document: FullDocument,
    /// A resume token as stored in the position (see
    /// [`commands::token_bytes`](super::commands::token_bytes)).
    pub resume_after: Option<Vec<u8>>,
    /// Cluster time `(seconds, increment)` for a fresh start.
    pub start_at: Option<(u32, u32)>,
    pub batch_size: u32,
    pub max_await: Duration,
}

/// A running change stream.
pub trait ChangeEvents: Send + 'static {
    /// The next raw change event, or `None` when none arrived within the
    /// stream's await time (the stream is caught up).
    fn next(&mut self) -> impl Future<Output = Result<Option<Document>, MongoError>> + Send;
}

/// What the sink and the source need from MongoDB.
pub trait MongoClient: Send + Sync + 'static {
    type Stream: ChangeEvents;

    /// Applies `ops` to `database.collection` unordered; per-op refusals
    /// come back in the outcome, whole-request failures as the error.
    fn bulk_write(
        &self,
        database: &str,
        collection: &str,
        ops: &[WriteOp],
    ) -> impl Future<Output = Result<BulkOutcome, MongoError>> + Send;

    /// Atomically increments and returns the write generation of
    /// `database.collection` (kept in `database.sluice_generations`).
    fn next_generation(
        &self,
        database: &str,
        collection: &str,
    ) -> impl Future<Output = Result<u64, MongoError>> + Send;

    /// Records who drew a write generation (see
    /// [`commands::generation_owner`](super::commands::generation_owner)):
    /// upserts `owner` by its `_id` into `database.sluice_generation_owners`.
    fn record_generation_owner(
        &self,
        database: &str,
        owner: &Document,
    ) -> impl Future<Output = Result<(), MongoError>> + Send;

    /// Opens a change stream.
    fn watch(
        &self,
        spec: &WatchSpec,
    ) -> impl Future<Output = Result<Self::Stream, MongoError>> + Send;
}
