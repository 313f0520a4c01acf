//! Uploading each checkpoint (see the module's documentation).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    run_id, Chain, Prepare, RemoteProgress, Uploader, COLLECT_EVERY, KEEP_MANIFESTS, MAX_CHAIN,
    REBASES_PER_CHECKPOINT, STOPPING_RETRY_LIMIT,
};
use crate::metrics as m;
use crate::state::layout::key;
use crate::state::remote::{
    encode_object, epoch_name, worker_dir, Entry, GroupSection, Manifest, Put, RemoteError,
    Segment, REMOTE_FORMAT,
};
use crate::state::{Key, StateBackend, StoreError, Write, WriteSet};
use crate::time::now_ms;

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
    pub(super) async fn upload_async(
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
            // A start's list of groups still being written is local only.
            if k != key::IMPORT {
                meta.push((k.to_vec(), v.to_vec()));
            }
            Ok(())
        })?;
    }
    Ok(meta)
}

/// An uploader for `p.me` continuing `chains`; registers the remote
/// metrics.
pub(super) fn new_uploader(
    p: &Prepare<'_>,
    owned: Vec<u16>,
    chains: BTreeMap<u16, Chain>,
) -> Uploader {
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

    /// The labels of this worker's remote metrics.
    pub fn labels(&self) -> Vec<metrics::Label> {
        self.labels.clone()
    }
}
