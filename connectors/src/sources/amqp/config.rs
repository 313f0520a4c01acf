//! Options of the AMQP source.

use std::num::NonZeroU16;

use serde::{Deserialize, Serialize};
use sluice_engine::time::HumanDuration;

use crate::amqp::default_connect_timeout;

/// `type = "amqp"`: consumes a RabbitMQ queue. Each message body is one
/// JSON event. Messages are acknowledged only after the checkpoint that
/// holds their effects is durable, and redeliveries of messages a
/// checkpoint already holds are skipped (see docs/connectors/amqp.md).
///
/// ```toml
/// [sources.orders]
/// type = "amqp"
/// url = "${AMQP_URL}"
/// queue = "orders"
/// declare = true
/// exchange = "shop"
/// routing_key = "order.#"
/// prefetch = 10000
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    /// Broker URL: `amqp://user:password@host:5672/vhost` (the vhost is
    /// URL-encoded: `%2f` is the default vhost `/`), or `amqps://` for TLS.
    /// Usually `"${AMQP_URL}"` so that the password stays out of the file.
    /// The host name is resolved again at every reconnect. Client options go
    /// in the query string, e.g. `?heartbeat=10`.
    #[serde(deserialize_with = "crate::amqp::deserialize_url")]
    pub url: String,
    /// The queue to consume.
    pub queue: String,
    /// `true`: declare the queue as durable at start (created if missing;
    /// an existing queue must be durable too). `false`: only check that it
    /// exists (passive declare) and stop with an error if it does not.
    #[serde(default = "yes")]
    pub declare: bool,
    /// Bind the queue to this exchange at start (the exchange must exist).
    #[serde(default)]
    pub exchange: Option<String>,
    /// The binding key used with `exchange` (topic patterns such as
    /// `order.#` for topic exchanges; ignored by fanout exchanges).
    #[serde(default)]
    pub routing_key: String,
    /// How many unacknowledged messages the broker may send ahead (AMQP
    /// `basic.qos`, 1-65535). Messages are acknowledged at checkpoints, so
    /// throughput is at most about `prefetch` messages per checkpoint
    /// interval; memory holds up to `prefetch` message bodies.
    #[serde(default = "default_prefetch")]
    pub prefetch: NonZeroU16,
    /// The consumer tag shown by RabbitMQ (default: `sluice-<source name>`).
    #[serde(default)]
    pub consumer_tag: Option<String>,
    /// Largest number of messages handed to the pipeline as one batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long a partly filled batch waits for more messages.
    #[serde(default = "default_batch_wait")]
    pub batch_wait: HumanDuration,
    /// First delay before reconnecting after the broker is lost or
    /// unreachable; it doubles (with random jitter) up to
    /// `reconnect_max_delay`, and resets once connected.
    #[serde(default = "default_reconnect_delay")]
    pub reconnect_delay: HumanDuration,
    /// Longest delay between reconnect attempts.
    #[serde(default = "default_reconnect_max_delay")]
    pub reconnect_max_delay: HumanDuration,
    /// Time limit for connecting and setting up the channel, and for each
    /// broker call.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// How long, after a reconnect or restart, the ids of messages processed
    /// but not yet acknowledged through the lost connection are kept to skip
    /// their redeliveries. Must exceed the time the broker needs to notice a
    /// dead connection (about the heartbeat timeout).
    #[serde(default = "default_redelivery_window")]
    pub redelivery_window: HumanDuration,
    /// How often the queue depth is sampled (passive declare) for the
    /// `sluice_source_lag_events` metric.
    #[serde(default = "default_lag_interval")]
    pub lag_interval: HumanDuration,
}

fn yes() -> bool {
    true
}

fn default_prefetch() -> NonZeroU16 {
    NonZeroU16::new(10_000).unwrap_or(NonZeroU16::MIN)
}

fn default_max_batch() -> usize {
    1024
}

fn default_batch_wait() -> HumanDuration {
    HumanDuration::from_millis(10)
}

fn default_reconnect_delay() -> HumanDuration {
    HumanDuration::from_millis(100)
}

fn default_reconnect_max_delay() -> HumanDuration {
    HumanDuration::from_millis(30_000)
}

fn default_redelivery_window() -> HumanDuration {
    HumanDuration::from_millis(300_000)
}

fn default_lag_interval() -> HumanDuration {
    HumanDuration::from_millis(5_000)
}
