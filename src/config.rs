//! Loading a pipeline file: sections, components, the graph, and every
//! mistake reported with file, line, column and field.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_engine::config::{
    deserialize_all, did_you_mean, error_at_named_field, value_span, ConfigError, SourceText,
};
use sluice_engine::graph::NodeKind;
use sluice_engine::keys::DEFAULT_KEY_GROUPS;
use sluice_engine::operator::OperatorSpec;
use sluice_engine::time::{HumanDuration, TimeFormat};
use toml::de::DeValue;
use toml::Spanned;

use sluice_connectors::{sinks, sources};
use sluice_engine::connector::{Registered, SinkConfig, SourceConfig};

use crate::components::{self, TransformConfig};

/// `[pipeline]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Name used in metrics and logs (default: the file name without extension).
    pub name: Option<String>,
}

/// `[state]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// Directory of the state store (default: `sluice-state/<pipeline name>`).
    pub dir: Option<PathBuf>,
    /// Number of key groups state is partitioned into; fixed for the life of the state.
    #[serde(default = "default_key_groups")]
    pub key_groups: u16,
    /// The remote copy of the state in object storage: `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix` or `file:///dir`
    /// (credentials from each cloud's standard environment variables).
    pub remote: Option<String>,
}

fn default_key_groups() -> u16 {
    DEFAULT_KEY_GROUPS
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            dir: None,
            key_groups: DEFAULT_KEY_GROUPS,
            remote: None,
        }
    }
}

/// `[checkpoint]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Time between checkpoints; results reach sinks at each checkpoint.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// How many committed epochs a sink may have outstanding before sources are slowed.
    #[serde(default = "default_pending")]
    pub max_pending_epochs: usize,
}

fn default_interval() -> HumanDuration {
    HumanDuration::from_millis(1000)
}

fn default_pending() -> usize {
    8
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            interval: default_interval(),
            max_pending_epochs: default_pending(),
        }
    }
}

/// `[admin]`: the HTTP server for metrics, health, readiness and tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Listen address, e.g. "127.0.0.1:9898" (use "0.0.0.0:9898" in a
    /// container). Without it the admin server is off.
    pub address: Option<std::net::SocketAddr>,
    /// Serve HTTPS: `tls = { cert = "tls.crt", key = "tls.key" }` (PEM
    /// files, read again every few seconds; a renewed pair is used for new
    /// connections). Without it, plain HTTP.
    #[serde(default)]
    pub tls: Option<sluice_engine::tls::TlsConfig>,
    /// Name of an environment variable holding a bearer token. When set,
    /// every endpoint but `/health` and `/ready` (left open for probes)
    /// answers 401 without `Authorization: Bearer <token>`; sluice refuses
    /// to start if the variable is missing or empty.
    #[serde(default)]
    pub auth_token_env: Option<String>,
    /// `/ready` answers 503 while a source is more events behind than this
    /// (events in its own log, e.g. the HTTP journal, not yet processed).
    #[serde(default = "default_ready_max_backlog")]
    pub ready_max_backlog: u64,
}

fn default_ready_max_backlog() -> u64 {
    sluice_engine::health::DEFAULT_MAX_BACKLOG
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            address: None,
            tls: None,
            auth_token_env: None,
            ready_max_backlog: default_ready_max_backlog(),
        }
    }
}

/// `[log]`: what sluice logs. A reload (SIGHUP, `--watch`) applies a new
/// level without a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// A filter like RUST_LOG's: `"info"`, `"debug"`,
    /// `"warn,sluice_connectors=debug"`. RUST_LOG, when set, wins.
    pub level: Option<String>,
}

/// `[sources.NAME.event_time]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// The field holding the event time (dotted path).
    pub field: String,
    /// `auto` (epoch ms integers or RFC 3339 strings), `epoch_ms`, `epoch_s` or `rfc3339`.
    #[serde(default)]
    pub format: TimeFormat,
    /// Bounded out-of-orderness: the watermark trails the largest time seen by this much.
    #[serde(default)]
    pub max_disorder: HumanDuration,
    /// A partition silent for this long stops holding the watermark back.
    #[serde(default)]
    pub idle_timeout: Option<HumanDuration>,
}

/// Options every source accepts besides its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceCommon {
    event_time: Option<EventTimeConfig>,
    max_event_bytes: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct SourceDecl {
    pub name: String,
    pub config: SourceConfig,
    pub event_time: Option<EventTimeConfig>,
    /// Events larger than this go to the dead-letter output.
    pub max_event_bytes: usize,
}

#[derive(Clone)]
pub struct TransformDecl {
    pub name: String,
    pub inputs: Vec<String>,
    pub config: TransformConfig,
    /// The operator built from `config`, once, when the file is loaded.
    pub spec: Arc<dyn OperatorSpec>,
}

impl std::fmt::Debug for TransformDecl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformDecl")
            .field("name", &self.name)
            .field("inputs", &self.inputs)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct SinkDecl {
    pub name: String,
    pub inputs: Vec<String>,
    pub config: SinkConfig,
}

/// A loaded, validated pipeline file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub path: PathBuf,
    pub name: String,
    pub state: StateSection,
    pub checkpoint: CheckpointSection,
    pub admin: AdminSection,
    pub log: LogSection,
    pub sources: Vec<SourceDecl>,
    pub transforms: Vec<TransformDecl>,
    pub sinks: Vec<SinkDecl>,
    /// `[dead_letter]`; None means a file in the state directory.
    pub dead_letter: Option<SinkConfig>,
    /// `[cluster]`; None runs the pipeline as one worker.
    pub cluster: Option<ClusterSection>,
}

impl Pipeline {
    /// The state directory in effect.
    pub fn state_dir(&self) -> PathBuf {
        self.state
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("sluice-state").join(&self.name))
    }
}

const SECTIONS: &[&str] = &[
    "pipeline",
    "state",
    "checkpoint",
    "admin",
    "log",
    "sources",
    "transforms",
    "sinks",
    "dead_letter",
    "cluster",
];
/// What the graph check needs of one component, whether or not its own
/// options were valid: its place in the file and its `inputs`.
struct Entry {
    name: String,
    kind: NodeKind,
    inputs: Vec<String>,
    name_span: Range<usize>,
    input_spans: Vec<Range<usize>>,
    /// `inputs` was there but could not be read.
    inputs_failed: bool,
    /// Index into `Pipeline::sources` / `transforms` / `sinks` when the
    /// component's options are valid.
    index: Option<usize>,
}

/// Loads and validates a pipeline file; `env` resolves `${VAR}`.
pub fn load(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Pipeline, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::general(
            path,
            format!("cannot read the pipeline file: {e}"),
        )]
    })?;
    let src = SourceText::interpolate(path, text, env).map_err(|e| vec![e])?;
    parse(&src)
}

/// Parses and validates an already-interpolated pipeline text.
///
/// Every mistake is reported in one pass: each field of each section and
/// component, and the graph (inputs, cycles, dangling components) of every
/// component whose name and `inputs` could be read, sorted by place in the
/// file (errors without a place last).
pub fn parse(src: &SourceText) -> Result<Pipeline, Vec<ConfigError>> {
    let doc = src.parse().map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut pipeline = Pipeline {
        path: src.path.clone(),
        name: src
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into()),
        state: StateSection::default(),
        checkpoint: CheckpointSection::default(),
        admin: AdminSection::default(),
        log: LogSection::default(),
        sources: Vec::new(),
        transforms: Vec::new(),
        sinks: Vec::new(),
        dead_letter: None,
        cluster: None,
    };
    let mut entries: [Vec<Entry>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut failed_components = false;
    // Some component's name or `inputs` could not be read.
    let mut graph_incomplete = false;
    for (key, value) in doc.get_ref().iter() {
        let section = key.get_ref().as_ref();
        let at = |msg: String| ConfigError::at(src, key.span().start, msg);
        match section {
            "pipeline" => {
                match deserialize_all::<PipelineSection>(src, "pipeline", value.clone()) {
                    Ok(p) => {
                        if let Some(name) = p.name {
                            pipeline.name = name;
                        }
                    }
                    Err(mut e) => errors.append(&mut e),
                }
            }
            "state" => match deserialize_all(src, "state", value.clone()) {
                Ok(s) => pipeline.state = s,
                Err(mut e) => errors.append(&mut e),
            },
            "checkpoint" => match deserialize_all(src, "checkpoint", value.clone()) {
                Ok(c) => pipeline.checkpoint = c,
                Err(mut e) => errors.append(&mut e),
            },
            "admin" => match deserialize_all(src, "admin", value.clone()) {
                Ok(a) => pipeline.admin = a,
                Err(mut e) => errors.append(&mut e),
            },
            "log" => match deserialize_all::<LogSection>(src, "log", value.clone()) {
                Ok(l) => match l
                    .level
                    .as_deref()
                    .map(tracing_subscriber::EnvFilter::try_new)
                {
                    Some(Err(e)) => errors.push(
                        ConfigError::at(src, value.span().start, format!("`[log] level`: {e}"))
                            .with_field("log.level".to_string()),
                    ),
                    _ => pipeline.log = l,
                },
                Err(mut e) => errors.append(&mut e),
            },
            "sources" | "transforms" | "sinks" => {
                let DeValue::Table(table) = value.get_ref() else {
                    errors.push(at(format!(
                        "`{section}` must be a table of named components, e.g. [{section}.my_name]"
                    )));
                    continue;
                };
                for (name, body) in table.iter() {
                    let (entry, result) = parse_component(src, section, name, body);
                    graph_incomplete |= entry.as_ref().is_none_or(|e| e.inputs_failed);
                    let mut index = None;
                    match result {
                        Ok(Component::Source(decl)) => {
                            index = Some(pipeline.sources.len());
                            pipeline.sources.push(decl);
                        }
                        Ok(Component::Transform(decl)) => {
                            index = Some(pipeline.transforms.len());
                            pipeline.transforms.push(decl);
                        }
                        Ok(Component::Sink(decl)) => {
                            index = Some(pipeline.sinks.len());
                            pipeline.sinks.push(decl);
                        }
                        Err(mut e) => {
                            failed_components = true;
                            errors.append(&mut e);
                        }
                    }
                    if let Some(mut entry) = entry {
                        entry.index = index;
                        // A failed component without `inputs` may have
                        // misspelt them.
                        graph_incomplete |= index.is_none()
                            && entry.inputs.is_empty()
                            && entry.kind != NodeKind::Source;
                        let slot = match entry.kind {
                            NodeKind::Source => 0,
                            NodeKind::Transform => 1,
                            NodeKind::Sink => 2,
                        };
                        entries[slot].push(entry);
                    }
                }
            }
            "dead_letter" => match component_type(src, "dead_letter", value) {
                Ok((kind, kind_span, rest)) => {
                    match Registered::parse(sinks::TYPES, &kind, src, "dead_letter", rest) {
                        Some(Ok(c)) => pipeline.dead_letter = Some(c),
                        Some(Err(mut e)) => errors.append(&mut e),
                        None => errors.push(unknown_type(src, "sink", &kind, kind_span)),
                    }
                }
                Err(e) => errors.push(e),
            },
            "cluster" => match cluster::parse(src, value) {
                Ok(c) => pipeline.cluster = Some(c),
                Err(mut e) => errors.append(&mut e),
            },
            other => {
                // Perhaps a misspelt `sources`, `transforms` or `sinks`.
                graph_incomplete = true;
                failed_components = true;
                errors.push(
                    at(format!("unknown section `{other}`")).with_hint(
                        did_you_mean(other, SECTIONS.iter().copied())
                            .map(|s| format!("did you mean `{s}`?")),
                    ),
                )
            }
        }
    }
    if pipeline.checkpoint.interval.0.is_zero() {
        errors.push(value_error(
            src,
            &doc,
            "checkpoint.interval",
            "`checkpoint.interval` must be positive, e.g. \"1s\"",
        ));
    }
    if pipeline.state.key_groups == 0 {
        errors.push(value_error(
            src,
            &doc,
            "state.key_groups",
            "`state.key_groups` must be at least 1",
        ));
    }
    let entries: Vec<Entry> = entries.into_iter().flatten().collect();
    errors.extend(graph::check_graph(
        src,
        &pipeline,
        &entries,
        failed_components,
        graph_incomplete,
    ));
    if errors.is_empty() {
        Ok(pipeline)
    } else {
        // By place in the file; errors without one last.
        errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
        Err(errors)
    }
}

/// An error about the value at dotted `path` of the document, located at
/// that value (or reported for the file when the value is a default).
fn value_error(
    src: &SourceText,
    doc: &Spanned<toml::de::DeTable<'_>>,
    path: &str,
    message: &str,
) -> ConfigError {
    let (section, rest) = path.split_once('.').unwrap_or((path, ""));
    let span = doc.get_ref().get(section).and_then(|v| value_span(v, rest));
    match span {
        Some(span) => ConfigError::at(src, span.start, message),
        None => ConfigError::general(&src.path, message),
    }
    .with_field(path)
}

enum Component {
    Source(SourceDecl),
    Transform(TransformDecl),
    Sink(SinkDecl),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Splits `type` off a component table: (type, its span, the rest).
fn component_type<'a>(
    src: &SourceText,
    path: &str,
    body: &Spanned<DeValue<'a>>,
) -> Result<(String, Range<usize>, Spanned<DeValue<'a>>), ConfigError> {
    let DeValue::Table(table) = body.get_ref() else {
        return Err(
            ConfigError::at(src, body.span().start, format!("`{path}` must be a table"))
                .with_field(path),
        );
    };
    let Some(kind) = table.get("type") else {
        return Err(ConfigError::at(
            src,
            body.span().start,
            "missing `type` (what kind of component this is)",
        )
        .with_field(path));
    };
    let DeValue::String(kind_str) = kind.get_ref() else {
        return Err(
            ConfigError::at(src, kind.span().start, "`type` must be a string")
                .with_field(format!("{path}.type")),
        );
    };
    let mut rest = body.clone();
    if let DeValue::Table(t) = rest.get_mut() {
        t.remove("type");
    }
    Ok((kind_str.to_string(), kind.span(), rest))
}

/// `(section, types compiled into this build)` of every kind of component.
fn known_types() -> [(&'static str, Vec<&'static str>); 3] {
    [
        ("source", Registered::compiled(sources::TYPES)),
        ("transform", components::TRANSFORM_TYPES.to_vec()),
        ("sink", Registered::compiled(sinks::TYPES)),
    ]
}

fn unknown_type(src: &SourceText, what: &str, kind: &str, span: Range<usize>) -> ConfigError {
    let missing_feature = Registered::missing_feature(sources::TYPES, kind)
        .or_else(|| Registered::missing_feature(sinks::TYPES, kind));
    let known_types = known_types();
    let known = known_types
        .iter()
        .find(|(section, _)| *section == what)
        .map_or(&[][..], |(_, types)| types.as_slice());
    let elsewhere = known_types
        .iter()
        .find(|(section, types)| *section != what && types.contains(&kind))
        .map(|(section, _)| section);
    let err = ConfigError::at(src, span.start, format!("unknown {what} type `{kind}`"));
    match (missing_feature, elsewhere) {
        (Some(f), _) => err.with_hint(Some(format!(
            "this build of sluice has no `{kind}` {what}; it needs the cargo feature `{f}`"
        ))),
        (None, Some(section)) => err.with_hint(Some(format!(
            "`{kind}` is a {section} type; {what} types are: {}",
            known.join(", ")
        ))),
        (None, None) => err.with_hint(
            did_you_mean(kind, known.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .or_else(|| Some(format!("known {what} types: {}", known.join(", ")))),
        ),
    }
}

/// Takes `key` out of a table, deserialized.
fn take<'a, T: serde::de::DeserializeOwned>(
    src: &SourceText,
    path: &str,
    rest: &mut Spanned<DeValue<'a>>,
    key: &str,
) -> Result<Option<(T, Spanned<DeValue<'a>>)>, Vec<ConfigError>> {
    let DeValue::Table(t) = rest.get_mut() else {
        return Ok(None);
    };
    let Some(v) = t.remove(key) else {
        return Ok(None);
    };
    let parsed = deserialize_all(src, &format!("{path}.{key}"), v.clone())?;
    Ok(Some((parsed, v)))
}

/// Parses one component. The entry (for the graph check) is returned
/// whenever the name is valid, even if the options are not; the result
/// holds every error found in the component.
fn parse_component(
    src: &SourceText,
    section: &str,
    name: &Spanned<toml::de::DeString<'_>>,
    body: &Spanned<DeValue<'_>>,
) -> (Option<Entry>, Result<Component, Vec<ConfigError>>) {
    let name_str = name.get_ref().to_string();
    let path = format!("{section}.{name_str}");
    if !valid_name(&name_str) {
        return (
            None,
            Err(vec![ConfigError::at(
                src,
                name.span().start,
                format!("invalid component name `{name_str}`: use letters, digits, `_` and `-`"),
            )
            .with_field(path)]),
        );
    }
    let kind = match section {
        "sources" => NodeKind::Source,
        "transforms" => NodeKind::Transform,
        _ => NodeKind::Sink,
    };
    let mut entry = Entry {
        name: name_str.clone(),
        kind,
        inputs: Vec::new(),
        name_span: name.span(),
        input_spans: Vec::new(),
        inputs_failed: false,
        index: None,
    };
    let mut errors = Vec::new();
    let mut rest = body.clone();
    if section != "sources" {
        match take::<Vec<String>>(src, &path, &mut rest, "inputs") {
            Ok(Some((list, value))) => {
                if let DeValue::Array(items) = value.get_ref() {
                    entry.input_spans = items.iter().map(|i| i.span()).collect();
                }
                entry.inputs = list;
            }
            Ok(None) => {}
            Err(mut e) => {
                entry.inputs_failed = true;
                errors.append(&mut e);
            }
        }
    }
    let result = parse_options(src, section, &path, &name_str, name, &rest, &entry.inputs);
    match result {
        Ok(c) if errors.is_empty() => (Some(entry), Ok(c)),
        Ok(_) => (Some(entry), Err(errors)),
        Err(mut e) => {
            errors.append(&mut e);
            (Some(entry), Err(errors))
        }
    }
}

/// The options of a component besides `inputs`.
fn parse_options(
    src: &SourceText,
    section: &str,
    path: &str,
    name_str: &str,
    name: &Spanned<toml::de::DeString<'_>>,
    body: &Spanned<DeValue<'_>>,
    inputs: &[String],
) -> Result<Component, Vec<ConfigError>> {
    let (kind, kind_span, mut rest) = component_type(src, path, body).map_err(|e| vec![e])?;
    let add_common_hint = |mut e: ConfigError, common: &[&str]| {
        if e.hint.is_none() || e.message.starts_with("unknown field") {
            if let Some(field) = e
                .message
                .strip_prefix("unknown field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                if let Some(s) = did_you_mean(field, common.iter().copied()) {
                    e.hint = Some(format!("did you mean `{s}`?"));
                }
            }
        }
        e
    };
    let hint_all = |errors: Vec<ConfigError>, common: &[&str]| -> Vec<ConfigError> {
        errors
            .into_iter()
            .map(|e| add_common_hint(e, common))
            .collect()
    };
    match section {
        "sources" => {
            let mut errors = Vec::new();
            let mut common = SourceCommon::default();
            match take(src, path, &mut rest, "event_time") {
                Ok(et) => common.event_time = et.map(|(et, _)| et),
                Err(mut e) => errors.append(&mut e),
            }
            match take(src, path, &mut rest, "max_event_bytes") {
                Ok(m) => common.max_event_bytes = m.map(|(m, _)| m),
                Err(mut e) => errors.append(&mut e),
            }
            let config = match Registered::parse(sources::TYPES, &kind, src, path, rest) {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    errors.extend(hint_all(e, &["event_time", "max_event_bytes", "type"]));
                    None
                }
                None => {
                    errors.push(unknown_type(src, "source", &kind, kind_span));
                    None
                }
            };
            match config {
                Some(config) if errors.is_empty() => Ok(Component::Source(SourceDecl {
                    name: name_str.to_string(),
                    config,
                    event_time: common.event_time,
                    max_event_bytes: common.max_event_bytes.unwrap_or(1 << 20),
                })),
                _ => Err(errors),
            }
        }
        "transforms" => {
            let tree = rest.clone();
            let config = match components::parse_transform(src, path, &kind, rest) {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(hint_all(e, &["inputs", "type"])),
                None => return Err(vec![unknown_type(src, "transform", &kind, kind_span)]),
            };
            let spec = components::transform_spec(&config).map_err(|message| {
                vec![error_at_named_field(
                    src,
                    path,
                    &tree,
                    name.span().start,
                    message,
                )]
            })?;
            Ok(Component::Transform(TransformDecl {
                name: name_str.to_string(),
                inputs: inputs.to_vec(),
                config,
                spec: Arc::from(spec),
            }))
        }
        _ => {
            let config = match Registered::parse(sinks::TYPES, &kind, src, path, rest) {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(hint_all(e, &["inputs", "type"])),
                None => return Err(vec![unknown_type(src, "sink", &kind, kind_span)]),
            };
            Ok(Component::Sink(SinkDecl {
                name: name_str.to_string(),
                inputs: inputs.to_vec(),
                config,
            }))
        }
    }
}

mod cluster;
mod graph;

pub use cluster::{ClusterSection, Peers};

#[cfg(test)]
mod tests;
