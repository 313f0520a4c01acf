//! The AMQP (RabbitMQ) sink: each record becomes a persistent JSON message
//! published to an exchange, with a routing key built from the record
//! (`counts.{country}`), `message_id` = the record id and a `sluice-epoch`
//! header.
//!
//! Delivery: an epoch is acknowledged only after the broker confirmed every
//! message of it (publisher confirms). After a crash or a failed round the
//! whole epoch is published again with the same message ids: at-least-once
//! at the broker, and consumers can deduplicate by `message_id`. Upserts
//! carry absolute values, so a consumer applying them twice ends up with
//! the same result. Unroutable records (with `mandatory`, the default) and
//! records lacking a routing-key field go to the dead-letter output.
//!
//! The sink also serves as the pipeline's dead-letter output:
//! `[dead_letter] type = "amqp"`.

use sluice_engine::connector::ConnectorContext;

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{AmqpSinkConfig, BodyFormat, ExchangeType, RoutingKeyTemplate};
pub use sink::{encode_body, message_id, AmqpSink, EPOCH_HEADER, OP_HEADER};

impl sluice_engine::connector::SinkConnector for AmqpSinkConfig {
    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::sink::Sink> {
        Box::new(AmqpSink::new(ctx.name, self.clone()))
    }
}
