//! The file source: NDJSON from a file or a directory of files, optionally
//! followed as it grows. Position = (file name, byte offset), so a restart
//! resumes exactly after the last checkpointed line.

mod config;
mod source;
#[cfg(test)]
mod tests;

pub use config::FileSourceConfig;
pub use source::FileSource;
