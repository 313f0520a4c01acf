//! Options of the file sink.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `type = "file"`: writes one JSON object per line.
///
/// ```toml
/// [sinks.counts]
/// type = "file"
/// inputs = ["by_country"]
/// path = "out/counts.ndjson"
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The output file. Sluice owns it: it is truncated on a fresh start
    /// (empty state) and cut back to the last acknowledged length on restart.
    pub path: PathBuf,
    /// fsync after every epoch (turn off only for throwaway output).
    #[serde(default = "yes")]
    pub fsync: bool,
    /// `records` (default): each line is a result record. `changes`: each
    /// line is `{"op":"upsert"|"insert"|"delete","id":...,"record":{...}}`,
    /// from which the final table can be rebuilt by id.
    #[serde(default)]
    pub format: FileFormat,
}

/// Line format of the file sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    #[default]
    Records,
    Changes,
}

fn yes() -> bool {
    true
}
