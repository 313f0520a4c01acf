//! The file sink: results as NDJSON, exactly once. The sink's progress is
//! the file length after each acknowledged epoch; on restart the file is cut
//! back to that length and the committed epochs after it are written again,
//! so the file ends up exactly as in an uninterrupted run.

mod config;
mod sink;

pub use config::{FileFormat, FileSinkConfig};
pub use sink::FileSink;
