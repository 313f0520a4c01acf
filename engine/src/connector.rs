//! How a connector plugs into the pipeline loader. A connector's folder
//! implements [`SourceConnector`] or [`SinkConnector`] on its config
//! struct (validation and build step); the connectors crate lists the
//! folders once, and the loader derives from that list the parsing of
//! `type = "..."`, the known types and the feature hints for types a build
//! leaves out.

use crate::cluster::WorkerId;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use toml::de::DeValue;
use toml::Spanned;

use crate::config::{deserialize_all, error_at_named_field, ConfigError, SourceText};
use crate::sink::Sink;
use crate::source::Source;

/// What a connector's validation reports: a message for the user that
/// names the field concerned in backticks (the error is placed there).
pub type ConnectorError = crate::error::Invalid;

/// What building a connector may need besides its own options. Running
/// sources get the rest (shutdown, output, restored positions) in their
/// [`crate::source::SourceContext`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectorContext<'a> {
    /// The pipeline's name (`name` in the pipeline file).
    pub pipeline: &'a str,
    /// The component's name in the pipeline file.
    pub name: &'a str,
    /// The pipeline's state directory in effect for this run.
    pub state_dir: &'a Path,
    /// This worker among the pipeline's workers.
    pub worker: WorkerId,
}

/// A source type: its config struct, checks and build step.
pub trait SourceConnector: DeserializeOwned + fmt::Debug + Send + Sync + 'static {
    /// Checks beyond the shape of the options (options that depend on each
    /// other, bounds).
    fn validate(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// The runnable source.
    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn Source>;
}

/// A sink type: its config struct, checks and build step.
pub trait SinkConnector: DeserializeOwned + fmt::Debug + Send + Sync + 'static {
    /// Checks beyond the shape of the options.
    fn validate(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// The runnable sink.
    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn Sink>;
}

/// A loaded component's options, ready to build what `C` describes (a
/// [`Source`] or a [`Sink`]).
pub struct Configured<C: ?Sized> {
    type_name: &'static str,
    options: Arc<C>,
}

impl<C: ?Sized> Clone for Configured<C> {
    fn clone(&self) -> Self {
        Configured {
            type_name: self.type_name,
            options: self.options.clone(),
        }
    }
}

impl<C: ?Sized + fmt::Debug> fmt::Debug for Configured<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.type_name, self.options)
    }
}

impl<C: ?Sized> Configured<C> {
    /// The `type` of the component.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

/// The object-safe side of [`SourceConnector`].
pub trait BuildSource: fmt::Debug + Send + Sync {
    /// Creates the source from its loaded options (see [`SourceConnector::build`]).
    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn Source>;
}

impl<T: SourceConnector> BuildSource for T {
    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn Source> {
        SourceConnector::build(self, ctx)
    }
}

/// The object-safe side of [`SinkConnector`].
pub trait BuildSink: fmt::Debug + Send + Sync {
    /// Creates the sink from its loaded options (see [`SinkConnector::build`]).
    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn Sink>;
}

impl<T: SinkConnector> BuildSink for T {
    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn Sink> {
        SinkConnector::build(self, ctx)
    }
}

/// A loaded source's options.
pub type SourceConfig = Configured<dyn BuildSource>;
/// A loaded sink's options.
pub type SinkConfig = Configured<dyn BuildSink>;

impl SourceConfig {
    /// Builds the runnable source.
    pub fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn Source> {
        self.options.build(ctx)
    }
}

impl SinkConfig {
    /// Wraps options built in code (not read from a file).
    pub fn new<T: SinkConnector>(type_name: &'static str, options: T) -> SinkConfig {
        Configured {
            type_name,
            options: Arc::new(options),
        }
    }

    /// Builds the runnable sink.
    pub fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn Sink> {
        self.options.build(ctx)
    }
}

/// Reads a component's options (without `type`) from the pipeline file.
pub type ParseFn<C> =
    fn(&'static str, &SourceText, &str, Spanned<DeValue<'_>>) -> Result<C, Vec<ConfigError>>;

/// One registered connector type, compiled into this build or not.
pub struct Registered<C: 'static> {
    /// `type = "..."` in the pipeline file.
    pub name: &'static str,
    /// The cargo feature that compiles it in.
    pub feature: &'static str,
    /// How to read its options; None when the feature is off.
    pub parse: Option<ParseFn<C>>,
}

impl<C> Registered<C> {
    /// The types compiled into this build.
    pub fn compiled(all: &[Registered<C>]) -> Vec<&'static str> {
        all.iter()
            .filter(|r| r.parse.is_some())
            .map(|r| r.name)
            .collect()
    }

    /// Reads the options of a component of type `kind`; None if no
    /// compiled-in type has that name.
    pub fn parse(
        all: &[Registered<C>],
        kind: &str,
        src: &SourceText,
        path: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Option<Result<C, Vec<ConfigError>>> {
        let r = all.iter().find(|r| r.name == kind)?;
        Some((r.parse?)(r.name, src, path, value))
    }

    /// The feature a type needs when this build leaves it out.
    pub fn missing_feature(all: &[Registered<C>], kind: &str) -> Option<&'static str> {
        all.iter()
            .find(|r| r.name == kind && r.parse.is_none())
            .map(|r| r.feature)
    }
}

/// [`ParseFn`] of the source type `T`.
pub fn parse_source<T: SourceConnector>(
    type_name: &'static str,
    src: &SourceText,
    path: &str,
    value: Spanned<DeValue<'_>>,
) -> Result<SourceConfig, Vec<ConfigError>> {
    let options: T = validated(src, path, value, T::validate)?;
    Ok(Configured {
        type_name,
        options: Arc::new(options),
    })
}

/// [`ParseFn`] of the sink type `T`.
pub fn parse_sink<T: SinkConnector>(
    type_name: &'static str,
    src: &SourceText,
    path: &str,
    value: Spanned<DeValue<'_>>,
) -> Result<SinkConfig, Vec<ConfigError>> {
    let options: T = validated(src, path, value, T::validate)?;
    Ok(SinkConfig::new(type_name, options))
}

/// Deserializes options and runs their checks, locating a failed check at
/// the value of the first field its message names in backticks, else at
/// the component's table.
fn validated<T: DeserializeOwned>(
    src: &SourceText,
    path: &str,
    value: Spanned<DeValue<'_>>,
    check: impl FnOnce(&T) -> Result<(), ConnectorError>,
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
