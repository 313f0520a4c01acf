//! The sled [`StateBackend`]: one sled tree in the state directory, so a
//! checkpoint is a single atomic `apply_batch` followed by a flush (fsync).

use std::path::{Path, PathBuf};

use super::{layout, BackendError, EntryVisitor, StateBackend, StoreError, Write, WriteSet};

/// Moves aside the snapshot files sled 0.34 left unfinished.
///
/// sled writes a snapshot of its page table to `snap.<lsn>.generating`,
/// fsyncs it and only then renames it to `snap.<lsn>`. A process killed
/// before the rename leaves the `.generating` file behind, and at the next
/// open sled 0.34.7 takes the highest-named `snap.*` file as its snapshot,
/// unfinished ones included (spacejam/sled#1527): the directory then fails
/// to open with `Corruption { at: None }` although nothing in it is damaged.
/// An unfinished snapshot never replaced the previous one, so without it
/// sled recovers exactly as if the kill had come before the snapshot began:
/// from the last complete snapshot plus its log. The files are renamed (to
/// `unfinished-snap.*`, which sled does not read), not deleted, so that they
/// can still be inspected; older ones are replaced.
///
/// Returns the files moved aside. Call it only while no sled instance has
/// the directory open.
pub fn set_aside_unfinished_snapshots(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut moved = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let aside = dir.join(format!("unfinished-{name}"));
            std::fs::rename(entry.path(), &aside)?;
            moved.push(aside);
        }
    }
    Ok(moved)
}

/// How sluice opens its sled databases.
fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(16 << 20)
        .segment_size(1 << 20)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
}

/// Writes per sled batch in [`StateBackend::apply_in_parts`].
const PART: usize = 10_000;

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
        let open_error = |source: BackendError| StoreError::Open {
            dir: dir.display().to_string(),
            source,
        };
        for aside in set_aside_unfinished_snapshots(dir).map_err(|e| open_error(Box::new(e)))? {
            tracing::warn!(
                file = %aside.display(),
                "set aside an unfinished sled snapshot left by a crash; recovering from the previous snapshot and the log"
            );
        }
        let db = sled_config(dir)
            .open()
            .map_err(|source| open_error(Box::new(source)))?;
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

    fn for_each_prefix(&self, prefix: &[u8], f: &mut EntryVisitor<'_>) -> Result<(), StoreError> {
        for item in self.db.scan_prefix(prefix) {
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

    fn apply_in_parts(&self, writes: WriteSet) -> Result<(), StoreError> {
        // One sled batch of hundreds of thousands of writes is much slower
        // than the same writes in batches of a few thousand (600,000 inserts
        // on this 2-core machine, busy: 8.0 s in one batch, 5.0 s in
        // batches of 10,000).
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for w in writes.writes {
            match w {
                Write::Put(k, v) => batch.insert(k.encode(), v),
                Write::Delete(k) => batch.remove(k.encode()),
            }
            in_batch += 1;
            if in_batch == PART {
                self.db
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(io)?;
                in_batch = 0;
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

    /// A kill while sled writes a snapshot leaves `snap.<lsn>.generating`
    /// behind; sled 0.34.7 alone then refuses the directory, sluice's
    /// backend recovers every checkpoint from it.
    #[test]
    fn an_unfinished_snapshot_left_by_a_kill_does_not_lose_the_state() {
        use crate::state::{Key, WriteSet};
        for unfinished in [b"\x01\x02\x03".to_vec(), vec![7u8; 4096]] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_path_buf();
            let store = SledBackend::open(&path).unwrap();
            for epoch in 1..=3u64 {
                let mut w = WriteSet::default();
                w.put(Key::Epoch, epoch.to_be_bytes().to_vec());
                w.put(
                    Key::State {
                        node: "agg".into(),
                        group: 1,
                        key: format!("k{epoch}").into_bytes(),
                    },
                    epoch.to_be_bytes().to_vec(),
                );
                store.apply(w).unwrap();
            }
            drop(store);
            // What a kill between sled's write and rename leaves: a newer,
            // partly written snapshot.
            let partial = path.join("snap.7FFFFFFFFFFFFFFF.generating");
            std::fs::write(&partial, &unfinished).unwrap();

            // sled by itself takes it for the newest snapshot and fails.
            let mut refused = false;
            let mut last = String::new();
            for _ in 0..200 {
                match super::sled_config(&path).open() {
                    Err(sled::Error::Corruption { .. }) => {
                        refused = true;
                        break;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        last = e.to_string();
                        std::thread::sleep(Duration::from_millis(10))
                    }
                }
            }
            assert!(
                refused,
                "sled opened the directory (last error: {last:?}): sled 0.34 no longer trips on an unfinished snapshot, this work-around can go"
            );
            assert!(partial.exists());

            let r = reopen(&path).restore().unwrap();
            assert_eq!(r.epoch, 3);
            assert_eq!(r.state["agg"].len(), 3);
            assert!(!partial.exists());
            assert!(path
                .join("unfinished-snap.7FFFFFFFFFFFFFFF.generating")
                .exists());
        }
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
