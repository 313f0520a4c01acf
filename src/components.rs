//! The transform types, a closed list: one variant each, parsed by
//! `type`. Sources and sinks are registered by their own folders in
//! `sluice-connectors` (see `connectors/README.md`).

use serde::Serialize;
use sluice_engine::config::{deserialize_all, ConfigError, SourceText};
use sluice_engine::error::Invalid;
use sluice_engine::operator::OperatorSpec;
use sluice_operators::aggregate::AggregateConfig;
use sluice_operators::dedupe::DedupeConfig;
use sluice_operators::filter::FilterConfig;
use sluice_operators::key_by::KeyByConfig;
use sluice_operators::map::MapConfig;
use toml::de::DeValue;
use toml::Spanned;

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

/// Transform types (for "did you mean" and error messages).
pub const TRANSFORM_TYPES: &[&str] = &["filter", "map", "key_by", "aggregate", "dedupe"];

/// Parses the options of a transform of type `kind`; `None` if the type
/// is unknown.
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
