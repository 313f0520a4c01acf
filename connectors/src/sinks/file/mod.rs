//! The file sink: results as NDJSON, exactly once. The sink's progress is
//! the file length after each acknowledged epoch; on restart the file is cut
//! back to that length and the committed epochs after it are written again,
//! so the file ends up exactly as in an uninterrupted run.

use sluice_engine::connector::ConnectorContext;

mod config;
mod sink;

pub use config::{FileFormat, FileSinkConfig};
pub use sink::FileSink;

impl sluice_engine::connector::SinkConnector for FileSinkConfig {
    fn build(&self, _ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::sink::Sink> {
        Box::new(FileSink::new(self.clone()))
    }
}
