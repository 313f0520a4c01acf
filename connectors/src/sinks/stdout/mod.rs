//! The stdout sink: results as NDJSON on standard output, for local use.
//! It cannot take back what it printed, so after a crash the committed
//! epochs not yet acknowledged are printed again (at-least-once): use the
//! file sink for exactly-once output.
//!
//! ```toml
//! [sinks.console]
//! type = "stdout"
//! inputs = ["by_country"]
//! ```

use sluice_engine::connector::ConnectorContext;
use std::io::Write;

use serde::{Deserialize, Serialize};
use sluice_engine::sink::{Sink, SinkError, SinkRecord, WriteOutcome};
use sluice_engine::source::BoxFuture;

use crate::sinks::write_ndjson_line;

/// `type = "stdout"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

pub struct StdoutSink;

impl Sink for StdoutSink {
    fn write<'a>(
        &'a mut self,
        _epoch: u64,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<WriteOutcome, SinkError>> {
        Box::pin(async move {
            let mut buf = Vec::with_capacity(records.len() * 64);
            for r in records {
                write_ndjson_line(&mut buf, r);
            }
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)
                .and_then(|_| out.flush())
                .map_err(|e| SinkError::Fatal(format!("cannot write to stdout: {e}")))?;
            Ok(WriteOutcome::default())
        })
    }
}

impl sluice_engine::connector::SinkConnector for StdoutSinkConfig {
    fn build(&self, _ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::sink::Sink> {
        Box::new(StdoutSink)
    }
}
