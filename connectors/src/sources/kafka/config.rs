//! Options of the Kafka source.

use serde::{Deserialize, Deserializer, Serialize};
use sluice_engine::error::Invalid;
use sluice_engine::time::HumanDuration;

use crate::kafka::{deserialize_options, Options};

/// `type = "kafka"`: consumes JSON events from Kafka topics as a member of
/// a consumer group. Positions live in sluice's checkpoints; offsets are
/// committed to the group only once a checkpoint covering them is durable.
///
/// ```toml
/// [sources.weather]
/// type = "kafka"
/// brokers = ["kafka-0.kafka:9092", "kafka-1.kafka:9092"]
/// topics = ["message"]
/// group_id = "sluice-weather"
/// start = "earliest"
/// options = { "fetch.max.bytes" = 52428800, "client.id" = "sluice" }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port` each. Names are resolved again on
    /// every reconnect.
    pub brokers: Vec<String>,
    /// Topics to read; they must exist (sluice does not create them). Each
    /// (topic, partition) is one source partition with its own watermark.
    pub topics: Vec<String>,
    /// Consumer group. Kafka spreads the topics' partitions over the members
    /// of the group; two Kafka sources of one pipeline need different groups.
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a restarted worker with
    /// the same id gets its partitions back without a rebalance. Default:
    /// the host name (`HOSTNAME`), i.e. the pod name in a StatefulSet. `""`
    /// turns static membership off.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// Where to start in a partition that has no position in sluice's
    /// checkpoint: `earliest` (the whole retained log, the default) or
    /// `latest` (only new events). Offsets committed to the group by other
    /// consumers are not used: sluice's state is derived from its own
    /// positions.
    #[serde(default)]
    pub start: StartFrom,
    /// Extra librdkafka consumer properties (security, fetch sizes, session
    /// timeout...). Sluice sets `bootstrap.servers`, `group.id`,
    /// `group.instance.id`, `enable.auto.commit=false`,
    /// `enable.auto.offset.store=false` and `auto.offset.reset` itself.
    #[serde(default, deserialize_with = "source_options")]
    pub options: Options,
    /// Largest number of events in one batch handed to the pipeline.
    #[serde(default = "default_max_poll_records")]
    pub max_poll_records: usize,
    /// Largest batch in bytes (payloads), a second bound next to
    /// `max_poll_records`.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How long to wait for the first event of a batch before checking for
    /// commits, rebalances and shutdown again.
    #[serde(default = "default_poll_timeout")]
    pub poll_timeout: HumanDuration,
    /// At shutdown: how long to wait for the checkpoint covering what was
    /// read (to commit its offsets), and then for the consumer to close.
    #[serde(default = "default_close_timeout")]
    pub close_timeout: HumanDuration,
}

/// Where a partition without a checkpointed position starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

impl KafkaSourceConfig {
    /// Checks beyond the shape of the options.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.brokers.iter().all(|b| b.trim().is_empty()) {
            return Err("`brokers` is empty: give at least one `host:port`".into());
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err("`topics` must name at least one topic, and no empty name".into());
        }
        if self.group_id.trim().is_empty() {
            return Err("`group_id` is empty".into());
        }
        if self.max_poll_records == 0 || self.max_batch_bytes == 0 {
            return Err("`max_poll_records` and `max_batch_bytes` must be at least 1".into());
        }
        Ok(())
    }

    /// The `group.instance.id` to use, if any (see `group_instance_id`).
    pub fn instance_id(&self) -> Option<String> {
        match self.group_instance_id.as_deref() {
            Some("") => None,
            Some(id) => Some(id.to_string()),
            None => crate::kafka::host_name(),
        }
    }
}

/// librdkafka properties the source sets itself, with what to use instead.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
    ("group.id", "use `group_id`"),
    ("group.instance.id", "use `group_instance_id`"),
    (
        "enable.auto.commit",
        "offsets are committed after each checkpoint",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed after each checkpoint",
    ),
    ("auto.offset.reset", "use `start`"),
];

fn source_options<'de, D: Deserializer<'de>>(d: D) -> Result<Options, D::Error> {
    deserialize_options(d, RESERVED)
}

fn default_max_poll_records() -> usize {
    10_000
}

fn default_max_batch_bytes() -> usize {
    4 << 20
}

fn default_poll_timeout() -> HumanDuration {
    HumanDuration::from_millis(100)
}

fn default_close_timeout() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}
