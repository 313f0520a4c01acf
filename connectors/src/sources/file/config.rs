//! Options of the file source.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sluice_engine::error::Invalid;
use sluice_engine::time::HumanDuration;

/// `type = "file"`: reads newline-delimited JSON.
///
/// ```toml
/// [sources.weather]
/// type = "file"
/// path = "examples/data/weather.ndjson"
/// follow = false
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A file, or a directory whose files are read in name order (one after
    /// the other; their lines form one ordered stream).
    pub path: PathBuf,
    /// Keep reading as files grow and new files appear (a tail -f), instead
    /// of finishing at the end of the input.
    #[serde(default)]
    pub follow: bool,
    /// In directory mode, only files whose name ends with this (e.g. ".ndjson").
    #[serde(default)]
    pub suffix: Option<String>,
    /// How often to look for new data in follow mode.
    #[serde(default = "default_poll")]
    pub poll_interval: HumanDuration,
    /// Pace the input to at most this many events per second (0: as fast
    /// as possible). Handy to replay a recorded file at its original rate.
    #[serde(default)]
    pub max_events_per_second: u64,
    /// Size of each read, in bytes (also the largest batch); at most
    /// [`MAX_READ_BYTES`].
    #[serde(default = "default_read_bytes")]
    pub read_bytes: usize,
    /// Threads decoding the batches read (at most [`MAX_DECODE_THREADS`]).
    /// Results are the same with any number: batches reach the pipeline in
    /// read order. Default: the CPUs the process may use (1 on one CPU), at
    /// most 4.
    #[serde(default)]
    pub decode_threads: Option<usize>,
}

/// The most `decode_threads` a file source may have.
pub(super) const MAX_DECODE_THREADS: usize = 16;

/// The largest `read_bytes` (64 MiB): the read buffer is allocated up front.
pub(super) const MAX_READ_BYTES: usize = 64 << 20;

impl FileSourceConfig {
    /// Checks values beyond their type.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.read_bytes > MAX_READ_BYTES {
            return Err(Invalid::new(format!(
                "`read_bytes` is {}; the maximum is {MAX_READ_BYTES} (64 MiB)",
                self.read_bytes
            )));
        }
        if let Some(n) = self.decode_threads {
            if n == 0 || n > MAX_DECODE_THREADS {
                return Err(Invalid::new(format!(
                    "`decode_threads` is {n}; it must be between 1 and {MAX_DECODE_THREADS}"
                )));
            }
        }
        Ok(())
    }

    /// The decoding threads in effect (see `decode_threads`).
    pub fn decode_threads(&self) -> usize {
        self.decode_threads.unwrap_or_else(|| {
            // One per CPU: no thread waits for another's turn to decode
            // (measured on 2 CPUs: 2 threads as fast as 3 on W1a and W1b,
            // with less memory; docs/BENCHMARKS.md).
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4)
        })
    }
}

fn default_poll() -> HumanDuration {
    HumanDuration::from_millis(200)
}

fn default_read_bytes() -> usize {
    1 << 20
}
