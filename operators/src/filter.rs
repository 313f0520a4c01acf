//! `filter`: keeps the events for which a condition holds.
//!
//! ```toml
//! [transforms.hot_gt]
//! type = "filter"
//! inputs = ["weather"]
//! condition = "country == 'GT' and temp_c > 25"
//! ```
//! See [`crate::expr`] for the condition language.

use serde::{Deserialize, Serialize};
use sluice_engine::batch::{Batch, RowKind};
use sluice_engine::operator::{
    BuildContext, BuildError, Emitter, FieldSet, Operator, OperatorSpec,
};

use crate::expr::{self, Expr};

/// Configuration of a `filter` transform.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The condition events must satisfy, e.g. `country == 'GT' and temp_c > 25`.
    pub condition: String,
}

/// A validated filter.
pub struct FilterSpec {
    expr: Expr,
}

impl FilterSpec {
    /// Parses the condition; the error carries the column within it.
    pub fn new(config: &FilterConfig) -> Result<Self, expr::ExprError> {
        Ok(FilterSpec {
            expr: expr::parse(&config.condition)?,
        })
    }
}

impl OperatorSpec for FilterSpec {
    fn input_reads(&self, downstream: &FieldSet) -> FieldSet {
        let mut reads = downstream.clone();
        let mut fields = Vec::new();
        self.expr.fields(&mut fields);
        for f in fields {
            reads.insert(f);
        }
        reads
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Operator>, BuildError> {
        Ok(Box::new(Filter {
            expr: self.expr.clone(),
            keep: Vec::new(),
        }))
    }
}

struct Filter {
    expr: Expr,
    keep: Vec<bool>,
}

impl Operator for Filter {
    fn process(&mut self, mut batch: Batch, out: &mut Emitter<'_>) {
        self.keep.clear();
        self.keep
            .extend(batch.rows.iter().map(|row| self.expr.eval(row)));
        if !batch.kinds.is_empty() {
            // A changelog: an upsert that no longer passes withdraws the
            // key's earlier row, which may have passed; deletes pass.
            for (keep, kind) in self.keep.iter_mut().zip(batch.kinds.iter_mut()) {
                match kind {
                    RowKind::Upsert if !*keep => {
                        *kind = RowKind::Delete;
                        *keep = true;
                    }
                    RowKind::Delete => *keep = true,
                    _ => {}
                }
            }
        }
        if self.keep.iter().all(|&k| k) {
            out.emit(batch);
            return;
        }
        batch.retain_mask(&self.keep);
        out.emit(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{batch_of, build_ctx, run_op};

    #[test]
    fn example_config_parses() {
        let c: FilterConfig =
            toml::from_str("condition = \"country == 'GT' and temp_c > 25\"").unwrap();
        assert!(FilterSpec::new(&c).is_ok());
    }

    #[test]
    fn keeps_matching_rows() {
        let spec = FilterSpec::new(&FilterConfig {
            condition: "n > 1".into(),
        })
        .unwrap();
        let mut op = spec.build(&build_ctx()).unwrap();
        let (out, dead) = run_op(
            op.as_mut(),
            batch_of(&[r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]),
        );
        assert!(dead.is_empty());
        let rows: Vec<String> = out
            .iter()
            .flat_map(|b| b.rows.iter().map(|r| r.to_string()))
            .collect();
        assert_eq!(rows, vec![r#"{"n":2}"#, r#"{"n":3}"#]);
        assert_eq!(out[0].meta[0].offset, 1);
    }
}
