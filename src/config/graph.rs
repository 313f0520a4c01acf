//! The pipeline graph of a loaded file: structural mistakes (unknown
//! inputs, cycles, unused components...), event time where windows need
//! it, and wirings that cannot read an aggregate's changelog, each located
//! in the file.

use sluice_engine::config::{ConfigError, SourceText};
use sluice_engine::graph::{GraphError, GraphNode, NodeKind};
use sluice_engine::plan::{NodeInfo, Plan, PlanError};

use super::{Entry, Pipeline};

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
    // Components with invalid options are planned as unknowns.
    let info: Vec<NodeInfo<'_>> = entries
        .iter()
        .map(|e| match (e.kind, e.index) {
            (NodeKind::Source, i) => NodeInfo::Source {
                event_time: i.map(|i| p.sources[i].event_time.is_some()),
            },
            (NodeKind::Transform, i) => NodeInfo::Transform {
                spec: i.map(|i| p.transforms[i].spec.as_ref()),
            },
            (NodeKind::Sink, _) => NodeInfo::Sink,
        })
        .collect();
    let Err(errors) = Plan::new(nodes.clone(), &info) else {
        return Vec::new();
    };
    let graph_errors: Vec<GraphError> = errors
        .iter()
        .filter_map(|e| match e {
            PlanError::Graph(g) => Some(g.clone()),
            _ => None,
        })
        .collect();
    if graph_errors.is_empty() {
        return errors
            .iter()
            .filter_map(|e| match e {
                PlanError::EventTime { node, .. } | PlanError::Input { node, .. } => Some(
                    ConfigError::at(src, entries[*node].name_span.start, e.describe(&nodes))
                        .with_field(format!("transforms.{}", entries[*node].name))
                        .with_hint(e.hint().map(String::from)),
                ),
                PlanError::Graph(_) => None,
            })
            .collect();
    }
    structure_errors(
        src,
        entries,
        &nodes,
        &graph_errors,
        failed_components,
        graph_incomplete,
    )
}

/// The graph's structural mistakes, located in the file.
fn structure_errors(
    src: &SourceText,
    entries: &[Entry],
    nodes: &[GraphNode],
    errors: &[GraphError],
    failed_components: bool,
    graph_incomplete: bool,
) -> Vec<ConfigError> {
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
    errors
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
                Some(o) => ConfigError::at(src, o, e.describe(nodes)),
                None => ConfigError::general(&src.path, e.describe(nodes)),
            };
            if let Some(n) = node {
                err = err.with_field(format!("{}.{}", nodes[n].kind.section(), nodes[n].name));
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
        .collect()
}
