//! The remote copy against a `file://` store: what is uploaded rebuilds
//! exactly what the local store holds (through deltas, re-bases and the
//! removal of old objects), a lost volume comes back whole, and key groups
//! move between workers only once their owner released them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::*;
use crate::state::{Key, MemoryBackend, StateBackend, WriteSet};

const GROUPS: u16 = 8;

fn nodes() -> Vec<Arc<str>> {
    vec![Arc::from("count"), Arc::from("window")]
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    remote: RemoteStore,
    /// Source `queue`'s positions merge at a takeover (see positions.rs).
    merged_positions: Vec<(String, crate::source::MergePositions)>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let remote = RemoteStore::open(&format!("file://{}", dir.path().display())).unwrap();
    Fixture {
        rt: tokio::runtime::Runtime::new().unwrap(),
        _dir: dir,
        remote,
        merged_positions: vec![("queue".to_string(), positions::merge)],
    }
}

impl Fixture {
    fn prepare(
        &self,
        store: &dyn StateBackend,
        me: WorkerId,
    ) -> Result<(Recovery, Uploader), RunError> {
        self.prepare_with(store, me, &[])
    }

    fn prepare_with(
        &self,
        store: &dyn StateBackend,
        me: WorkerId,
        sinks: &[FormerSinkSpec],
    ) -> Result<(Recovery, Uploader), RunError> {
        self.prepare_fetched(store, me, sinks)
            .map(|(r, up, _)| (r, up))
    }

    fn prepare_fetched(
        &self,
        store: &dyn StateBackend,
        me: WorkerId,
        sinks: &[FormerSinkSpec],
    ) -> Result<(Recovery, Uploader, Fetched), RunError> {
        let (r, up, mut fetched) = self.prepare_unfinished(store, me, sinks)?;
        // What the checkpoint writer does before its first checkpoint.
        if let Some(state) = fetched.import.take() {
            finish_import(store, state).unwrap();
        }
        Ok((r, up, fetched))
    }

    /// A start whose run ends before the state it took is written.
    fn prepare_unfinished(
        &self,
        store: &dyn StateBackend,
        me: WorkerId,
        sinks: &[FormerSinkSpec],
    ) -> Result<(Recovery, Uploader, Fetched), RunError> {
        let nodes = nodes();
        self.rt.block_on(prepare(Prepare {
            remote: &self.remote,
            store,
            me,
            key_groups: GROUPS,
            nodes: &nodes,
            pipeline: "test",
            waiting: &|_| {},
            marker_dir: None,
            sinks,
            merged_positions: &self.merged_positions,
        }))
    }

    /// A single worker's directory with `epochs` uploaded checkpoints of
    /// random writes (from `seed`), each with what `extra` adds for its
    /// epoch: the directory, its uploader and the random source.
    fn single_worker(
        &self,
        seed: u64,
        epochs: u64,
        mut extra: impl FnMut(u64, &mut WriteSet),
    ) -> (MemoryBackend, Uploader, rand::rngs::StdRng) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let single = MemoryBackend::new();
        let (_, mut up) = self.prepare(&single, WorkerId::SINGLE).unwrap();
        for epoch in 1..=epochs {
            let mut w = random_writes(&mut rng, 40);
            extra(epoch, &mut w);
            self.checkpoint(&mut up, &single, epoch, w);
        }
        (single, up, rng)
    }

    /// One checkpoint through the writer's steps: draft, apply, upload.
    fn checkpoint(&self, up: &mut Uploader, store: &dyn StateBackend, epoch: u64, w: WriteSet) {
        let mut w = w;
        w.put(Key::Epoch, epoch.to_be_bytes().to_vec());
        let deltas = Uploader::draft(&w);
        store.apply(w).unwrap();
        up.upload(epoch, deltas, store).unwrap();
    }

    fn release(&self, me: WorkerId) {
        let (name, m) = self
            .rt
            .block_on(self.remote.latest_manifest(me))
            .unwrap()
            .unwrap();
        self.rt
            .block_on(release(&self.remote, me, &name, m.epoch, false))
            .unwrap();
    }
}

fn state_key(g: u16, k: u32) -> Key {
    Key::State {
        node: Arc::from(if k.is_multiple_of(2) {
            "count"
        } else {
            "window"
        }),
        group: g,
        key: format!("k{k}").into_bytes(),
    }
}

/// Random puts and deletes over all groups.
fn random_writes(rng: &mut rand::rngs::StdRng, n: usize) -> WriteSet {
    let mut w = WriteSet::default();
    for _ in 0..n {
        let g = rng.random_range(0..GROUPS);
        let k = rng.random_range(0..40u32);
        if rng.random_bool(0.2) {
            w.delete(state_key(g, k));
        } else {
            w.put(state_key(g, k), rng.random::<u64>().to_be_bytes().to_vec());
        }
    }
    w.put(
        Key::Position {
            source: Arc::from("in"),
            partition: 0,
        },
        rng.random::<u64>().to_be_bytes().to_vec(),
    );
    w
}

fn entries(store: &dyn StateBackend, prefix: &[u8]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    store
        .for_each_prefix(prefix, &mut |k, v| {
            out.insert(k.to_vec(), v.to_vec());
            Ok(())
        })
        .unwrap();
    out
}

fn all(store: &dyn StateBackend) -> BTreeMap<Vec<u8>, Vec<u8>> {
    entries(store, b"")
}

#[test]
fn uploads_rebuild_exactly_what_the_store_holds() {
    let f = fixture();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let store = MemoryBackend::new();
    let (recovery, mut up) = f.prepare(&store, WorkerId::SINGLE).unwrap();
    assert_eq!(recovery, Recovery::Local);
    // More checkpoints than a chain may grow and than old objects are
    // kept, so re-bases and removals both happen.
    for epoch in 1..=40 {
        f.checkpoint(&mut up, &store, epoch, random_writes(&mut rng, 30));
        // What a lost volume would get back now equals the store.
        if epoch % 13 == 0 || epoch == 40 {
            let fresh = MemoryBackend::new();
            let (recovery, _, fetched) = f.prepare_fetched(&fresh, WorkerId::SINGLE, &[]).unwrap();
            assert_eq!(recovery, Recovery::LostVolume, "epoch {epoch}");
            assert_eq!(all(&fresh), all(&store), "epoch {epoch}");
            // What the run restores its operators from is that state too.
            let mut from_fetched = BTreeMap::new();
            for (node, entries) in fetched.state {
                for (g, k, v) in entries {
                    from_fetched.insert(key::state(&node, g, &k), v);
                }
            }
            assert_eq!(from_fetched, entries(&store, b"s\0"), "epoch {epoch}");
        }
    }
    let (_, m) =
        f.rt.block_on(f.remote.latest_manifest(WorkerId::SINGLE))
            .unwrap()
            .unwrap();
    assert!(
        m.chains.values().all(|c| c.len() <= MAX_CHAIN + 1),
        "chains stay short: {:?}",
        m.chains.values().map(Vec::len).collect::<Vec<_>>()
    );
    let manifests = f.rt.block_on(f.remote.list("manifests/")).unwrap();
    assert!(
        manifests.len() < 40 && manifests.len() >= KEEP_MANIFESTS,
        "old manifests are removed: {}",
        manifests.len()
    );
    let segments = f.rt.block_on(f.remote.list("segments/")).unwrap();
    assert!(
        segments.len() < 40,
        "old segments are removed: {}",
        segments.len()
    );
}

#[test]
fn a_restart_with_local_state_takes_nothing_from_the_remote_copy() {
    let f = fixture();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let store = MemoryBackend::new();
    let (_, mut up) = f.prepare(&store, WorkerId::SINGLE).unwrap();
    for epoch in 1..=3 {
        f.checkpoint(&mut up, &store, epoch, random_writes(&mut rng, 20));
    }
    let before = all(&store);
    let (recovery, mut up) = f.prepare(&store, WorkerId::SINGLE).unwrap();
    assert_eq!(recovery, Recovery::Local);
    assert_eq!(all(&store), before);
    // The restarted uploader continues the chains.
    f.checkpoint(&mut up, &store, 4, random_writes(&mut rng, 20));
    let fresh = MemoryBackend::new();
    f.prepare(&fresh, WorkerId::SINGLE).unwrap();
    assert_eq!(all(&fresh), all(&store));
}

#[test]
fn key_groups_move_to_their_new_owners_only_once_released() {
    let f = fixture();
    let (single, _, _) = f.single_worker(11, 12, |_, _| {});
    let state = entries(&single, b"s\0");

    // Not released yet: a new worker waits.
    let w0 = WorkerId::new(0, 2).unwrap();
    let w1 = WorkerId::new(1, 2).unwrap();
    let store0 = MemoryBackend::new();
    let nodes = nodes();
    let waited = std::sync::Mutex::new(String::new());
    let pending = f.rt.block_on(async {
        tokio::time::timeout(
            Duration::from_millis(1500),
            prepare(Prepare {
                remote: &f.remote,
                store: &store0,
                me: w0,
                key_groups: GROUPS,
                nodes: &nodes,
                pipeline: "test",
                waiting: &|t| *waited.lock().unwrap() = t.to_string(),
                marker_dir: None,
                sinks: &[],
                merged_positions: &[],
            }),
        )
        .await
    });
    assert!(pending.is_err(), "a worker must wait for the release");
    assert!(
        waited
            .lock()
            .unwrap()
            .contains("waiting for worker 0 of 1 to release key group"),
        "{}",
        waited.lock().unwrap()
    );
    assert!(
        all(&store0).is_empty(),
        "nothing is taken before the release"
    );

    f.release(WorkerId::SINGLE);
    let store1 = MemoryBackend::new();
    let (r0, mut up0) = f.prepare(&store0, w0).unwrap();
    let (r1, mut up1) = f.prepare(&store1, w1).unwrap();
    assert_eq!((r0, r1), (Recovery::Rescale, Recovery::Rescale));
    let owned = |w: WorkerId| -> BTreeMap<Vec<u8>, Vec<u8>> {
        state
            .iter()
            .filter(|(k, _)| w.owned(GROUPS).contains(&key::parse_state(k).unwrap().1))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(entries(&store0, b"s\0"), owned(w0));
    assert_eq!(entries(&store1, b"s\0"), owned(w1));
    assert!(!owned(w0).is_empty() && !owned(w1).is_empty());
    for g in 0..GROUPS {
        let (generation, claim) = f.rt.block_on(f.remote.latest_claim(g)).unwrap().unwrap();
        assert_eq!(generation, 2, "group {g}");
        assert_eq!(claim.worker, w0.owner_of(g, GROUPS));
    }

    // Back to one worker: the old single worker's directory still holds
    // the groups it had; after worker 0 of 2 moved on, it must take them
    // from the new owners, not keep its stale copy.
    f.checkpoint(&mut up0, &store0, 1, {
        let mut w = WriteSet::default();
        w.put(state_key(0, 1000), b"new".to_vec());
        w
    });
    f.checkpoint(&mut up1, &store1, 1, WriteSet::default());
    f.release(w0);
    f.release(w1);
    let (r, _) = f.prepare(&single, WorkerId::SINGLE).unwrap();
    assert_eq!(r, Recovery::Rescale);
    let mut expected = state.clone();
    expected.insert(state_key(0, 1000).encode(), b"new".to_vec());
    assert_eq!(entries(&single, b"s\0"), expected);
    assert!(entries(&single, key::CLUSTER).is_empty());
}

#[test]
fn a_stale_worker_of_the_old_count_waits_instead_of_taking_groups_back() {
    let f = fixture();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let single = MemoryBackend::new();
    let (_, mut up) = f.prepare(&single, WorkerId::SINGLE).unwrap();
    f.checkpoint(&mut up, &single, 1, random_writes(&mut rng, 20));
    f.release(WorkerId::SINGLE);
    let w0 = WorkerId::new(0, 2).unwrap();
    let w1 = WorkerId::new(1, 2).unwrap();
    let (s0, s1) = (MemoryBackend::new(), MemoryBackend::new());
    f.prepare(&s0, w0).unwrap();
    f.prepare(&s1, w1).unwrap();
    // The old single worker starts again while the two run: it must not
    // take the groups (the new owners did not release them).
    let nodes = nodes();
    let r = f.rt.block_on(async {
        tokio::time::timeout(
            Duration::from_millis(1000),
            prepare(Prepare {
                remote: &f.remote,
                store: &single,
                me: WorkerId::SINGLE,
                key_groups: GROUPS,
                nodes: &nodes,
                pipeline: "test",
                waiting: &|_| {},
                marker_dir: None,
                sinks: &[],
                merged_positions: &[],
            }),
        )
        .await
    });
    assert!(r.is_err(), "the stale worker must wait");
}

#[test]
fn a_worker_keeps_the_groups_its_own_directory_already_holds() {
    let f = fixture();
    // The sink's output of each epoch, as the protocol stores it.
    let (single, _, mut rng) = f.single_worker(17, 5, |epoch, w| {
        w.put(
            Key::Outbox {
                sink: Arc::from("out"),
                epoch,
            },
            crate::state::encode(&Vec::<crate::sink::SinkRecord>::new()),
        )
    });
    let state = entries(&single, b"s\0");
    assert!(!entries(&single, b"o\0").is_empty());
    f.release(WorkerId::SINGLE);
    // Worker 0 of 2 starts on the single worker's directory: it keeps its
    // half as it is and drops the other half. It reads no segment back
    // and uploads none: its groups continue the released chains.
    let w0 = WorkerId::new(0, 2).unwrap();
    let segments_before = f.rt.block_on(f.remote.list("segments/")).unwrap();
    let (_, released) =
        f.rt.block_on(f.remote.latest_manifest(WorkerId::SINGLE))
            .unwrap()
            .unwrap();
    let (r, mut up0) = f.prepare(&single, w0).unwrap();
    assert_eq!(r, Recovery::Rescale);
    let mine: BTreeMap<Vec<u8>, Vec<u8>> = state
        .iter()
        .filter(|(k, _)| w0.owned(GROUPS).contains(&key::parse_state(k).unwrap().1))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!mine.is_empty() && mine.len() < state.len());
    // The other half stays until it is removed after the start.
    assert_eq!(entries(&single, b"s\0"), state);
    let removed = drop_unowned(&single, &nodes(), w0, GROUPS).unwrap();
    assert_eq!(removed, state.len() - mine.len());
    assert_eq!(entries(&single, b"s\0"), mine);
    assert_eq!(drop_unowned(&single, &nodes(), w0, GROUPS).unwrap(), 0);
    // The previous owner's outboxes (its output for every key group it
    // owned) are not re-delivered under the new owner's write generation.
    assert!(entries(&single, b"o\0").is_empty());
    // Its groups are claimed anew (generation 2); its first manifest names
    // the released chains, and no segment was written.
    for g in w0.owned(GROUPS) {
        let (generation, claim) = f.rt.block_on(f.remote.latest_claim(g)).unwrap().unwrap();
        assert_eq!((generation, claim.owner()), (2, w0), "group {g}");
    }
    let (_, first) =
        f.rt.block_on(f.remote.latest_manifest(w0))
            .unwrap()
            .unwrap();
    for g in w0.owned(GROUPS) {
        assert_eq!(first.chains.get(&g), released.chains.get(&g), "group {g}");
    }
    assert_eq!(
        f.rt.block_on(f.remote.list("segments/")).unwrap(),
        segments_before
    );
    // It goes on (deltas on the borrowed chains, re-bases, removal of its
    // own old objects); a lost volume then comes back exact.
    for epoch in 6..=40 {
        let mut w = WriteSet::default();
        for write in random_writes(&mut rng, 40).writes {
            let keep = match &write {
                crate::state::Write::Put(Key::State { group, .. }, _)
                | crate::state::Write::Delete(Key::State { group, .. }) => {
                    w0.owned(GROUPS).contains(group)
                }
                _ => true,
            };
            if keep {
                w.writes.push(write);
            }
        }
        f.checkpoint(&mut up0, &single, epoch, w);
    }
    let fresh = MemoryBackend::new();
    let (r, _) = f.prepare(&fresh, w0).unwrap();
    assert_eq!(r, Recovery::LostVolume);
    assert_eq!(entries(&fresh, b"s\0"), entries(&single, b"s\0"));
}

#[test]
fn a_directory_ahead_of_its_forced_release_goes_back_to_it() {
    let f = fixture();
    let (single, _, mut rng) = f.single_worker(23, 5, |_, _| {});
    let released_state = entries(&single, b"s\0");
    let released_meta = entries(&single, b"p\0");
    // A sixth checkpoint is durable locally, then the worker is killed
    // before uploading it; the operator releases what was uploaded.
    let mut w = random_writes(&mut rng, 40);
    w.put(Key::Epoch, 6u64.to_be_bytes().to_vec());
    single.apply(w).unwrap();
    assert_ne!(entries(&single, b"p\0"), released_meta);
    f.release(WorkerId::SINGLE);
    // Worker 0 of 2 on that directory: state and positions both as of the
    // released checkpoint (epoch 5), never positions of epoch 6 with the
    // state of epoch 5.
    let w0 = WorkerId::new(0, 2).unwrap();
    f.prepare(&single, w0).unwrap();
    assert_eq!(entries(&single, b"p\0"), released_meta);
    assert_eq!(
        entries(&single, key::EPOCH).into_values().next(),
        Some(5u64.to_be_bytes().to_vec())
    );
    let mine: BTreeMap<Vec<u8>, Vec<u8>> = released_state
        .into_iter()
        .filter(|(k, _)| w0.owned(GROUPS).contains(&key::parse_state(k).unwrap().1))
        .collect();
    // (The groups it no longer owns go after the start.)
    drop_unowned(&single, &nodes(), w0, GROUPS).unwrap();
    assert_eq!(entries(&single, b"s\0"), mine);
}

#[test]
fn a_directory_whose_owner_never_uploaded_a_checkpoint_keeps_no_positions() {
    let f = fixture();
    let mut rng = rand::rngs::StdRng::seed_from_u64(29);
    let single = MemoryBackend::new();
    // The first start claims every group; a checkpoint is durable locally,
    // then the worker is killed before its first upload. Its groups hold
    // no state in the remote copy: they move without a release.
    f.prepare(&single, WorkerId::SINGLE).unwrap();
    let mut w = random_writes(&mut rng, 40);
    w.put(Key::Epoch, 1u64.to_be_bytes().to_vec());
    single.apply(w).unwrap();
    assert!(f
        .rt
        .block_on(f.remote.latest_manifest(WorkerId::SINGLE))
        .unwrap()
        .is_none());
    assert!(!entries(&single, b"p\0").is_empty());
    // Worker 0 of 2 on that directory takes its groups empty: nothing of
    // the discarded checkpoint was released upstream, so its positions
    // (read input, messages to skip when redelivered) go with its state.
    let w0 = WorkerId::new(0, 2).unwrap();
    f.prepare(&single, w0).unwrap();
    // (The groups it does not own are removed after the start.)
    let owned_state = entries(&single, b"s\0")
        .into_keys()
        .filter(|k| w0.owned(GROUPS).contains(&key::parse_state(k).unwrap().1))
        .count();
    assert_eq!(owned_state, 0);
    assert_eq!(entries(&single, b"p\0"), BTreeMap::new());
    assert_eq!(entries(&single, key::EPOCH).into_values().next(), None);
}

/// A sink that says what it was asked to do.
struct Recording {
    built_as: WorkerId,
    able: bool,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl crate::sink::Sink for Recording {
    fn restore_former<'a>(
        &'a mut self,
        progress: Option<&'a [u8]>,
    ) -> crate::source::BoxFuture<'a, Result<bool, crate::sink::SinkError>> {
        self.log
            .lock()
            .unwrap()
            .push(format!("as {}: restore_former {progress:?}", self.built_as));
        let able = self.able;
        Box::pin(async move { Ok(able) })
    }

    fn write<'a>(
        &'a mut self,
        epoch: u64,
        records: &'a [crate::sink::SinkRecord],
    ) -> crate::source::BoxFuture<'a, Result<crate::sink::WriteOutcome, crate::sink::SinkError>>
    {
        let ids: Vec<&str> = records.iter().map(|r| &*r.id).collect();
        self.log
            .lock()
            .unwrap()
            .push(format!("as {}: write {epoch} {ids:?}", self.built_as));
        Box::pin(async { Ok(crate::sink::WriteOutcome::default()) })
    }
}

fn recording(name: &str, able: bool, log: &Arc<std::sync::Mutex<Vec<String>>>) -> FormerSinkSpec {
    let log = log.clone();
    FormerSinkSpec {
        name: name.to_string(),
        build: Some(Arc::new(move |built_as| {
            Box::new(Recording {
                built_as,
                able,
                log: log.clone(),
            })
        })),
    }
}

fn outbox(sink: &str, epoch: u64, ids: &[&str]) -> (Key, Vec<u8>) {
    let records: Vec<crate::sink::SinkRecord> = ids
        .iter()
        .map(|id| crate::sink::SinkRecord {
            kind: crate::batch::RowKind::Upsert,
            id: crate::value::Str::from(*id),
            value: crate::value::Value::Null,
            time: 0,
        })
        .collect();
    let key = Key::Outbox {
        sink: Arc::from(sink),
        epoch,
    };
    (key, crate::state::encode(&records))
}

/// A worker killed after a checkpoint whose output its sinks had not all
/// acknowledged, then released by the operator: the new owner of its
/// first key group (and only that worker) writes the unacknowledged
/// epochs through each sink built as the gone worker and restored with
/// its acknowledged progress, once, before taking the groups over. A sink
/// that cannot do so safely is not asked to write.
#[test]
fn a_directory_going_back_to_its_forced_release_keeps_none_of_its_outboxes() {
    let f = fixture();
    // Three uploaded checkpoints whose output the sink had not
    // acknowledged yet.
    let (single, _, mut rng) = f.single_worker(31, 3, |epoch, w| {
        let (k, v) = outbox("out", epoch, &["a", "b"]);
        w.put(k, v);
    });
    // A fourth is durable locally (the sink acknowledged the three, their
    // outboxes are gone from the directory), then the worker is killed
    // before uploading it; the operator releases what was uploaded.
    let mut w = random_writes(&mut rng, 40);
    for epoch in 1..=3 {
        w.delete(outbox("out", epoch, &[]).0);
    }
    w.put(Key::Epoch, 4u64.to_be_bytes().to_vec());
    single.apply(w).unwrap();
    assert!(entries(&single, b"o\0").is_empty());
    f.release(WorkerId::SINGLE);
    // Worker 0 of 2 on that directory goes back to epoch 3 without its
    // outboxes: output of every group the released worker owned, which
    // re-delivered under worker 0 of 2's new write generation would
    // overwrite (and fence) what worker 1 of 2 writes for its groups.
    let w0 = WorkerId::new(0, 2).unwrap();
    f.prepare(&single, w0).unwrap();
    assert_eq!(
        entries(&single, key::EPOCH).into_values().next(),
        Some(3u64.to_be_bytes().to_vec())
    );
    assert_eq!(entries(&single, b"o\0"), BTreeMap::new());
}

#[test]
fn a_gone_owners_unacknowledged_output_is_written_once_as_that_owner() {
    let f = fixture();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let single = MemoryBackend::new();
    let (_, mut up) = f.prepare(&single, WorkerId::SINGLE).unwrap();
    f.checkpoint(&mut up, &single, 1, random_writes(&mut rng, 20));
    let mut w = random_writes(&mut rng, 20);
    // Sink `out` acknowledged epoch 1 (progress "g7") but not 2 or 3;
    // `file` acknowledged nothing; `done` acknowledged all it had.
    w.put(
        Key::Ack(Arc::from("out")),
        crate::state::encode(&crate::state::SinkAck {
            epoch: 1,
            progress: Some(b"g7".to_vec()),
        }),
    );
    w.put(
        Key::Ack(Arc::from("done")),
        crate::state::encode(&crate::state::SinkAck {
            epoch: 2,
            progress: None,
        }),
    );
    for (k, v) in [
        outbox("out", 2, &["a|1", "b|1"]),
        outbox("file", 2, &["c|1"]),
        outbox("done", 2, &["d|1"]),
    ] {
        w.put(k, v);
    }
    f.checkpoint(&mut up, &single, 2, w);
    let mut w = WriteSet::default();
    let (k, v) = outbox("out", 3, &["a|2"]);
    w.put(k, v);
    f.checkpoint(&mut up, &single, 3, w);
    // Killed here; the operator releases its last checkpoint.
    f.release(WorkerId::SINGLE);

    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sinks = [
        recording("out", true, &log),
        recording("file", false, &log),
        recording("done", true, &log),
    ];
    let w0 = WorkerId::new(0, 2).unwrap();
    let w1 = WorkerId::new(1, 2).unwrap();
    let store1 = MemoryBackend::new();
    f.prepare_with(&store1, w1, &sinks).unwrap();
    assert!(
        log.lock().unwrap().is_empty(),
        "worker 1 of 2 does not own group 0: {:?}",
        log.lock().unwrap()
    );
    f.prepare_with(&single, w0, &sinks).unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            "as worker 0 of 1: restore_former None".to_string(),
            "as worker 0 of 1: restore_former Some([103, 55])".to_string(),
            r#"as worker 0 of 1: write 2 ["a|1", "b|1"]"#.to_string(),
            r#"as worker 0 of 1: write 3 ["a|2"]"#.to_string(),
        ],
        "file (unable) is not written, out writes its epochs 2 and 3, done has nothing left"
    );
    // The takeover dropped the directory's own outboxes (they were
    // written above) and the next start writes nothing again.
    assert!(entries(&single, b"o\0").is_empty());
    log.lock().unwrap().clear();
    f.prepare_with(&single, w0, &sinks).unwrap();
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
}

mod import;
mod positions;
