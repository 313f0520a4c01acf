//! Options of the PostgreSQL sink.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sluice_engine::error::Invalid;
use sluice_engine::time::HumanDuration;

/// `type = "postgres"`: upserts results or appends events into a table,
/// exactly once (see the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Connection string, usually `${POSTGRES_URL}`:
    /// `postgres://user:password@host:5432/db` or
    /// `host=... user=... dbname=...`. The host name is resolved again at
    /// every reconnect.
    pub url: String,
    /// The table, optionally with its schema (`public.country_counts`).
    /// Names are used exactly as written (quoted), so case matters.
    pub table: String,
    /// `upsert` (default): one row per `key`, updated in place, fenced by
    /// `sluice_epoch`. `append`: one row per event, deduplicated by
    /// `id_column`.
    #[serde(default)]
    pub mode: PostgresMode,
    /// Upsert mode: the key columns (the record's group fields), e.g.
    /// `["country", "window_start"]`. They need a primary key or unique
    /// index (`create_table` makes one).
    #[serde(default)]
    pub key: Vec<String>,
    /// Column name -> record field (dotted path). Default: every top-level
    /// record field goes to the column of the same name (fields without a
    /// column are skipped, with a warning).
    #[serde(default)]
    pub columns: Option<BTreeMap<String, String>>,
    /// Append mode: the column holding the event id (`source:partition:offset`),
    /// with a primary key or unique index; a replayed event conflicts on it
    /// and is skipped.
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// Create the table when it does not exist, with column types inferred
    /// from the first records (integers BIGINT, other numbers DOUBLE
    /// PRECISION, booleans BOOLEAN, objects and arrays JSONB, the rest
    /// TEXT), the key as primary key and, in upsert mode, `sluice_epoch
    /// BIGINT`.
    #[serde(default)]
    pub create_table: bool,
    /// With `create_table`: SQL types that override the inferred ones, e.g.
    /// `{ avg_temp = "double precision" }`.
    #[serde(default)]
    pub column_types: BTreeMap<String, String>,
    /// `disable` (default) or `require`: TLS (rustls) with the server
    /// certificate verified against the system roots and `tls_ca_file`.
    #[serde(default)]
    pub tls: TlsMode,
    /// With `tls = "require"`: extra CA certificates (PEM) to trust, e.g. a
    /// private CA or the server's self-signed certificate.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Rows per statement; an epoch is written in one transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Time allowed to establish a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Time allowed for one epoch's transaction before the connection is
    /// dropped (rolling it back) and the epoch retried.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
}

/// How records become rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostgresMode {
    #[default]
    Upsert,
    Append,
}

/// Transport security.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    #[default]
    Disable,
    Require,
}

/// The fence column of upsert tables.
pub const EPOCH_COLUMN: &str = "sluice_epoch";

fn default_id_column() -> String {
    "event_id".into()
}

fn default_batch_size() -> usize {
    1000
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration::from_millis(5_000)
}

fn default_request_timeout() -> HumanDuration {
    HumanDuration::from_millis(60_000)
}

impl PostgresSinkConfig {
    /// Checks the options that depend on each other; the message names the
    /// field and says what would be valid.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.url.parse::<tokio_postgres::Config>().map_err(|e| {
            format!("`url`: {e} (expected e.g. postgres://user:password@127.0.0.1:5432/db)")
        })?;
        super::sql::TableName::parse(&self.table).map_err(|e| format!("`table`: {e}"))?;
        if self.batch_size == 0 {
            return Err("`batch_size` must be at least 1".into());
        }
        if let Some(cols) = &self.columns {
            if cols.is_empty() {
                return Err("`columns` is empty: map at least one column, or leave it out to use every record field".into());
            }
            if let Some((c, _)) = cols.iter().find(|(_, f)| f.is_empty()) {
                return Err(Invalid::new(format!(
                    "`columns.{c}` must name a record field"
                )));
            }
        }
        match self.mode {
            PostgresMode::Upsert => {
                if self.key.is_empty() {
                    return Err(
                        "upsert mode needs `key`, the key columns, e.g. key = [\"country\", \"window_start\"]"
                            .into(),
                    );
                }
                if let Some(cols) = &self.columns {
                    if let Some(k) = self.key.iter().find(|k| !cols.contains_key(*k)) {
                        return Err(Invalid::new(format!(
                            "key column `{k}` is not in `columns`; add `{k} = \"<record field>\"`"
                        )));
                    }
                }
                if self.key.iter().any(|k| k == EPOCH_COLUMN) {
                    return Err(Invalid::new(format!(
                        "`{EPOCH_COLUMN}` is sluice's own column and cannot be a key"
                    )));
                }
            }
            PostgresMode::Append => {
                if !self.key.is_empty() {
                    return Err("`key` only applies to mode = \"upsert\"; append mode deduplicates by `id_column`".into());
                }
                if self.id_column.is_empty() {
                    return Err("`id_column` must name a column".into());
                }
            }
        }
        if self.tls_ca_file.is_some() && self.tls == TlsMode::Disable {
            return Err("`tls_ca_file` needs tls = \"require\"".into());
        }
        if !self.column_types.is_empty() && !self.create_table {
            return Err("`column_types` only applies with create_table = true".into());
        }
        Ok(())
    }
}
