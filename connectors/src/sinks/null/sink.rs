//! Acknowledging and discarding.

use sluice_engine::sink::{Sink, SinkError, SinkRecord, WriteOutcome};
use sluice_engine::source::BoxFuture;

/// Discards records; every write succeeds at once.
pub struct NullSink;

impl Sink for NullSink {
    fn write<'a>(
        &'a mut self,
        _epoch: u64,
        _records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<WriteOutcome, SinkError>> {
        Box::pin(async { Ok(WriteOutcome::default()) })
    }
}
