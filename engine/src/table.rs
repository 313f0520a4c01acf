//! Typed, named, versioned keyed state tables for operators.
//!
//! An operator keeps its state in [`KeyedTable`]s (and a few [`MetaCell`]s
//! for operator-wide numbers such as its watermark) instead of laying out
//! bytes by hand. A table is declared by a [`TableSpec`]: a name (for
//! errors), a one-byte tag that prefixes every stored key so several tables
//! share the operator's key space, the schema version of its values, the
//! [`Migration`]s that upgrade older versions, and the codec of its values.
//!
//! Stored layout of one entry (under the operator's prefix in the store):
//! key `[tag] ++ TableKey::encode(key)`, value `[version] ++ codec(value)`,
//! in the key group of [`TableKey::routing_bytes`]. Meta cells use keys
//! starting with `0`, which no table tag may use.
//!
//! The table tracks what changed: `insert`, `get_mut`, `get_or_insert_with`
//! mark an entry, `remove` and `retain` remember a deletion, and
//! [`KeyedTable::snapshot`] writes exactly those (deletions first) to the
//! [`StateWriter`]. [`restore_tables`] hands each restored entry to the
//! table that owns its tag, which upgrades it version by version to the
//! current one (and rewrites it at the next snapshot) or refuses a version
//! it cannot read.
//!
//! The idea is Flink's keyed state descriptors (a named state with a
//! serializer whose snapshot decides compatibility and migration) and Kafka
//! Streams' named stores, cut down to what sluice's operators need.

use std::hash::Hash;

use hashbrown::hash_map::{Entry as MapEntry, RawEntryMut};
use rustc_hash::FxBuildHasher;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::keys::{key_group, GroupKey};
use crate::operator::{StateEntry, StateError, StateStats, StateWriter};

/// The key group of meta cells (operator-wide values, not keyed).
const META_KEY_GROUP: u16 = 0;
/// The first byte of every meta cell key; no table may use it as its tag.
const META_TAG: u8 = 0;

/// A key of a [`KeyedTable`]: how it is stored and which key group it
/// belongs to.
pub trait TableKey: Clone + Eq + Hash {
    /// Appends the stored form of the key (the bytes after the table tag).
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads a key written by [`TableKey::encode`]; `None` if malformed.
    fn decode(bytes: &[u8]) -> Option<Self>;
    /// The bytes whose hash decides the key group (the group key of the
    /// row, so that all of a group's state moves with it).
    fn routing_bytes(&self) -> &[u8];
}

/// A group key is stored as it is, and routes by itself.
impl TableKey for GroupKey {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(GroupKey::from_slice(bytes))
    }

    fn routing_bytes(&self) -> &[u8] {
        self
    }
}

/// An entry as stored at some version, without the table tag and without
/// the version byte: what a [`Migration`] rewrites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The key after the table tag.
    pub key: Vec<u8>,
    /// The value after the version byte.
    pub value: Vec<u8>,
}

/// Upgrades an entry stored at version `from` to version `from + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version it reads.
    pub from: u8,
    /// Rewrites the key and/or the value; an error refuses the restore.
    pub upgrade: fn(StoredEntry) -> Result<StoredEntry, StateError>,
}

/// The identity and schema of a table: see the module docs.
pub struct TableSpec<V> {
    /// Names the table in errors.
    pub name: &'static str,
    /// The first byte of every stored key; unique within an operator, not 0.
    pub tag: u8,
    /// The version values are written at.
    pub version: u8,
    /// Upgrades from older versions, one step each, oldest first, ending
    /// at `version - 1`; versions older than the first are refused.
    pub migrations: &'static [Migration],
    /// Writes a value (the bytes after the version byte).
    pub encode: fn(&V, &mut Vec<u8>),
    /// Reads a value written by `encode` at the current version.
    pub decode: fn(&[u8]) -> Result<V, StateError>,
}

impl<V> Clone for TableSpec<V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for TableSpec<V> {}

impl<V: Serialize + DeserializeOwned> TableSpec<V> {
    /// A table whose values are stored with bincode (serde), as
    /// [`crate::operator::encode_versioned`] does.
    pub const fn bincode(name: &'static str, tag: u8, version: u8) -> Self {
        TableSpec {
            name,
            tag,
            version,
            migrations: &[],
            encode: encode_bincode::<V>,
            decode: decode_bincode::<V>,
        }
    }
}

impl<V> TableSpec<V> {
    /// The same table with these migrations.
    pub const fn with_migrations(self, migrations: &'static [Migration]) -> Self {
        TableSpec { migrations, ..self }
    }

    /// The oldest version this build can read.
    pub fn oldest_version(&self) -> u8 {
        self.version.saturating_sub(self.migrations.len() as u8)
    }

    /// Panics unless the migrations form a chain ending at `version - 1`
    /// and the tag is free (declaration errors, not data errors).
    fn check(&self) {
        assert_ne!(
            self.tag, META_TAG,
            "table `{}`: tag 0 is reserved for meta cells",
            self.name
        );
        assert!(
            self.migrations.len() <= usize::from(self.version),
            "table `{}`: more migrations than versions",
            self.name
        );
        for (i, m) in self.migrations.iter().enumerate() {
            assert_eq!(
                usize::from(m.from),
                usize::from(self.oldest_version()) + i,
                "table `{}`: migrations must go one version at a time up to {}",
                self.name,
                self.version
            );
        }
    }

    /// Brings an entry stored at `version` to the current version.
    fn upgrade(&self, version: u8, mut entry: StoredEntry) -> Result<StoredEntry, StateError> {
        if version > self.version || version < self.oldest_version() {
            return Err(StateError::Version {
                found: version,
                expected: self.version,
            });
        }
        let first = usize::from(version - self.oldest_version());
        for m in &self.migrations[first..] {
            entry = (m.upgrade)(entry)?;
        }
        Ok(entry)
    }
}

/// Writes `value` with bincode's standard config (the table value codec of
/// [`TableSpec::bincode`]; also for migrations).
pub fn encode_bincode<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
        .expect("writing to a Vec cannot fail");
}

/// Reads a value written by [`encode_bincode`].
pub fn decode_bincode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| StateError::Corrupt(e.to_string()))
}

/// Something restored state entries are routed to: a table or a meta cell.
pub trait StateTable {
    /// Whether the entry stored under `key` belongs here.
    fn owns(&self, key: &[u8]) -> bool;
    /// Makes room for `additional` entries about to be restored.
    fn reserve(&mut self, additional: usize) {
        let _ = additional;
    }
    /// Loads one entry that [`StateTable::owns`].
    fn restore_entry(
        &mut self,
        key_group: u16,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError>;
}

/// Routes every restored entry of an operator to the table that owns it.
///
/// # Errors
/// An entry no table owns is [`StateError::Corrupt`]; a table's own errors
/// (a version it cannot read, bytes it cannot decode) are passed on.
pub fn restore_tables(
    entries: Vec<StateEntry>,
    tables: &mut [&mut dyn StateTable],
) -> Result<(), StateError> {
    // Room for each table's entries first: a table growing one entry at a
    // time rehashes all it holds at every doubling.
    let mut counts = vec![0usize; tables.len()];
    for (_, key, _) in &entries {
        if let Some(i) = tables.iter().position(|t| t.owns(key)) {
            counts[i] += 1;
        }
    }
    for (table, n) in tables.iter_mut().zip(counts) {
        table.reserve(n);
    }
    for (kg, key, value) in entries {
        let Some(table) = tables.iter_mut().find(|t| t.owns(&key)) else {
            return Err(StateError::Corrupt(format!(
                "unexpected state key {key:02x?}"
            )));
        };
        table.restore_entry(kg, key, value)?;
    }
    Ok(())
}

struct Slot<V> {
    value: V,
    /// Changed since the last snapshot (and listed in `KeyedTable::dirty`).
    dirty: bool,
    /// Key and value bytes as last written or restored; 0 if never stored.
    stored_bytes: u32,
}

/// A typed table of keyed state, in memory, with change tracking: see the
/// module docs.
pub struct KeyedTable<K, V> {
    spec: TableSpec<V>,
    key_groups: u16,
    entries: hashbrown::HashMap<K, Slot<V>, FxBuildHasher>,
    /// Keys marked since the last snapshot, in marking order (a key may
    /// appear twice if it was removed and inserted again).
    dirty: Vec<K>,
    /// Keys removed since the last snapshot that the store holds.
    removed: Vec<K>,
    /// Stored keys replaced by a migration that changed the key.
    stale: Vec<(u16, Vec<u8>)>,
    stored_bytes: u64,
}

impl<K: TableKey, V> KeyedTable<K, V> {
    /// An empty table whose keys are spread over `key_groups` key groups.
    ///
    /// # Panics
    /// If the spec is malformed: tag 0, or migrations that do not step one
    /// version at a time up to the current one.
    pub fn new(spec: TableSpec<V>, key_groups: u16) -> Self {
        spec.check();
        KeyedTable {
            spec,
            key_groups,
            entries: hashbrown::HashMap::default(),
            dirty: Vec::new(),
            removed: Vec::new(),
            stale: Vec::new(),
            stored_bytes: 0,
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` has an entry.
    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The value of `key`, for reading.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|s| &s.value)
    }

    /// The value of `key` for changing it; marks the entry.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let slot = self.entries.get_mut(key)?;
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(key.clone());
        }
        Some(&mut slot.value)
    }

    /// The value of `key` for changing what the codec does not store (an
    /// operator's bookkeeping): the entry is not marked, so a change to the
    /// stored part reaches the store only with the next marked change.
    pub fn get_mut_unmarked(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|s| &mut s.value)
    }

    /// The value of `key`, inserted by `init` if absent; marks the entry.
    /// `key` is hashed and looked up once, and cloned only to insert it or
    /// to mark it.
    pub fn get_or_insert_with(&mut self, key: &K, init: impl FnOnce() -> V) -> &mut V {
        let slot = match self.entries.raw_entry_mut().from_key(key) {
            RawEntryMut::Occupied(o) => o.into_mut(),
            RawEntryMut::Vacant(v) => {
                let slot = Slot {
                    value: init(),
                    dirty: false,
                    stored_bytes: 0,
                };
                v.insert(key.clone(), slot).1
            }
        };
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(key.clone());
        }
        &mut slot.value
    }

    /// Sets the value of `key`; marks the entry. Returns the old value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.entries.entry(key) {
            MapEntry::Occupied(mut o) => {
                if !o.get().dirty {
                    self.dirty.push(o.key().clone());
                    o.get_mut().dirty = true;
                }
                Some(std::mem::replace(&mut o.get_mut().value, value))
            }
            MapEntry::Vacant(v) => {
                self.dirty.push(v.key().clone());
                v.insert(Slot {
                    value,
                    dirty: true,
                    stored_bytes: 0,
                });
                None
            }
        }
    }

    /// Removes `key`; its stored entry is deleted at the next snapshot.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.entries.remove(key)?;
        if slot.stored_bytes > 0 {
            self.stored_bytes -= u64::from(slot.stored_bytes);
            self.removed.push(key.clone());
        }
        Some(slot.value)
    }

    /// Keeps only the entries for which `keep` is true; the others are
    /// deleted at the next snapshot.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let (removed, stored_bytes) = (&mut self.removed, &mut self.stored_bytes);
        self.entries.retain(|k, slot| {
            let kept = keep(k, &slot.value);
            if !kept && slot.stored_bytes > 0 {
                *stored_bytes -= u64::from(slot.stored_bytes);
                removed.push(k.clone());
            }
            kept
        });
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, s)| (k, &s.value))
    }

    /// Writes the changes since the last snapshot: deletions first, then
    /// every marked entry at the current version.
    pub fn snapshot(&mut self, w: &mut StateWriter) {
        for (kg, key) in self.stale.drain(..) {
            w.delete(kg, key);
        }
        for key in std::mem::take(&mut self.removed) {
            w.delete(self.key_group(&key), self.stored_key(&key));
        }
        for key in std::mem::take(&mut self.dirty) {
            let stored_key = self.stored_key(&key);
            let kg = self.key_group(&key);
            let Some(slot) = self.entries.get_mut(&key) else {
                continue; // removed after it was marked
            };
            if !slot.dirty {
                continue; // listed twice
            }
            slot.dirty = false;
            let mut value = vec![self.spec.version];
            (self.spec.encode)(&slot.value, &mut value);
            let bytes = u32::try_from(stored_key.len() + value.len()).unwrap_or(u32::MAX);
            self.stored_bytes = self.stored_bytes - u64::from(slot.stored_bytes) + u64::from(bytes);
            slot.stored_bytes = bytes;
            w.put(kg, stored_key, value);
        }
    }

    /// Writes every entry as the store holds it after the last snapshot,
    /// if nothing changed since (see [`crate::operator::Operator::snapshot_all`]);
    /// false, writing nothing, otherwise.
    pub fn snapshot_all(&self, w: &mut StateWriter) -> bool {
        if !(self.dirty.is_empty() && self.removed.is_empty() && self.stale.is_empty()) {
            return false;
        }
        w.entries.reserve(self.entries.len());
        for (key, slot) in &self.entries {
            let mut value = vec![self.spec.version];
            (self.spec.encode)(&slot.value, &mut value);
            w.put(self.key_group(key), self.stored_key(key), value);
        }
        true
    }

    /// Entries, and key and value bytes as of the last snapshot.
    pub fn stats(&self) -> StateStats {
        StateStats {
            keys: self.entries.len() as u64,
            bytes: self.stored_bytes,
        }
    }

    fn key_group(&self, key: &K) -> u16 {
        key_group(key.routing_bytes(), self.key_groups)
    }

    fn stored_key(&self, key: &K) -> Vec<u8> {
        let mut out = vec![self.spec.tag];
        key.encode(&mut out);
        out
    }

    fn corrupt(&self, what: &str, bytes: &[u8]) -> StateError {
        StateError::Corrupt(format!("table `{}`: {what} {bytes:02x?}", self.spec.name))
    }
}

impl<K: TableKey, V> StateTable for KeyedTable<K, V> {
    fn owns(&self, key: &[u8]) -> bool {
        key.first() == Some(&self.spec.tag)
    }

    fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    /// Loads one entry, upgrading it from an older version (it is then
    /// written again, at the current version, by the next snapshot).
    fn restore_entry(
        &mut self,
        key_group: u16,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let stored_bytes = u32::try_from(key.len() + value.len()).unwrap_or(u32::MAX);
        let (Some(table_key), Some((&version, body))) = (key.get(1..), value.split_first()) else {
            return Err(self.corrupt("empty key or value under key", &key));
        };
        let (k, v, migrated) = if version == self.spec.version {
            let k = K::decode(table_key).ok_or_else(|| self.corrupt("malformed key", &key))?;
            (k, (self.spec.decode)(body)?, false)
        } else {
            let old = StoredEntry {
                key: table_key.to_vec(),
                value: body.to_vec(),
            };
            let new = self.spec.upgrade(version, old)?;
            let k = K::decode(&new.key).ok_or_else(|| self.corrupt("malformed key", &new.key))?;
            if new.key != table_key || self.key_group(&k) != key_group {
                self.stale.push((key_group, key));
            }
            (k, (self.spec.decode)(&new.value)?, true)
        };
        if migrated {
            self.dirty.push(k.clone());
        }
        let slot = Slot {
            value: v,
            dirty: migrated,
            stored_bytes,
        };
        self.stored_bytes += u64::from(stored_bytes);
        if let Some(old) = self.entries.insert(k, slot) {
            self.stored_bytes -= u64::from(old.stored_bytes);
        }
        Ok(())
    }
}

/// A number an operator stores once, not per key (e.g. its watermark): 8
/// big-endian bytes under a fixed key in key group 0, written at a snapshot
/// when it changed. Its format is fixed, not versioned.
pub struct MetaCell<T> {
    name: &'static str,
    key: &'static [u8],
    value: T,
    stored: T,
}

/// A value a [`MetaCell`] can hold.
pub trait MetaValue: Copy + PartialEq {
    /// The stored form.
    fn to_bytes(self) -> [u8; 8];
    /// Reads the stored form.
    fn from_bytes(bytes: [u8; 8]) -> Self;
}

impl MetaValue for i64 {
    fn to_bytes(self) -> [u8; 8] {
        self.to_be_bytes()
    }

    fn from_bytes(bytes: [u8; 8]) -> Self {
        i64::from_be_bytes(bytes)
    }
}

impl MetaValue for u64 {
    fn to_bytes(self) -> [u8; 8] {
        self.to_be_bytes()
    }

    fn from_bytes(bytes: [u8; 8]) -> Self {
        u64::from_be_bytes(bytes)
    }
}

impl<T: MetaValue> MetaCell<T> {
    /// A cell named `name` (for errors) stored under `key`, holding
    /// `initial` (not written until it changes).
    ///
    /// # Panics
    /// If `key` does not start with the meta tag `0`.
    pub fn new(name: &'static str, key: &'static [u8], initial: T) -> Self {
        assert_eq!(
            key.first(),
            Some(&META_TAG),
            "meta cell `{name}`: its key must start with 0"
        );
        MetaCell {
            name,
            key,
            value: initial,
            stored: initial,
        }
    }

    /// The current value.
    pub fn get(&self) -> T {
        self.value
    }

    /// Changes the value (written at the next snapshot if it differs from
    /// the stored one).
    pub fn set(&mut self, value: T) {
        self.value = value;
    }

    /// Writes the value as the store holds it after the last snapshot
    /// (not a newer one set since: a watermark moves without a checkpoint
    /// when nothing else changes); always true.
    pub fn snapshot_all(&self, w: &mut StateWriter) -> bool {
        w.put(
            META_KEY_GROUP,
            self.key.to_vec(),
            self.stored.to_bytes().to_vec(),
        );
        true
    }

    /// Writes the value if it changed since it was last written or restored.
    pub fn snapshot(&mut self, w: &mut StateWriter) {
        if self.value != self.stored {
            self.stored = self.value;
            w.put(
                META_KEY_GROUP,
                self.key.to_vec(),
                self.value.to_bytes().to_vec(),
            );
        }
    }
}

impl<T: MetaValue> StateTable for MetaCell<T> {
    fn owns(&self, key: &[u8]) -> bool {
        key == self.key
    }

    fn restore_entry(&mut self, _: u16, _: Vec<u8>, value: Vec<u8>) -> Result<(), StateError> {
        let bytes: [u8; 8] = value
            .as_slice()
            .try_into()
            .map_err(|_| StateError::Corrupt(format!("{}: expected 8 bytes", self.name)))?;
        self.value = T::from_bytes(bytes);
        self.stored = self.value;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
