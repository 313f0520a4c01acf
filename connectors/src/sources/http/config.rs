//! Options of the HTTP source.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// `type = "http"`: accepts JSON events over HTTP POST and journals them
/// durably before answering.
///
/// ```toml
/// [sources.reports]
/// type = "http"
/// address = "127.0.0.1:8080"
/// paths = ["/ingest"]
/// auth_token_env = "INGEST_TOKEN"
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// `host:port` to listen on. Use `0.0.0.0:PORT` to accept connections
    /// from other machines.
    #[serde(default = "default_address", deserialize_with = "address")]
    pub address: String,
    /// URL paths accepting `POST` requests (letters, digits and `/-_.~`).
    #[serde(default = "default_paths", deserialize_with = "paths")]
    pub paths: Vec<String>,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Name of an environment variable holding a bearer token. When set,
    /// requests without `Authorization: Bearer <token>` get 401; the source
    /// refuses to start if the variable is missing or empty.
    #[serde(default)]
    pub auth_token_env: Option<String>,
    /// Where the journal of accepted events lives (default:
    /// `<state dir>/journal/<source name>`).
    #[serde(default)]
    pub journal_dir: Option<PathBuf>,
    /// fsync the journal before answering 202 (group commit: one fsync
    /// serves every request waiting at that moment). Without it, accepted
    /// events survive a crash of sluice but not of the machine.
    #[serde(default = "yes")]
    pub fsync: bool,
    /// Events accepted but not yet covered by a checkpoint beyond which new
    /// requests get 503 with `Retry-After: 1`.
    #[serde(default = "default_max_backlog_events")]
    pub max_backlog_events: u64,
    /// Size at which a journal segment file is closed and a new one
    /// started; segments are deleted whole once checkpointed.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Checkpointed journal segments to keep (the newest ones) so that
    /// `sluice replay` can rebuild state from them. 0 (default) deletes a
    /// segment as soon as a checkpoint covers it; a large number keeps the
    /// whole history.
    #[serde(default)]
    pub retain_segments: usize,
}

impl Default for HttpSourceConfig {
    fn default() -> Self {
        HttpSourceConfig {
            address: default_address(),
            paths: default_paths(),
            max_body_bytes: default_max_body_bytes(),
            auth_token_env: None,
            journal_dir: None,
            fsync: true,
            max_backlog_events: default_max_backlog_events(),
            segment_bytes: default_segment_bytes(),
            retain_segments: 0,
        }
    }
}

fn default_address() -> String {
    "127.0.0.1:8080".into()
}

fn default_paths() -> Vec<String> {
    vec!["/ingest".into()]
}

fn default_max_body_bytes() -> usize {
    10 << 20
}

fn default_max_backlog_events() -> u64 {
    1_000_000
}

fn default_segment_bytes() -> u64 {
    64 << 20
}

fn yes() -> bool {
    true
}

/// Why an address is not `host:port`, if it is not.
pub(crate) fn check_address(address: &str) -> Result<(), String> {
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid address `{address}`: expected `host:port`, e.g. \"127.0.0.1:8080\""
        ))
    }
}

/// Why a path cannot be served, if it cannot.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    let chars_ok = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/-_.~".contains(c));
    if path.starts_with('/') && chars_ok && !path.contains("//") {
        Ok(())
    } else {
        Err(format!(
            "invalid path `{path}`: it must start with `/` and contain only letters, digits and `/-_.~`"
        ))
    }
}

fn address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let address = String::deserialize(d)?;
    check_address(&address).map_err(serde::de::Error::custom)?;
    Ok(address)
}

fn paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let mut paths = Vec::<String>::deserialize(d)?;
    if paths.is_empty() {
        return Err(serde::de::Error::custom(
            "`paths` must list at least one path, e.g. [\"/ingest\"]",
        ));
    }
    for p in &paths {
        check_path(p).map_err(serde::de::Error::custom)?;
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}
