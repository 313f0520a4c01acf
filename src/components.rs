//! The closed registry of component types. Adding a connector or operator
//! means one variant here (behind its cargo feature) and one line in each
//! `match` below.

use serde::Serialize;
use sluice_engine::config::{deserialize_all, error_at_named_field, ConfigError, SourceText};
use sluice_engine::error::Invalid;
use sluice_engine::operator::OperatorSpec;
use sluice_engine::sink::Sink;
use sluice_engine::source::Source;
use toml::de::DeValue;
use toml::Spanned;

#[cfg(feature = "amqp")]
use sluice_connectors::sinks::amqp::AmqpSinkConfig;
#[cfg(feature = "kafka")]
use sluice_connectors::sinks::kafka::KafkaSinkConfig;
#[cfg(feature = "mongodb")]
use sluice_connectors::sinks::mongodb::MongoSinkConfig;
#[cfg(feature = "postgres")]
use sluice_connectors::sinks::postgres::PostgresSinkConfig;
#[cfg(feature = "redis")]
use sluice_connectors::sinks::redis::RedisSinkConfig;
use sluice_connectors::sinks::table::TableSinkConfig;
#[cfg(feature = "files")]
use sluice_connectors::sinks::{file::FileSinkConfig, stdout::StdoutSinkConfig};
#[cfg(feature = "amqp")]
use sluice_connectors::sources::amqp::AmqpSourceConfig;
#[cfg(feature = "http")]
use sluice_connectors::sources::http::HttpSourceConfig;
#[cfg(feature = "kafka")]
use sluice_connectors::sources::kafka::KafkaSourceConfig;
#[cfg(feature = "mongodb")]
use sluice_connectors::sources::mongodb::MongoSourceConfig;
#[cfg(feature = "files")]
use sluice_connectors::sources::{file::FileSourceConfig, stdin::StdinSourceConfig};
use sluice_operators::aggregate::AggregateConfig;
use sluice_operators::dedupe::DedupeConfig;
use sluice_operators::filter::FilterConfig;
use sluice_operators::key_by::KeyByConfig;
use sluice_operators::map::MapConfig;

/// A source's own options, by `type`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    #[cfg(feature = "files")]
    File(FileSourceConfig),
    #[cfg(feature = "files")]
    Stdin(StdinSourceConfig),
    #[cfg(feature = "amqp")]
    Amqp(AmqpSourceConfig),
    #[cfg(feature = "http")]
    Http(HttpSourceConfig),
    #[cfg(feature = "kafka")]
    Kafka(KafkaSourceConfig),
    #[cfg(feature = "mongodb")]
    Mongodb(MongoSourceConfig),
}

/// A transform's own options, by `type`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TransformConfig {
    Filter(FilterConfig),
    Map(MapConfig),
    KeyBy(KeyByConfig),
    Aggregate(AggregateConfig),
    Dedupe(DedupeConfig),
}

/// A sink's own options, by `type`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    #[cfg(feature = "files")]
    File(FileSinkConfig),
    #[cfg(feature = "files")]
    Stdout(StdoutSinkConfig),
    #[cfg(feature = "amqp")]
    Amqp(AmqpSinkConfig),
    Table(TableSinkConfig),
    #[cfg(feature = "redis")]
    Redis(RedisSinkConfig),
    #[cfg(feature = "postgres")]
    Postgres(PostgresSinkConfig),
    #[cfg(feature = "kafka")]
    Kafka(KafkaSinkConfig),
    #[cfg(feature = "mongodb")]
    Mongodb(MongoSinkConfig),
}

/// Types known to this build (for "did you mean" and error messages).
pub const SOURCE_TYPES: &[&str] = &[
    #[cfg(feature = "files")]
    "file",
    #[cfg(feature = "files")]
    "stdin",
    #[cfg(feature = "amqp")]
    "amqp",
    #[cfg(feature = "http")]
    "http",
    #[cfg(feature = "kafka")]
    "kafka",
    #[cfg(feature = "mongodb")]
    "mongodb",
];
pub const TRANSFORM_TYPES: &[&str] = &["filter", "map", "key_by", "aggregate", "dedupe"];
pub const SINK_TYPES: &[&str] = &[
    #[cfg(feature = "files")]
    "file",
    #[cfg(feature = "files")]
    "stdout",
    #[cfg(feature = "amqp")]
    "amqp",
    "table",
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "postgres")]
    "postgres",
    #[cfg(feature = "kafka")]
    "kafka",
    #[cfg(feature = "mongodb")]
    "mongodb",
];

/// Parses the options of a source of type `kind`; `None` if the type is unknown.
pub fn parse_source(
    src: &SourceText,
    path: &str,
    kind: &str,
    value: Spanned<DeValue<'_>>,
) -> Option<Result<SourceConfig, Vec<ConfigError>>> {
    let _ = (src, path, &value);
    Some(match kind {
        #[cfg(feature = "files")]
        "file" => validated(src, path, value, FileSourceConfig::validate).map(SourceConfig::File),
        #[cfg(feature = "files")]
        "stdin" => deserialize_all(src, path, value).map(SourceConfig::Stdin),
        #[cfg(feature = "amqp")]
        "amqp" => deserialize_all(src, path, value).map(SourceConfig::Amqp),
        #[cfg(feature = "http")]
        "http" => deserialize_all(src, path, value).map(SourceConfig::Http),
        #[cfg(feature = "kafka")]
        "kafka" => {
            validated(src, path, value, KafkaSourceConfig::validate).map(SourceConfig::Kafka)
        }
        #[cfg(feature = "mongodb")]
        "mongodb" => {
            validated(src, path, value, MongoSourceConfig::validate).map(SourceConfig::Mongodb)
        }
        _ => return None,
    })
}

pub fn parse_transform(
    src: &SourceText,
    path: &str,
    kind: &str,
    value: Spanned<DeValue<'_>>,
) -> Option<Result<TransformConfig, Vec<ConfigError>>> {
    Some(match kind {
        "filter" => deserialize_all(src, path, value).map(TransformConfig::Filter),
        "map" => deserialize_all(src, path, value).map(TransformConfig::Map),
        "key_by" => deserialize_all(src, path, value).map(TransformConfig::KeyBy),
        "aggregate" => deserialize_all(src, path, value).map(TransformConfig::Aggregate),
        "dedupe" => deserialize_all(src, path, value).map(TransformConfig::Dedupe),
        _ => return None,
    })
}

pub fn parse_sink(
    src: &SourceText,
    path: &str,
    kind: &str,
    value: Spanned<DeValue<'_>>,
) -> Option<Result<SinkConfig, Vec<ConfigError>>> {
    let _ = (src, path, &value);
    Some(match kind {
        #[cfg(feature = "redis")]
        "redis" => validated(src, path, value, RedisSinkConfig::validate).map(SinkConfig::Redis),
        #[cfg(feature = "postgres")]
        "postgres" => {
            validated(src, path, value, PostgresSinkConfig::validate).map(SinkConfig::Postgres)
        }
        #[cfg(feature = "files")]
        "file" => deserialize_all(src, path, value).map(SinkConfig::File),
        #[cfg(feature = "files")]
        "stdout" => deserialize_all(src, path, value).map(SinkConfig::Stdout),
        #[cfg(feature = "amqp")]
        "amqp" => deserialize_all(src, path, value).map(SinkConfig::Amqp),
        "table" => deserialize_all(src, path, value).map(SinkConfig::Table),
        #[cfg(feature = "kafka")]
        "kafka" => validated(src, path, value, KafkaSinkConfig::validate).map(SinkConfig::Kafka),
        #[cfg(feature = "mongodb")]
        "mongodb" => {
            validated(src, path, value, MongoSinkConfig::validate).map(SinkConfig::Mongodb)
        }
        _ => return None,
    })
}

/// A component's checks beyond its shape (options that depend on each
/// other, bounds), located at the value of the first field the message
/// names in backticks, else at the component's table.
#[cfg(any(
    feature = "files",
    feature = "redis",
    feature = "postgres",
    feature = "kafka",
    feature = "mongodb"
))]
fn validated<T: serde::de::DeserializeOwned>(
    src: &SourceText,
    path: &str,
    value: Spanned<DeValue<'_>>,
    check: impl FnOnce(&T) -> Result<(), Invalid>,
) -> Result<T, Vec<ConfigError>> {
    let tree = value.clone();
    let config = deserialize_all(src, path, value)?;
    check(&config).map_err(|message| {
        vec![error_at_named_field(
            src,
            path,
            &tree,
            tree.span().start,
            message,
        )]
    })?;
    Ok(config)
}

/// Validates a transform's options beyond their shape, returning the
/// operator spec.
pub fn transform_spec(config: &TransformConfig) -> Result<Box<dyn OperatorSpec>, Invalid> {
    use sluice_operators::{
        aggregate::AggregateSpec, dedupe::DedupeSpec, filter::FilterSpec, key_by::KeyBySpec,
        map::MapSpec,
    };
    Ok(match config {
        TransformConfig::Filter(c) => {
            Box::new(FilterSpec::new(c).map_err(|e| Invalid::new(format!("in `condition`: {e}")))?)
        }
        TransformConfig::Map(c) => Box::new(MapSpec::new(c)?),
        TransformConfig::KeyBy(c) => Box::new(KeyBySpec::new(c)?),
        TransformConfig::Aggregate(c) => Box::new(AggregateSpec::new(c)?),
        TransformConfig::Dedupe(c) => Box::new(DedupeSpec::new(c)?),
    })
}

impl TransformConfig {
    /// True for transforms that place events in time: aggregates with a
    /// window, dedupes with `within`.
    pub fn uses_time(&self) -> bool {
        match self {
            TransformConfig::Aggregate(c) => c.window.is_some(),
            TransformConfig::Dedupe(c) => c.within.is_some(),
            _ => false,
        }
    }

    /// The `time` option of aggregates.
    pub fn time_mode(&self) -> Option<sluice_operators::aggregate::TimeMode> {
        match self {
            TransformConfig::Aggregate(c) => c.time,
            _ => None,
        }
    }
}

/// Builds a runnable source.
pub fn build_source(config: &SourceConfig) -> Box<dyn Source> {
    match config {
        #[cfg(feature = "files")]
        SourceConfig::File(c) => {
            Box::new(sluice_connectors::sources::file::FileSource::new(c.clone()))
        }
        #[cfg(feature = "files")]
        SourceConfig::Stdin(_) => Box::new(sluice_connectors::sources::stdin::StdinSource),
        #[cfg(feature = "amqp")]
        SourceConfig::Amqp(c) => {
            Box::new(sluice_connectors::sources::amqp::AmqpSource::new(c.clone()))
        }
        #[cfg(feature = "http")]
        SourceConfig::Http(c) => {
            Box::new(sluice_connectors::sources::http::HttpSource::new(c.clone()))
        }
        #[cfg(feature = "kafka")]
        SourceConfig::Kafka(c) => Box::new(sluice_connectors::sources::kafka::KafkaSource::new(
            c.clone(),
        )),
        #[cfg(feature = "mongodb")]
        SourceConfig::Mongodb(c) => Box::new(
            sluice_connectors::sources::mongodb::MongoSource::new(c.clone()),
        ),
    }
}

/// What building a component may need besides its own options.
pub struct BuildEnv<'a> {
    /// The component's name.
    pub name: &'a str,
    /// The pipeline's state directory.
    pub state_dir: &'a std::path::Path,
}

/// Builds a runnable sink.
pub fn build_sink(config: &SinkConfig, env: &BuildEnv<'_>) -> Box<dyn Sink> {
    match config {
        #[cfg(feature = "redis")]
        SinkConfig::Redis(c) => Box::new(sluice_connectors::sinks::redis::RedisSink::new(
            env.name,
            c.clone(),
        )),
        #[cfg(feature = "postgres")]
        SinkConfig::Postgres(c) => Box::new(sluice_connectors::sinks::postgres::PostgresSink::new(
            env.name,
            c.clone(),
        )),
        SinkConfig::Table(c) => Box::new(sluice_connectors::sinks::table::TableSink::new(
            env.name,
            c,
            env.state_dir,
        )),
        #[cfg(feature = "files")]
        SinkConfig::File(c) => Box::new(sluice_connectors::sinks::file::FileSink::new(c.clone())),
        #[cfg(feature = "files")]
        SinkConfig::Stdout(_) => Box::new(sluice_connectors::sinks::stdout::StdoutSink),
        #[cfg(feature = "amqp")]
        SinkConfig::Amqp(c) => Box::new(sluice_connectors::sinks::amqp::AmqpSink::new(
            env.name,
            c.clone(),
        )),
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(c) => {
            Box::new(sluice_connectors::sinks::kafka::KafkaSink::new(c.clone()))
        }
        #[cfg(feature = "mongodb")]
        SinkConfig::Mongodb(c) => Box::new(sluice_connectors::sinks::mongodb::MongoSink::new(
            env.name,
            c.clone(),
        )),
    }
}
