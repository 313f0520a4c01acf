//! Setting a worker up: what all workers must agree on, the exchange
//! points of the plan, the cluster state a checkpoint holds, the sender
//! session.

use super::ClusterState;
use crate::cluster::WorkerId;
use crate::plan::Plan;
use crate::runtime::{PipelineSpec, RunError};
use crate::state::{Restored, StoreError};

/// How the topology signature is computed: everything all workers must
/// agree on (worker count, key groups, sources, transforms with their
/// inputs and state signatures, sinks with their inputs), not per-worker
/// values (addresses, paths).
pub(crate) fn topology_signature(spec: &PipelineSpec) -> String {
    let mut text = format!(
        "v1 workers={} key_groups={}\n",
        spec.worker.workers, spec.key_groups
    );
    for s in &spec.sources {
        text.push_str(&format!("source {}\n", s.name));
    }
    for t in &spec.transforms {
        text.push_str(&format!(
            "transform {} <- {:?} stateful={} {}\n",
            t.name,
            t.inputs,
            t.spec.is_stateful(),
            t.spec.state_signature()
        ));
    }
    for s in &spec.sinks {
        text.push_str(&format!("sink {} <- {:?}\n", s.name, s.inputs));
    }
    format!("{:016x}", crate::keys::stable_hash(text.as_bytes()))
}

/// This run's sender session: larger than the clock's nanoseconds and than
/// any earlier run's (kept, fsynced, in `path` before it is used), so that
/// receivers never take this run's batches for a stale session's even if
/// the clock went back.
pub(super) fn next_session(path: &std::path::Path) -> std::io::Result<u64> {
    use std::io::Write;
    let previous = match std::fs::read(path) {
        Ok(bytes) => bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let session = now.max(previous.saturating_add(1));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&session.to_be_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(session)
}

/// The exchange points of a run of several workers: the stateful
/// transforms no other stateful transform feeds. A stateful transform fed
/// by another must keep its key (its rows are already at their owner);
/// otherwise the run is refused.
pub(in crate::runtime) fn exchange_points(
    spec: &PipelineSpec,
    plan: &Plan,
) -> Result<Vec<bool>, RunError> {
    let n_sources = spec.sources.len();
    let n_nodes = plan.graph.nodes.len();
    let stateful = |n: usize| {
        n >= n_sources
            && n < n_sources + spec.transforms.len()
            && spec.transforms[n - n_sources].spec.is_stateful()
    };
    // behind[n]: a stateful transform is on some path into n (n excluded)
    let mut behind = vec![false; n_nodes];
    for &n in &plan.graph.order {
        behind[n] = plan.graph.inputs[n]
            .iter()
            .any(|&i| behind[i] || stateful(i));
    }
    let mut points = vec![false; n_nodes];
    for n in 0..n_nodes {
        if !stateful(n) {
            continue;
        }
        if !behind[n] {
            points[n] = true;
            continue;
        }
        if spec.worker.is_single() {
            continue;
        }
        let t = &spec.transforms[n - n_sources];
        let upstream = plan.build_context(n, spec.key_groups).upstream_key;
        if upstream.is_none() || t.spec.output_key(upstream.as_deref()) != upstream {
            return Err(RunError::Plan(format!(
                "transform `{}` reads the results of another stateful transform and groups them by another key; with several workers this is not supported yet (group by the same fields, or run one worker)",
                t.name
            )));
        }
    }
    Ok(points)
}

/// Checks that the state was written by this worker of as many workers,
/// and returns its cluster state.
pub(in crate::runtime) fn check_cluster_state(
    spec: &PipelineSpec,
    restored: &Restored,
) -> Result<Option<ClusterState>, RunError> {
    let dir = spec.state_dir.display().to_string();
    let me = spec.worker;
    let state: Option<ClusterState> = match &restored.cluster {
        Some(bytes) => Some(
            bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                .map(|(v, _)| v)
                .map_err(|e| {
                    RunError::Store(StoreError::Corrupt {
                        key: "m\\0cluster".into(),
                        reason: e.to_string(),
                    })
                })?,
        ),
        None => None,
    };
    let written_by = match &state {
        Some(c) => WorkerId {
            worker: c.worker,
            workers: c.workers,
        },
        None => WorkerId::SINGLE,
    };
    if restored.epoch > 0 && written_by != me {
        return Err(RunError::StateMismatch {
            dir,
            reason: format!(
                "it was written by {written_by}, this is {me}; changing the number of workers of existing state (rescaling) is not supported yet"
            ),
        });
    }
    Ok(state.filter(|_| !me.is_single()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_grow_even_when_the_clock_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exchange-session");
        let first = next_session(&path).unwrap();
        // an earlier run that chose a session far in the future
        std::fs::write(&path, (first + 1_000_000_000_000).to_be_bytes()).unwrap();
        let next = next_session(&path).unwrap();
        assert_eq!(next, first + 1_000_000_000_001);
        assert!(next_session(&path).unwrap() > next);
    }
}
