//! The AMQP (RabbitMQ) source: consumes a durable queue, one JSON event per
//! message, with exactly-once results.
//!
//! - Messages are acknowledged only once the checkpoint holding their
//!   effects is durable (`basic.ack` with `multiple`, up to the last
//!   delivery tag covered), never on a channel other than the one that
//!   delivered them.
//! - The source position, stored in every checkpoint, is the set of ids of
//!   messages processed but not yet known to be acknowledged. A redelivery
//!   (after a crash, a reconnect or a broker restart) of one of them is
//!   acknowledged and skipped instead of being counted again. The id is a
//!   hash of the whole message (`message_id`, exchange, routing key,
//!   timestamp, headers, body): publishes sharing a `message_id` are all
//!   counted; dropping publisher duplicates is the `dedupe` transform's job.
//! - Malformed or oversized messages become dead letters and are
//!   acknowledged with the checkpoint like any other: never requeued forever.
//! - Losing the broker means reconnecting with exponential backoff and
//!   jitter, resolving the host name again each time.

use sluice_engine::connector::ConnectorContext;

mod config;
mod source;
#[cfg(test)]
mod tests;
mod tracker;

pub use config::AmqpSourceConfig;
pub use source::{dedup_id, legacy_dedup_id, AmqpSource, MessageParts};
pub use tracker::{AckPlan, MessageId, PositionError, Tracker, Verdict};

impl sluice_engine::connector::SourceConnector for AmqpSourceConfig {
    fn build(&self, _ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::source::Source> {
        Box::new(AmqpSource::new(self.clone()))
    }
}
