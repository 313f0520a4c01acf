//! Options of the MongoDB change-stream source.

use serde::{Deserialize, Serialize};
use sluice_engine::error::Invalid;
use sluice_engine::time::{parse_rfc3339_ms, HumanDuration};

pub(super) use crate::mongo::FullDocument;

/// `type = "mongodb"`: a change stream (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSourceConfig {
    /// Connection string of a replica set or sharded cluster (change
    /// streams need one), usually `"${MONGODB_URI}"`.
    pub uri: String,
    /// The database to watch.
    pub database: String,
    /// The collection to watch; leave out to watch the whole database.
    #[serde(default)]
    pub collection: Option<String>,
    /// `default` | `update_lookup` | `when_available` | `required`: what
    /// update events carry (MongoDB's `fullDocument` option).
    #[serde(default)]
    pub full_document: FullDocument,
    /// Where a fresh start (no checkpoint) begins: RFC 3339
    /// (`2026-11-21T10:00:00Z`) or Unix seconds. Default: now. Ignored once
    /// a checkpoint holds a resume token.
    #[serde(default)]
    pub start_at_operation_time: Option<String>,
    /// Largest number of events per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// How long the server waits for new events before answering empty.
    #[serde(default = "default_max_await")]
    pub max_await: HumanDuration,
}

fn default_batch_size() -> u32 {
    1000
}

fn default_max_await() -> HumanDuration {
    HumanDuration::from_millis(1000)
}

impl MongoSourceConfig {
    /// Checks the options; the message names the field.
    pub fn validate(&self) -> Result<(), Invalid> {
        crate::mongo::validate_uri(&self.uri)?;
        if self.database.is_empty() {
            return Err("`database` must name the database to watch".into());
        }
        if self.collection.as_deref() == Some("") {
            return Err(
                "`collection` must name a collection (leave it out to watch the whole database)"
                    .into(),
            );
        }
        if self.batch_size == 0 {
            return Err("`batch_size` must be at least 1".into());
        }
        self.start_at()?;
        Ok(())
    }

    /// `start_at_operation_time` as cluster time `(seconds, increment)`.
    pub fn start_at(&self) -> Result<Option<(u32, u32)>, Invalid> {
        let Some(text) = self.start_at_operation_time.as_deref() else {
            return Ok(None);
        };
        let secs = match text.trim().parse::<u64>() {
            Ok(s) => s,
            Err(_) => {
                let ms = parse_rfc3339_ms(text.trim()).map_err(|e| {
                    format!("`start_at_operation_time`: {e} (expected RFC 3339 like 2026-11-21T10:00:00Z or Unix seconds)")
                })?;
                u64::try_from(ms / 1000)
                    .map_err(|_| "`start_at_operation_time` is before 1970".to_string())?
            }
        };
        let secs = u32::try_from(secs)
            .map_err(|_| "`start_at_operation_time` is out of range".to_string())?;
        Ok(Some((secs, 0)))
    }
}
