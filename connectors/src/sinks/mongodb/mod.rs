//! The MongoDB sink: results as documents with `_id` = the record id,
//! exactly once.
//!
//! - `mode = "upsert"` (default): each epoch is sent as unordered `update`
//!   commands of fenced replace-upserts. The filter
//!   `{_id, $or: [{sluice_epoch: {$lte: fence}}, {sluice_epoch: {$exists: false}}]}`
//!   lets a write through only over an older fence (see
//!   [`crate::sinks::fence`]); a fenced-out upsert fails with a duplicate
//!   key error, which is counted as stale and skipped. Re-delivering an
//!   epoch rewrites the same values; an older epoch never overwrites a
//!   newer one. The generation is drawn from `<database>.sluice_generations`
//!   on a fresh start and kept in the sink's checkpointed progress.
//! - `mode = "append"`: inserts with `_id` = the record id (for events,
//!   `source:partition:offset`); duplicate keys mean "already written"
//!   and are ignored (dedup).
//! - Deletes remove the document by `_id` (fenced: a delete from an older
//!   epoch leaves a newer document alone).
//! - Network errors, failovers, step-downs and write-concern errors are
//!   retried; a document the server refuses for another reason goes to the
//!   dead letters; auth/authorization/bad-option errors stop the pipeline.
//!
//! ```toml
//! [sinks.product_totals]
//! type = "mongodb"
//! inputs = ["per_product"]
//! uri = "${MONGODB_URI}"
//! database = "petstore"
//! collection = "product_totals"
//! mode = "upsert"
//! ```

use sluice_engine::connector::{ConnectorContext, ConnectorError};

use crate::sinks::fence::Writer;

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{MongoSinkConfig, MongoSinkMode};
pub use sink::{plan_writes, MongoSink, Plan};

impl sluice_engine::connector::SinkConnector for MongoSinkConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        MongoSinkConfig::validate(self)
    }

    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::sink::Sink> {
        Box::new(MongoSink::new(ctx.name, self.clone()).with_writer(Writer::of(ctx)))
    }
}
