//! The file source: NDJSON from a file or a directory of files, optionally
//! followed as it grows. Position = (file name, byte offset), so a restart
//! resumes exactly after the last checkpointed line.

use sluice_engine::connector::{ConnectorContext, ConnectorError};

mod config;
mod source;
#[cfg(test)]
mod tests;

pub use config::FileSourceConfig;
pub use source::FileSource;

impl sluice_engine::connector::SourceConnector for FileSourceConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        FileSourceConfig::validate(self)
    }

    fn build(&self, _ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::source::Source> {
        Box::new(FileSource::new(self.clone()))
    }
}
