//! Durable state: where checkpoints are stored and read back from.
//!
//! A [`StateBackend`] holds the entries of the last durable checkpoint in
//! the byte layout of [`layout`], applies each new checkpoint's
//! [`WriteSet`] atomically and durably, and gives every entry back at the
//! next start ([`StateBackend::restore`]). [`SledBackend`] keeps them in an
//! embedded database in the state directory; [`MemoryBackend`] in memory,
//! for tests.

pub mod layout;
mod memory;
pub mod remote;
pub mod restart;
mod sled;

pub use layout::{encode, key, Key, Restored, SinkAck, FORMAT_VERSION};
pub use memory::MemoryBackend;
pub use sled::{set_aside_unfinished_snapshots, SledBackend};

/// The error of a storage engine, whatever the engine.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// Why the state store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state directory {dir}: {source}. If it is damaged, restore it from a backup, or rebuild it elsewhere with `sluice replay` (docs/operations.md, \"Damaged or lost state\")")]
    /// The storage engine refused to open the state directory.
    Open {
        /// The state directory, as given.
        dir: String,
        /// The storage engine's error.
        #[source]
        source: BackendError,
    },
    #[error("state store I/O failed: {0}")]
    /// Reading or writing the opened store failed.
    Io(#[source] BackendError),
    #[error("the state directory holds format version {found}; this build reads version {FORMAT_VERSION}")]
    /// The directory was written in another on-disk format version.
    Format {
        /// The version stored in the directory's `m\0format` key.
        found: u32,
    },
    #[error("corrupt state entry {key}: {reason}. The state directory is damaged: restore it from a backup, or rebuild it elsewhere with `sluice replay`")]
    /// A stored value could not be decoded.
    Corrupt {
        /// The entry's key, lossily decoded as UTF-8.
        key: String,
        /// What was wrong with the value.
        reason: String,
    },
}

/// Called with each stored entry: `(key, value)`.
pub type EntryVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// One change of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Stores the value under the key, replacing any previous value.
    Put(Key, Vec<u8>),
    /// Removes the key's entry, if any.
    Delete(Key),
}

/// The changes of one checkpoint, applied all together or not at all.
/// Later writes to the same key win.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteSet {
    /// The changes, in the order they were made.
    pub writes: Vec<Write>,
    /// Bytes put (keys and values), for the checkpoint size metric.
    pub bytes: u64,
}

impl WriteSet {
    /// Adds a put and counts its key and value into [`WriteSet::bytes`].
    pub fn put(&mut self, key: Key, value: Vec<u8>) {
        self.bytes += (key.encoded_len() + value.len()) as u64;
        self.writes.push(Write::Put(key, value));
    }

    /// Adds a delete; deletes do not count into [`WriteSet::bytes`].
    pub fn delete(&mut self, key: Key) {
        self.writes.push(Write::Delete(key));
    }
}

/// A store of checkpoints. Implementations are opened by their own
/// constructor (which refuses another format version) and shared between
/// the run's start (restore) and the checkpoint writer thread (apply).
pub trait StateBackend: Send + Sync {
    /// Calls `f` with every stored entry, in key order.
    fn for_each(&self, f: &mut EntryVisitor<'_>) -> Result<(), StoreError>;

    /// Calls `f` with every stored entry whose key starts with `prefix`,
    /// in key order.
    fn for_each_prefix(&self, prefix: &[u8], f: &mut EntryVisitor<'_>) -> Result<(), StoreError> {
        self.for_each(&mut |k, v| {
            if k.starts_with(prefix) {
                f(k, v)
            } else {
                Ok(())
            }
        })
    }

    /// Applies `writes` atomically; returns once they are durable.
    fn apply(&self, writes: WriteSet) -> Result<(), StoreError>;

    /// Applies `writes` in parts, not atomically (faster for many writes);
    /// returns once all are durable. Only for writes that a start
    /// interrupted meanwhile does again (taking key groups over), never for
    /// a checkpoint.
    fn apply_in_parts(&self, writes: WriteSet) -> Result<(), StoreError> {
        self.apply(writes)
    }

    /// Bytes the store takes on disk (approximate; 0 in memory).
    fn size_on_disk(&self) -> u64;

    /// Reads back the last committed checkpoint.
    fn restore(&self) -> Result<Restored, StoreError> {
        let mut restored = Restored::default();
        self.for_each(&mut |k, v| restored.add(k, v))?;
        Ok(restored)
    }
}

/// Reads back the last committed checkpoint like [`StateBackend::restore`],
/// but only the state of `nodes` in key groups `groups` (the groups a
/// worker owns; its store may hold others for a while after a rescale),
/// but those in `skip`, read by two threads, each over half of the groups.
pub fn restore_groups(
    store: &dyn StateBackend,
    nodes: &[&str],
    groups: std::ops::Range<u16>,
    skip: &std::collections::BTreeSet<u16>,
) -> Result<Restored, StoreError> {
    let mut restored = restore_meta(store)?;
    read_groups(store, &mut restored, nodes, groups, skip)?;
    Ok(restored)
}

/// Reads back everything of the last committed checkpoint but the
/// operators' state.
pub fn restore_meta(store: &dyn StateBackend) -> Result<Restored, StoreError> {
    let mut restored = Restored::default();
    for prefix in key::NOT_STATE {
        store.for_each_prefix(prefix, &mut |k, v| restored.add(k, v))?;
    }
    Ok(restored)
}

/// Adds to `restored` the state of `nodes` in key groups `groups` but those
/// in `skip` (see [`restore_groups`]).
pub fn read_groups(
    store: &dyn StateBackend,
    restored: &mut Restored,
    nodes: &[&str],
    groups: std::ops::Range<u16>,
    skip: &std::collections::BTreeSet<u16>,
) -> Result<(), StoreError> {
    let mid = groups.start + (groups.end - groups.start) / 2;
    let read =
        |range: std::ops::Range<u16>| -> Result<Vec<Vec<crate::operator::StateEntry>>, StoreError> {
            let mut out = vec![Vec::new(); nodes.len()];
            for g in range.filter(|g| !skip.contains(g)) {
                for (n, node) in nodes.iter().enumerate() {
                    let prefix = key::state_group_prefix(node, g);
                    store.for_each_prefix(&prefix, &mut |k, v| {
                        out[n].push((g, k[prefix.len()..].to_vec(), v.to_vec()));
                        Ok(())
                    })?;
                }
            }
            Ok(out)
        };
    let (low, high) = std::thread::scope(|scope| {
        let high = scope.spawn(|| read(mid..groups.end));
        let low = read(groups.start..mid);
        (low, high.join().expect("the restore thread does not panic"))
    });
    for (n, (a, b)) in low?.into_iter().zip(high?).enumerate() {
        if a.is_empty() && b.is_empty() {
            continue;
        }
        let entries = restored.state.entry(nodes[n].to_string()).or_default();
        entries.extend(a);
        entries.extend(b);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
