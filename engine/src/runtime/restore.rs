//! The start's reading of the state directory: the store opened, the last
//! checkpoint read back (from the restart snapshot where it can be) and
//! checked against the pipeline and the sinks, the operators restored; and
//! at the end of a run, the restart snapshot for the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::processor::Processor;
use super::{marker, remote, PipelineSpec, RunError, SinkSpec};
use crate::error::Report;
use crate::operator::Operator;
use crate::state::{Restored, SledBackend, StateBackend};

/// Opens (creating it if needed) the state directory.
pub(super) fn open_store(spec: &PipelineSpec) -> Result<Arc<SledBackend>, RunError> {
    std::fs::create_dir_all(&spec.state_dir).map_err(|source| RunError::StateDir {
        dir: spec.state_dir.display().to_string(),
        source,
    })?;
    Ok(Arc::new(SledBackend::open(&spec.state_dir)?))
}

/// Reads back the last checkpoint, checks that it was written for this
/// pipeline, and restores the operators from it.
pub(super) fn restore(
    spec: &PipelineSpec,
    store: Arc<SledBackend>,
    signatures: &[(String, String)],
    operators: &mut [Option<Box<dyn Operator>>],
    (open_ms, fetched): (u64, remote::Fetched),
    restart_snapshot: std::thread::JoinHandle<Option<crate::state::restart::RestartSnapshot>>,
) -> Result<(Arc<dyn StateBackend>, Restored), RunError> {
    let read = std::time::Instant::now();
    // Only the key groups this worker owns: after a rescale the store may
    // still hold others until they are removed (remote::drop_unowned).
    // Groups this start took from the remote copy come from there, not
    // read back from the store that was just written.
    // Groups a clean stop left in the restart snapshot come from there:
    // one sequential read instead of the store's entries one by one.
    let nodes: Vec<&str> = signatures.iter().map(|(n, _)| n.as_str()).collect();
    let owned = spec.worker.owned(spec.key_groups);
    let mut restored = crate::state::restore_meta(store.as_ref())?;
    let snapshot = restart_snapshot
        .join()
        .expect("reading the restart snapshot does not panic")
        .filter(|s| s.matches(restored.epoch, spec.key_groups, signatures));
    // Only groups whose local state this start left as it was.
    let from_snapshot =
        |g: &u16| owned.contains(g) && !fetched.replaced.contains(g) && !fetched.groups.contains(g);
    let mut skip = fetched.groups.clone();
    if let Some(s) = &snapshot {
        skip.extend(s.groups.clone().filter(from_snapshot));
    }
    crate::state::read_groups(store.as_ref(), &mut restored, &nodes, owned.clone(), &skip)?;
    for (node, entries) in fetched.state {
        restored.state.entry(node).or_default().extend(entries);
    }
    let used_snapshot = snapshot.is_some();
    if let Some(s) = snapshot {
        for n in s.nodes {
            let entries = restored.state.entry(n.node).or_default();
            entries.extend(n.entries.into_iter().filter(|(g, _, _)| from_snapshot(g)));
        }
    }
    let read_ms = read.elapsed().as_millis() as u64;
    let rebuilt = std::time::Instant::now();
    let dir = spec.state_dir.display().to_string();
    if let Some(kg) = restored.key_groups {
        if kg != spec.key_groups {
            return Err(RunError::StateMismatch {
                dir,
                reason: format!(
                    "it was written with {kg} key groups, the pipeline says {}",
                    spec.key_groups
                ),
            });
        }
    }
    for (name, sig) in signatures {
        if let Some(old) = restored.signatures.get(name) {
            if old != sig {
                return Err(RunError::StateMismatch {
                    dir,
                    reason: format!("transform `{name}` changed (was `{old}`, now `{sig}`)"),
                });
            }
        }
    }
    for (t, tspec) in spec.transforms.iter().enumerate() {
        if let Some(entries) = restored.state.remove(&tspec.name) {
            let op = operators[t].as_mut().expect("built above");
            op.restore(entries).map_err(|error| RunError::Restore {
                name: tspec.name.clone(),
                error,
            })?;
        }
    }
    if restored.epoch > 0 {
        let operators_ms = rebuilt.elapsed().as_millis() as u64;
        tracing::info!(epoch = restored.epoch, dir = %spec.state_dir.display(), open_ms, read_ms, operators_ms, from_snapshot = used_snapshot, "restored checkpoint");
    }
    Ok((store, restored))
}

/// Lost or damaged state is never taken for a fresh start: the state
/// marker and the sinks' destinations must agree with what was restored.
pub(super) async fn check_lost_state(
    state_dir: &Path,
    sinks: &mut [SinkSpec],
    restored: &Restored,
    accept_empty_state: bool,
) -> Result<(), RunError> {
    let dir = state_dir.display().to_string();
    let old_marker = marker::read(state_dir)?;
    let mut traces = Vec::new();
    for s in sinks {
        let progress = restored.acks.get(&s.name).and_then(|a| a.progress.clone());
        match s
            .sink
            .earlier_output(restored.epoch, progress.as_deref())
            .await
        {
            Ok(Some(t)) => traces.push(format!("sink `{}`: {t}", s.name)),
            Ok(None) => {}
            // A destination that is down at start cannot be checked;
            // the sink retries once running, and the start goes on
            // (ingest stays available), with the state marker's check.
            Err(e) if e.is_retryable() => {
                tracing::warn!(sink = %s.name, error = %Report(&e),
                    "cannot check the sink's destination for values the restored state does not explain (it is unreachable); starting with the state marker's check only");
            }
            Err(e) => {
                return Err(RunError::Sink {
                    name: s.name.clone(),
                    error: e,
                })
            }
        }
    }
    if let Err(refusal) = marker::check(old_marker, restored.epoch, &traces) {
        if !accept_empty_state {
            return Err(RunError::StateLost { dir, refusal });
        }
        tracing::warn!(dir = %state_dir.display(), restored = %refusal.restored,
            evidence = ?refusal.evidence,
            "starting from the state as it is (--accept-empty-state), although an earlier run left more");
    }
    if old_marker.map(|m| m.epoch) != Some(restored.epoch) {
        marker::write(
            state_dir,
            marker::Marker {
                epoch: restored.epoch,
            },
        )?;
    }
    Ok(())
}

/// Where and for what a finished run leaves its restart snapshot.
pub(super) struct RestartTarget {
    pub dir: PathBuf,
    pub key_groups: u16,
    pub groups: std::ops::Range<u16>,
    pub signatures: Vec<(String, String)>,
}

/// Leaves the operators' state of a finished run in the state directory
/// for the next start (see [`crate::state::restart`]); a failure costs only
/// that start's speed.
pub(super) fn write_restart_snapshot(processor: &Processor, target: &RestartTarget) {
    let began = std::time::Instant::now();
    let Some(snap) =
        processor.restart_snapshot(target.key_groups, target.groups.clone(), &target.signatures)
    else {
        return;
    };
    let entries: usize = snap.nodes.iter().map(|n| n.entries.len()).sum();
    match crate::state::restart::write(&target.dir, &snap) {
        Ok(()) => tracing::info!(
            epoch = snap.epoch,
            entries,
            ms = began.elapsed().as_millis() as u64,
            "wrote the restart snapshot"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the restart snapshot (the next start reads the state store instead)")
        }
    }
}
