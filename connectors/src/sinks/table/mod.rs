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

mod sink;

pub use sink::{registry, Table, TableSink, TableSinkConfig};
