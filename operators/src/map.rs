//! `map`: reshapes events — select, drop, rename, copy, set and cast
//! fields, applied in that order.
//!
//! ```toml
//! [transforms.clean]
//! type = "map"
//! inputs = ["orders"]
//! select = ["id", "customer", "amount", "ts"]
//! rename = { customer = "customer_id" }
//! set = { origin = "shop" }
//! cast = { amount = "float" }
//! ```
//! An event whose field cannot be cast goes to the dead-letter output.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_engine::batch::Batch;
use sluice_engine::dead_letter::{DeadLetter, ErrorType};
use sluice_engine::error::Invalid;
use sluice_engine::operator::{
    BuildContext, BuildError, Emitter, FieldPath, FieldSet, Operator, OperatorSpec,
};
use sluice_engine::value::{parse_path, Map, Str, Value};

/// Target types of `cast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CastType {
    Int,
    Float,
    String,
    Bool,
}

/// Configuration of a `map` transform.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// Keep only these fields (dotted paths); everything else is removed.
    #[serde(default)]
    pub select: Option<Vec<String>>,
    /// Remove these fields.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Rename fields: `{ old = "new" }`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Copy fields: `{ new = "existing" }`.
    #[serde(default)]
    pub copy: BTreeMap<String, String>,
    /// Set fields to constant values: `{ origin = "shop", version = 2 }`.
    #[serde(default)]
    pub set: BTreeMap<String, serde_json::Value>,
    /// Convert fields: `{ amount = "float" }` (int, float, string, bool).
    #[serde(default)]
    pub cast: BTreeMap<String, CastType>,
}

/// A validated map.
#[derive(Debug, Clone)]
pub struct MapSpec {
    select: Option<Vec<FieldPath>>,
    drop: Vec<FieldPath>,
    rename: Vec<(FieldPath, FieldPath)>,
    copy: Vec<(FieldPath, FieldPath)>,
    set: Vec<(FieldPath, Value)>,
    cast: Vec<(FieldPath, CastType)>,
}

impl MapSpec {
    pub fn new(c: &MapConfig) -> Result<Self, Invalid> {
        let path = |s: &String| {
            if s.is_empty() || s.split('.').any(str::is_empty) {
                Err(Invalid::new(format!("`{s}` is not a valid field path")))
            } else {
                Ok(parse_path(s))
            }
        };
        let spec = MapSpec {
            select: c
                .select
                .as_ref()
                .map(|s| s.iter().map(path).collect())
                .transpose()?,
            drop: c.drop.iter().map(path).collect::<Result<_, _>>()?,
            rename: c
                .rename
                .iter()
                .map(|(a, b)| Ok((path(a)?, path(b)?)))
                .collect::<Result<_, String>>()?,
            copy: c
                .copy
                .iter()
                .map(|(new, old)| Ok((path(old)?, path(new)?)))
                .collect::<Result<_, String>>()?,
            set: c
                .set
                .iter()
                .map(|(k, v)| Ok((path(k)?, from_json(v))))
                .collect::<Result<_, String>>()?,
            cast: c
                .cast
                .iter()
                .map(|(k, t)| Ok((path(k)?, *t)))
                .collect::<Result<_, String>>()?,
        };
        if spec.select.is_none()
            && spec.drop.is_empty()
            && spec.rename.is_empty()
            && spec.copy.is_empty()
            && spec.set.is_empty()
            && spec.cast.is_empty()
        {
            return Err("a map needs at least one of select, drop, rename, copy, set, cast".into());
        }
        Ok(spec)
    }
}

/// Converts a config value into an event value.
pub fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map_or_else(|| Value::Float(n.as_f64().unwrap_or(0.0)), Value::Int),
        serde_json::Value::String(s) => Value::Str(Str::from(s.as_str())),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(from_json).collect()),
        serde_json::Value::Object(o) => Value::Object(Map(o
            .iter()
            .map(|(k, v)| (Str::from(k.as_str()), from_json(v)))
            .collect())),
    }
}

fn starts_with(p: &[Str], prefix: &[Str]) -> bool {
    p.len() >= prefix.len() && p[..prefix.len()] == *prefix
}

impl OperatorSpec for MapSpec {
    /// Walks the operations backwards, turning what is read downstream into
    /// what must be read upstream.
    fn input_reads(&self, downstream: &FieldSet) -> FieldSet {
        let mut needs: Vec<FieldPath> = match (downstream, &self.select) {
            (FieldSet::All, None) => return FieldSet::All,
            (FieldSet::All, Some(sel)) => sel.clone(),
            (FieldSet::Paths(p), _) => p.iter().cloned().collect(),
        };
        let mut extra = Vec::new();
        for (p, _) in &self.cast {
            if needs.iter().any(|n| starts_with(n, p) || starts_with(p, n)) {
                extra.push(p.clone());
            }
        }
        needs.extend(extra);
        needs.retain(|n| !self.set.iter().any(|(p, _)| starts_with(n, p)));
        let moved =
            |needs: &mut Vec<FieldPath>, from: &FieldPath, to: &FieldPath, keep_from: bool| {
                let mut add = Vec::new();
                needs.retain(|n| {
                    if starts_with(n, to) {
                        let mut src = from.clone();
                        src.extend_from_slice(&n[to.len()..]);
                        add.push(src);
                        false
                    } else {
                        keep_from || !starts_with(n, from)
                    }
                });
                needs.extend(add);
            };
        for (from, to) in self.copy.iter().rev() {
            moved(&mut needs, from, to, true);
        }
        for (from, to) in self.rename.iter().rev() {
            moved(&mut needs, from, to, false);
        }
        needs.retain(|n| !self.drop.iter().any(|d| starts_with(n, d)));
        if let Some(sel) = &self.select {
            needs.retain(|n| sel.iter().any(|s| starts_with(n, s) || starts_with(s, n)));
        }
        FieldSet::Paths(needs.into_iter().collect())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Operator>, BuildError> {
        Ok(Box::new(MapOp {
            name: ctx.name.clone(),
            spec: self.clone(),
        }))
    }
}

struct MapOp {
    name: Arc<str>,
    spec: MapSpec,
}

fn cast(v: &Value, t: CastType) -> Result<Value, String> {
    let fail = || format!("cannot cast {} `{v}` to {t:?}", v.type_name()).to_lowercase();
    Ok(match (t, v) {
        (_, Value::Missing) => Value::Missing,
        (_, Value::Null) => Value::Null,
        (CastType::Int, Value::Int(_)) => v.clone(),
        (CastType::Int, Value::Float(f)) if f.is_finite() => Value::Int(f.trunc() as i64),
        (CastType::Int, Value::Bool(b)) => Value::Int(i64::from(*b)),
        (CastType::Int, Value::Str(s)) => Value::Int(s.trim().parse().map_err(|_| fail())?),
        (CastType::Float, Value::Int(i)) => Value::Float(*i as f64),
        (CastType::Float, Value::Float(_)) => v.clone(),
        (CastType::Float, Value::Str(s)) => {
            let f: f64 = s.trim().parse().map_err(|_| fail())?;
            if !f.is_finite() {
                return Err(fail());
            }
            Value::Float(f)
        }
        (CastType::String, Value::Str(_)) => v.clone(),
        (CastType::String, other) => Value::Str(Str::from(other.to_string())),
        (CastType::Bool, Value::Bool(_)) => v.clone(),
        (CastType::Bool, Value::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Value::Bool(true),
            "false" | "0" | "no" => Value::Bool(false),
            _ => return Err(fail()),
        },
        (CastType::Bool, Value::Int(i)) => Value::Bool(*i != 0),
        _ => return Err(fail()),
    })
}

impl MapOp {
    fn apply(&self, row: &mut Value) -> Result<(), String> {
        let s = &self.spec;
        if let Some(sel) = &s.select {
            let mut out = Value::Object(Map::new());
            for p in sel {
                let v = row.take_path(p);
                if v.exists() {
                    out.set_path(p, v);
                }
            }
            *row = out;
        }
        for p in &s.drop {
            row.take_path(p);
        }
        for (from, to) in &s.rename {
            let v = row.take_path(from);
            if v.exists() {
                row.set_path(to, v);
            }
        }
        for (from, to) in &s.copy {
            let v = row.get_path(from).clone();
            if v.exists() {
                row.set_path(to, v);
            }
        }
        for (p, v) in &s.set {
            row.set_path(p, v.clone());
        }
        for (p, t) in &s.cast {
            let v =
                cast(row.get_path(p), *t).map_err(|e| format!("field `{}`: {e}", p.join(".")))?;
            if v.exists() {
                row.set_path(p, v);
            }
        }
        Ok(())
    }
}

impl Operator for MapOp {
    fn process(&mut self, mut batch: Batch, out: &mut Emitter<'_>) {
        let mut keep = Vec::with_capacity(batch.len());
        for i in 0..batch.rows.len() {
            match self.apply(&mut batch.rows[i]) {
                Ok(()) => keep.push(true),
                Err(reason) => {
                    keep.push(false);
                    out.dead_letter(DeadLetter::from_row(
                        &batch,
                        i,
                        &self.name,
                        ErrorType::WrongType,
                        reason,
                    ));
                }
            }
        }
        if keep.iter().any(|k| !k) {
            batch.retain_mask(&keep);
        }
        out.emit(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{batch_of, build_ctx, run_op};

    const EXAMPLE: &str = r#"
select = ["id", "customer", "amount", "ts"]
rename = { customer = "customer_id" }
set = { origin = "shop" }
cast = { amount = "float" }
"#;

    fn spec(toml_text: &str) -> MapSpec {
        MapSpec::new(&toml::from_str::<MapConfig>(toml_text).unwrap()).unwrap()
    }

    fn rows(out: &[Batch]) -> Vec<String> {
        out.iter()
            .flat_map(|b| b.rows.iter().map(|r| r.to_string()))
            .collect()
    }

    #[test]
    fn example_reshapes_and_dead_letters_bad_casts() {
        let mut op = spec(EXAMPLE).build(&build_ctx()).unwrap();
        let (out, dead) = run_op(
            op.as_mut(),
            batch_of(&[
                r#"{"id":1,"customer":"c1","amount":"12.5","ts":5,"junk":true}"#,
                r#"{"id":2,"customer":"c2","amount":"lots","ts":6}"#,
            ]),
        );
        assert_eq!(
            rows(&out),
            vec![r#"{"id":1,"amount":12.5,"ts":5,"customer_id":"c1","origin":"shop"}"#]
        );
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0]
                .reason
                .contains("cannot cast string `\"lots\"` to float"),
            "{}",
            dead[0].reason
        );
        assert_eq!(dead[0].error_type, ErrorType::WrongType);
    }

    #[test]
    fn reads_are_mapped_back_through_renames() {
        let s = spec(
            "rename = { customer = \"customer_id\" }\ncopy = { c2 = \"x.y\" }\nset = { k = 1 }",
        );
        let mut down = FieldSet::empty();
        down.insert(parse_path("customer_id"));
        down.insert(parse_path("c2"));
        down.insert(parse_path("k"));
        down.insert(parse_path("other"));
        let FieldSet::Paths(up) = s.input_reads(&down) else {
            panic!()
        };
        let names: Vec<String> = up.iter().map(|p| p.join(".")).collect();
        assert_eq!(names, vec!["customer", "other", "x.y"]);
        assert_eq!(s.input_reads(&FieldSet::All), FieldSet::All);
        let sel = spec("select = [\"a\", \"b.c\"]");
        let FieldSet::Paths(up) = sel.input_reads(&FieldSet::All) else {
            panic!()
        };
        assert_eq!(up.len(), 2);
    }

    #[test]
    fn empty_map_is_rejected() {
        assert!(MapSpec::new(&MapConfig::default()).is_err());
        assert!(MapSpec::new(&MapConfig {
            drop: vec!["a..b".into()],
            ..MapConfig::default()
        })
        .is_err());
    }
}
