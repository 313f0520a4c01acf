//! From an epoch's records to rows: which columns are written, each row as
//! a JSON object keyed by column name, upserts deduplicated by key (the
//! last one wins; a statement may touch a key only once), and records that
//! cannot become a row (no key value) rejected with the reason.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sluice_engine::batch::RowKind;
use sluice_engine::json::{write_str, write_value};
use sluice_engine::sink::SinkRecord;
use sluice_engine::value::{parse_path, Str, Value};

use super::config::{PostgresMode, EPOCH_COLUMN};

/// One row, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    /// Index of the record in the epoch.
    pub index: usize,
    /// The row as a JSON object (column -> value).
    pub json: Vec<u8>,
}

/// An epoch's records as rows.
#[derive(Debug, Default)]
pub(super) struct Rows {
    /// The columns written (besides the fence column).
    pub columns: Vec<String>,
    pub upserts: Vec<Row>,
    pub deletes: Vec<Row>,
    pub rejected: Vec<(usize, String)>,
    /// Record fields that have no column in the table (skipped).
    pub unknown_fields: BTreeSet<String>,
    /// Deletes an append sink cannot apply (skipped).
    pub ignored_deletes: usize,
}

/// How records map to columns.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    pub mode: PostgresMode,
    pub key: Vec<String>,
    pub id_column: String,
    /// Configured `columns` (column -> path); None: every record field.
    pub mapping: Option<Vec<(String, Vec<Str>)>>,
}

impl Layout {
    pub(super) fn new(
        mode: PostgresMode,
        key: &[String],
        id_column: &str,
        columns: Option<&BTreeMap<String, String>>,
    ) -> Layout {
        Layout {
            mode,
            key: key.to_vec(),
            id_column: id_column.to_string(),
            mapping: columns.map(|m| m.iter().map(|(c, f)| (c.clone(), parse_path(f))).collect()),
        }
    }

    /// The columns this epoch writes. `table` lists the existing table's
    /// columns (None: the table is still to be created from these records).
    pub(super) fn columns(
        &self,
        records: &[SinkRecord],
        table: Option<&BTreeSet<String>>,
        unknown: &mut BTreeSet<String>,
    ) -> Vec<String> {
        let mut cols: Vec<String> = Vec::new();
        if self.mode == PostgresMode::Append {
            cols.push(self.id_column.clone());
        }
        match &self.mapping {
            Some(m) => cols.extend(m.iter().map(|(c, _)| c.clone())),
            None => {
                cols.extend(self.key.iter().cloned());
                for r in records {
                    let Value::Object(map) = &r.value else {
                        continue;
                    };
                    for (field, v) in map.iter() {
                        if !v.exists() || cols.iter().any(|c| c == field.as_str()) {
                            continue;
                        }
                        if field == EPOCH_COLUMN
                            || (self.mode == PostgresMode::Append && *field == self.id_column)
                        {
                            continue;
                        }
                        if table.is_some_and(|t| !t.contains(field.as_str())) {
                            unknown.insert(field.to_string());
                            continue;
                        }
                        cols.push(field.to_string());
                    }
                }
            }
        }
        cols
    }

    /// The value of `column` in a record (the id for the append id column).
    pub(super) fn value<'a>(&self, column: &str, r: &'a SinkRecord, scratch: &'a mut Value) -> &'a Value {
        if self.mode == PostgresMode::Append && column == self.id_column {
            *scratch = Value::Str(r.id.clone());
            return scratch;
        }
        match &self.mapping {
            Some(m) => m
                .iter()
                .find(|(c, _)| c == column)
                .map_or(&Value::Missing, |(_, path)| r.value.get_path(path)),
            None => match &r.value {
                Value::Object(map) => map.get(column).unwrap_or(&Value::Missing),
                _ => &Value::Missing,
            },
        }
    }

    /// Builds the rows of an epoch.
    pub(super) fn rows(&self, records: &[SinkRecord], table: Option<&BTreeSet<String>>) -> Rows {
        let mut out = Rows::default();
        out.columns = self.columns(records, table, &mut out.unknown_fields);
        let mut by_key: HashMap<Vec<u8>, (bool, usize)> = HashMap::new();
        let mut scratch = Value::Missing;
        for (index, r) in records.iter().enumerate() {
            let delete = r.kind == RowKind::Delete;
            if self.mode == PostgresMode::Append && delete {
                out.ignored_deletes += 1;
                continue;
            }
            let mut key_json = Vec::new();
            let mut missing = None;
            for k in &self.key {
                let v = self.value(k, r, &mut scratch);
                if matches!(v, Value::Missing | Value::Null) {
                    missing = Some(k);
                    break;
                }
                write_value(&mut key_json, v);
                key_json.push(0);
            }
            if let Some(k) = missing {
                out.rejected.push((
                    index,
                    format!("key column `{k}` has no value in the record"),
                ));
                continue;
            }
            let cols: &[String] = if delete { &self.key } else { &out.columns };
            // the row as a JSON object, written directly (no intermediate map)
            let mut json = Vec::with_capacity(64);
            json.push(b'{');
            for c in cols {
                let v = self.value(c, r, &mut scratch);
                if v.exists() {
                    if json.len() > 1 {
                        json.push(b',');
                    }
                    write_str(&mut json, c);
                    json.push(b':');
                    write_value(&mut json, v);
                }
            }
            json.push(b'}');
            let row = Row { index, json };
            if self.mode == PostgresMode::Append {
                out.upserts.push(row);
                continue;
            }
            // one change per key and epoch: the last wins
            if let Some(&(was_delete, i)) = by_key.get(&key_json) {
                let list = if was_delete {
                    &mut out.deletes
                } else {
                    &mut out.upserts
                };
                list[i].json.clear();
            }
            let slot = if delete {
                out.deletes.push(row);
                (true, out.deletes.len() - 1)
            } else {
                out.upserts.push(row);
                (false, out.upserts.len() - 1)
            };
            by_key.insert(key_json, slot);
        }
        out.upserts.retain(|r| !r.json.is_empty());
        out.deletes.retain(|r| !r.json.is_empty());
        out
    }
}

/// A JSON array of rows.
pub(super) fn json_array<'a>(rows: impl IntoIterator<Item = &'a Row>) -> String {
    let mut out = Vec::new();
    out.push(b'[');
    for (i, r) in rows.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&r.json);
    }
    out.push(b']');
    // write_value produces UTF-8 from UTF-8 strings
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Column types for `create_table`, inferred from the records, with the
/// configured overrides.
pub(super) fn column_types(
    layout: &Layout,
    columns: &[String],
    records: &[SinkRecord],
    overrides: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    columns
        .iter()
        .map(|c| {
            let ty = match overrides.get(c) {
                Some(t) => t.clone(),
                None if layout.mode == PostgresMode::Append && *c == layout.id_column => {
                    "TEXT".to_string()
                }
                None => {
                    let mut scratch = Value::Missing;
                    let values: Vec<Value> = records
                        .iter()
                        .map(|r| layout.value(c, r, &mut scratch).clone())
                        .collect();
                    super::sql::infer_type(&values).to_string()
                }
            };
            (c.clone(), ty)
        })
        .collect()
}
