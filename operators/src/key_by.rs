//! `key_by`: sets the group key of each event from one or more fields, for
//! the aggregations downstream (which then need no `group_by`). Events
//! missing a key field go to the dead-letter output.
//!
//! ```toml
//! [transforms.by_country]
//! type = "key_by"
//! inputs = ["weather"]
//! fields = ["country"]
//! ```

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_engine::batch::Batch;
use sluice_engine::dead_letter::{DeadLetter, ErrorType};
use sluice_engine::error::Invalid;
use sluice_engine::keys::{encode_component, GroupKey};
use sluice_engine::operator::{
    BuildContext, BuildError, Emitter, FieldPath, FieldSet, Operator, OperatorSpec, Stream,
};
use sluice_engine::value::{parse_path, Value};

/// Configuration of a `key_by` transform.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyByConfig {
    /// The fields (dotted paths) forming the group key, in order.
    pub fields: Vec<String>,
}

/// A validated key_by.
pub struct KeyBySpec {
    fields: Vec<FieldPath>,
}

impl KeyBySpec {
    pub fn new(config: &KeyByConfig) -> Result<Self, Invalid> {
        if config.fields.is_empty() {
            return Err("`fields` must name at least one field".into());
        }
        Ok(KeyBySpec {
            fields: config.fields.iter().map(|f| parse_path(f)).collect(),
        })
    }
}

impl OperatorSpec for KeyBySpec {
    fn input_reads(&self, downstream: &FieldSet) -> FieldSet {
        let mut reads = downstream.clone();
        for f in &self.fields {
            reads.insert(f.clone());
        }
        reads
    }

    fn output_key(&self, _input: Option<&[FieldPath]>) -> Option<Vec<FieldPath>> {
        Some(self.fields.clone())
    }

    fn check_input(&self, input: Stream) -> Result<(), Invalid> {
        if input.is_changelog() {
            return Err(
                "reads the changelog of an aggregate, which `key_by` cannot re-key: \
                 its rows replace earlier rows by their own key. Group the downstream aggregate \
                 with `group_by` instead"
                    .into(),
            );
        }
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Operator>, BuildError> {
        Ok(Box::new(KeyBy {
            name: ctx.name.clone(),
            fields: self.fields.clone(),
        }))
    }
}

/// Computes the group key of every row; rows lacking a key field are
/// returned as `Err(field index)`.
pub fn compute_keys(fields: &[FieldPath], batch: &Batch, keys: &mut Vec<Result<GroupKey, usize>>) {
    keys.clear();
    for row in &batch.rows {
        let mut key = GroupKey::new();
        let mut missing = None;
        for (i, f) in fields.iter().enumerate() {
            let v = row.get_path(f);
            if matches!(v, Value::Missing) {
                missing = Some(i);
                break;
            }
            encode_component(&mut key, v);
        }
        keys.push(missing.map_or(Ok(key), Err));
    }
}

/// Dead letter for a row whose key field `field` is missing.
pub fn missing_key(
    batch: &Batch,
    row: usize,
    component: &Arc<str>,
    field: &FieldPath,
) -> DeadLetter {
    DeadLetter::from_row(
        batch,
        row,
        component,
        ErrorType::MissingField,
        format!("key field `{}` is missing", field.join(".")),
    )
}

struct KeyBy {
    name: Arc<str>,
    fields: Vec<FieldPath>,
}

impl Operator for KeyBy {
    fn process(&mut self, mut batch: Batch, out: &mut Emitter<'_>) {
        let mut keys = Vec::with_capacity(batch.len());
        compute_keys(&self.fields, &batch, &mut keys);
        let mut keep = Vec::with_capacity(keys.len());
        let mut good = Vec::with_capacity(keys.len());
        for (i, k) in keys.into_iter().enumerate() {
            match k {
                Ok(k) => {
                    keep.push(true);
                    good.push(k);
                }
                Err(f) => {
                    keep.push(false);
                    out.dead_letter(missing_key(&batch, i, &self.name, &self.fields[f]));
                }
            }
        }
        batch.keys.clear();
        batch.retain_mask(&keep);
        batch.keys = good;
        out.emit(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{batch_of, build_ctx, run_op};

    #[test]
    fn example_config_parses() {
        let c: KeyByConfig = toml::from_str("fields = [\"country\"]").unwrap();
        assert!(KeyBySpec::new(&c).is_ok());
        assert!(KeyBySpec::new(&KeyByConfig { fields: vec![] }).is_err());
    }

    #[test]
    fn keys_rows_and_rejects_missing_keys() {
        let spec = KeyBySpec::new(&KeyByConfig {
            fields: vec!["a".into(), "b.c".into()],
        })
        .unwrap();
        let mut op = spec.build(&build_ctx()).unwrap();
        let (out, dead) = run_op(
            op.as_mut(),
            batch_of(&[
                r#"{"a":1,"b":{"c":"x"}}"#,
                r#"{"a":1}"#,
                r#"{"a":1,"b":{"c":"x"},"z":0}"#,
            ]),
        );
        assert_eq!(out[0].len(), 2);
        assert_eq!(out[0].keys[0], out[0].keys[1]);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "key field `b.c` is missing");
        assert_eq!(dead[0].raw, br#"{"a":1}"#.to_vec());
    }
}
