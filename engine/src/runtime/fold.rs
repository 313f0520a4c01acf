//! Which sources fold their rows into partial results where they are
//! decoded (see [`crate::source::SourceOutput::with_fold`]).

use std::sync::Arc;

use crate::operator::Operator;

/// Per source: the operator node it feeds and a combiner of that node,
/// when the source's rows can be folded into partial results where they
/// are decoded: the source's only reader is an operator with a batch
/// combiner (an aggregate of events, all-time or in fixed windows) whose
/// merges round like its rows (no
/// float sums: a replay read in other batches must give the same digits),
/// in a run of one worker (with several, rows are routed to their owners
/// first).
pub(super) type Folds = Vec<Option<(usize, Arc<dyn crate::operator::Combiner>)>>;

pub(super) fn fold_plan(
    graph: &crate::graph::Graph,
    operators: &[Option<Box<dyn Operator>>],
    n_sources: usize,
    clustered: bool,
) -> Folds {
    (0..n_sources)
        .map(|s| {
            let [node] = graph.outputs[s][..] else {
                return None;
            };
            if clustered {
                return None;
            }
            let op = operators.get(node.checked_sub(n_sources)?)?.as_ref()?;
            let combiner = op.batch_combiner()?;
            if combiner.rounds_differently() {
                return None;
            }
            Some((node, Arc::from(combiner)))
        })
        .collect()
}
