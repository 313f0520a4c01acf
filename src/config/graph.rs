//! The pipeline graph of a loaded file: structural mistakes (unknown
//! inputs, cycles, unused components...), event time where windows need
//! it, and wirings that cannot read an aggregate's changelog, each located
//! in the file.

use sluice_engine::config::{ConfigError, SourceText};
use sluice_engine::graph::{build_graph, GraphError, GraphNode, NodeKind};

use super::{Entry, Pipeline};
use crate::components::TransformConfig;

/// Checks the graph of every component whose name could be read. A
/// component with invalid options still has its `inputs` checked and can be
/// read from; it is only spared "needs `inputs`" (its own errors already
/// say what is wrong with it) when `inputs` itself was bad.
pub(super) fn check_graph(
    src: &SourceText,
    p: &Pipeline,
    entries: &[Entry],
    failed_components: bool,
    graph_incomplete: bool,
) -> Vec<ConfigError> {
    let nodes: Vec<GraphNode> = entries
        .iter()
        .map(|e| GraphNode {
            name: e.name.clone(),
            kind: e.kind,
            inputs: e.inputs.clone(),
        })
        .collect();
    let graph = match build_graph(nodes.clone()) {
        Ok(g) => g,
        Err(errors) => {
            // Names suggested for unknown inputs: their "unused" error
            // would only repeat the typo.
            let suggested: Vec<&str> = errors
                .iter()
                .filter_map(|e| match e {
                    GraphError::UnknownInput {
                        suggestion: Some(s),
                        ..
                    } => Some(s.as_str()),
                    _ => None,
                })
                .collect();
            return errors
                .iter()
                .filter(|e| match e {
                    // A failed component's own errors say what is wrong
                    // (a misspelt `inputs`, a bad list).
                    GraphError::NoInputs { node } => entries[*node].index.is_some(),
                    // Components missing because they failed to parse.
                    GraphError::Empty { .. } => !failed_components,
                    // Read, perhaps, by a component whose `inputs` or name
                    // could not be read.
                    GraphError::Unused { node } => {
                        !graph_incomplete && !suggested.contains(&nodes[*node].name.as_str())
                    }
                    _ => true,
                })
                .map(|e| {
                    let (node, offset) = match e {
                        GraphError::UnknownInput { node, input, .. }
                        | GraphError::InputIsSink { node, input } => (
                            Some(*node),
                            entries[*node].input_spans.get(*input).map(|r| r.start),
                        ),
                        GraphError::SourceWithInputs { node }
                        | GraphError::NoInputs { node }
                        | GraphError::DuplicateName { node, .. }
                        | GraphError::Unused { node } => {
                            (Some(*node), Some(entries[*node].name_span.start))
                        }
                        GraphError::Cycle { nodes: cycle } => (
                            cycle.first().copied(),
                            cycle.first().map(|&n| entries[n].name_span.start),
                        ),
                        GraphError::Empty { .. } => (None, None),
                    };
                    let mut err = match offset {
                        Some(o) => ConfigError::at(src, o, e.describe(&nodes)),
                        None => ConfigError::general(&src.path, e.describe(&nodes)),
                    };
                    if let Some(n) = node {
                        err = err.with_field(format!(
                            "{}.{}",
                            nodes[n].kind.section(),
                            nodes[n].name
                        ));
                    }
                    if let GraphError::UnknownInput {
                        suggestion: Some(s),
                        ..
                    } = e
                    {
                        err = err.with_hint(Some(format!("did you mean `{s}`?")));
                    }
                    err
                })
                .collect();
        }
    };
    // Windows need event time from every source feeding them (unless they
    // ask for processing time).
    let upstream = graph.upstream_sources();
    let mut errors = Vec::new();
    for (node, entry) in entries.iter().enumerate() {
        let (NodeKind::Transform, Some(t)) = (entry.kind, entry.index) else {
            continue;
        };
        let decl = &p.transforms[t];
        let is_dedupe = matches!(decl.config, TransformConfig::Dedupe(_));
        if !decl.config.uses_time() {
            continue;
        }
        // Sources with invalid options are not known to have event time.
        let Some(sources) = upstream[node]
            .iter()
            .map(|&s| entries[s].index.map(|i| &p.sources[i]))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let missing: Vec<&str> = sources
            .iter()
            .filter(|s| s.event_time.is_none())
            .map(|s| s.name.as_str())
            .collect();
        let explicit_event =
            decl.config.time_mode() == Some(sluice_operators::aggregate::TimeMode::Event);
        let mixed = !missing.is_empty() && missing.len() < sources.len();
        if !missing.is_empty() && (explicit_event || mixed) {
            let missing = missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let (message, hint) = if is_dedupe {
                (
                    format!(
                        "`{}` counts `within` in event time, as other sources feeding it \
                         have it, but source(s) {missing} provide none",
                        decl.name
                    ),
                    "add `event_time = { field = \"ts\" }` to those sources",
                )
            } else {
                (
                    format!(
                        "the window of `{}` uses event time, but source(s) {missing} provide none",
                        decl.name
                    ),
                    "add `event_time = { field = \"ts\" }` to those sources, or set `time = \"processing\"`",
                )
            };
            errors.push(
                ConfigError::at(src, entry.name_span.start, message)
                    .with_field(format!("transforms.{}", decl.name))
                    .with_hint(Some(hint.into())),
            );
        }
    }
    errors.extend(check_changelogs(src, p, entries, &graph));
    errors
}

/// Wirings that read an aggregate's changelog where they cannot (see
/// `OperatorSpec::check_input`).
fn check_changelogs(
    src: &SourceText,
    p: &Pipeline,
    entries: &[Entry],
    graph: &sluice_engine::graph::Graph,
) -> Vec<ConfigError> {
    // Transforms whose own config is wrong are reported elsewhere.
    let specs: Vec<_> = entries
        .iter()
        .map(|e| match (e.kind, e.index) {
            (NodeKind::Transform, Some(t)) => {
                crate::components::transform_spec(&p.transforms[t].config).ok()
            }
            _ => None,
        })
        .collect();
    let (_, errors) = graph.plan_streams(
        |node, input| specs[node].as_ref().map(|s| s.output_stream(input)),
        |node, input| {
            specs[node]
                .as_ref()
                .map_or(Ok(()), |s| s.check_input(input))
        },
    );
    errors
        .into_iter()
        .map(|(node, e)| {
            ConfigError::at(
                src,
                entries[node].name_span.start,
                format!("transform `{}` {e}", entries[node].name),
            )
            .with_field(format!("transforms.{}", entries[node].name))
        })
        .collect()
}
