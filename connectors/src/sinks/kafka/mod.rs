//! The Kafka sink: results to a topic, key = the record id (group key and
//! window), value = the record as JSON, deletes as tombstones. The producer
//! is idempotent (no duplicates from its own retries) and an epoch is
//! acknowledged only once every message of it is delivered.
//!
//! Delivery is at-least-once per epoch: an epoch written again after a
//! crash (before its acknowledgement was checkpointed) appears twice in the
//! topic, with the same keys and the same absolute values, so a reader
//! keeping the last value per key (or a compacted topic) sees each result
//! exactly once. Kafka transactions are not used (see
//! `docs/connectors/kafka.md`).

use sluice_engine::connector::{ConnectorContext, ConnectorError};

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{Compression, KafkaSinkConfig};
pub use sink::KafkaSink;

impl sluice_engine::connector::SinkConnector for KafkaSinkConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        KafkaSinkConfig::validate(self)
    }

    fn build(&self, _ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::sink::Sink> {
        Box::new(KafkaSink::new(self.clone()))
    }
}
