//! Taking state from the remote copy at start: a lost volume, a rescale
//! (see the module's documentation).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};

use super::handover::{self, FormerSinkSpec};
use super::merge::{merge_marks, merge_positions};
use super::upload::new_uploader;
use super::{decode_cluster, local_writer, remote_error, Chain, Recovery, Uploader};
use crate::cluster::WorkerId;
use crate::metrics as m;
use crate::operator::StateEntry;
use crate::runtime::cluster::ClusterState;
use crate::runtime::RunError;
use crate::source::MergePositions;
use crate::state::layout::key;
use crate::state::remote::{
    claim_name, encode_object, Claim, Manifest, Put, Release, RemoteStore, Segment,
};
use crate::state::{Key, StateBackend, StoreError, WriteSet};
use crate::time::now_ms;

/// Everything the start needs to know to take state from the remote copy.
pub struct Prepare<'a> {
    /// The remote copy.
    pub remote: &'a RemoteStore,
    /// The local store, opened.
    pub store: &'a dyn StateBackend,
    /// This worker.
    pub me: WorkerId,
    /// The pipeline's key groups.
    pub key_groups: u16,
    /// The stateful nodes.
    pub nodes: &'a [Arc<str>],
    /// The pipeline's name (metric labels).
    pub pipeline: &'a str,
    /// Called while waiting for other workers to release key groups.
    pub waiting: &'a (dyn Fn(&str) + Sync),
    /// The state directory (its marker follows a rolled-back checkpoint).
    pub marker_dir: Option<&'a std::path::Path>,
    /// The pipeline's sinks, to write a gone owner's unacknowledged output
    /// (see [`super::handover`]).
    pub sinks: &'a [FormerSinkSpec],
    /// The sources whose positions a takeover merges (shared queues): name
    /// and how.
    pub merged_positions: &'a [(String, MergePositions)],
}

/// The operator state this start took from the remote copy (it is also in
/// the local store): the run restores its operators from it rather than
/// reading it back (a store just written is slow to read).
#[derive(Debug, Default)]
pub struct Fetched {
    /// The key groups whose whole state is here.
    pub groups: BTreeSet<u16>,
    /// The key groups whose local state this start replaced (the fetched
    /// ones, and those that arrived empty): no older reading of the
    /// directory, such as a restart snapshot, holds them.
    pub replaced: BTreeSet<u16>,
    /// Per stateful node: (key group, key, value).
    pub state: HashMap<String, Vec<StateEntry>>,
    /// The same state as writes for the local store, which the checkpoint
    /// writer applies before its first checkpoint ([`finish_import`]) so
    /// that the start need not wait for them; the store lists the groups
    /// until then ([`key::IMPORT`]). None when there is nothing to write.
    pub import: Option<WriteSet>,
}

/// The key groups whose state a start took from the remote copy and has
/// not yet written into the local store completely: each group's chain of
/// segments. Stored under [`key::IMPORT`] together with the rest of the
/// takeover; removed once the state is written. A start that finds it
/// (the run ended before) writes those groups again from their chains.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct PendingImport {
    groups: BTreeMap<u16, Vec<String>>,
}

/// Writes the state a start took from the remote copy into the local store
/// (in parts), then removes the list of pending groups: called by the
/// checkpoint writer before its first checkpoint.
pub fn finish_import(store: &dyn StateBackend, state: WriteSet) -> Result<(), StoreError> {
    store.apply_in_parts(state)?;
    let mut done = WriteSet::default();
    done.delete(Key::Raw(key::IMPORT.to_vec()));
    store.apply(done)
}

/// Whether a start took key groups from the remote copy that are not yet
/// all written into `store` (a run without the remote copy must not start
/// on it: its state is incomplete).
pub fn import_pending(store: &dyn StateBackend) -> Result<bool, StoreError> {
    let mut found = false;
    store.for_each_prefix(key::IMPORT, &mut |k, _| {
        found |= k == key::IMPORT;
        Ok(())
    })?;
    Ok(found)
}

/// The groups a previous start left to write, if any.
fn pending_import(store: &dyn StateBackend) -> Result<Option<PendingImport>, RunError> {
    let mut found = None;
    store.for_each_prefix(key::IMPORT, &mut |k, v| {
        if k == key::IMPORT {
            found = Some(v.to_vec());
        }
        Ok(())
    })?;
    match found {
        None => Ok(None),
        Some(bytes) => bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
            .map(|(p, _)| Some(p))
            .map_err(|e| {
                RunError::Remote(format!(
                    "the list of key groups being imported is damaged: {e}"
                ))
            }),
    }
}

/// The list of `groups` (with their chains) as the write that records it.
fn record_import(writes: &mut WriteSet, groups: BTreeMap<u16, Vec<String>>) {
    writes.put(
        Key::Raw(key::IMPORT.to_vec()),
        crate::state::encode(&PendingImport { groups }),
    );
}

impl Fetched {
    fn add(&mut self, g: u16, entries: &[(String, Vec<u8>, Vec<u8>)]) {
        self.groups.insert(g);
        for (node, k, v) in entries {
            self.state
                .entry(node.clone())
                .or_default()
                .push((g, k.clone(), v.clone()));
        }
    }
}

/// Takes what the local state lacks from the remote copy and claims this
/// worker's key groups; returns what was done, the uploader (its starting
/// chains) and the state taken.
pub async fn prepare(p: Prepare<'_>) -> Result<(Recovery, Uploader, Fetched), RunError> {
    let started = Instant::now();
    let labels = m::pipeline_labels(p.pipeline);
    let (local_epoch, local_cluster) = local_writer(p.store)?;
    let local_by = match &local_cluster {
        Some(c) => WorkerId::new(c.worker, c.workers).unwrap_or(WorkerId::SINGLE),
        None => WorkerId::SINGLE,
    };
    let mut recovery = Recovery::Local;
    let mut restored_bytes = 0u64;
    let mut fetched = Fetched::default();
    if let Some(pending) = pending_import(p.store)? {
        // An earlier start took these groups over (or restored a lost
        // volume) and the run ended before their state was all written:
        // write it again, now.
        tracing::warn!(groups = pending.groups.len(),
            "the previous run ended before the key groups it took from the remote copy were written into the state directory: writing them again");
        let mut cache = SegmentCache::default();
        let mut state = WriteSet::default();
        for (&g, chain) in &pending.groups {
            for node in p.nodes {
                p.store
                    .for_each_prefix(&key::state_group_prefix(node, g), &mut |k, _| {
                        state.delete(Key::Raw(k.to_vec()));
                        Ok(())
                    })?;
            }
            let entries = cache.rebuild(p.remote, chain, g).await?;
            fetched.add(g, &entries);
            fetched.replaced.insert(g);
            for e in entries {
                state.put(Key::Raw(key::state(&e.0, g, &e.1)), e.2);
            }
        }
        restored_bytes += cache.bytes;
        finish_import(p.store, state)?;
    }
    let mine = p.remote.latest_manifest(p.me).await.map_err(remote_error)?;
    if local_epoch == 0 {
        if let Some((name, manifest)) = &mine {
            // A lost volume: everything this worker had is in its last
            // uploaded checkpoint.
            tracing::warn!(manifest = %name, epoch = manifest.epoch, remote = %p.remote.url(),
                reason = "lost_volume",
                "the state directory is empty but the remote copy holds this worker's checkpoints: restored the state from the remote copy");
            let mut cache = SegmentCache::default();
            let mut state = WriteSet::default();
            for (&g, chain) in &manifest.chains {
                let entries = cache.rebuild(p.remote, chain, g).await?;
                fetched.add(g, &entries);
                for e in entries {
                    let k = key::state(&e.0, g, &e.1);
                    state.put(Key::Raw(k), e.2);
                }
            }
            // The checkpoint's epoch and the rest at once, with the list
            // of groups whose state is yet to be written (by the
            // checkpoint writer, before its first checkpoint; a start that
            // finds the list writes them again).
            let mut writes = WriteSet::default();
            record_import(&mut writes, manifest.chains.clone());
            for (k, v) in &manifest.meta {
                let v = if k == key::CLUSTER {
                    // The inbound journal went with the volume: read it from its start.
                    let mut c = decode_cluster(v)?;
                    c.inbound.position = 0;
                    crate::state::encode(&c)
                } else {
                    v.clone()
                };
                writes.put(Key::Raw(k.clone()), v);
            }
            restored_bytes += cache.bytes;
            p.store.apply(writes)?;
            fetched.import = Some(state);
            recovery = Recovery::LostVolume;
        }
    }
    let local_owner = if recovery == Recovery::LostVolume || local_epoch > 0 {
        Some(if recovery == Recovery::LostVolume {
            p.me
        } else {
            local_by
        })
    } else {
        None
    };

    // Claims: each owned key group's newest claim says where its state is.
    let owned: Vec<u16> = p.me.owned(p.key_groups).collect();
    let mut moves: Vec<(u16, u64, Claim)> = Vec::new();
    let mut first_claims: Vec<u16> = Vec::new();
    // Every owned group's newest claim, a few requests at a time.
    let claims: Vec<Option<(u64, Claim)>> = futures::stream::iter(owned.iter().copied())
        .map(|g| p.remote.latest_claim(g))
        .buffered(16)
        .try_collect()
        .await
        .map_err(remote_error)?;
    for (&g, latest) in owned.iter().zip(claims) {
        match latest {
            Some((_, c)) if c.owner() == p.me => {
                // Ours already; after a rescale our local copy must hold it.
                if local_owner.is_some_and(|o| o != p.me) {
                    moves.push((g, 0, c));
                }
            }
            Some((generation, c)) => moves.push((g, generation, c)),
            None => {
                if let Some(o) = local_owner.filter(|&o| o != p.me) {
                    if o.owner_of(g, p.key_groups) != p.me.worker || o.workers != p.me.workers {
                        return Err(RunError::Remote(format!(
                            "key group {g} moves to {} but the remote copy has no claim for it: \
                             its owner ran without `[state] remote` (or on another remote); \
                             run the previous number of workers once with the remote set, then rescale",
                            p.me
                        )));
                    }
                }
                first_claims.push(g);
            }
        }
    }

    // Groups that move: wait for each previous owner's release.
    let mut sources: HashMap<WorkerId, (String, Manifest)> = HashMap::new();
    let mut moved: Vec<(u16, u64, Option<String>)> = Vec::new();
    let mut empty_owners: BTreeSet<WorkerId> = BTreeSet::new();
    let mut moved_uploader: Option<Uploader> = None;
    for (g, generation, claim) in &moves {
        let owner = claim.owner();
        if owner == p.me {
            // Claimed by this worker in an earlier, interrupted start:
            // its state came from `claim.from`.
            if let Some(from) = &claim.from {
                if !sources.contains_key(&owner) {
                    let man = p
                        .remote
                        .read::<Manifest>(from)
                        .await
                        .map_err(remote_error)?
                        .ok_or_else(|| {
                            RunError::Remote(format!("claimed manifest {from} is missing"))
                        })?;
                    sources.insert(man.writer(), (from.clone(), man));
                }
            }
            continue;
        }
        if !sources.contains_key(&owner) && !empty_owners.contains(&owner) {
            match wait_for_release(&p, claim, *g).await? {
                Some(release) => {
                    let man = p
                        .remote
                        .read::<Manifest>(&release.manifest)
                        .await
                        .map_err(remote_error)?
                        .ok_or_else(|| {
                            RunError::Remote(format!(
                                "released manifest {} is missing",
                                release.manifest
                            ))
                        })?;
                    sources.insert(owner, (release.manifest.clone(), man));
                }
                None => {
                    empty_owners.insert(owner);
                }
            }
        }
        moved.push((*g, *generation, sources.get(&owner).map(|s| s.0.clone())));
    }

    // Groups whose previous owner wrote this very directory, released at
    // the local epoch: the local copy is that checkpoint already.
    let kept: BTreeSet<u16> = match sources.get(&local_by) {
        Some((_, man))
            if recovery == Recovery::Local && local_epoch > 0 && man.epoch == local_epoch =>
        {
            moves
                .iter()
                .filter(|(_, _, c)| c.owner() == local_by)
                .map(|(g, _, _)| *g)
                .collect()
        }
        _ => BTreeSet::new(),
    };

    // The checkpoint a moved group's state comes from: its previous
    // owner's release, or for a group this worker claimed in an earlier,
    // interrupted start, the manifest its claim names.
    let source_of = |claim: &Claim| -> Option<&Manifest> {
        if claim.owner() == p.me {
            let from = claim.from.as_ref()?;
            sources.values().find(|(n, _)| n == from).map(|(_, m)| m)
        } else {
            sources.get(&claim.owner()).map(|(_, m)| m)
        }
    };
    if !moves.is_empty() {
        // What gone owners committed but their sinks never acknowledged,
        // written on their behalf before the takeover is recorded.
        for (owner, (_, man)) in &sources {
            if *owner != p.me && handover::delivers_for(p.me, man.writer(), p.key_groups) {
                handover::deliver(&p, man).await?;
            }
        }
        // Build the new local state: drop groups no longer owned, put the
        // moved groups' state, merge what receivers remember of replays.
        let phase = Instant::now();
        let waited_ms = started.elapsed().as_millis() as u64;
        // A lost volume restored above while groups still move (a start
        // that lost its volume in the middle of a takeover): what it took
        // goes into the store now, so that what follows reads the store
        // whole (what arriving groups held, the bases of groups that stay).
        if let Some(restored) = fetched.import.take() {
            finish_import(p.store, restored)?;
        }
        let mut cache = SegmentCache::default();
        // What this directory holds of arriving groups (removed in parts),
        // the rest (applied at once, after: until then the directory still
        // shows its previous writer, so a start interrupted in between
        // redoes the move), and the arriving state (written by the
        // checkpoint writer; the rest lists its groups until then).
        let mut stale = WriteSet::default();
        let mut writes = WriteSet::default();
        let mut state = WriteSet::default();
        let mut importing: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        // This directory's own writer was released (by an operator) at an
        // older checkpoint than the directory holds: what it did after that
        // checkpoint was never released upstream and is read again, so the
        // directory's positions, acknowledgements and the like go back to
        // that checkpoint too (with newer ones, input applied only in the
        // discarded state would be skipped as already seen).
        let rollback = match sources.get(&local_by) {
            Some((_, man))
                if recovery == Recovery::Local
                    && local_epoch > 0
                    && local_by != p.me
                    && man.epoch != local_epoch =>
            {
                Some((man.epoch, man.meta.clone()))
            }
            // Its writer never uploaded a checkpoint (its groups move
            // without a release): none of its input was released upstream
            // and all of it is read again, so no position of the directory
            // counts either (an AMQP source would skip the redeliveries of
            // messages it holds as read, their effect gone with the state).
            None if recovery == Recovery::Local
                && local_epoch > 0
                && local_by != p.me
                && empty_owners.contains(&local_by) =>
            {
                Some((0, Vec::new()))
            }
            _ => None,
        };
        if let Some((epoch, meta)) = &rollback {
            tracing::warn!(local_epoch, released_epoch = epoch,
                "this directory holds a newer checkpoint than its previous owner's release: going back to the released one");
            for prefix in key::NOT_STATE {
                p.store.for_each_prefix(prefix, &mut |k, _| {
                    writes.delete(Key::Raw(k.to_vec()));
                    Ok(())
                })?;
            }
            // Not its outboxes: they are dropped with the directory's own
            // below (what its sinks had not acknowledged was written above).
            for (k, v) in meta.iter().filter(|(k, _)| !k.starts_with(b"o\0")) {
                writes.put(Key::Raw(k.clone()), v.clone());
            }
        }
        // The positions of shared queues: what the previous owners held as
        // read but maybe not acknowledged may be redelivered to any worker.
        let dir_writer = match recovery {
            Recovery::LostVolume => Some(p.me),
            _ if local_epoch > 0 => Some(local_by),
            _ => None,
        };
        let released: Vec<(&String, &Manifest)> = sources
            .iter()
            .filter(|(w, _)| Some(**w) != dir_writer)
            .map(|(_, (name, man))| (name, man))
            .collect();
        let dir_meta = rollback.as_ref().map(|(_, meta)| meta.as_slice());
        merge_positions(&p, dir_meta, &released, &mut writes)?;
        // A group that arrives replaces what this directory holds of it
        // (a copy from an earlier ownership). Groups no longer owned are
        // left to [`drop_unowned`] after the start (restore reads only
        // owned groups).
        for (g, _, _) in moves.iter().filter(|(g, _, _)| !kept.contains(g)) {
            fetched.replaced.insert(*g);
            for node in p.nodes {
                p.store
                    .for_each_prefix(&key::state_group_prefix(node, *g), &mut |k, _| {
                        stale.delete(Key::Raw(k.to_vec()));
                        Ok(())
                    })?;
            }
        }
        // The outboxes this directory holds are the previous owner's
        // output for the key groups it owned then: re-delivered under this
        // worker's new write generation, they would overwrite (and fence)
        // what the new owners of those groups write. A released owner's
        // sinks acknowledged all of it; after a forced release, what they
        // had not was written above, under the owner's own generation.
        p.store.for_each_prefix(b"o\0", &mut |k, _| {
            writes.delete(Key::Raw(k.to_vec()));
            Ok(())
        })?;
        let mut marks: Vec<ClusterState> = Vec::new();
        for (g, _, claim) in moves.iter().filter(|(g, _, _)| !kept.contains(g)) {
            let from = source_of(claim);
            let Some(man) = from else { continue };
            let chain = man.chains.get(g).cloned().unwrap_or_default();
            let entries = cache.rebuild(p.remote, &chain, *g).await?;
            importing.insert(*g, chain);
            fetched.add(*g, &entries);
            for e in entries {
                state.put(Key::Raw(key::state(&e.0, *g, &e.1)), e.2);
            }
        }
        for (_, man) in sources.values() {
            if let Some((_, v)) = man.meta.iter().find(|(k, _)| k == key::CLUSTER) {
                marks.push(decode_cluster(v)?);
            }
        }
        restored_bytes += cache.bytes;
        if p.me.is_single() {
            writes.delete(Key::Cluster);
        } else {
            let mut state = local_cluster.unwrap_or_default();
            state.worker = p.me.worker;
            state.workers = p.me.workers;
            merge_marks(&mut state, &marks);
            writes.put(Key::Cluster, crate::state::encode(&state));
        }
        let fetched_ms = phase.elapsed().as_millis() as u64;
        let phase = Instant::now();
        let entries = state.writes.len() + stale.writes.len() + writes.writes.len();
        p.store.apply_in_parts(stale)?;
        if !importing.is_empty() {
            record_import(&mut writes, importing);
            fetched.import = Some(state);
        }
        p.store.apply(writes)?;
        if let (Some((epoch, _)), Some(dir)) = (&rollback, p.marker_dir) {
            crate::runtime::marker::write(dir, crate::runtime::marker::Marker { epoch: *epoch })?;
        }
        let applied_ms = phase.elapsed().as_millis() as u64;
        let phase = Instant::now();
        // Upload a manifest of what this worker now holds before claiming:
        // a claimed group is always in its owner's manifests, so a later
        // move never mistakes it for empty. A group taken from a previous
        // owner continues that owner's chain (its segments are written
        // once and stay while a manifest of a running worker names them:
        // each worker removes only segments of its own that none of its
        // kept manifests needs, and the workers of one count never share
        // a directory); other groups get a base.
        let (epoch_now, _) = local_writer(p.store)?;
        let mut chains: BTreeMap<u16, Chain> = BTreeMap::new();
        for (g, _, claim) in &moves {
            let from = source_of(claim);
            if let Some(segments) = from.and_then(|m| m.chains.get(g)).filter(|s| !s.is_empty()) {
                chains.insert(
                    *g,
                    Chain {
                        segments: segments.clone(),
                        ..Default::default()
                    },
                );
            }
        }
        let mut up = new_uploader(&p, owned.clone(), chains);
        up.upload_async(epoch_now, BTreeMap::new(), p.store)
            .await
            .map_err(RunError::Remote)?;
        moved_uploader = Some(up);
        let uploaded_ms = phase.elapsed().as_millis() as u64;
        let phase = Instant::now();
        // Claim only once the state is here: a start interrupted before
        // this point redoes the move.
        for (g, generation, from) in &moved {
            claim(p.remote, *g, generation + 1, p.me, from.clone()).await?;
        }
        tracing::info!(
            entries,
            waited_ms,
            fetched_ms,
            applied_ms,
            uploaded_ms,
            claimed_ms = phase.elapsed().as_millis() as u64,
            "key groups taken over: time per phase"
        );
        if recovery == Recovery::Local {
            recovery = Recovery::Rescale;
        }
        tracing::warn!(moved = moved.len().saturating_sub(kept.len()), kept = kept.len(), owned = owned.len(), from = ?sources.keys().map(|w| w.to_string()).collect::<Vec<_>>(),
            remote = %p.remote.url(), reason = "rescale",
            "took over key groups from their previous owners: restored the state from the remote copy");
        metrics::gauge!(m::REMOTE_KEY_GROUPS_MOVED, labels.clone())
            .set(moved.len().saturating_sub(kept.len()) as f64);
    }
    for g in first_claims {
        claim(p.remote, g, 1, p.me, None).await?;
    }
    if recovery != Recovery::Local {
        let reason = match recovery {
            Recovery::LostVolume => "lost_volume",
            _ => "rescale",
        };
        let mut l = labels.clone();
        l.push(metrics::Label::new("reason", reason));
        metrics::counter!(m::REMOTE_RESTORES, l).increment(1);
        metrics::counter!(m::REMOTE_RESTORE_BYTES, labels.clone()).increment(restored_bytes);
        metrics::gauge!(m::REMOTE_RESTORE_DURATION, labels.clone())
            .set(started.elapsed().as_secs_f64());
    }

    // The uploader continues this worker's chains when the remote copy is
    // at the local epoch; otherwise (and always after taking key groups
    // over, which uploaded full bases above) it starts them anew.
    let (local_epoch, _) = local_writer(p.store)?;
    if let Some(up) = moved_uploader {
        return Ok((recovery, up, fetched));
    }
    let chains = match &mine {
        Some((_, man)) if man.epoch == local_epoch => man
            .chains
            .iter()
            .map(|(&g, segments)| {
                (
                    g,
                    Chain {
                        segments: segments.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    let uploader = new_uploader(&p, owned, chains);
    Ok((recovery, uploader, fetched))
}

/// Removes what the local store holds of key groups `me` does not own: a
/// rescale leaves them (see [`prepare`]; restore reads only owned groups).
/// Meant for a background thread after the start; one interrupted is done
/// again at the next start. Returns the number of entries removed.
pub fn drop_unowned(
    store: &dyn StateBackend,
    nodes: &[Arc<str>],
    me: WorkerId,
    key_groups: u16,
) -> Result<usize, crate::state::StoreError> {
    let owned = me.owned(key_groups);
    let mut removed = 0;
    for g in (0..key_groups).filter(|g| !owned.contains(g)) {
        let mut writes = WriteSet::default();
        for node in nodes {
            store.for_each_prefix(&key::state_group_prefix(node, g), &mut |k, _| {
                writes.delete(Key::Raw(k.to_vec()));
                Ok(())
            })?;
        }
        if !writes.writes.is_empty() {
            removed += writes.writes.len();
            store.apply_in_parts(writes)?;
        }
    }
    Ok(removed)
}

/// Waits until `owner` released its key groups (a clean stop, or an
/// operator's `sluice release`).
async fn wait_for_release(
    p: &Prepare<'_>,
    claim: &Claim,
    group: u16,
) -> Result<Option<Release>, RunError> {
    let owner = claim.owner();
    let mut logged = Instant::now() - Duration::from_secs(60);
    loop {
        let release = p.remote.latest_release(owner).await.map_err(remote_error)?;
        let latest = p
            .remote
            .latest_manifest(owner)
            .await
            .map_err(remote_error)?;
        if let Some(r) = release {
            // A release counts only for the owner's last checkpoint: a
            // newer manifest means it ran again after releasing.
            if latest.as_ref().is_none_or(|(name, _)| *name <= r.manifest) {
                return Ok(Some(r));
            }
        } else if latest.is_none() && claim.from.is_none() {
            // It never completed a checkpoint and took no state from
            // anyone: it released nothing upstream, its key groups hold no
            // state yet. (An owner that took state from another uploads it
            // before claiming, so it always has a manifest.)
            return Ok(None);
        }
        let text = format!(
            "waiting for worker {} of {} to release key group {group} (stop it with SIGTERM so that it writes a final checkpoint; if it is gone for good, see `sluice release` in docs/scaling.md)",
            owner.worker, owner.workers
        );
        (p.waiting)(&text);
        if logged.elapsed() >= Duration::from_secs(10) {
            tracing::warn!("{text}");
            logged = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn claim(
    remote: &RemoteStore,
    group: u16,
    generation: u64,
    me: WorkerId,
    from: Option<String>,
) -> Result<(), RunError> {
    let claim = Claim {
        worker: me.worker,
        workers: me.workers,
        from,
        written_ms: now_ms(),
    };
    match remote
        .put_once(&claim_name(group, generation), encode_object(&claim))
        .await
        .map_err(remote_error)?
    {
        Put::Created => Ok(()),
        Put::Existed => {
            // Ours from an earlier attempt is fine; anyone else's is not.
            let theirs = remote
                .read::<Claim>(&claim_name(group, generation))
                .await
                .map_err(remote_error)?;
            match theirs {
                Some(c) if c.owner() == me => Ok(()),
                other => Err(RunError::Remote(format!(
                    "key group {group} generation {generation} was claimed by {} meanwhile: is another worker running with the same id?",
                    other.map_or("someone".to_string(), |c| c.owner().to_string())
                ))),
            }
        }
    }
}

/// Segments read during one start, each once.
#[derive(Default)]
struct SegmentCache {
    segments: HashMap<String, Arc<Segment>>,
    bytes: u64,
}

impl SegmentCache {
    /// The entries of key group `g` after applying its chain: (node, key,
    /// value).
    async fn rebuild(
        &mut self,
        remote: &RemoteStore,
        chain: &[String],
        g: u16,
    ) -> Result<Vec<(String, Vec<u8>, Vec<u8>)>, RunError> {
        let mut state: BTreeMap<(String, Vec<u8>), Vec<u8>> = BTreeMap::new();
        for name in chain {
            let segment = match self.segments.get(name) {
                Some(s) => s.clone(),
                None => {
                    let bytes = remote
                        .get(name)
                        .await
                        .map_err(remote_error)?
                        .ok_or_else(|| {
                            RunError::Remote(format!(
                                "segment {name} of the remote copy is missing"
                            ))
                        })?;
                    self.bytes += bytes.len() as u64;
                    let s: Arc<Segment> = Arc::new(
                        crate::state::remote::decode_object(name, &bytes).map_err(remote_error)?,
                    );
                    self.segments.insert(name.clone(), s.clone());
                    s
                }
            };
            let Some(section) = segment.groups.iter().find(|s| s.group == g) else {
                return Err(RunError::Remote(format!(
                    "segment {name} has no section for key group {g}"
                )));
            };
            if section.base {
                state.clear();
            }
            for e in &section.entries {
                match &e.value {
                    Some(v) => {
                        state.insert((e.node.clone(), e.key.clone()), v.clone());
                    }
                    None => {
                        state.remove(&(e.node.clone(), e.key.clone()));
                    }
                }
            }
        }
        Ok(state.into_iter().map(|((n, k), v)| (n, k, v)).collect())
    }
}
