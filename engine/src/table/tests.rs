use std::collections::BTreeMap;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::keys::{key_group, GroupKey};
use crate::operator::{StateEntry, StateError, StateWriter};
use crate::table::{
    decode_bincode, encode_bincode, restore_tables, KeyedTable, MetaCell, Migration, StateTable,
    StoredEntry, TableSpec,
};

const KEY_GROUPS: u16 = 8;
const COUNTS: TableSpec<u64> = TableSpec::bincode("counts", 1, 1);

fn key(s: &str) -> GroupKey {
    GroupKey::from_slice(s.as_bytes())
}

/// What a snapshot wrote: `(key group, key, value or None for a delete)`.
fn written<K: super::TableKey, V>(
    t: &mut KeyedTable<K, V>,
) -> Vec<(u16, Vec<u8>, Option<Vec<u8>>)> {
    let mut w = StateWriter::default();
    t.snapshot(&mut w);
    w.entries
}

fn stored(tag: u8, k: &str) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(k.as_bytes());
    out
}

fn value(version: u8, v: u64) -> Vec<u8> {
    let mut out = vec![version];
    encode_bincode(&v, &mut out);
    out
}

#[test]
fn a_snapshot_writes_only_what_changed_since_the_last_one() {
    let mut t = KeyedTable::new(COUNTS, KEY_GROUPS);
    t.insert(key("a"), 1);
    *t.get_or_insert_with(&key("b"), || 0) += 5;
    *t.get_or_insert_with(&key("b"), || 0) += 1; // marked once, written once
    let first = written(&mut t);
    assert_eq!(
        first,
        vec![
            (
                key_group(b"a", KEY_GROUPS),
                stored(1, "a"),
                Some(value(1, 1))
            ),
            (
                key_group(b"b", KEY_GROUPS),
                stored(1, "b"),
                Some(value(1, 6))
            ),
        ]
    );
    assert!(written(&mut t).is_empty(), "nothing changed");
    // Reading does not mark; get_mut does, get_mut_unmarked does not.
    assert_eq!(t.get(&key("a")), Some(&1));
    *t.get_mut_unmarked(&key("a")).unwrap() = 7;
    assert!(written(&mut t).is_empty());
    *t.get_mut(&key("b")).unwrap() = 9;
    assert_eq!(
        written(&mut t),
        vec![(
            key_group(b"b", KEY_GROUPS),
            stored(1, "b"),
            Some(value(1, 9))
        )]
    );
}

#[test]
fn removed_entries_are_deleted_before_new_ones_are_written() {
    let mut t = KeyedTable::new(COUNTS, KEY_GROUPS);
    t.insert(key("a"), 1);
    t.insert(key("b"), 2);
    written(&mut t);
    assert_eq!(t.remove(&key("a")), Some(1));
    t.retain(|k, _| k != &key("b"));
    assert!(t.is_empty());
    // Inserted and removed between two snapshots: never stored, no delete.
    t.insert(key("c"), 3);
    t.remove(&key("c"));
    // Removed and inserted again: the delete, then the new value.
    t.insert(key("a"), 4);
    assert_eq!(
        written(&mut t),
        vec![
            (key_group(b"a", KEY_GROUPS), stored(1, "a"), None),
            (key_group(b"b", KEY_GROUPS), stored(1, "b"), None),
            (
                key_group(b"a", KEY_GROUPS),
                stored(1, "a"),
                Some(value(1, 4))
            ),
        ]
    );
    assert!(written(&mut t).is_empty());
}

/// A key whose key group comes from only part of it, like a window slot
/// `(window start, group key)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    start: u8,
    group: GroupKey,
}

impl super::TableKey for Slot {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.start);
        out.extend_from_slice(&self.group);
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&start, group) = bytes.split_first()?;
        Some(Slot {
            start,
            group: GroupKey::from_slice(group),
        })
    }

    fn routing_bytes(&self) -> &[u8] {
        &self.group
    }
}

#[test]
fn entries_go_to_the_key_group_of_their_routing_bytes() {
    let mut t = KeyedTable::new(TableSpec::<u64>::bincode("slots", 3, 1), 1024);
    for start in 0..4 {
        t.insert(
            Slot {
                start,
                group: key("GT"),
            },
            1,
        );
    }
    let entries = written(&mut t);
    assert_eq!(entries.len(), 4);
    for (kg, k, _) in entries {
        assert_eq!(kg, key_group(b"GT", 1024));
        assert_eq!(&k[2..], b"GT");
    }
}

#[test]
fn stats_count_entries_and_the_bytes_last_written() {
    let mut t = KeyedTable::new(COUNTS, KEY_GROUPS);
    t.insert(key("ab"), 1);
    t.insert(key("c"), 300);
    assert_eq!(t.stats().keys, 2);
    assert_eq!(t.stats().bytes, 0, "nothing written yet");
    written(&mut t);
    // key: tag + key bytes; value: version + bincode varint (300 takes 3).
    assert_eq!(t.stats().bytes, (3 + 2) + (2 + 4));
    t.insert(key("c"), 1);
    written(&mut t);
    assert_eq!(t.stats().bytes, (3 + 2) + (2 + 2));
    t.remove(&key("ab"));
    assert_eq!(t.stats().keys, 1);
    assert_eq!(t.stats().bytes, 2 + 2);
}

/// Version 1 stored a count as a u32 under key `name`; version 2 as
/// `Count { n: u64 }`; version 3 added `touched` and moved the key to
/// upper case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CountV2 {
    n: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Count {
    n: u64,
    touched: bool,
}

fn v1_to_v2(e: StoredEntry) -> Result<StoredEntry, StateError> {
    let old: u32 = decode_bincode(&e.value)?;
    let mut value = Vec::new();
    encode_bincode(&CountV2 { n: u64::from(old) }, &mut value);
    Ok(StoredEntry { key: e.key, value })
}

fn v2_to_v3(e: StoredEntry) -> Result<StoredEntry, StateError> {
    let old: CountV2 = decode_bincode(&e.value)?;
    let mut value = Vec::new();
    encode_bincode(
        &Count {
            n: old.n,
            touched: false,
        },
        &mut value,
    );
    Ok(StoredEntry {
        key: e.key.to_ascii_uppercase(),
        value,
    })
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 1,
        upgrade: v1_to_v2,
    },
    Migration {
        from: 2,
        upgrade: v2_to_v3,
    },
];
const COUNTS_V3: TableSpec<Count> = TableSpec::bincode("counts", 1, 3).with_migrations(MIGRATIONS);

fn entry(kg: u16, k: &str, version: u8, value: &impl Serialize) -> StateEntry {
    let mut v = vec![version];
    encode_bincode(value, &mut v);
    (kg, stored(1, k), v)
}

#[test]
fn restore_upgrades_old_versions_step_by_step_and_rewrites_them() {
    let kg = |k: &str| key_group(k.as_bytes(), KEY_GROUPS);
    let mut t: KeyedTable<GroupKey, _> = KeyedTable::new(COUNTS_V3, KEY_GROUPS);
    restore_tables(
        vec![
            entry(kg("a"), "a", 1, &5u32),
            entry(kg("b"), "b", 2, &CountV2 { n: 6 }),
            entry(
                kg("C"),
                "C",
                3,
                &Count {
                    n: 7,
                    touched: true,
                },
            ),
        ],
        &mut [&mut t],
    )
    .unwrap();
    assert_eq!(
        t.get(&key("A")),
        Some(&Count {
            n: 5,
            touched: false
        })
    );
    assert_eq!(
        t.get(&key("B")),
        Some(&Count {
            n: 6,
            touched: false
        })
    );
    assert_eq!(
        t.get(&key("C")),
        Some(&Count {
            n: 7,
            touched: true
        })
    );
    assert_eq!(t.len(), 3);
    // The next snapshot deletes the old keys and writes the upgraded
    // entries at version 3; the current one is left alone.
    let mut out = written(&mut t);
    out.sort();
    let put = |(kg, k, v): StateEntry| (kg, k, Some(v));
    let mut expected = vec![
        (kg("a"), stored(1, "a"), None),
        (kg("b"), stored(1, "b"), None),
        put(entry(
            kg("A"),
            "A",
            3,
            &Count {
                n: 5,
                touched: false,
            },
        )),
        put(entry(
            kg("B"),
            "B",
            3,
            &Count {
                n: 6,
                touched: false,
            },
        )),
    ];
    expected.sort();
    assert_eq!(out, expected);
    assert!(written(&mut t).is_empty());
}

#[test]
fn a_newer_version_is_refused() {
    let mut t: KeyedTable<GroupKey, _> = KeyedTable::new(COUNTS_V3, KEY_GROUPS);
    let err = restore_tables(vec![entry(0, "a", 4, &1u8)], &mut [&mut t]).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Version {
                found: 4,
                expected: 3
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "state entry has version 4, this build reads version 3"
    );
}

#[test]
fn a_version_older_than_the_migrations_is_refused() {
    let mut t: KeyedTable<GroupKey, _> =
        KeyedTable::new(TableSpec::<u64>::bincode("counts", 1, 2), KEY_GROUPS);
    let err = restore_tables(vec![entry(0, "a", 1, &1u64)], &mut [&mut t]).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Version {
                found: 1,
                expected: 2
            }
        ),
        "{err:?}"
    );
}

#[test]
#[should_panic(expected = "one version at a time")]
fn a_gap_in_the_migrations_is_a_declaration_error() {
    const GAP: &[Migration] = &[Migration {
        from: 1,
        upgrade: v1_to_v2,
    }];
    KeyedTable::<GroupKey, Count>::new(
        TableSpec::bincode("counts", 1, 3).with_migrations(GAP),
        KEY_GROUPS,
    );
}

#[test]
fn entries_are_routed_by_tag_and_unknown_ones_refused() {
    let mut a = KeyedTable::new(COUNTS, KEY_GROUPS);
    let mut b = KeyedTable::new(TableSpec::<u64>::bincode("other", 2, 1), KEY_GROUPS);
    let mut wm = MetaCell::new("watermark", b"\0wm", i64::MIN);
    let entries = vec![
        (0, stored(1, "x"), value(1, 1)),
        (0, stored(2, "x"), value(1, 2)),
        (0, b"\0wm".to_vec(), 42i64.to_be_bytes().to_vec()),
    ];
    restore_tables(entries, &mut [&mut a, &mut b, &mut wm]).unwrap();
    assert_eq!(a.get(&key("x")), Some(&1));
    assert_eq!(b.get(&key("x")), Some(&2));
    assert_eq!(wm.get(), 42);
    let err = restore_tables(vec![(0, stored(9, "x"), value(1, 1))], &mut [&mut a]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "state entry is corrupt: unexpected state key [09, 78]"
    );
    let err = restore_tables(vec![(0, stored(1, "x"), vec![1, 0xff])], &mut [&mut a]).unwrap_err();
    assert!(matches!(err, StateError::Corrupt(_)), "{err:?}");
}

#[test]
fn a_meta_cell_is_written_when_it_changed() {
    let mut cell = MetaCell::new("sequence", b"\0seq", 0u64);
    let snap = |cell: &mut MetaCell<u64>| {
        let mut w = StateWriter::default();
        cell.snapshot(&mut w);
        w.entries
    };
    assert!(
        snap(&mut cell).is_empty(),
        "the initial value is not written"
    );
    cell.set(3);
    assert_eq!(
        snap(&mut cell),
        vec![(0, b"\0seq".to_vec(), Some(3u64.to_be_bytes().to_vec()))]
    );
    assert!(snap(&mut cell).is_empty());
    cell.restore_entry(0, b"\0seq".to_vec(), 9u64.to_be_bytes().to_vec())
        .unwrap();
    assert_eq!(cell.get(), 9);
    assert!(snap(&mut cell).is_empty(), "a restored value is stored");
    assert!(cell.restore_entry(0, b"\0seq".to_vec(), vec![1]).is_err());
}

/// The whole of a meta cell is the value the store holds: a newer value
/// set since the last snapshot is not in the store.
#[test]
fn a_meta_cell_dumps_its_stored_value() {
    let mut cell = MetaCell::new("watermark", b"\0wm", 0u64);
    let all = |cell: &MetaCell<u64>| {
        let mut w = StateWriter::default();
        assert!(cell.snapshot_all(&mut w));
        w.entries
    };
    let entry = |v: u64| vec![(0, b"\0wm".to_vec(), Some(v.to_be_bytes().to_vec()))];
    assert_eq!(all(&cell), entry(0));
    cell.set(5);
    assert_eq!(all(&cell), entry(0), "5 is not stored yet");
    cell.snapshot(&mut StateWriter::default());
    assert_eq!(all(&cell), entry(5));
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u64),
    Add(u8, u64),
    Remove(u8),
    RetainEven,
    Snapshot,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (0u8..12, any::<u64>()).prop_map(|(k, v)| Op::Insert(k, v)),
        3 => (0u8..12, 0u64..1000).prop_map(|(k, v)| Op::Add(k, v)),
        2 => (0u8..12).prop_map(Op::Remove),
        1 => Just(Op::RetainEven),
        2 => Just(Op::Snapshot),
    ];
    proptest::collection::vec(op, 0..80)
}

proptest! {
    /// A table driven by random changes and snapshots, with every snapshot
    /// applied to a model store, restores into a table equal to a plain
    /// `BTreeMap` that saw the same changes.
    #[test]
    fn snapshot_and_restore_agree_with_a_plain_map(ops in ops()) {
        let mut table = KeyedTable::new(COUNTS, KEY_GROUPS);
        let mut model: BTreeMap<GroupKey, u64> = BTreeMap::new();
        let mut store: BTreeMap<(u16, Vec<u8>), Vec<u8>> = BTreeMap::new();
        let apply = |store: &mut BTreeMap<(u16, Vec<u8>), Vec<u8>>, table: &mut KeyedTable<GroupKey, u64>| {
            for (kg, k, v) in written(table) {
                prop_assert_eq!(kg, key_group(&k[1..], KEY_GROUPS));
                match v {
                    Some(v) => store.insert((kg, k), v),
                    None => store.remove(&(kg, k)),
                };
            }
            Ok(())
        };
        for op in ops {
            let op_was_snapshot = matches!(op, Op::Snapshot);
            match op {
                Op::Insert(k, v) => {
                    let k = GroupKey::from_slice(&[k]);
                    prop_assert_eq!(table.insert(k.clone(), v), model.insert(k, v));
                }
                Op::Add(k, v) => {
                    let k = GroupKey::from_slice(&[k]);
                    let t = table.get_or_insert_with(&k, || 0);
                    *t = t.wrapping_add(v);
                    let m = model.entry(k).or_insert(0);
                    *m = m.wrapping_add(v);
                }
                Op::Remove(k) => {
                    let k = GroupKey::from_slice(&[k]);
                    prop_assert_eq!(table.remove(&k), model.remove(&k));
                }
                Op::RetainEven => {
                    table.retain(|_, v| v % 2 == 0);
                    model.retain(|_, v| *v % 2 == 0);
                }
                Op::Snapshot => apply(&mut store, &mut table)?,
            }
            prop_assert_eq!(table.len(), model.len());
            // The whole table, when it can be had, is exactly the store;
            // right after a snapshot it can.
            let mut all = StateWriter::default();
            if table.snapshot_all(&mut all) {
                let dumped: BTreeMap<(u16, Vec<u8>), Vec<u8>> = all
                    .entries
                    .into_iter()
                    .map(|(kg, k, v)| ((kg, k), v.expect("puts only")))
                    .collect();
                prop_assert_eq!(&dumped, &store);
            } else {
                prop_assert!(!op_was_snapshot, "refused right after a snapshot");
            }
        }
        apply(&mut store, &mut table)?;
        let stored_bytes: usize = store.iter().map(|((_, k), v)| k.len() + v.len()).sum();
        prop_assert_eq!(table.stats().bytes, stored_bytes as u64);
        let mut restored: KeyedTable<GroupKey, u64> = KeyedTable::new(COUNTS, KEY_GROUPS);
        let entries = store.into_iter().map(|((kg, k), v)| (kg, k, v)).collect();
        restore_tables(entries, &mut [&mut restored]).unwrap();
        let restored: BTreeMap<GroupKey, u64> =
            restored.iter().map(|(k, v)| (k.clone(), *v)).collect();
        prop_assert_eq!(restored, model);
    }
}
