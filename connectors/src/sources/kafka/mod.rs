//! The Kafka source: a consumer-group member reading JSON events from
//! topics. One engine partition per (topic, Kafka partition), each with its
//! own watermark; position = the next offset to read, kept in sluice's
//! checkpoints. Offsets are committed to the group only when a checkpoint
//! covering them is durable (auto-commit is off), so the group's committed
//! offsets show how far results are safe, and lag tools work as usual.
//!
//! On assignment a partition starts at its checkpointed offset, else at
//! `start`; on revocation its unemitted events are dropped (see
//! `docs/connectors/kafka.md` for the limits of rebalancing).

use sluice_engine::connector::{ConnectorContext, ConnectorError};

mod config;
mod context;
mod positions;
mod source;
#[cfg(test)]
mod tests;

pub use config::{KafkaSourceConfig, StartFrom};
pub use positions::{decode as decode_position, encode as encode_position, Position};
pub use source::KafkaSource;

impl sluice_engine::connector::SourceConnector for KafkaSourceConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        KafkaSourceConfig::validate(self)
    }

    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::source::Source> {
        let source = KafkaSource::new(self.clone());
        if ctx.worker.is_single() {
            Box::new(source)
        } else {
            Box::new(source.shared(ctx.worker.worker))
        }
    }
}
