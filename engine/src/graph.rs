//! The pipeline graph: validation (unknown inputs, cycles, unused nodes)
//! and the planning passes over it (which fields each source must decode,
//! which sources feed each node). Pure functions, no I/O.

use std::collections::BTreeSet;

use crate::config::did_you_mean;
use crate::error::Invalid;
use crate::operator::{FieldSet, Stream};

/// The section a node is declared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Declared under `[sources]`: produces events, has no inputs.
    Source,
    /// Declared under `[transforms]`: reads inputs and produces events.
    Transform,
    /// Declared under `[sinks]`: reads inputs, has no output.
    Sink,
}

impl NodeKind {
    /// The pipeline-file section the kind is declared in (`sources`,
    /// `transforms` or `sinks`), as used in error messages.
    pub fn section(self) -> &'static str {
        match self {
            NodeKind::Source => "sources",
            NodeKind::Transform => "transforms",
            NodeKind::Sink => "sinks",
        }
    }
}

/// A node as declared: its name, section and named inputs.
#[derive(Debug, Clone)]
pub struct GraphNode {
    /// The component's name, unique across all sections.
    pub name: String,
    /// The section it is declared in.
    pub kind: NodeKind,
    /// The names listed in its `inputs`, in file order.
    pub inputs: Vec<String>,
}

/// A structural mistake in the pipeline graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    /// `inputs` names something that does not exist.
    UnknownInput {
        /// Index of the reading node in the declared nodes.
        node: usize,
        /// Index of the unknown name in that node's `inputs`.
        input: usize,
        /// A close existing name ("did you mean"), if any.
        suggestion: Option<String>,
    },
    /// `inputs` names a sink (sinks have no output).
    InputIsSink {
        /// Index of the reading node in the declared nodes.
        node: usize,
        /// Index of the sink's name in that node's `inputs`.
        input: usize,
    },
    /// A source declares inputs.
    SourceWithInputs {
        /// Index of the source in the declared nodes.
        node: usize,
    },
    /// A transform or sink has no inputs.
    NoInputs {
        /// Index of the transform or sink in the declared nodes.
        node: usize,
    },
    /// The same name is used twice (names are shared by all sections).
    DuplicateName {
        /// Index of the later node using the name.
        node: usize,
        /// Index of the first node declared with that name.
        first: usize,
    },
    /// The nodes form a cycle (listed in order).
    Cycle {
        /// Indices of the nodes on the cycle, in order; it closes from the
        /// last back to the first.
        nodes: Vec<usize>,
    },
    /// A source or transform whose output nobody reads.
    Unused {
        /// Index of the unread node in the declared nodes.
        node: usize,
    },
    /// The pipeline has no source or no sink.
    Empty {
        /// What is missing: `"source"` or `"sink"`.
        missing: &'static str,
    },
}

/// A validated graph.
#[derive(Debug, Clone)]
pub struct Graph {
    /// The nodes as declared; every index in the graph refers to this list.
    pub nodes: Vec<GraphNode>,
    /// Resolved inputs of each node.
    pub inputs: Vec<Vec<usize>>,
    /// Nodes reading each node's output.
    pub outputs: Vec<Vec<usize>>,
    /// A topological order (inputs before the nodes reading them).
    pub order: Vec<usize>,
}

impl GraphError {
    /// A human explanation, naming nodes.
    pub fn describe(&self, nodes: &[GraphNode]) -> String {
        let full = |i: usize| format!("[{}.{}]", nodes[i].kind.section(), nodes[i].name);
        match self {
            GraphError::UnknownInput { node, input, .. } => format!(
                "{} reads from `{}`, which is not a source or transform of this pipeline",
                full(*node),
                nodes[*node].inputs[*input]
            ),
            GraphError::InputIsSink { node, input } => format!(
                "{} reads from `{}`, which is a sink (sinks have no output)",
                full(*node),
                nodes[*node].inputs[*input]
            ),
            GraphError::SourceWithInputs { node } => {
                format!("{} is a source and cannot have `inputs`", full(*node))
            }
            GraphError::NoInputs { node } => {
                format!("{} needs `inputs` (the components it reads from)", full(*node))
            }
            GraphError::DuplicateName { node, first } => format!(
                "the name `{}` is used by both {} and {} (names must be unique across sections)",
                nodes[*node].name,
                full(*first),
                full(*node)
            ),
            GraphError::Cycle { nodes: cycle } => {
                let names: Vec<_> = cycle.iter().map(|&i| nodes[i].name.as_str()).collect();
                format!("the pipeline has a cycle: {} -> {}", names.join(" -> "), names[0])
            }
            GraphError::Unused { node } => format!(
                "{} is not read by any transform or sink (a dangling component: remove it or add it to some `inputs`)",
                full(*node)
            ),
            GraphError::Empty { missing } => format!("the pipeline has no {missing}"),
        }
    }
}

/// Validates `nodes` and computes the graph. Reports every error found.
pub fn build_graph(nodes: Vec<GraphNode>) -> Result<Graph, Vec<GraphError>> {
    let mut errors = Vec::new();
    for kind in [NodeKind::Source, NodeKind::Sink] {
        if !nodes.iter().any(|n| n.kind == kind) {
            errors.push(GraphError::Empty {
                missing: if kind == NodeKind::Source {
                    "source"
                } else {
                    "sink"
                },
            });
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if let Some(first) = nodes[..i].iter().position(|m| m.name == n.name) {
            errors.push(GraphError::DuplicateName { node: i, first });
        }
    }
    let mut inputs = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        match n.kind {
            NodeKind::Source if !n.inputs.is_empty() => {
                errors.push(GraphError::SourceWithInputs { node: i })
            }
            NodeKind::Transform | NodeKind::Sink if n.inputs.is_empty() => {
                errors.push(GraphError::NoInputs { node: i })
            }
            _ => {}
        }
        for (j, name) in n.inputs.iter().enumerate() {
            match nodes.iter().position(|m| &m.name == name) {
                Some(k) if nodes[k].kind == NodeKind::Sink => {
                    errors.push(GraphError::InputIsSink { node: i, input: j })
                }
                Some(k) => {
                    if !inputs[i].contains(&k) {
                        inputs[i].push(k)
                    }
                }
                None => {
                    let candidates = nodes
                        .iter()
                        .filter(|m| m.kind != NodeKind::Sink)
                        .map(|m| m.name.as_str());
                    errors.push(GraphError::UnknownInput {
                        node: i,
                        input: j,
                        suggestion: did_you_mean(name, candidates).map(str::to_string),
                    });
                }
            }
        }
    }
    let mut outputs = vec![Vec::new(); nodes.len()];
    for (i, ins) in inputs.iter().enumerate() {
        for &k in ins {
            outputs[k].push(i);
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if n.kind != NodeKind::Sink && outputs[i].is_empty() {
            errors.push(GraphError::Unused { node: i });
        }
    }
    let order = match topo_order(&inputs) {
        Ok(order) => order,
        Err(cycle) => {
            errors.push(GraphError::Cycle { nodes: cycle });
            Vec::new()
        }
    };
    if errors.is_empty() {
        Ok(Graph {
            nodes,
            inputs,
            outputs,
            order,
        })
    } else {
        Err(errors)
    }
}

/// Kahn's algorithm; on a cycle, returns the nodes of one cycle.
fn topo_order(inputs: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = inputs.len();
    let mut indegree: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let mut outputs = vec![Vec::new(); n];
    for (i, ins) in inputs.iter().enumerate() {
        for &k in ins {
            outputs[k].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &o in &outputs[i] {
            indegree[o] -= 1;
            if indegree[o] == 0 {
                ready.push(o);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk inputs from a node left in the cycle until a node repeats.
    let mut cur = (0..n).find(|&i| indegree[i] > 0).expect("a node is left");
    let mut seen = Vec::new();
    loop {
        if let Some(pos) = seen.iter().position(|&s| s == cur) {
            let mut cycle: Vec<usize> = seen[pos..].to_vec();
            cycle.reverse();
            return Err(cycle);
        }
        seen.push(cur);
        cur = *inputs[cur]
            .iter()
            .find(|&&k| indegree[k] > 0)
            .expect("a node in a cycle has an input in the cycle");
    }
}

impl Graph {
    /// Which fields each node's output must carry, given how each node
    /// transforms the needs of its readers (`input_reads(node, needs)`).
    /// Sinks need whole records. Returns one set per node.
    /// What flows out of every node, in node order, given what each
    /// transform makes of its input (`output(transform node, input)`,
    /// `None` for sources and sinks). Also returns the nodes that cannot
    /// read their input, with the reason: a node reading a changelog
    /// together with anything else (their keys would be confused), or
    /// whatever `check(node, input)` refuses.
    pub fn plan_streams(
        &self,
        output: impl Fn(usize, Stream) -> Option<Stream>,
        check: impl Fn(usize, Stream) -> Result<(), Invalid>,
    ) -> (Vec<Stream>, Vec<(usize, Invalid)>) {
        let mut streams = vec![Stream::Events; self.nodes.len()];
        let mut errors = Vec::new();
        for &node in &self.order {
            let inputs = &self.inputs[node];
            let input = inputs
                .iter()
                .map(|&i| streams[i])
                .find(|s| s.is_changelog())
                .unwrap_or_default();
            if self.nodes[node].kind != NodeKind::Transform {
                streams[node] = input;
                continue;
            }
            if input.is_changelog() && inputs.len() > 1 {
                let names: Vec<String> = inputs
                    .iter()
                    .map(|&i| format!("`{}`", self.nodes[i].name))
                    .collect();
                errors.push((
                    node,
                    Invalid::new(format!(
                        "reads the changelog of an aggregate together with other inputs ({}); \
                         the keys of their rows would be mixed up. Give each aggregate's output its \
                         own transform",
                        names.join(", ")
                    )),
                ));
                continue;
            }
            if let Err(e) = check(node, input) {
                errors.push((node, e));
            }
            streams[node] = output(node, input).unwrap_or(input);
        }
        (streams, errors)
    }

    /// The fields each node's output must carry, walking back from the
    /// sinks (which read every field). `input_reads(node, needed)` says which
    /// input fields transform `node` reads when its output must carry
    /// `needed`. For a source the result is what it must decode.
    pub fn plan_reads(&self, input_reads: impl Fn(usize, &FieldSet) -> FieldSet) -> Vec<FieldSet> {
        let mut needs = vec![FieldSet::empty(); self.nodes.len()];
        for &i in self.order.iter().rev() {
            let mut need = FieldSet::empty();
            for &o in &self.outputs[i] {
                let reads = match self.nodes[o].kind {
                    NodeKind::Sink => FieldSet::All,
                    _ => input_reads(o, &needs[o]),
                };
                need.union(&reads);
            }
            needs[i] = need;
        }
        needs
    }

    /// The sources feeding each node (directly or through transforms).
    pub fn upstream_sources(&self) -> Vec<BTreeSet<usize>> {
        let mut ups = vec![BTreeSet::new(); self.nodes.len()];
        for &i in &self.order {
            if self.nodes[i].kind == NodeKind::Source {
                ups[i].insert(i);
            }
            let merged: BTreeSet<usize> = self.inputs[i]
                .iter()
                .flat_map(|&k| ups[k].clone())
                .collect();
            ups[i].extend(merged);
        }
        ups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_path;

    fn node(name: &str, kind: NodeKind, inputs: &[&str]) -> GraphNode {
        GraphNode {
            name: name.into(),
            kind,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn valid_graph_orders_inputs_first() {
        let g = build_graph(vec![
            node("out", NodeKind::Sink, &["agg"]),
            node("agg", NodeKind::Transform, &["f"]),
            node("f", NodeKind::Transform, &["src"]),
            node("src", NodeKind::Source, &[]),
        ])
        .unwrap();
        let pos = |n: usize| g.order.iter().position(|&x| x == n).unwrap();
        assert!(pos(3) < pos(2) && pos(2) < pos(1) && pos(1) < pos(0));
        assert_eq!(g.upstream_sources()[0], BTreeSet::from([3]));
    }

    #[test]
    fn reports_unknown_input_with_suggestion() {
        let errs = build_graph(vec![
            node("weather", NodeKind::Source, &[]),
            node("out", NodeKind::Sink, &["wether"]),
        ])
        .unwrap_err();
        assert!(errs.contains(&GraphError::UnknownInput {
            node: 1,
            input: 0,
            suggestion: Some("weather".into())
        }));
    }

    #[test]
    fn reports_cycles_and_dangling_nodes() {
        let nodes = vec![
            node("src", NodeKind::Source, &[]),
            node("a", NodeKind::Transform, &["src", "b"]),
            node("b", NodeKind::Transform, &["a"]),
            node("lonely", NodeKind::Transform, &["src"]),
            node("out", NodeKind::Sink, &["b"]),
        ];
        let errs = build_graph(nodes.clone()).unwrap_err();
        assert!(errs.contains(&GraphError::Unused { node: 3 }), "{errs:?}");
        let cycle = errs
            .iter()
            .find_map(|e| match e {
                GraphError::Cycle { nodes } => Some(nodes.clone()),
                _ => None,
            })
            .expect("cycle reported");
        let mut sorted = cycle.clone();
        sorted.sort();
        assert_eq!(sorted, vec![1, 2]);
        assert!(GraphError::Cycle { nodes: cycle }
            .describe(&nodes)
            .contains("cycle"));
    }

    #[test]
    fn reports_structural_mistakes() {
        let errs = build_graph(vec![
            node("src", NodeKind::Source, &["x"]),
            node("src", NodeKind::Transform, &[]),
            node("out", NodeKind::Sink, &["out"]),
        ])
        .unwrap_err();
        assert!(errs.contains(&GraphError::SourceWithInputs { node: 0 }));
        assert!(errs.contains(&GraphError::DuplicateName { node: 1, first: 0 }));
        assert!(errs.contains(&GraphError::NoInputs { node: 1 }));
        assert!(errs.contains(&GraphError::InputIsSink { node: 2, input: 0 }));
        let errs = build_graph(vec![node("t", NodeKind::Transform, &[])]).unwrap_err();
        assert!(errs.contains(&GraphError::Empty { missing: "source" }));
    }

    #[test]
    fn reads_propagate_back_to_sources() {
        let g = build_graph(vec![
            node("src", NodeKind::Source, &[]),
            node("agg", NodeKind::Transform, &["src"]),
            node("out", NodeKind::Sink, &["agg"]),
        ])
        .unwrap();
        let needs = g.plan_reads(|_, _| {
            let mut f = FieldSet::empty();
            f.insert(parse_path("country"));
            f
        });
        let mut want = FieldSet::empty();
        want.insert(parse_path("country"));
        assert_eq!(needs[0], want);
        assert_eq!(needs[1], FieldSet::All);
    }
}
