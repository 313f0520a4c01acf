//! The PostgreSQL sink, exactly once, in two modes.
//!
//! `upsert`: results keyed by `key` (the group fields). Each epoch is ONE
//! transaction of batched `INSERT ... ON CONFLICT (key) DO UPDATE ...
//! WHERE table.sluice_epoch <= EXCLUDED.sluice_epoch`: every row carries
//! the fence of its epoch (see [`crate::sinks::fence`]) in the column
//! `sluice_epoch`, so re-delivering an epoch after a crash rewrites the
//! same absolute values, and an older epoch can never overwrite a newer
//! row. Deletes remove the row unless it is newer.
//!
//! `append`: raw events, one row each, with the event id
//! (`source:partition:offset`) in `id_column` and `ON CONFLICT DO NOTHING`,
//! so an event replayed after a crash is not stored twice.
//!
//! Rows travel as one JSON parameter per batch and the server converts
//! values to the column types. Connection errors and transient server
//! states are retried (the engine backs off; the next try reconnects and
//! resolves the host name again). A row the server refuses (constraint,
//! bad value for the column type) is isolated by writing the epoch again
//! with savepoints and goes to the dead letters; a missing table or column
//! stops the pipeline with the reason.
//!
//! ```toml
//! [sinks.counts_pg]
//! type = "postgres"
//! inputs = ["by_country_minute"]
//! url = "${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
//! table = "country_counts"
//! mode = "upsert"
//! key = ["country", "window_start"]
//! create_table = true
//!
//! [sinks.messages_pg]
//! type = "postgres"
//! inputs = ["messages"]
//! url = "${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
//! table = "public.messages"
//! mode = "append"
//! id_column = "event_id"
//! columns = { sender = "sender", ts = "ts", priority = "priority", attributes = "messageAttributes" }
//! create_table = true
//! column_types = { attributes = "jsonb" }
//! ```

use sluice_engine::connector::{ConnectorContext, ConnectorError};

use crate::sinks::fence::Writer;

mod config;
mod rows;
mod sink;
mod sql;
mod tls;

pub use config::{PostgresMode, PostgresSinkConfig, TlsMode, EPOCH_COLUMN};
pub use sink::PostgresSink;

#[cfg(test)]
mod tests;

impl sluice_engine::connector::SinkConnector for PostgresSinkConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        PostgresSinkConfig::validate(self)
    }

    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::sink::Sink> {
        Box::new(PostgresSink::new(ctx.name, self.clone()).with_writer(Writer::of(ctx)))
    }
}
