//! Writing epochs to the file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};

use sluice_engine::error::ErrorClass;
use sluice_engine::sink::{Sink, SinkError, SinkRecord, WriteOutcome};
use sluice_engine::source::BoxFuture;

use super::config::{FileFormat, FileSinkConfig};
use crate::sinks::{write_change_line, write_ndjson_line};

/// A configured file sink.
pub struct FileSink {
    config: FileSinkConfig,
    file: Option<Arc<Mutex<File>>>,
    len: u64,
}

impl FileSink {
    pub fn new(config: FileSinkConfig) -> Self {
        FileSink {
            config,
            file: None,
            len: 0,
        }
    }
}

fn fatal(context: &str, path: &std::path::Path, e: std::io::Error) -> SinkError {
    SinkError::fatal(
        ErrorClass::External,
        format!("{context} {}", path.display()),
        e,
    )
}

impl Sink for FileSink {
    /// A non-empty output file: on a start without a checkpoint, restoring
    /// would cut it back to 0 bytes.
    fn earlier_output<'a>(
        &'a mut self,
        restored_epoch: u64,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Option<String>, SinkError>> {
        Box::pin(async move {
            // With a checkpoint, output past the acknowledged length is
            // the normal tail of a crash, cut back at restore.
            if restored_epoch > 0 || progress.is_some() {
                return Ok(None);
            }
            let path = &self.config.path;
            match std::fs::metadata(path) {
                Ok(m) if m.len() > 0 => Ok(Some(format!(
                    "{} holds {} bytes of earlier output",
                    path.display(),
                    m.len()
                ))),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(fatal("cannot stat", path, e)),
            }
        })
    }

    fn restore<'a>(
        &'a mut self,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let path = &self.config.path;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| fatal("cannot create the directory of", path, e))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| fatal("cannot open", path, e))?;
            let len = match progress {
                Some(p) => u64::from_be_bytes(
                    p.try_into()
                        .map_err(|_| SinkError::Fatal("corrupt file sink progress".into()))?,
                ),
                None => 0,
            };
            let actual = file
                .metadata()
                .map_err(|e| fatal("cannot stat", path, e))?
                .len();
            if actual < len {
                return Err(SinkError::Fatal(format!(
                    "{} is shorter ({actual} bytes) than what sluice already wrote ({len} bytes): it was modified outside sluice",
                    path.display()
                )));
            }
            if actual != len {
                tracing::info!(path = %path.display(), from = actual, to = len, "cutting the output file back to the last acknowledged epoch");
            }
            file.set_len(len)
                .map_err(|e| fatal("cannot truncate", path, e))?;
            self.len = len;
            self.file = Some(Arc::new(Mutex::new(file)));
            Ok(())
        })
    }

    fn write<'a>(
        &'a mut self,
        _epoch: u64,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<WriteOutcome, SinkError>> {
        Box::pin(async move {
            let mut buf = Vec::with_capacity(records.len() * 64);
            for r in records {
                match self.config.format {
                    FileFormat::Records => write_ndjson_line(&mut buf, r),
                    FileFormat::Changes => write_change_line(&mut buf, r),
                }
            }
            let file = self
                .file
                .clone()
                .ok_or_else(|| SinkError::Internal("file sink used before restore".into()))?;
            let (offset, fsync, path) = (self.len, self.config.fsync, self.config.path.clone());
            let n = buf.len() as u64;
            tokio::task::spawn_blocking(move || -> Result<(), SinkError> {
                use std::os::unix::fs::FileExt;
                let f = file
                    .lock()
                    .map_err(|_| SinkError::Internal("file lock poisoned".into()))?;
                // Positional write: a retry after a partial write rewrites the same bytes.
                f.write_all_at(&buf, offset).map_err(|e| {
                    SinkError::retryable(format!("cannot write {}", path.display()), e)
                })?;
                if fsync {
                    f.sync_data().map_err(|e| {
                        SinkError::retryable(format!("cannot fsync {}", path.display()), e)
                    })?;
                }
                Ok(())
            })
            .await
            .map_err(|e| SinkError::Internal(format!("file writer panicked: {e}")))??;
            self.len += n;
            Ok(WriteOutcome {
                progress: Some(self.len.to_be_bytes().to_vec()),
                rejected: Vec::new(),
                fenced: 0,
            })
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if let Some(f) = self.file.take() {
                if let Ok(mut f) = f.lock() {
                    let _ = f.flush();
                }
            }
            Ok(())
        })
    }
}
