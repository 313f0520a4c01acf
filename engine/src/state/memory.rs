//! An in-memory [`StateBackend`] for tests. Clones share the same entries,
//! so a test can "crash" a run, keep a clone, and restore from it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{layout, EntryVisitor, StateBackend, StoreError, Write, WriteSet};

/// Entries in a shared `BTreeMap`, in the same byte layout as on disk.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    entries: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the entries of `self` as a new process would: refuses another
    /// format version.
    pub fn reopen(&self) -> Result<Self, StoreError> {
        let entries = self.lock();
        layout::check_format(entries.get(layout::key::FORMAT).map(Vec::as_slice))?;
        drop(entries);
        Ok(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A panic while holding the lock leaves a whole map behind: usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StateBackend for MemoryBackend {
    fn for_each(&self, f: &mut EntryVisitor<'_>) -> Result<(), StoreError> {
        for (k, v) in self.lock().iter() {
            f(k, v)?;
        }
        Ok(())
    }

    fn apply(&self, writes: WriteSet) -> Result<(), StoreError> {
        let mut entries = self.lock();
        for w in writes.writes {
            match w {
                Write::Put(k, v) => {
                    entries.insert(k.encode(), v);
                }
                Write::Delete(k) => {
                    entries.remove(&k.encode());
                }
            }
        }
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}
