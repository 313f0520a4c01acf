//! The sled [`StateBackend`]: one sled tree in the state directory, so a
//! checkpoint is a single atomic `apply_batch` followed by a flush (fsync).

use std::path::Path;

use super::{layout, EntryVisitor, StateBackend, StoreError, Write, WriteSet};

/// The sled database of one pipeline.
pub struct SledBackend {
    db: sled::Db,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(Box::new(e))
}

impl SledBackend {
    /// Opens (creating if needed) the state directory; refuses a directory
    /// written in another format version.
    pub fn open(dir: &Path) -> Result<SledBackend, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 << 20)
            .segment_size(1 << 20)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|source| StoreError::Open {
                dir: dir.display().to_string(),
                source: Box::new(source),
            })?;
        layout::check_format(db.get(layout::key::FORMAT).map_err(io)?.as_deref())?;
        Ok(SledBackend { db })
    }
}

impl StateBackend for SledBackend {
    fn for_each(&self, f: &mut EntryVisitor<'_>) -> Result<(), StoreError> {
        for item in self.db.iter() {
            let (k, v) = item.map_err(io)?;
            f(&k, &v)?;
        }
        Ok(())
    }

    fn apply(&self, writes: WriteSet) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for w in writes.writes {
            match w {
                Write::Put(k, v) => batch.insert(k.encode(), v),
                Write::Delete(k) => batch.remove(k.encode()),
            }
        }
        self.db.apply_batch(batch).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::SledBackend;
    use crate::state::tests::{agrees_with_a_btreemap, checkpoints, round_trip};
    use crate::state::StateBackend;

    /// sled releases its directory lock shortly after the last handle is
    /// dropped (its background threads hold one); a process restart never
    /// sees this, an in-process reopen can.
    fn reopen(dir: &Path) -> SledBackend {
        for _ in 0..200 {
            match SledBackend::open(dir) {
                Ok(s) => return s,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        SledBackend::open(dir).unwrap()
    }

    #[test]
    fn checkpoint_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledBackend::open(dir.path()).unwrap();
        let path = dir.path().to_path_buf();
        round_trip(Box::new(store), &|| {
            Box::new(reopen(&path)) as Box<dyn StateBackend>
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Model-based: checkpoints of random puts and deletes over
        /// operators, key groups and keys, with the store reopened at
        /// random points, always restore exactly what a BTreeMap holds.
        #[test]
        fn store_agrees_with_a_btreemap(checkpoints in checkpoints()) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_path_buf();
            let store = SledBackend::open(&path).unwrap();
            agrees_with_a_btreemap(store, |old| { drop(old); reopen(&path) }, checkpoints)?;
        }
    }
}
