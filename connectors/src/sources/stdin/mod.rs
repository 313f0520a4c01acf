//! The stdin source: NDJSON from standard input, for local use and shell
//! pipelines. Standard input cannot be replayed, so after a crash the lines
//! read since the last checkpoint are not read again: use a file or a
//! broker when you need exactly-once.
//!
//! ```toml
//! [sources.input]
//! type = "stdin"
//! ```

use sluice_engine::connector::ConnectorContext;
use serde::{Deserialize, Serialize};
use sluice_engine::source::{BoxFuture, Source, SourceContext, SourceError};
use tokio::io::AsyncReadExt;

use crate::lines::{raw_batch, LineSplitter};

/// `type = "stdin"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceConfig {}

pub struct StdinSource;

impl Source for StdinSource {
    fn run(self: Box<Self>, mut ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move {
            let closed = || SourceError::External("shutdown".into());
            ctx.output.partitions(vec![0]).await.map_err(|_| closed())?;
            let mut stdin = tokio::io::stdin();
            let mut splitter = LineSplitter::new(0, ctx.output.max_event_bytes());
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = tokio::select! {
                    r = stdin.read(&mut chunk) => r.map_err(|source| SourceError::Io { context: "cannot read stdin".into(), source })?,
                    _ = sluice_engine::source::wait_shutdown(&mut ctx.shutdown) => return Ok(()),
                };
                while ctx.commits.try_recv().is_ok() {}
                if n == 0 {
                    break;
                }
                let (buf, events) = splitter.feed(&chunk[..n]);
                let pos = splitter.committed_offset().to_be_bytes().to_vec();
                if ctx
                    .output
                    .emit(raw_batch(0, buf, events, pos, n as u64))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            if let Some((buf, events)) = splitter.finish() {
                let pos = splitter.committed_offset().to_be_bytes().to_vec();
                let _ = ctx.output.emit(raw_batch(0, buf, events, pos, 0)).await;
            }
            let _ = ctx.output.partition_done(0).await;
            Ok(())
        })
    }
}

impl sluice_engine::connector::SourceConnector for StdinSourceConfig {
    fn build(&self, _ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::source::Source> {
        Box::new(StdinSource)
    }
}
