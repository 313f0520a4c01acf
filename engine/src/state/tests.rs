//! The checks every backend must pass: a checkpoint round trip, and a
//! model test against a plain `BTreeMap`. Run here against the in-memory
//! backend; each other backend runs them in its own module.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::{encode, Key, MemoryBackend, SinkAck, StateBackend, StoreError, WriteSet};
use crate::batch::RowKind;
use crate::sink::SinkRecord;
use crate::value::Value;

fn name(s: &str) -> Arc<str> {
    Arc::from(s)
}

/// Writes one entry of each kind, closes `backend`, and reads them back
/// from a reopened one.
pub(super) fn round_trip(
    backend: Box<dyn StateBackend>,
    reopen: &dyn Fn() -> Box<dyn StateBackend>,
) {
    let mut w = WriteSet::default();
    w.put(Key::Epoch, 7u64.to_be_bytes().to_vec());
    w.put(
        Key::State {
            node: name("agg"),
            group: 3,
            key: b"GT".to_vec(),
        },
        b"v1".to_vec(),
    );
    w.put(
        Key::Position {
            source: name("src"),
            partition: 2,
        },
        b"pos".to_vec(),
    );
    w.put(
        Key::MaxEventTime {
            source: name("src"),
            partition: 2,
        },
        (-5i64).to_be_bytes().to_vec(),
    );
    w.put(
        Key::Ack(name("out")),
        encode(&SinkAck {
            epoch: 6,
            progress: Some(vec![1]),
        }),
    );
    let rec = SinkRecord {
        kind: RowKind::Upsert,
        id: "GT".into(),
        value: Value::Int(3),
        time: 0,
    };
    w.put(
        Key::Outbox {
            sink: name("out"),
            epoch: 7,
        },
        encode(&vec![rec.clone()]),
    );
    w.put(Key::Signature(name("agg")), b"sig".to_vec());
    backend.apply(w).unwrap();
    drop(backend);
    let r = reopen().restore().unwrap();
    assert_eq!(r.epoch, 7);
    assert_eq!(r.state["agg"], vec![(3, b"GT".to_vec(), b"v1".to_vec())]);
    assert_eq!(r.positions["src"][&2], b"pos".to_vec());
    assert_eq!(r.watermarks["src"][&2], -5);
    assert_eq!(r.acks["out"].epoch, 6);
    assert_eq!(r.outbox["out"], vec![(7, vec![rec])]);
    assert_eq!(r.signatures["agg"], "sig");
}

#[test]
fn memory_checkpoint_round_trip() {
    let store = MemoryBackend::new();
    let kept = store.clone();
    round_trip(Box::new(store), &|| {
        Box::new(kept.reopen().unwrap()) as Box<dyn StateBackend>
    });
}

#[test]
fn another_format_version_is_refused() {
    let store = MemoryBackend::new();
    let mut w = WriteSet::default();
    w.put(Key::Format, 2u32.to_be_bytes().to_vec());
    store.apply(w).unwrap();
    assert!(matches!(
        store.reopen(),
        Err(StoreError::Format { found: 2 })
    ));
}

pub(super) type Checkpoints = Vec<(Vec<(u8, u16, Vec<u8>, Option<Vec<u8>>)>, bool)>;

pub(super) fn checkpoints() -> impl Strategy<Value = Checkpoints> {
    proptest::collection::vec(
        (
            proptest::collection::vec(
                (
                    0u8..3,
                    0u16..4,
                    proptest::collection::vec(any::<u8>(), 0..6),
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                ),
                0..25,
            ),
            any::<bool>(),
        ),
        1..12,
    )
}

/// Applies random checkpoints to `store` (reopened through `reopen` where
/// asked) and checks that what it restores is what a BTreeMap holds.
pub(super) fn agrees_with_a_btreemap<B: StateBackend>(
    mut store: B,
    reopen: impl Fn(B) -> B,
    checkpoints: Checkpoints,
) -> Result<(), TestCaseError> {
    let mut model: BTreeMap<(String, u16, Vec<u8>), Vec<u8>> = BTreeMap::new();
    for (epoch, (ops, reopen_now)) in checkpoints.into_iter().enumerate() {
        let mut w = WriteSet::default();
        for (node, kg, k, v) in ops {
            let node = format!("op{node}");
            let key = Key::State {
                node: name(&node),
                group: kg,
                key: k.clone(),
            };
            match v {
                Some(v) => {
                    w.put(key, v.clone());
                    model.insert((node, kg, k), v);
                }
                None => {
                    w.delete(key);
                    model.remove(&(node, kg, k));
                }
            }
        }
        w.put(Key::Epoch, (epoch as u64 + 1).to_be_bytes().to_vec());
        store.apply(w).unwrap();
        if reopen_now {
            store = reopen(store);
        }
        let restored = store.restore().unwrap();
        prop_assert_eq!(restored.epoch, epoch as u64 + 1);
        let mut got: BTreeMap<(String, u16, Vec<u8>), Vec<u8>> = BTreeMap::new();
        for (node, entries) in restored.state {
            for (kg, k, v) in entries {
                got.insert((node.clone(), kg, k), v);
            }
        }
        prop_assert_eq!(&got, &model);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Model-based: checkpoints of random puts and deletes over
    /// operators, key groups and keys, with the store reopened at
    /// random points, always restore exactly what a BTreeMap holds.
    #[test]
    fn memory_agrees_with_a_btreemap(checkpoints in checkpoints()) {
        agrees_with_a_btreemap(MemoryBackend::new(), |old| old.reopen().unwrap(), checkpoints)?;
    }
}

/// Reading only some key groups (a worker's own) gives what a full read
/// gives, minus the state of the other groups; nothing else is left out.
#[test]
fn restoring_some_key_groups_leaves_out_only_the_others_state() {
    let store = MemoryBackend::new();
    let mut w = WriteSet::default();
    w.put(Key::Epoch, 4u64.to_be_bytes().to_vec());
    w.put(Key::KeyGroups, 16u16.to_be_bytes().to_vec());
    w.put(Key::Signature(name("agg")), b"sig".to_vec());
    w.put(
        Key::Position {
            source: name("src"),
            partition: 0,
        },
        b"pos".to_vec(),
    );
    for g in 0..16u16 {
        for node in ["agg", "win"] {
            for k in 0..3u8 {
                w.put(
                    Key::State {
                        node: name(node),
                        group: g,
                        key: vec![b'k', k],
                    },
                    vec![g as u8, k],
                );
            }
        }
    }
    store.apply(w).unwrap();
    let full = store.restore().unwrap();
    let all = super::restore_groups(&store, &["agg", "win"], 0..16, &Default::default()).unwrap();
    assert_eq!(all.state, full.state);
    assert_eq!(
        (all.epoch, all.key_groups, &all.signatures, &all.positions),
        (
            full.epoch,
            full.key_groups,
            &full.signatures,
            &full.positions
        )
    );
    for range in [5..11u16, 0..1, 15..16] {
        let some =
            super::restore_groups(&store, &["agg", "win"], range.clone(), &Default::default())
                .unwrap();
        for node in ["agg", "win"] {
            let expected: Vec<_> = full.state[node]
                .iter()
                .filter(|(g, _, _)| range.contains(g))
                .cloned()
                .collect();
            assert_eq!(some.state[node], expected, "{node} {range:?}");
        }
        assert_eq!(some.positions, full.positions);
    }
}
