//! Options of the Redis/Valkey sink.

use serde::{Deserialize, Serialize};
use sluice_engine::error::Invalid;
use sluice_engine::time::HumanDuration;
use sluice_engine::value::{parse_path, Str};

use super::template::Template;

/// `type = "redis"`: writes results into Redis or Valkey hashes or string
/// keys, fenced by checkpoint epoch (see the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// Server address, usually `${REDIS_URL}`: `redis://127.0.0.1:6379/0`,
    /// `redis://user:password@host:6379` (TLS, `rediss://`, is not
    /// supported). The host name is resolved again at every reconnect.
    pub url: String,
    /// `hash` (default): each record sets one field of a hash (`key`,
    /// `field`, `value_field`). `string`: each record sets one string key
    /// (`key`), to `value_field` or to the whole record as JSON.
    #[serde(default)]
    pub mode: RedisMode,
    /// Template of the key, e.g. `country:counts` or
    /// `country:counts:{window_start}`; `{a.b}` reads a record field.
    pub key: Template,
    /// Hash mode: template of the field, e.g. `{country}`.
    #[serde(default)]
    pub field: Option<Template>,
    /// The record field holding the value (dotted path), e.g. `count`.
    /// Required in hash mode; in string mode the whole record is stored as
    /// JSON when absent.
    #[serde(default)]
    pub value_field: Option<String>,
    /// Expire written keys (and their fence keys) this long after their
    /// last write, e.g. `"2h"` for per-window keys.
    #[serde(default)]
    pub ttl: Option<HumanDuration>,
    /// A key (e.g. `messages:total`) kept equal to the sum of all values
    /// this sink wrote (hash fields or string keys); values must be
    /// numbers. Exact for integers.
    #[serde(default)]
    pub totals: Option<String>,
    /// Records per script call; an epoch's chunks go in one pipelined round
    /// trip.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
    /// Time allowed to establish a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Time allowed for one epoch's round trip before the connection is
    /// dropped and the epoch retried.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
}

/// How records map to Redis data types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    #[default]
    Hash,
    String,
}

fn default_chunk_size() -> usize {
    500
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration::from_millis(5_000)
}

fn default_request_timeout() -> HumanDuration {
    HumanDuration::from_millis(30_000)
}

impl RedisSinkConfig {
    /// Checks the options that depend on each other; the message names the
    /// field and says what would be valid.
    pub fn validate(&self) -> Result<(), Invalid> {
        redis::Client::open(self.url.as_str()).map_err(|e| {
            format!(
                "`url`: {e} (expected e.g. redis://127.0.0.1:6379 or redis://:password@host:6379/0)"
            )
        })?;
        if self.url.starts_with("rediss://") {
            return Err(
                "`url`: TLS (rediss://) is not supported by this build; use redis://".into(),
            );
        }
        match self.mode {
            RedisMode::Hash => {
                if self.field.is_none() {
                    return Err(
                        "hash mode needs `field`, the template of the hash field, e.g. field = \"{country}\""
                            .into(),
                    );
                }
                if self.value_field.is_none() {
                    return Err(
                        "hash mode needs `value_field`, the record field to store, e.g. value_field = \"count\""
                            .into(),
                    );
                }
            }
            RedisMode::String => {
                if self.field.is_some() {
                    return Err(
                        "`field` only applies to mode = \"hash\"; remove it or set mode = \"hash\""
                            .into(),
                    );
                }
            }
        }
        if let Some(t) = &self.totals {
            if t.is_empty() {
                return Err("`totals` must name a key, e.g. totals = \"messages:total\"".into());
            }
            if self.value_field.is_none() {
                return Err(
                    "`totals` sums numeric values: set `value_field` (e.g. value_field = \"count\")"
                        .into(),
                );
            }
        }
        if self.value_field.as_deref() == Some("") {
            return Err("`value_field` must name a record field".into());
        }
        if self.chunk_size == 0 {
            return Err("`chunk_size` must be at least 1".into());
        }
        if self.ttl.is_some_and(|t| t.0.as_millis() == 0) {
            return Err("`ttl` must be positive (leave it out for keys that never expire)".into());
        }
        Ok(())
    }

    /// `value_field` split into a path.
    pub fn value_path(&self) -> Option<Vec<Str>> {
        self.value_field.as_deref().map(parse_path)
    }
}
