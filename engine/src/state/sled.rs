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
