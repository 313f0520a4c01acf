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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};

use crate::cluster::WorkerId;
use crate::exchange::marks::MAX_RECENT_IDS;
use crate::metrics as m;
use crate::runtime::cluster::ClusterState;
use crate::runtime::RunError;
use crate::state::layout::key;
use crate::state::remote::{
    claim_name, encode_object, epoch_name, worker_dir, Claim, Entry, GroupSection, Manifest, Put,
    Release, RemoteError, RemoteStore, Segment, REMOTE_FORMAT,
};
use crate::state::{Key, StateBackend, StoreError, Write, WriteSet};
use crate::time::now_ms;

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

impl Uploader {
    /// The state changes of a write set, per key group (taken before the
    /// set is applied).
    pub fn draft(writes: &WriteSet) -> BTreeMap<u16, Vec<Entry>> {
        let mut out: BTreeMap<u16, Vec<Entry>> = BTreeMap::new();
        for w in &writes.writes {
            let (k, value) = match w {
                Write::Put(k, v) => (k, Some(v)),
                Write::Delete(k) => (k, None),
            };
            let entry = match k {
                Key::State { node, group, key } => Some((*group, node.to_string(), key.clone())),
                Key::Raw(bytes) => key::parse_state(bytes)
                    .map(|(node, group, key)| (group, node.to_string(), key.to_vec())),
                _ => None,
            };
            if let Some((group, node, key)) = entry {
                out.entry(group).or_default().push(Entry {
                    node,
                    key,
                    value: value.cloned(),
                });
            }
        }
        out
    }

    /// Uploads checkpoint `epoch` (already durable in `store`) whose state
    /// changes are `deltas`; returns once the manifest is in the remote
    /// copy.
    pub fn upload(
        &mut self,
        epoch: u64,
        deltas: BTreeMap<u16, Vec<Entry>>,
        store: &dyn StateBackend,
    ) -> Result<(), String> {
        let handle = self.handle.clone();
        handle.block_on(self.upload_async(epoch, deltas, store))
    }

    /// [`Uploader::upload`] in async code.
    async fn upload_async(
        &mut self,
        epoch: u64,
        mut deltas: BTreeMap<u16, Vec<Entry>>,
        store: &dyn StateBackend,
    ) -> Result<(), String> {
        let started = Instant::now();
        // Durable locally, not yet in the remote copy.
        metrics::gauge!(m::REMOTE_LAG_EPOCHS, self.labels.clone()).set(1.0);
        // Groups that need a base: never uploaded in this chain, or whose
        // deltas outgrew them.
        let mut rebase: BTreeSet<u16> = self
            .owned
            .iter()
            .copied()
            .filter(|g| self.chains.get(g).is_none_or(|c| c.segments.is_empty()))
            .collect();
        let mut long: Vec<(usize, u16)> = self
            .chains
            .iter()
            .filter(|(g, c)| {
                !rebase.contains(g)
                    && (c.segments.len() >= MAX_CHAIN
                        || (c.delta_bytes > c.base_bytes && c.delta_bytes > 64 << 10))
            })
            .map(|(&g, c)| (c.segments.len(), g))
            .collect();
        long.sort_unstable_by(|a, b| b.cmp(a));
        rebase.extend(
            long.into_iter()
                .take(REBASES_PER_CHECKPOINT)
                .map(|(_, g)| g),
        );

        let mut segment = Segment {
            epoch,
            groups: Vec::new(),
        };
        let mut sizes: Vec<(u16, bool, u64)> = Vec::new();
        for &g in &self.owned {
            let section = if rebase.contains(&g) {
                deltas.remove(&g);
                GroupSection {
                    group: g,
                    base: true,
                    entries: self.scan_group(store, g).map_err(|e| e.to_string())?,
                }
            } else {
                match deltas.remove(&g) {
                    Some(entries) => GroupSection {
                        group: g,
                        base: false,
                        entries,
                    },
                    None => continue,
                }
            };
            let bytes: u64 = section
                .entries
                .iter()
                .map(|e| (e.node.len() + e.key.len() + e.value.as_ref().map_or(0, Vec::len)) as u64)
                .sum();
            sizes.push((g, section.base, bytes));
            segment.groups.push(section);
        }
        let name = epoch_name(epoch, self.run);
        let dir = worker_dir(self.me);
        let mut uploaded = 0u64;
        if !segment.groups.is_empty() {
            let seg_name = format!("segments/{dir}/{name}");
            let bytes = encode_object(&segment);
            uploaded += bytes.len() as u64;
            self.put(&seg_name, bytes).await?;
            for (g, base, size) in sizes {
                let chain = self.chains.entry(g).or_default();
                if base {
                    *chain = Chain {
                        segments: vec![seg_name.clone()],
                        base_bytes: size,
                        delta_bytes: 0,
                    };
                } else {
                    chain.segments.push(seg_name.clone());
                    chain.delta_bytes += size;
                }
            }
        }
        let manifest = Manifest {
            format: REMOTE_FORMAT,
            worker: self.me.worker,
            workers: self.me.workers,
            epoch,
            run: self.run,
            key_groups: self.key_groups,
            chains: self
                .owned
                .iter()
                .map(|g| {
                    let segments = self
                        .chains
                        .get(g)
                        .map(|c| c.segments.clone())
                        .unwrap_or_default();
                    (*g, segments)
                })
                .collect(),
            meta: scan_meta(store).map_err(|e| e.to_string())?,
            written_ms: now_ms(),
        };
        let man_name = format!("manifests/{dir}/{name}");
        let bytes = encode_object(&manifest);
        uploaded += bytes.len() as u64;
        self.put(&man_name, bytes).await?;
        *self.progress.last.lock().expect("not poisoned") = Some((epoch, man_name));
        self.uploads += 1;
        if self.uploads.is_multiple_of(COLLECT_EVERY) {
            if let Err(e) = self.collect().await {
                tracing::debug!(error = %e, "cannot remove old objects of the remote copy (retried later)");
            }
        }
        metrics::counter!(m::REMOTE_UPLOADS, self.labels.clone()).increment(1);
        metrics::counter!(m::REMOTE_UPLOAD_BYTES, self.labels.clone()).increment(uploaded);
        metrics::histogram!(m::REMOTE_UPLOAD_DURATION, self.labels.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::gauge!(m::REMOTE_EPOCH, self.labels.clone()).set(epoch as f64);
        metrics::gauge!(m::REMOTE_LAG_EPOCHS, self.labels.clone()).set(0.0);
        tracing::debug!(
            epoch,
            bytes = uploaded,
            rebased = rebase.len(),
            "checkpoint uploaded to the remote copy"
        );
        Ok(())
    }

    /// Removes this worker's manifests but the newest [`KEEP_MANIFESTS`],
    /// and its segments no kept manifest needs.
    async fn collect(&self) -> Result<(), RemoteError> {
        let dir = worker_dir(self.me);
        let manifests = self.remote.list(&format!("manifests/{dir}/")).await?;
        if manifests.len() <= KEEP_MANIFESTS {
            return Ok(());
        }
        let (old, kept) = manifests.split_at(manifests.len() - KEEP_MANIFESTS);
        let mut needed: BTreeSet<String> = BTreeSet::new();
        for name in kept {
            if let Some(m) = self.remote.read::<Manifest>(name).await? {
                needed.extend(m.chains.into_values().flatten());
            }
        }
        let newest_kept = kept
            .last()
            .and_then(|n| crate::state::remote::epoch_of_name(n))
            .unwrap_or(0);
        for name in old {
            self.remote.delete(name).await?;
        }
        for name in self.remote.list(&format!("segments/{dir}/")).await? {
            let epoch = crate::state::remote::epoch_of_name(&name).unwrap_or(u64::MAX);
            if !needed.contains(&name) && epoch <= newest_kept {
                self.remote.delete(&name).await?;
            }
        }
        Ok(())
    }

    /// Every entry of key group `g`, from the store as it is now.
    fn scan_group(&self, store: &dyn StateBackend, g: u16) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        for node in &self.nodes {
            let prefix = key::state_group_prefix(node, g);
            store.for_each_prefix(&prefix, &mut |k, v| {
                entries.push(Entry {
                    node: node.to_string(),
                    key: k[prefix.len()..].to_vec(),
                    value: Some(v.to_vec()),
                });
                Ok(())
            })?;
        }
        Ok(entries)
    }

    /// Puts an object, retrying with backoff until it is stored (or the
    /// run stops and the store stays down).
    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), String> {
        let mut backoff = Duration::from_millis(100);
        let mut failing_since: Option<Instant> = None;
        let mut attempts = 0u32;
        loop {
            let result = self.remote.put_once(name, bytes.clone()).await;
            match result {
                // Existed: an earlier attempt landed although its answer
                // was lost (names are unique to this run).
                Ok(Put::Created | Put::Existed) => return Ok(()),
                Err(e) => {
                    attempts += 1;
                    metrics::counter!(m::REMOTE_FAILURES, self.labels.clone()).increment(1);
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if attempts == 1 || attempts.is_multiple_of(10) {
                        tracing::warn!(object = name, attempts, error = %e,
                            "cannot upload to the remote state copy; retrying (commits wait for it, nothing is lost)");
                    }
                    let stopping = self
                        .progress
                        .stopping
                        .load(std::sync::atomic::Ordering::Relaxed);
                    if stopping && since.elapsed() >= STOPPING_RETRY_LIMIT {
                        return Err(format!(
                            "giving up uploading {name} while stopping: {e} (the checkpoint is kept locally and uploaded at the next start)"
                        ));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// A stored entry as it is stored: (key, value).
type RawEntry = (Vec<u8>, Vec<u8>);

/// Every stored entry that is not operator state.
fn scan_meta(store: &dyn StateBackend) -> Result<Vec<RawEntry>, StoreError> {
    let mut meta = Vec::new();
    for prefix in key::NOT_STATE {
        store.for_each_prefix(prefix, &mut |k, v| {
            meta.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
    }
    Ok(meta)
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
}

/// Takes what the local state lacks from the remote copy and claims this
/// worker's key groups; returns what was done and the uploader's starting
/// chains.
pub async fn prepare(p: Prepare<'_>) -> Result<(Recovery, Uploader), RunError> {
    let started = Instant::now();
    let labels = m::pipeline_labels(p.pipeline);
    let (local_epoch, local_cluster) = local_writer(p.store)?;
    let local_by = match &local_cluster {
        Some(c) => WorkerId::new(c.worker, c.workers).unwrap_or(WorkerId::SINGLE),
        None => WorkerId::SINGLE,
    };
    let mut recovery = Recovery::Local;
    let mut restored_bytes = 0u64;
    let mine = p.remote.latest_manifest(p.me).await.map_err(remote_error)?;
    if local_epoch == 0 {
        if let Some((name, manifest)) = &mine {
            // A lost volume: everything this worker had is in its last
            // uploaded checkpoint.
            tracing::warn!(manifest = %name, epoch = manifest.epoch, remote = %p.remote.url(),
                reason = "lost_volume",
                "the state directory is empty but the remote copy holds this worker's checkpoints: restored the state from the remote copy");
            let mut cache = SegmentCache::default();
            let mut writes = WriteSet::default();
            for (&g, chain) in &manifest.chains {
                for e in cache.rebuild(p.remote, chain, g).await? {
                    let k = key::state(&e.0, g, &e.1);
                    writes.put(Key::Raw(k), e.2);
                }
            }
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

    if !moves.is_empty() {
        // Build the new local state: drop groups no longer owned, put the
        // moved groups' state, merge what receivers remember of replays.
        let phase = Instant::now();
        let waited_ms = started.elapsed().as_millis() as u64;
        let mut cache = SegmentCache::default();
        let mut writes = WriteSet::default();
        let owned_set: BTreeSet<u16> = owned.iter().copied().collect();
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
            for (k, v) in meta {
                writes.put(Key::Raw(k.clone()), v.clone());
            }
        }
        for node in p.nodes {
            let prefix = key::state_prefix(node);
            p.store.for_each_prefix(&prefix, &mut |k, _| {
                if let Some((_, g, _)) = key::parse_state(k) {
                    let replaced = !kept.contains(&g) && moves.iter().any(|(mg, _, _)| *mg == g);
                    if !owned_set.contains(&g) || replaced {
                        writes.delete(Key::Raw(k.to_vec()));
                    }
                }
                Ok(())
            })?;
        }
        // The outboxes this directory holds are the previous owner's
        // output for the key groups it owned then: re-delivered under this
        // worker's new write generation, they would overwrite (and fence)
        // what the new owners of those groups write. A released owner's
        // sinks acknowledged all of it; after a forced release, what they
        // had not is not delivered again (docs/scaling.md).
        p.store.for_each_prefix(b"o\0", &mut |k, _| {
            writes.delete(Key::Raw(k.to_vec()));
            Ok(())
        })?;
        let mut marks: Vec<ClusterState> = Vec::new();
        for (g, _, claim) in moves.iter().filter(|(g, _, _)| !kept.contains(g)) {
            let from = if claim.owner() == p.me {
                claim
                    .from
                    .as_ref()
                    .and_then(|f| sources.values().find(|(n, _)| n == f).map(|(_, m)| m))
            } else {
                sources.get(&claim.owner()).map(|(_, m)| m)
            };
            let Some(man) = from else { continue };
            let chain = man.chains.get(g).cloned().unwrap_or_default();
            for e in cache.rebuild(p.remote, &chain, *g).await? {
                writes.put(Key::Raw(key::state(&e.0, *g, &e.1)), e.2);
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
        let entries = writes.writes.len();
        p.store.apply(writes)?;
        if let (Some((epoch, _)), Some(dir)) = (&rollback, p.marker_dir) {
            crate::runtime::marker::write(dir, crate::runtime::marker::Marker { epoch: *epoch })?;
        }
        let applied_ms = phase.elapsed().as_millis() as u64;
        let phase = Instant::now();
        // Upload what this worker now holds (full bases of every group it
        // owns) before claiming: a claimed group is always in its owner's
        // manifests, so a later move never mistakes it for empty.
        let (epoch_now, _) = local_writer(p.store)?;
        let mut up = new_uploader(&p, owned.clone(), BTreeMap::new());
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
        return Ok((recovery, up));
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
    Ok((recovery, uploader))
}

/// An uploader for `p.me` continuing `chains`; registers the remote
/// metrics.
fn new_uploader(p: &Prepare<'_>, owned: Vec<u16>, chains: BTreeMap<u16, Chain>) -> Uploader {
    let labels = m::pipeline_labels(p.pipeline);
    for l in [
        m::REMOTE_UPLOADS,
        m::REMOTE_FAILURES,
        m::REMOTE_UPLOAD_BYTES,
    ] {
        metrics::counter!(l, labels.clone()).increment(0);
    }
    metrics::gauge!(m::REMOTE_KEY_GROUPS_MOVED, labels.clone()).increment(0.0);
    for reason in ["lost_volume", "rescale"] {
        let mut l = labels.clone();
        l.push(metrics::Label::new("reason", reason));
        metrics::counter!(m::REMOTE_RESTORES, l).increment(0);
    }
    Uploader {
        remote: p.remote.clone(),
        handle: tokio::runtime::Handle::current(),
        me: p.me,
        key_groups: p.key_groups,
        owned,
        nodes: p.nodes.to_vec(),
        run: run_id(),
        chains,
        progress: Arc::new(RemoteProgress::default()),
        labels,
        uploads: 0,
    }
}

impl Uploader {
    /// What the run shares with this uploader.
    pub fn progress(&self) -> Arc<RemoteProgress> {
        self.progress.clone()
    }
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

/// Merges what other receivers remember of applied records (replays of
/// records they applied are dropped here too).
fn merge_marks(into: &mut ClusterState, from: &[ClusterState]) {
    for other in from {
        for mark in &other.inbound.partitions {
            match into
                .inbound
                .partitions
                .iter_mut()
                .find(|m| m.source == mark.source && m.partition == mark.partition)
            {
                Some(m) => m.next_offset = m.next_offset.max(mark.next_offset),
                None => into.inbound.partitions.push(mark.clone()),
            }
        }
        for ids in &other.inbound.ids {
            match into
                .inbound
                .ids
                .iter_mut()
                .find(|i| i.source == ids.source && i.partition == ids.partition)
            {
                Some(i) => {
                    let known: BTreeSet<u64> = i.ids.iter().copied().collect();
                    i.ids
                        .extend(ids.ids.iter().filter(|id| !known.contains(id)));
                    let excess = i.ids.len().saturating_sub(MAX_RECENT_IDS);
                    i.ids.drain(..excess);
                }
                None => into.inbound.ids.push(ids.clone()),
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

#[cfg(test)]
mod tests;
