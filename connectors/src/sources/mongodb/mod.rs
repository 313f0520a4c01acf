//! The MongoDB change-stream source: watches a collection (or a whole
//! database) and emits one JSON event per change.
//!
//! - The position (partition 0) is the resume token of the last event read
//!   plus a sequence number; it is stored in every checkpoint, and a restart
//!   resumes with `resumeAfter` from it. Nothing is released upstream (a
//!   change stream has no acks): the checkpoint *is* the consumer position.
//! - A fresh start begins now, or at `start_at_operation_time`.
//! - Event offsets are the sequence number, counted from the checkpoint, so
//!   a replay gives every event the same id (`source:0:seq`) again.
//! - If the stored token has fallen off the oplog (`ChangeStreamHistoryLost`,
//!   code 286, "resume point may no longer be in the oplog"), the source
//!   stops with an error that says so and lists the ways out.
//! - Emitted JSON: the change's `fullDocument` (relaxed extended JSON) or,
//!   when there is none (deletes, updates without a post-image), the
//!   `documentKey` fields, plus `_op` (insert/update/replace/delete) and
//!   `_ns` (`db.collection`); updates without a post-image also carry
//!   `_updated` and `_removed`. Other events (drop, rename, index changes)
//!   advance the position but emit nothing; `invalidate` stops the source.
//! - `sluice_source_lag_seconds` is now minus the `clusterTime` of the last
//!   event read (0 when the stream is caught up).
//!
//! ```toml
//! [sources.orders_changes]
//! type = "mongodb"
//! uri = "${MONGODB_URI}"
//! database = "petstore"
//! collection = "orders"
//! full_document = "update_lookup"
//! ```

use sluice_engine::connector::{ConnectorContext, ConnectorError};

mod change;
mod config;
mod source;
#[cfg(test)]
mod tests;

pub use change::{decode_change, decode_position, encode_position, history_lost_message, Change};
pub use config::MongoSourceConfig;
pub use source::MongoSource;

impl sluice_engine::connector::SourceConnector for MongoSourceConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        MongoSourceConfig::validate(self)
    }

    fn build(&self, _ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::source::Source> {
        Box::new(MongoSource::new(self.clone()))
    }
}
