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
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let remote = RemoteStore::open(&format!("file://{}", dir.path().display())).unwrap();
    Fixture {
        rt: tokio::runtime::Runtime::new().unwrap(),
        _dir: dir,
        remote,
    }
}

impl Fixture {
    fn prepare(
        &self,
        store: &dyn StateBackend,
        me: WorkerId,
    ) -> Result<(Recovery, Uploader), RunError> {
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
        }))
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
            let (recovery, _) = f.prepare(&fresh, WorkerId::SINGLE).unwrap();
            assert_eq!(recovery, Recovery::LostVolume, "epoch {epoch}");
            assert_eq!(all(&fresh), all(&store), "epoch {epoch}");
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
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let single = MemoryBackend::new();
    let (_, mut up) = f.prepare(&single, WorkerId::SINGLE).unwrap();
    for epoch in 1..=12 {
        f.checkpoint(&mut up, &single, epoch, random_writes(&mut rng, 40));
    }
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
            }),
        )
        .await
    });
    assert!(r.is_err(), "the stale worker must wait");
}

#[test]
fn a_worker_keeps_the_groups_its_own_directory_already_holds() {
    let f = fixture();
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let single = MemoryBackend::new();
    let (_, mut up) = f.prepare(&single, WorkerId::SINGLE).unwrap();
    for epoch in 1..=5 {
        let mut w = random_writes(&mut rng, 40);
        // The sink's output of the epoch, as the protocol stores it.
        w.put(
            Key::Outbox {
                sink: Arc::from("out"),
                epoch,
            },
            crate::state::encode(&Vec::<crate::sink::SinkRecord>::new()),
        );
        f.checkpoint(&mut up, &single, epoch, w);
    }
    let state = entries(&single, b"s\0");
    assert!(!entries(&single, b"o\0").is_empty());
    f.release(WorkerId::SINGLE);
    // Worker 0 of 2 starts on the single worker's directory: it keeps its
    // half as it is and drops the other half. It reads no segment back:
    // with them all gone from the remote copy, the start still works.
    let w0 = WorkerId::new(0, 2).unwrap();
    let segments_before = f.rt.block_on(f.remote.list("segments/")).unwrap();
    for name in &segments_before {
        f.rt.block_on(f.remote.delete(name)).unwrap();
    }
    let (r, _) = f.prepare(&single, w0).unwrap();
    assert_eq!(r, Recovery::Rescale);
    let mine: BTreeMap<Vec<u8>, Vec<u8>> = state
        .iter()
        .filter(|(k, _)| w0.owned(GROUPS).contains(&key::parse_state(k).unwrap().1))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!mine.is_empty() && mine.len() < state.len());
    assert_eq!(entries(&single, b"s\0"), mine);
    // The previous owner's outboxes (its output for every key group it
    // owned) are not re-delivered under the new owner's write generation.
    assert!(entries(&single, b"o\0").is_empty());
    // Its groups are claimed anew (generation 2) and uploaded as bases.
    for g in w0.owned(GROUPS) {
        let (generation, claim) = f.rt.block_on(f.remote.latest_claim(g)).unwrap().unwrap();
        assert_eq!((generation, claim.owner()), (2, w0), "group {g}");
    }
    let segments_after = f.rt.block_on(f.remote.list("segments/")).unwrap();
    assert!(
        !segments_after.is_empty(),
        "its groups are uploaded as bases"
    );
}

#[test]
fn a_directory_ahead_of_its_forced_release_goes_back_to_it() {
    let f = fixture();
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let single = MemoryBackend::new();
    let (_, mut up) = f.prepare(&single, WorkerId::SINGLE).unwrap();
    for epoch in 1..=5 {
        f.checkpoint(&mut up, &single, epoch, random_writes(&mut rng, 40));
    }
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
    assert_eq!(entries(&single, b"s\0"), mine);
}
