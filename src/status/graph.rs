//! The pipeline's graph as the status page and `sluice graph` show it:
//! components with their kind and type, the edges between them, and a
//! layout in columns by topological depth. Pure functions, no I/O.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::Pipeline;

/// Where a component is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Source,
    Transform,
    Sink,
}

/// One component, placed: `column` is its topological depth (sources 0,
/// every other component one more than its deepest input); `row` its
/// position within the column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Node {
    pub name: String,
    pub kind: Kind,
    /// The component's `type` (`http`, `aggregate`, `table`...).
    #[serde(rename = "type")]
    pub type_name: String,
    pub inputs: Vec<String>,
    pub column: usize,
    pub row: usize,
}

/// The graph of a loaded (hence validated: acyclic, every input exists)
/// pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Topology {
    pub nodes: Vec<Node>,
}

/// The `type` tag a transform's options serialize with.
fn type_tag<T: Serialize>(config: &T) -> String {
    serde_json::to_value(config)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

impl Topology {
    pub(crate) fn of(p: &Pipeline) -> Topology {
        let mut nodes = Vec::new();
        for s in &p.sources {
            let kind = s.config.type_name().to_string();
            nodes.push((s.name.clone(), Kind::Source, kind, vec![]));
        }
        for t in &p.transforms {
            nodes.push((
                t.name.clone(),
                Kind::Transform,
                type_tag(&t.config),
                t.inputs.clone(),
            ));
        }
        for s in &p.sinks {
            nodes.push((
                s.name.clone(),
                Kind::Sink,
                s.config.type_name().to_string(),
                s.inputs.clone(),
            ));
        }
        Topology::layout(nodes)
    }

    /// Places `(name, kind, type, inputs)` in columns and rows. Inputs
    /// that name no node are ignored (a loaded pipeline has none).
    pub(crate) fn layout(decl: Vec<(String, Kind, String, Vec<String>)>) -> Topology {
        let index = |name: &str| decl.iter().position(|d| d.0 == name);
        let inputs: Vec<Vec<usize>> = decl
            .iter()
            .map(|d| d.3.iter().filter_map(|i| index(i)).collect())
            .collect();
        // Longest path from a source; the graph is acyclic, so at most
        // `n` rounds of relaxation settle it (and cap a malformed one).
        let mut depth = vec![0usize; decl.len()];
        for _ in 0..decl.len() {
            let mut changed = false;
            for (i, ins) in inputs.iter().enumerate() {
                let d = ins.iter().map(|&j| depth[j] + 1).max().unwrap_or(0);
                if d > depth[i] {
                    depth[i] = d;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // Rows: each column in declaration order, then (from the second
        // column on) sorted by the mean row of the inputs, which keeps
        // edges from crossing in the common shapes.
        let mut row = vec![0f64; decl.len()];
        let columns = depth.iter().max().map_or(0, |m| m + 1);
        for c in 0..columns {
            let mut members: Vec<usize> = (0..decl.len()).filter(|&i| depth[i] == c).collect();
            let key = |i: usize| {
                if inputs[i].is_empty() {
                    i as f64
                } else {
                    inputs[i].iter().map(|&j| row[j]).sum::<f64>() / inputs[i].len() as f64
                }
            };
            members.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
            for (r, &i) in members.iter().enumerate() {
                row[i] = r as f64;
            }
        }
        Topology {
            nodes: decl
                .into_iter()
                .enumerate()
                .map(|(i, (name, kind, type_name, inputs))| Node {
                    name,
                    kind,
                    type_name,
                    inputs,
                    column: depth[i],
                    row: row[i] as usize,
                })
                .collect(),
        }
    }

    /// The graph as a Mermaid flowchart: sources as stadiums, transforms
    /// as boxes, sinks as cylinders, each labelled `name (type)`.
    pub(crate) fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for (i, n) in self.nodes.iter().enumerate() {
            let label = format!("{} ({})", n.name, n.type_name).replace('"', "#quot;");
            let _ = match n.kind {
                Kind::Source => writeln!(out, "    n{i}([\"{label}\"])"),
                Kind::Transform => writeln!(out, "    n{i}[\"{label}\"]"),
                Kind::Sink => writeln!(out, "    n{i}[(\"{label}\")]"),
            };
        }
        for (to, from) in self.edges() {
            let _ = writeln!(out, "    n{from} --> n{to}");
        }
        out
    }

    /// The graph in Graphviz DOT, left to right, same shapes and labels.
    pub(crate) fn to_dot(&self) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out = String::from("digraph pipeline {\n    rankdir=LR;\n");
        for n in &self.nodes {
            let shape = match n.kind {
                Kind::Source => "shape=box, style=rounded",
                Kind::Transform => "shape=box",
                Kind::Sink => "shape=cylinder",
            };
            let _ = writeln!(
                out,
                "    {} [label={}, {shape}];",
                quote(&n.name),
                quote(&format!("{} ({})", n.name, n.type_name))
            );
        }
        for (to, from) in self.edges() {
            let _ = writeln!(
                out,
                "    {} -> {};",
                quote(&self.nodes[from].name),
                quote(&self.nodes[to].name)
            );
        }
        out.push_str("}\n");
        out
    }

    /// `(to, from)` node indexes, in declaration order of `to` and its inputs.
    fn edges(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (to, n) in self.nodes.iter().enumerate() {
            for input in &n.inputs {
                if let Some(from) = self.nodes.iter().position(|m| &m.name == input) {
                    out.push((to, from));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(
        name: &str,
        kind: Kind,
        ty: &str,
        inputs: &[&str],
    ) -> (String, Kind, String, Vec<String>) {
        (
            name.into(),
            kind,
            ty.into(),
            inputs.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn place(t: &Topology) -> Vec<(&str, usize, usize)> {
        t.nodes
            .iter()
            .map(|n| (n.name.as_str(), n.column, n.row))
            .collect()
    }

    #[test]
    fn columns_follow_the_longest_path() {
        let t = Topology::layout(vec![
            decl("a", Kind::Source, "http", &[]),
            decl("b", Kind::Source, "file", &[]),
            decl("f", Kind::Transform, "filter", &["a"]),
            decl("agg", Kind::Transform, "aggregate", &["f", "b"]),
            decl("raw", Kind::Sink, "stdout", &["b"]),
            decl("out", Kind::Sink, "table", &["agg"]),
        ]);
        assert_eq!(
            place(&t),
            vec![
                ("a", 0, 0),
                ("b", 0, 1),
                ("f", 1, 0),
                ("agg", 2, 0),
                ("raw", 1, 1),
                ("out", 3, 0),
            ]
        );
    }

    #[test]
    fn rows_follow_the_inputs_to_avoid_crossings() {
        // declared in the opposite order of their inputs
        let t = Topology::layout(vec![
            decl("a", Kind::Source, "http", &[]),
            decl("b", Kind::Source, "http", &[]),
            decl("from_b", Kind::Transform, "map", &["b"]),
            decl("from_a", Kind::Transform, "map", &["a"]),
            decl("sb", Kind::Sink, "table", &["from_b"]),
            decl("sa", Kind::Sink, "table", &["from_a"]),
        ]);
        let rows: Vec<_> = t.nodes.iter().map(|n| (n.name.as_str(), n.row)).collect();
        assert_eq!(
            rows,
            vec![
                ("a", 0),
                ("b", 1),
                ("from_b", 1),
                ("from_a", 0),
                ("sb", 1),
                ("sa", 0)
            ]
        );
    }

    #[test]
    fn mermaid_and_dot_quote_names() {
        let t = Topology::layout(vec![
            decl("in \"x\"", Kind::Source, "http", &[]),
            decl("out", Kind::Sink, "table", &["in \"x\""]),
        ]);
        assert_eq!(
            t.to_mermaid(),
            "flowchart LR\n    n0([\"in #quot;x#quot; (http)\"])\n    n1[(\"out (table)\")]\n    n0 --> n1\n"
        );
        assert_eq!(
            t.to_dot(),
            "digraph pipeline {\n    rankdir=LR;\n    \"in \\\"x\\\"\" [label=\"in \\\"x\\\" (http)\", shape=box, style=rounded];\n    \"out\" [label=\"out (table)\", shape=cylinder];\n    \"in \\\"x\\\"\" -> \"out\";\n}\n"
        );
    }
}
