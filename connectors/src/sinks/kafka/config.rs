//! Options of the Kafka sink.

use serde::{Deserialize, Deserializer, Serialize};
use sluice_engine::error::Invalid;
use sluice_engine::time::HumanDuration;

use crate::kafka::{deserialize_options, Options};

/// `type = "kafka"`: writes each result to a topic, keyed by its id (the
/// group key, e.g. `GT` or `GT|1732147200000`), the record as JSON in the
/// value; a delete is a tombstone (null value). With a compacted topic the
/// topic is the result table.
///
/// ```toml
/// [sinks.counts_topic]
/// type = "kafka"
/// inputs = ["by_country"]
/// brokers = ["kafka-0.kafka:9092"]
/// topic = "country-counts"
/// linger_ms = 5
/// compression = "lz4"
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// The topic to write; it must exist (sluice does not create topics).
    pub topic: String,
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Largest batch per partition, in bytes (`batch.size`).
    #[serde(default = "default_batch_size")]
    pub batch_size: u64,
    /// Compression of produced batches.
    #[serde(default)]
    pub compression: Compression,
    /// How long a message may take to be delivered, retries included
    /// (`message.timeout.ms`). When it expires the epoch is written again.
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: HumanDuration,
    /// Extra librdkafka producer properties (security, `acks`...). Sluice
    /// sets `bootstrap.servers`, `enable.idempotence=true`, `linger.ms`,
    /// `batch.size`, `compression.type` and `message.timeout.ms` itself, and
    /// unless given here `partitioner=murmur2_random` (the Java client's
    /// key -> partition mapping) and `allow.auto.create.topics=false`.
    #[serde(default, deserialize_with = "sink_options")]
    pub options: Options,
    /// How long closing the producer (flushing) may take at shutdown.
    #[serde(default = "default_close_timeout")]
    pub close_timeout: HumanDuration,
}

impl KafkaSinkConfig {
    /// Checks beyond the shape of the options.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.brokers.iter().all(|b| b.trim().is_empty()) {
            return Err("`brokers` is empty: give at least one `host:port`".into());
        }
        if self.topic.trim().is_empty() {
            return Err("`topic` is empty".into());
        }
        Ok(())
    }
}

/// Compression codec of produced batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// librdkafka properties the sink sets itself, with what to use instead.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
    (
        "enable.idempotence",
        "the sink always uses an idempotent producer",
    ),
    (
        "transactional.id",
        "transactions are not supported (see docs/connectors/kafka.md)",
    ),
    ("linger.ms", "use `linger_ms`"),
    ("queue.buffering.max.ms", "use `linger_ms`"),
    ("batch.size", "use `batch_size`"),
    ("compression.type", "use `compression`"),
    ("compression.codec", "use `compression`"),
    ("message.timeout.ms", "use `delivery_timeout`"),
    ("delivery.timeout.ms", "use `delivery_timeout`"),
];

fn sink_options<'de, D: Deserializer<'de>>(d: D) -> Result<Options, D::Error> {
    deserialize_options(d, RESERVED)
}

fn default_linger_ms() -> u64 {
    5
}

fn default_batch_size() -> u64 {
    1_000_000
}

fn default_delivery_timeout() -> HumanDuration {
    HumanDuration::from_millis(30_000)
}

fn default_close_timeout() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}
