//! Options of the MongoDB sink.

use serde::{Deserialize, Serialize};
use sluice_engine::error::Invalid;

/// `type = "mongodb"`: writes records as documents (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSinkConfig {
    /// Connection string, usually `"${MONGODB_URI}"`:
    /// `mongodb://user:password@host1:27017,host2:27017/?replicaSet=rs0`.
    /// Timeouts and TLS are URI options (`serverSelectionTimeoutMS`,
    /// `tls=true`...). `mongodb+srv://` is not supported by this build.
    pub uri: String,
    /// The database to write to.
    pub database: String,
    /// The collection to write to.
    pub collection: String,
    /// `upsert` (default): fenced replace by `_id` = record id. `append`:
    /// insert with `_id` = record id, duplicates ignored.
    #[serde(default)]
    pub mode: MongoSinkMode,
    /// Write statements per command (the server accepts up to 100,000 and
    /// 48 MB per message).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

/// How records become documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MongoSinkMode {
    #[default]
    Upsert,
    Append,
}

fn default_batch_size() -> usize {
    1000
}

impl MongoSinkConfig {
    /// Checks the options; the message names the field.
    pub fn validate(&self) -> Result<(), Invalid> {
        crate::mongo::validate_uri(&self.uri)?;
        if self.database.is_empty() || self.database.contains(['.', '/', ' ', '$']) {
            return Err("`database` must be a database name (no `.`, `/`, `$` or spaces)".into());
        }
        if self.collection.is_empty()
            || self.collection.starts_with("system.")
            || self.collection.contains('$')
        {
            return Err(
                "`collection` must be a collection name (not empty, no `$`, not `system.*`)".into(),
            );
        }
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return Err("`batch_size` must be between 1 and 100000".into());
        }
        Ok(())
    }
}
