//! The null sink: acknowledges every epoch and keeps nothing. For demos,
//! benchmarks of everything but the destination, and pipelines whose only
//! wanted output is a table or the dead letters. Nothing is written, so
//! there is nothing to deliver twice.
//!
//! ```toml
//! [sinks.discard]
//! type = "null"
//! inputs = ["by_country"]
//! ```

use sluice_engine::connector::{ConnectorContext, SinkConnector};
use sluice_engine::sink::Sink;

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::NullSinkConfig;
pub use sink::NullSink;

impl SinkConnector for NullSinkConfig {
    fn build(&self, _ctx: &ConnectorContext<'_>) -> Box<dyn Sink> {
        Box::new(NullSink)
    }
}
