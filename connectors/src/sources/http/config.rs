//! Options of the HTTP source.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};
use sluice_engine::time::HumanDuration;
use sluice_engine::tls::TlsConfig;

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
    /// Serve HTTPS: `tls = { cert = "tls.crt", key = "tls.key" }` (PEM
    /// files). The files are read again every few seconds and a renewed
    /// pair is used for new connections; a changed pair that cannot be used
    /// is logged and the previous one kept. Without it, plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
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
    /// Time a client has to send a request's start line and headers, from
    /// the moment the server starts waiting for them (a new connection, or
    /// an idle keep-alive connection between requests). A connection that
    /// takes longer is closed. `"0s"` is refused.
    #[serde(
        default = "default_header_read_timeout",
        deserialize_with = "positive_duration"
    )]
    pub header_read_timeout: HumanDuration,
    /// Time a client has to send a whole request body once its headers
    /// arrived. A request that takes longer gets 408 and its connection is
    /// closed; nothing of it is journaled. `"0s"` is refused.
    #[serde(
        default = "default_body_read_timeout",
        deserialize_with = "positive_duration"
    )]
    pub body_read_timeout: HumanDuration,
    /// Most connections open at a time. At the cap the server stops
    /// accepting: further connections wait in the operating system's listen
    /// queue until an open one closes (or their client gives up).
    #[serde(default = "default_max_connections", deserialize_with = "at_least_one")]
    pub max_connections: usize,
    /// Most bytes of request bodies held in memory at once, over all
    /// requests in flight (a body counts from its `Content-Length`, or as
    /// it arrives when chunked, until its request is answered). A request
    /// that would go over gets 503 with `Retry-After: 1`. Must be at least
    /// `max_body_bytes`.
    #[serde(
        default = "default_max_buffered_bytes",
        deserialize_with = "at_least_one"
    )]
    pub max_buffered_bytes: usize,
}

impl Default for HttpSourceConfig {
    fn default() -> Self {
        HttpSourceConfig {
            address: default_address(),
            paths: default_paths(),
            max_body_bytes: default_max_body_bytes(),
            auth_token_env: None,
            tls: None,
            journal_dir: None,
            fsync: true,
            max_backlog_events: default_max_backlog_events(),
            segment_bytes: default_segment_bytes(),
            retain_segments: 0,
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_connections: default_max_connections(),
            max_buffered_bytes: default_max_buffered_bytes(),
        }
    }
}

impl HttpSourceConfig {
    /// Why the options do not fit together, if they do not.
    pub(crate) fn check_limits(&self) -> Result<(), String> {
        if self.max_buffered_bytes < self.max_body_bytes {
            return Err(format!(
                "max_buffered_bytes ({}) is smaller than max_body_bytes ({}): a body of the largest allowed size could never be accepted; raise max_buffered_bytes or lower max_body_bytes",
                self.max_buffered_bytes, self.max_body_bytes
            ));
        }
        Ok(())
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

fn default_header_read_timeout() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}

fn default_body_read_timeout() -> HumanDuration {
    HumanDuration::from_millis(60_000)
}

fn default_max_connections() -> usize {
    512
}

fn default_max_buffered_bytes() -> usize {
    64 << 20
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

fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    let duration = HumanDuration::deserialize(d)?;
    if duration.0.is_zero() {
        return Err(serde::de::Error::custom(
            "a timeout of 0 would refuse every request: give a positive duration, e.g. \"10s\"",
        ));
    }
    Ok(duration)
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(n)
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
