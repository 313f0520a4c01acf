//! The checkpoint writer: applies each checkpoint's write set to the state
//! backend on a thread of its own while the processor carries on. The
//! layout and the backends themselves are in [`crate::state`]; their names
//! are re-exported here for the code that used them from this path.

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::state::{encode, key, Restored, SinkAck, StoreError, FORMAT_VERSION};
use crate::state::{StateBackend, WriteSet};

/// A checkpoint ready to be written.
pub struct CheckpointJob {
    /// The checkpoint's epoch; the marker is set to it once the writes are durable.
    pub epoch: u64,
    /// Everything the checkpoint changes in the store.
    pub writes: WriteSet,
    /// When the processor began taking the snapshot, for the duration metric.
    pub started: Instant,
}

/// The result of writing one.
#[derive(Debug)]
pub struct CheckpointDone {
    /// The epoch of the job.
    pub epoch: u64,
    /// Bytes put by the job (its [`WriteSet::bytes`]).
    pub bytes: u64,
    /// From the start of the snapshot until the write and marker were durable.
    pub duration: Duration,
    /// Ok once both the store and the marker hold the epoch durably.
    pub result: Result<(), super::CheckpointError>,
}

/// Runs the checkpoint writer on its own thread: jobs in, results out.
/// Processing continues while a checkpoint is being written. After each
/// durable checkpoint, and before reporting it (so before any sink sees
/// its epoch), the state marker in `marker_dir` is updated to its epoch.
///
/// With a remote copy (`uploader`), the checkpoint is also uploaded before
/// it is reported: what sinks and sources are told is committed is always
/// in the remote copy too.
///
/// State the start took from the remote copy (`import`) is written first,
/// before any checkpoint; if that fails, so does the first checkpoint.
pub fn spawn_writer(
    store: Arc<dyn StateBackend>,
    marker_dir: std::path::PathBuf,
    jobs: std::sync::mpsc::Receiver<CheckpointJob>,
    done: tokio::sync::mpsc::UnboundedSender<CheckpointDone>,
    mut uploader: Option<super::remote::Uploader>,
    import: Option<WriteSet>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("sluice-checkpoint".into())
        .spawn(move || {
            let mut import_error = None;
            if let Some(state) = import {
                let began = Instant::now();
                let entries = state.writes.len();
                let labels = uploader.as_ref().map(|u| u.labels()).unwrap_or_default();
                let pending = metrics::gauge!(crate::metrics::REMOTE_IMPORT_ENTRIES, labels);
                pending.set(entries as f64);
                let result = super::remote::finish_import(store.as_ref(), state);
                if result.is_ok() {
                    pending.set(0.0);
                }
                match result {
                    Ok(()) => tracing::info!(
                        entries,
                        ms = began.elapsed().as_millis() as u64,
                        "wrote the state taken from the remote copy into the state directory"
                    ),
                    Err(e) => import_error = Some(e),
                }
            }
            while let Ok(job) = jobs.recv() {
                if let Some(e) = import_error.take() {
                    let _ = done.send(CheckpointDone {
                        epoch: job.epoch,
                        bytes: 0,
                        duration: job.started.elapsed(),
                        result: Err(super::CheckpointError::from(e)),
                    });
                    break;
                }
                let bytes = job.writes.bytes;
                let deltas = uploader
                    .as_ref()
                    .map(|_| super::remote::Uploader::draft(&job.writes));
                let result = store
                    .apply(job.writes)
                    .map_err(super::CheckpointError::from);
                let result = result.and_then(|()| {
                    super::marker::write(&marker_dir, super::marker::Marker { epoch: job.epoch })
                        .map_err(super::CheckpointError::from)
                });
                let result = match (result, &mut uploader, deltas) {
                    (Ok(()), Some(up), Some(deltas)) => up
                        .upload(job.epoch, deltas, store.as_ref())
                        .map_err(super::CheckpointError::Remote),
                    (result, _, _) => result,
                };
                let msg = CheckpointDone {
                    epoch: job.epoch,
                    bytes,
                    duration: job.started.elapsed(),
                    result,
                };
                if done.send(msg).is_err() {
                    break;
                }
            }
        })
        .expect("spawning the checkpoint thread")
}
