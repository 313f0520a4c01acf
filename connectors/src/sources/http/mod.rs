//! The HTTP source: clients `POST` JSON events; each request is validated,
//! appended to a local durable journal (group commit), and answered `202`
//! only once the journal has it on disk. The source then reads the journal
//! into the pipeline; the position in checkpoints is the next journal
//! sequence number, and journal segments are deleted once a checkpoint
//! covers them. So an accepted event is never lost and, with the engine's
//! checkpoints, counted exactly once, even across `kill -9`.
//!
//! Status codes: 202 `{"accepted": n}` (durable), 400 (malformed body,
//! with `line` or `index`), 401 (bad bearer token), 408 (body not sent
//! within `body_read_timeout`), 413 (body or event too large), 503 +
//! `Retry-After: 1` (backlog full, bodies in flight over
//! `max_buffered_bytes`, or journal failing), and 404/405 for other paths
//! and methods. Resources are bounded: `max_connections`,
//! `header_read_timeout`, `max_buffered_bytes`. See
//! `docs/connectors/http.md`.

use sluice_engine::connector::ConnectorContext;

mod body;
mod budget;
mod config;
mod server;
mod source;
#[cfg(test)]
mod tests;

pub use config::HttpSourceConfig;
pub use source::{decode_position, encode_position, HttpSource};

impl sluice_engine::connector::SourceConnector for HttpSourceConfig {
    fn build(&self, _ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::source::Source> {
        Box::new(HttpSource::new(self.clone()))
    }
}
