//! Reading files on a dedicated thread and emitting line batches.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_engine::decode_pool::DecodePool;
use sluice_engine::source::{BoxFuture, Source, SourceContext, SourceError, SourceOutput};

use super::config::FileSourceConfig;
use crate::lines::{raw_batch, LineSplitter};

/// A configured file source.
pub struct FileSource {
    config: FileSourceConfig,
}

impl FileSource {
    pub fn new(config: FileSourceConfig) -> Self {
        FileSource { config }
    }
}

/// Encodes a position: offset (u64 BE) followed by the file name.
pub(super) fn encode_position(name: &str, offset: u64) -> Vec<u8> {
    let mut v = offset.to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v
}

pub(super) fn decode_position(bytes: &[u8]) -> Option<(String, u64)> {
    let (off, name) = bytes.split_at_checked(8)?;
    Some((
        String::from_utf8(name.to_vec()).ok()?,
        u64::from_be_bytes(off.try_into().ok()?),
    ))
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SourceError {
    let context = context.into();
    move |source| SourceError::Io { context, source }
}

/// "cannot read PATH", saying where a relative path was looked for.
fn cannot_read(path: &std::path::Path) -> String {
    match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => format!(
            "cannot read {} (a relative path is resolved against the working directory, {})",
            path.display(),
            cwd.display()
        ),
        _ => format!("cannot read {}", path.display()),
    }
}

/// The files to read, in order: `(name used in positions, path)`.
fn list_files(config: &FileSourceConfig) -> Result<Vec<(String, PathBuf)>, SourceError> {
    let meta = std::fs::metadata(&config.path).map_err(io(cannot_read(&config.path)))?;
    if meta.is_file() {
        let name = config
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![(name, config.path.clone())]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&config.path)
        .map_err(io(format!("cannot list {}", config.path.display())))?
    {
        let entry = entry.map_err(io(format!("cannot list {}", config.path.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        let wanted = config.suffix.as_deref().is_none_or(|s| name.ends_with(s));
        if is_file && wanted && !name.starts_with('.') {
            files.push((name, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

struct Reader<'a> {
    config: &'a FileSourceConfig,
    out: &'a SourceOutput,
    shutdown: &'a sluice_engine::source::Shutdown,
    pacer: std::cell::RefCell<Pacer>,
    /// Bytes of the files present at start still to read (readiness).
    initial_left: std::cell::Cell<Option<u64>>,
    /// Decodes the batches read, on `decode_threads` threads, in order.
    pool: std::cell::RefCell<DecodePool>,
}

/// Limits the event rate: sleeps so that events/elapsed stays under the rate.
struct Pacer {
    rate: u64,
    started: std::time::Instant,
    events: u64,
}

impl Pacer {
    fn pace(&mut self, events: u64) {
        if self.rate == 0 {
            return;
        }
        self.events += events;
        let due = Duration::from_secs_f64(self.events as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

impl Reader<'_> {
    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Reads `path` from `offset` to its current end; returns the offset
    /// reached (after the last complete line) and whether it stopped early.
    fn read_file(
        &self,
        name: &str,
        path: &Path,
        offset: u64,
        at_end: bool,
    ) -> Result<(u64, bool), SourceError> {
        let mut file = File::open(path).map_err(io(format!("cannot open {}", path.display())))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(io(format!("cannot seek in {}", path.display())))?;
        let mut splitter = LineSplitter::new(offset, self.out.max_event_bytes());
        let read_bytes = self.config.read_bytes.max(4096);
        loop {
            if self.stopping() {
                return Ok((splitter.committed_offset(), true));
            }
            let Some(((buf, events), n)) = splitter
                .read_from(&mut file, read_bytes)
                .map_err(io(format!("cannot read {}", path.display())))?
            else {
                break;
            };
            self.pacer.borrow_mut().pace(events.len() as u64);
            if let Some(left) = self.initial_left.get() {
                let left = left.saturating_sub(n as u64);
                self.initial_left.set(Some(left));
                self.out.health().set_initial_read(Some(left));
            }
            let position = encode_position(name, splitter.committed_offset());
            if self
                .pool
                .borrow_mut()
                .emit(raw_batch(0, buf, events, position, n as u64))
                .is_err()
            {
                return Ok((splitter.committed_offset(), true));
            }
        }
        // A last line without a newline counts only once the file is complete.
        if at_end {
            if let Some((buf, events)) = splitter.finish() {
                let position = encode_position(name, splitter.committed_offset());
                if self
                    .pool
                    .borrow_mut()
                    .emit(raw_batch(0, buf, events, position, 0))
                    .is_err()
                {
                    return Ok((splitter.committed_offset(), true));
                }
            }
        }
        Ok((splitter.committed_offset(), false))
    }
}

fn run_blocking(config: FileSourceConfig, mut ctx: SourceContext) -> Result<(), SourceError> {
    let follow = config.follow && !ctx.bounded;
    let (mut current, mut offset) = ctx
        .restored
        .get(&0)
        .and_then(|p| decode_position(p))
        .map_or((None, 0), |(n, o)| (Some(n), o));
    ctx.output
        .partitions_blocking(vec![0])
        .map_err(|_| SourceError::External("shutdown".into()))?;
    let files = list_files(&config)?;
    let total: u64 = files
        .iter()
        .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    ctx.output.progress().add_total(total);
    // Readiness: not ready until the files present now are read.
    let skipped: u64 = files
        .iter()
        .filter(|(n, _)| current.as_deref().is_some_and(|c| n.as_str() < c))
        .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let initial_left = (!ctx.bounded).then(|| total.saturating_sub(skipped + offset));
    ctx.output.health().set_initial_read(initial_left);
    let reader = Reader {
        config: &config,
        out: &ctx.output,
        shutdown: &ctx.shutdown,
        pacer: std::cell::RefCell::new(Pacer {
            rate: config.max_events_per_second,
            started: std::time::Instant::now(),
            events: 0,
        }),
        initial_left: std::cell::Cell::new(initial_left),
        pool: std::cell::RefCell::new(ctx.output.decode_pool(config.decode_threads())),
    };
    loop {
        let files = list_files(&config)?;
        for (name, path) in &files {
            if current.as_deref().is_some_and(|c| name.as_str() < c) {
                continue; // read completely before the last checkpoint
            }
            let start = if current.as_deref() == Some(name.as_str()) {
                offset
            } else {
                0
            };
            let is_last = files.last().map(|(n, _)| n) == Some(name);
            // Only the newest file of a followed directory can still grow.
            let complete = !(follow && is_last);
            let (reached, stopped) = reader.read_file(name, path, start, complete)?;
            current = Some(name.clone());
            offset = reached;
            if stopped {
                return Ok(());
            }
        }
        // What follows (readiness, the end of the partition) comes after
        // every batch read so far has reached the processor.
        if reader.pool.borrow().flush().is_err() {
            return Ok(());
        }
        if reader.initial_left.take().is_some() {
            ctx.output.health().set_initial_read(None);
        }
        while ctx.commits.try_recv().is_ok() {}
        if !follow {
            let _ = ctx.output.partition_done_blocking(0);
            return Ok(());
        }
        std::thread::sleep(config.poll_interval.0.max(Duration::from_millis(10)));
        if reader.stopping() {
            return Ok(());
        }
    }
}

impl Source for FileSource {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        let config = self.config;
        Box::pin(async move {
            let name = ctx.name.clone();
            tokio::task::spawn_blocking(move || run_blocking(config, ctx))
                .await
                .map_err(|e| SourceError::Internal(format!("file source `{name}` panicked: {e}")))?
        })
    }
}
