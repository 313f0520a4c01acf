//! Table storage, the process-wide registry the admin server reads, and the sink.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sluice_engine::batch::RowKind;
use sluice_engine::json::{parse_value, write_value};
use sluice_engine::sink::{Sink, SinkError, SinkRecord, WriteOutcome};
use sluice_engine::source::BoxFuture;
use sluice_engine::value::Value;

/// `type = "table"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSinkConfig {
    /// Name the table is served under (default: the sink's name).
    #[serde(default)]
    pub name: Option<String>,
}

/// A committed table: id -> record, ordered by id.
#[derive(Debug, Default)]
pub struct Table {
    rows: RwLock<BTreeMap<String, Value>>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.rows.read().map(|r| r.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: &str) -> Option<Value> {
        self.rows.read().ok()?.get(id).cloned()
    }

    /// Up to `limit` rows with id > `after` (all when None) that satisfy
    /// `keep`, in id order, plus whether more rows follow.
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&str, &Value) -> bool,
    ) -> (Vec<(String, Value)>, bool) {
        let Ok(rows) = self.rows.read() else {
            return (Vec::new(), false);
        };
        let start = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for (id, v) in rows.range((start, Bound::Unbounded)) {
            if !keep(id, v) {
                continue;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push((id.clone(), v.clone()));
        }
        (out, false)
    }

    /// Rows that pass `keep`, newest window first (by `start_field`,
    /// then id), skipping `skip`: the page, and whether more follow.
    pub fn newest_first(
        &self,
        start_field: &str,
        skip: usize,
        limit: usize,
        keep: impl Fn(&str, &Value) -> bool,
    ) -> (Vec<(String, Value)>, bool) {
        let Ok(rows) = self.rows.read() else {
            return (Vec::new(), false);
        };
        let field = [start_field.into()];
        let mut all: Vec<(i64, &String, &Value)> = rows
            .iter()
            .filter(|(id, v)| keep(id, v))
            .map(|(id, v)| (v.get_path(&field).as_i64().unwrap_or(i64::MIN), id, v))
            .collect();
        all.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let more = all.len() > skip.saturating_add(limit);
        let page = all
            .into_iter()
            .skip(skip)
            .take(limit)
            .map(|(_, id, v)| (id.clone(), v.clone()))
            .collect();
        (page, more)
    }

    /// The largest `start_field` of any row (the latest window).
    pub fn latest(&self, start_field: &str) -> Option<i64> {
        let rows = self.rows.read().ok()?;
        let field = [start_field.into()];
        rows.values()
            .filter_map(|v| v.get_path(&field).as_i64())
            .max()
    }

    fn apply(&self, records: &[SinkRecord]) {
        if let Ok(mut rows) = self.rows.write() {
            for r in records {
                match r.kind {
                    RowKind::Delete => {
                        rows.remove(r.id.as_str());
                    }
                    RowKind::Insert | RowKind::Upsert => {
                        rows.insert(r.id.to_string(), r.value.clone());
                    }
                }
            }
        }
    }
}

/// The tables of this process, by name (read by the admin server).
pub fn registry() -> &'static DashMap<String, Arc<Table>> {
    static TABLES: OnceLock<DashMap<String, Arc<Table>>> = OnceLock::new();
    TABLES.get_or_init(DashMap::new)
}

/// The sink.
pub struct TableSink {
    name: String,
    dir: PathBuf,
    db: Option<sled::Db>,
    table: Arc<Table>,
}

impl TableSink {
    /// A table sink named `name` storing its data under `state_dir/tables/name`.
    pub fn new(name: &str, config: &TableSinkConfig, state_dir: &std::path::Path) -> Self {
        let name = config.name.clone().unwrap_or_else(|| name.to_string());
        let table = Arc::new(Table::default());
        registry().insert(name.clone(), table.clone());
        TableSink {
            dir: state_dir.join("tables").join(&name),
            name,
            db: None,
            table,
        }
    }
}

fn fatal(name: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Fatal(format!("table `{name}`: {e}"))
}

impl Sink for TableSink {
    fn restore<'a>(
        &'a mut self,
        _progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            // The same sled crash work-around as the state directory's.
            for aside in sluice_engine::state::set_aside_unfinished_snapshots(&self.dir)
                .map_err(|e| fatal(&self.name, e))?
            {
                tracing::warn!(table = %self.name, file = %aside.display(), "set aside an unfinished sled snapshot left by a crash");
            }
            let db = sled::Config::new()
                .path(&self.dir)
                .cache_capacity(4 << 20)
                .flush_every_ms(None)
                .open()
                .map_err(|e| fatal(&self.name, e))?;
            let mut loaded = Vec::new();
            for item in db.iter() {
                let (k, v) = item.map_err(|e| fatal(&self.name, e))?;
                let value = parse_value(&v).map_err(|e| fatal(&self.name, e))?;
                loaded.push(SinkRecord {
                    kind: RowKind::Upsert,
                    id: String::from_utf8_lossy(&k).as_ref().into(),
                    value,
                    time: 0,
                });
            }
            self.table.apply(&loaded);
            self.db = Some(db);
            Ok(())
        })
    }

    fn write<'a>(
        &'a mut self,
        _epoch: u64,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<WriteOutcome, SinkError>> {
        Box::pin(async move {
            let db = self
                .db
                .clone()
                .ok_or_else(|| fatal(&self.name, "used before restore"))?;
            let mut batch = sled::Batch::default();
            for r in records {
                match r.kind {
                    RowKind::Delete => batch.remove(r.id.as_bytes()),
                    _ => {
                        let mut json = Vec::new();
                        write_value(&mut json, &r.value);
                        batch.insert(r.id.as_bytes(), json);
                    }
                }
            }
            let name = self.name.clone();
            tokio::task::spawn_blocking(move || {
                db.apply_batch(batch)?;
                db.flush().map(|_| ())
            })
            .await
            .map_err(|e| fatal(&name, e))?
            .map_err(|e| SinkError::Retryable(format!("table `{name}`: {e}")))?;
            self.table.apply(records);
            Ok(WriteOutcome::default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: RowKind, id: &str, n: i64) -> SinkRecord {
        SinkRecord {
            kind,
            id: id.into(),
            value: Value::Int(n),
            time: 0,
        }
    }

    #[tokio::test]
    async fn table_is_durable_and_pages_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TableSinkConfig {
            name: Some("t_durable".into()),
        };
        let mut sink = TableSink::new("x", &cfg, dir.path());
        sink.restore(None).await.unwrap();
        let records: Vec<_> = (0..5)
            .map(|i| rec(RowKind::Upsert, &format!("k{i}"), i))
            .collect();
        sink.write(1, &records).await.unwrap();
        sink.write(
            2,
            &[
                rec(RowKind::Delete, "k1", 0),
                rec(RowKind::Upsert, "k2", 20),
            ],
        )
        .await
        .unwrap();
        drop(sink);
        let mut again = TableSink::new("x", &cfg, dir.path());
        again.restore(None).await.unwrap();
        let t = registry().get("t_durable").unwrap().clone();
        assert_eq!(t.len(), 4);
        assert_eq!(t.get("k2"), Some(Value::Int(20)));
        let (page, more) = t.page(None, 2, |_, _| true);
        assert_eq!(
            page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            vec!["k0", "k2"]
        );
        assert!(more);
        let (page, more) = t.page(Some("k2"), 10, |_, _| true);
        assert_eq!(page.len(), 2);
        assert!(!more);
    }
}
