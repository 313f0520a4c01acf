//! The table sink: a queryable, durable table of results inside sluice.
//!
//! Each committed epoch is applied to a sled database of its own
//! (`<state dir>/tables/<name>`, fsynced before the epoch is acknowledged)
//! and to an in-memory ordered map that the admin server reads
//! (`GET /tables/<name>`). Reads therefore see **committed** results — the
//! state as of the last checkpoint whose output reached the table — never
//! half-processed data. Upserts replace by id, deletes remove, inserts add;
//! re-delivered epochs rewrite the same values.
//!
//! ```toml
//! [sinks.counts]
//! type = "table"
//! inputs = ["by_country"]
//! ```

use sluice_engine::connector::ConnectorContext;

mod sink;

pub use sink::{registry, Table, TableSink, TableSinkConfig};

impl sluice_engine::connector::SinkConnector for TableSinkConfig {
    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::sink::Sink> {
        Box::new(TableSink::new(ctx.name, self, ctx.state_dir))
    }
}
