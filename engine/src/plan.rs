//! The planner: from the declared components of a pipeline to a validated
//! [`Graph`] and what every node needs to run (the fields each source
//! decodes, the group key and the stream kind flowing out of every node,
//! whether a transform sees event time). `sluice validate` and the runtime
//! both call [`Plan::new`], so a pipeline is checked by one set of rules.
//! Pure functions, no I/O.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::graph::{build_graph, Graph, GraphError, GraphNode, NodeKind};
use crate::operator::{BuildContext, FieldPath, FieldSet, OperatorSpec, Stream, TimeUse};
use crate::runtime::PipelineSpec;

/// What the planner is told about one node, in graph order.
#[derive(Clone, Copy)]
pub enum NodeInfo<'a> {
    /// A source; `event_time` is None when its options are invalid (then
    /// it is not known whether it provides event time).
    Source {
        /// Whether the source stamps events with event time.
        event_time: Option<bool>,
    },
    /// A transform; `spec` is None when its options are invalid.
    Transform {
        /// The transform's operator, as loaded from its options.
        spec: Option<&'a dyn OperatorSpec>,
    },
    /// A sink.
    Sink,
}

/// A mistake found by the planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// The graph's structure (reported alone: nothing else is planned).
    Graph(GraphError),
    /// A transform cannot read what flows into it.
    Input {
        /// Index of the transform in the graph's nodes.
        node: usize,
        /// Why it cannot, completing "transform `name` ...".
        reason: String,
    },
    /// A transform places events in time, but some of the sources feeding
    /// it provide no event time.
    EventTime {
        /// Index of the transform in the graph's nodes.
        node: usize,
        /// How the transform uses time (decides the message and hint).
        time_use: TimeUse,
        /// The sources without event time.
        missing: Vec<usize>,
    },
}

impl PlanError {
    /// A human explanation, naming nodes.
    pub fn describe(&self, nodes: &[GraphNode]) -> String {
        match self {
            PlanError::Graph(e) => e.describe(nodes),
            PlanError::Input { node, reason } => {
                format!("transform `{}` {reason}", nodes[*node].name)
            }
            PlanError::EventTime {
                node,
                time_use,
                missing,
            } => {
                let missing = missing
                    .iter()
                    .map(|&m| format!("`{}`", nodes[m].name))
                    .collect::<Vec<_>>()
                    .join(", ");
                let name = &nodes[*node].name;
                if *time_use == TimeUse::Period {
                    format!(
                        "`{name}` counts `within` in event time, as other sources feeding it \
                         have it, but source(s) {missing} provide none"
                    )
                } else {
                    format!(
                        "the window of `{name}` uses event time, but source(s) {missing} provide none"
                    )
                }
            }
        }
    }

    /// What to do about it, when there is a standard answer.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            PlanError::EventTime {
                time_use: TimeUse::Period,
                ..
            } => Some("add `event_time = { field = \"ts\" }` to those sources"),
            PlanError::EventTime { .. } => Some(
                "add `event_time = { field = \"ts\" }` to those sources, or set `time = \"processing\"`",
            ),
            _ => None,
        }
    }
}

/// A validated, planned pipeline graph.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The validated graph the rest of the plan is indexed by.
    pub graph: Graph,
    /// The fields each node's output must carry; for a source, what it decodes.
    pub reads: Vec<FieldSet>,
    /// The sources feeding each node (directly or through transforms).
    pub upstream: Vec<BTreeSet<usize>>,
    /// The group key of each node's output (set by `key_by`).
    pub keys: Vec<Option<Vec<FieldPath>>>,
    /// What flows out of each node: events or a changelog.
    pub streams: Vec<Stream>,
    /// Whether every source feeding each node provides event time.
    pub event_time: Vec<bool>,
}

impl Plan {
    /// Builds the graph of `nodes` and plans it; `info` describes each
    /// node (same order). Returns every mistake found: the graph's own, or
    /// else every transform's that cannot read its input or lacks event
    /// time (a transform or source with invalid options is not checked).
    pub fn new(nodes: Vec<GraphNode>, info: &[NodeInfo<'_>]) -> Result<Plan, Vec<PlanError>> {
        let graph = build_graph(nodes)
            .map_err(|errors| errors.into_iter().map(PlanError::Graph).collect::<Vec<_>>())?;
        let spec = |node: usize| match info[node] {
            NodeInfo::Transform { spec } => spec,
            _ => None,
        };
        let reads = graph.plan_reads(|node, need| match spec(node) {
            Some(s) => s.input_reads(need),
            None => FieldSet::All,
        });
        let upstream = graph.upstream_sources();
        let mut keys: Vec<Option<Vec<FieldPath>>> = vec![None; graph.nodes.len()];
        for &node in &graph.order {
            if let Some(s) = spec(node) {
                let input_key = graph.inputs[node].first().and_then(|&i| keys[i].clone());
                keys[node] = s.output_key(input_key.as_deref());
            }
        }
        let (streams, stream_errors) = graph.plan_streams(
            |node, input| spec(node).map(|s| s.output_stream(input)),
            |node, input| spec(node).map_or(Ok(()), |s| s.check_input(input)),
        );
        let source_time = |s: usize| match info[s] {
            NodeInfo::Source { event_time } => event_time,
            _ => None,
        };
        let event_time: Vec<bool> = upstream
            .iter()
            .map(|sources| sources.iter().all(|&s| source_time(s) == Some(true)))
            .collect();
        let mut errors: Vec<PlanError> = upstream
            .iter()
            .enumerate()
            .filter_map(|(node, sources)| {
                let time_use = spec(node)?.time_use();
                check_event_time(node, time_use, sources, source_time)
            })
            .collect();
        errors.extend(
            stream_errors
                .into_iter()
                .map(|(node, reason)| PlanError::Input {
                    node,
                    reason: reason.to_string(),
                }),
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Plan {
            graph,
            reads,
            upstream,
            keys,
            streams,
            event_time,
        })
    }

    /// What the planner tells the transform at `node` when building it.
    pub fn build_context(&self, node: usize, key_groups: u16) -> BuildContext {
        let first_input = self.graph.inputs[node].first().copied();
        BuildContext {
            name: Arc::from(self.graph.nodes[node].name.as_str()),
            key_groups,
            upstream_key: first_input.and_then(|i| self.keys[i].clone()),
            event_time: self.event_time[node],
            input: first_input.map(|i| self.streams[i]).unwrap_or_default(),
        }
    }
}

impl Plan {
    /// Plans a pipeline as the runtime receives it; the error lists every
    /// mistake, separated by `; `.
    pub(crate) fn of_spec(spec: &PipelineSpec) -> Result<Plan, String> {
        let nodes = graph_nodes(
            spec.sources.iter().map(|s| s.name.as_str()),
            spec.transforms
                .iter()
                .map(|t| (t.name.as_str(), t.inputs.as_slice())),
            spec.sinks
                .iter()
                .map(|s| (s.name.as_str(), s.inputs.as_slice())),
        );
        let info: Vec<NodeInfo<'_>> = spec
            .sources
            .iter()
            .map(|s| NodeInfo::Source {
                event_time: Some(s.event_time.is_some()),
            })
            .chain(spec.transforms.iter().map(|t| NodeInfo::Transform {
                spec: Some(t.spec.as_ref()),
            }))
            .chain(spec.sinks.iter().map(|_| NodeInfo::Sink))
            .collect();
        Plan::new(nodes.clone(), &info).map_err(|errors| {
            errors
                .iter()
                .map(|e| e.describe(&nodes))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// A timed transform needs event time from all of its sources when the
/// user asked for it, and from all or none of them otherwise (a mix would
/// place some events in event time and others in processing time).
fn check_event_time(
    node: usize,
    time_use: TimeUse,
    sources: &BTreeSet<usize>,
    source_time: impl Fn(usize) -> Option<bool>,
) -> Option<PlanError> {
    if time_use == TimeUse::Untimed {
        return None;
    }
    // Sources with invalid options are not known to have event time.
    let known: Vec<(usize, bool)> = sources
        .iter()
        .map(|&s| source_time(s).map(|t| (s, t)))
        .collect::<Option<_>>()?;
    let missing: Vec<usize> = known.iter().filter(|(_, t)| !t).map(|&(s, _)| s).collect();
    let mixed = !missing.is_empty() && missing.len() < known.len();
    let required = time_use == TimeUse::EventWindow;
    (!missing.is_empty() && (required || mixed)).then_some(PlanError::EventTime {
        node,
        time_use,
        missing,
    })
}

/// Graph nodes in the order the planner expects: sources, transforms, sinks.
pub fn graph_nodes<'a>(
    sources: impl IntoIterator<Item = &'a str>,
    transforms: impl IntoIterator<Item = (&'a str, &'a [String])>,
    sinks: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> Vec<GraphNode> {
    let node = |name: &str, kind, inputs: &[String]| GraphNode {
        name: name.to_string(),
        kind,
        inputs: inputs.to_vec(),
    };
    sources
        .into_iter()
        .map(|s| node(s, NodeKind::Source, &[]))
        .chain(
            transforms
                .into_iter()
                .map(|(t, i)| node(t, NodeKind::Transform, i)),
        )
        .chain(sinks.into_iter().map(|(s, i)| node(s, NodeKind::Sink, i)))
        .collect()
}

#[cfg(test)]
mod tests;
