//! Loading sluice pipelines, shared by the `sluice` command and tests:
//! [`load`] reads a pipeline file, checks every field and the graph (one
//! planner, [`sluice_engine::plan::Plan`], also used by the runtime) and
//! builds each transform's operator once; [`plan::to_spec`] turns the
//! result into what [`sluice_engine::runtime::run`] runs.

use std::path::Path;

use sluice_engine::config::{ConfigError, SourceText};

pub mod components;
pub mod config;
pub mod plan;

pub use config::Pipeline;

/// Loads and validates a pipeline file; `env` resolves `${VAR}`. Returns
/// every mistake, each with file, line, column and field.
pub fn load(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Pipeline, Vec<ConfigError>> {
    config::load(path, env)
}

/// Loads pipeline text as if read from `path` (which names the pipeline
/// and its errors; it is not read). `env` resolves `${VAR}`.
pub fn load_str(
    path: &Path,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Pipeline, Vec<ConfigError>> {
    let src = SourceText::interpolate(path, text.to_string(), env).map_err(|e| vec![e])?;
    config::parse(&src)
}
