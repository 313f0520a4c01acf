//! The remote copy of the state at run time (`[state] remote`, see
//! [`crate::state::remote`] for the objects):
//!
//! - [`Uploader`]: after each checkpoint is durable locally, and before it
//!   is reported (so before any sink sees its epoch or any source releases
//!   input), the checkpoint writer uploads what changed in the key groups
//!   the worker owns (a delta per changed group, and full bases of a few
//!   groups whose chain of deltas grew long: compaction as it goes), then a
//!   manifest. The remote copy therefore always covers everything released
//!   upstream. A store that is slow or down slows the commits (uploads are
//!   retried with backoff), never loses a checkpoint.
//! - [`prepare`]: at start, before the state is read, takes state from the
//!   remote copy where the local directory lacks it: all of it when the
//!   directory is empty but the remote copy holds this worker's checkpoints
//!   (a lost volume), or the key groups this worker now owns from the final
//!   checkpoints of their previous owners when the number of workers
//!   changed (a rescale), after each previous owner released them. Each
//!   key group's ownership is recorded by a write-once claim.
//! - [`release`]: at a clean stop, the worker says its key groups may move.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::WorkerId;
use crate::health::Readiness;
use crate::runtime::cluster::ClusterState;
use crate::runtime::{PipelineSpec, RunError, RunReport};
use crate::source::MergePositions;
use crate::state::layout::key;
use crate::state::remote::{encode_object, worker_dir, Release, RemoteError, RemoteStore};
use crate::state::{SledBackend, StateBackend, StoreError};
use crate::time::now_ms;

mod handover;
mod merge;
mod start;
mod upload;

pub use handover::FormerSinkSpec;
pub use start::{drop_unowned, finish_import, import_pending, prepare, Fetched, Prepare};

/// A group whose chain has this many segments gets a new base.
const MAX_CHAIN: usize = 8;
/// At most this many groups are re-based per checkpoint (besides those
/// that must be), so compaction spreads over checkpoints.
const REBASES_PER_CHECKPOINT: usize = 8;
/// How long a stopping worker keeps retrying an upload before it gives up
/// (the checkpoint stays local; the next start uploads it).
const STOPPING_RETRY_LIMIT: Duration = Duration::from_secs(30);
/// Old objects are removed every this many uploads.
const COLLECT_EVERY: u64 = 16;
/// Manifests kept per worker (older ones, and the segments only they
/// need, are removed).
const KEEP_MANIFESTS: usize = 3;

/// What the run shares with the checkpoint writer about the remote copy.
#[derive(Debug, Default)]
pub struct RemoteProgress {
    /// The last manifest uploaded: (epoch, name).
    pub last: Mutex<Option<(u64, String)>>,
    /// Set when the run stops: uploads then give up after
    /// [`STOPPING_RETRY_LIMIT`] of failures.
    pub stopping: std::sync::atomic::AtomicBool,
}

/// A key group's chain of segments in the remote copy.
#[derive(Debug, Clone, Default)]
struct Chain {
    segments: Vec<String>,
    base_bytes: u64,
    delta_bytes: u64,
}

/// Uploads each checkpoint; owned by the checkpoint writer thread.
pub struct Uploader {
    remote: RemoteStore,
    handle: tokio::runtime::Handle,
    me: WorkerId,
    key_groups: u16,
    owned: Vec<u16>,
    nodes: Vec<Arc<str>>,
    run: u64,
    chains: BTreeMap<u16, Chain>,
    progress: Arc<RemoteProgress>,
    labels: Vec<metrics::Label>,
    uploads: u64,
}

/// What the start found in the remote copy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The local state was complete.
    #[default]
    Local,
    /// The state directory was empty: everything came from the remote copy.
    LostVolume,
    /// The worker count changed: key groups came from their old owners.
    Rescale,
}

/// Reads the local store's epoch and the writer it records.
fn local_writer(store: &dyn StateBackend) -> Result<(u64, Option<ClusterState>), RunError> {
    let mut epoch = 0;
    let mut cluster = None;
    store.for_each_prefix(b"m\0", &mut |k, v| {
        if k == key::EPOCH {
            epoch = u64::from_be_bytes(v.try_into().unwrap_or([0; 8]));
        } else if k == key::CLUSTER {
            cluster = Some(v.to_vec());
        }
        Ok(())
    })?;
    let cluster = match cluster {
        Some(bytes) => Some(decode_cluster(&bytes)?),
        None => None,
    };
    Ok((epoch, cluster))
}

fn decode_cluster(bytes: &[u8]) -> Result<ClusterState, RunError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| {
            RunError::Store(StoreError::Corrupt {
                key: "m\\0cluster".into(),
                reason: e.to_string(),
            })
        })
}

fn remote_error(e: RemoteError) -> RunError {
    RunError::Remote(e.to_string())
}

/// A run id: unique enough that two runs of one worker never write an
/// object of the same name.
fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Writes the release of this worker's last uploaded checkpoint: its key
/// groups may move to other workers.
pub async fn release(
    remote: &RemoteStore,
    me: WorkerId,
    manifest: &str,
    epoch: u64,
    forced: bool,
) -> Result<(), RemoteError> {
    let name = manifest.rsplit('/').next().unwrap_or(manifest);
    let r = Release {
        manifest: manifest.to_string(),
        epoch,
        forced,
        written_ms: now_ms(),
    };
    remote
        .put_once(
            &format!("releases/{}/{name}", worker_dir(me)),
            encode_object(&r),
        )
        .await?;
    Ok(())
}

/// At a clean stop, writes the release of the last uploaded checkpoint so
/// that other workers may take over this worker's key groups (a rescale).
pub(crate) async fn release_if_clean(
    report: &RunReport,
    progress: &RemoteProgress,
    url: &str,
    me: WorkerId,
) {
    let last = progress.last.lock().expect("not poisoned").clone();
    let Some((epoch, manifest)) = last.filter(|(e, _)| *e == report.epoch) else {
        tracing::info!(
            epoch = report.epoch,
            "the last checkpoint is not in the remote copy: not releasing this worker's key groups"
        );
        return;
    };
    if !report.clean_stop {
        tracing::info!(
            epoch,
            "not a clean stop (a sink did not acknowledge, or other workers were still sending): not releasing this worker's key groups"
        );
        return;
    }
    let result = match crate::state::remote::RemoteStore::open(url) {
        Ok(r) => release(&r, me, &manifest, epoch, false).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            tracing::info!(epoch, %manifest, "released this worker's key groups (a clean stop): they may move to other workers")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the release of this worker's key groups; a rescale will wait for it")
        }
    }
}

/// What of the pipeline's connectors a takeover needs (see [`prepare`]).
pub(crate) struct Connectors {
    /// The sinks, to write a gone owner's unacknowledged output.
    sinks: Vec<FormerSinkSpec>,
    /// The sources whose positions a takeover merges.
    merged_positions: Vec<(String, MergePositions)>,
}

impl Connectors {
    pub(crate) fn of(spec: &PipelineSpec) -> Connectors {
        Connectors {
            sinks: spec
                .sinks
                .iter()
                .chain([&spec.dead_letter])
                .map(|s| FormerSinkSpec {
                    name: s.name.clone(),
                    build: s.former.clone(),
                })
                .collect(),
            merged_positions: spec
                .sources
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.source.merge_positions()?)))
                .collect(),
        }
    }
}

/// Takes what the local state lacks from the remote copy (see
/// [`prepare`]) and builds the uploader.
pub(crate) async fn prepare_run(
    (me, key_groups, pipeline): (WorkerId, u16, &str),
    state_dir: &std::path::Path,
    url: &str,
    store: &Arc<SledBackend>,
    signatures: &[(String, String)],
    connectors: &Connectors,
    ready: &Arc<Readiness>,
) -> Result<(Recovery, Uploader, Fetched), RunError> {
    let remote_store = RemoteStore::open(url).map_err(|e| RunError::Remote(e.to_string()))?;
    let nodes: Vec<Arc<str>> = signatures
        .iter()
        .map(|(n, _)| Arc::from(n.as_str()))
        .collect();
    let ready = ready.clone();
    let waiting = move |text: &str| ready.waiting(text);
    prepare(Prepare {
        remote: &remote_store,
        store: store.as_ref(),
        me,
        key_groups,
        nodes: &nodes,
        pipeline,
        waiting: &waiting,
        marker_dir: Some(state_dir),
        sinks: &connectors.sinks,
        merged_positions: &connectors.merged_positions,
    })
    .await
}

#[cfg(test)]
mod tests;
