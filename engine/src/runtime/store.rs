//! The durable store (sled): what a checkpoint writes, in which keys, and how
//! it is read back on recovery.
//!
//! Everything lives in one sled tree so that a checkpoint is a single
//! atomic `apply_batch` followed by a flush (fsync). Keys:
//!
//! | key | value |
//! |---|---|
//! | `m\0epoch` | last committed epoch (u64 BE) |
//! | `m\0format` | on-disk format version (u32 BE) |
//! | `m\0key_groups` | number of key groups (u16 BE) |
//! | `g\0{node}` | state signature of a stateful node |
//! | `s\0{node}\0{kg:u16}{key}` | operator state entry |
//! | `p\0{source}\0{partition:u32}` | source position |
//! | `w\0{source}\0{partition:u32}` | max event time seen (i64 BE) |
//! | `a\0{sink}` | last acknowledged epoch + sink progress |
//! | `o\0{sink}\0{epoch:u64}` | outbox: the sink's records of that epoch |

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::operator::StateEntry;
use crate::sink::SinkRecord;

/// On-disk format written by this build.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state directory {dir}: {source}. If it is damaged, restore it from a backup, or rebuild it elsewhere with `sluice replay` (docs/operations.md, \"Damaged or lost state\")")]
    Open {
        dir: String,
        #[source]
        source: sled::Error,
    },
    #[error("state store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("the state directory holds format version {found}; this build reads version {FORMAT_VERSION}")]
    Format { found: u32 },
    #[error("corrupt state entry {key}: {reason}. The state directory is damaged: restore it from a backup, or rebuild it elsewhere with `sluice replay`")]
    Corrupt { key: String, reason: String },
}

/// What sinks have acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkAck {
    pub epoch: u64,
    pub progress: Option<Vec<u8>>,
}

/// Everything read back from the last checkpoint.
#[derive(Debug, Default)]
pub struct Restored {
    pub epoch: u64,
    pub key_groups: Option<u16>,
    pub signatures: HashMap<String, String>,
    pub state: HashMap<String, Vec<StateEntry>>,
    pub positions: HashMap<String, BTreeMap<u32, Vec<u8>>>,
    pub watermarks: HashMap<String, BTreeMap<u32, i64>>,
    pub acks: HashMap<String, SinkAck>,
    /// Per sink: the stored outbox epochs, in order.
    pub outbox: HashMap<String, Vec<(u64, Vec<SinkRecord>)>>,
}

/// Key builders.
pub mod key {
    pub const EPOCH: &[u8] = b"m\0epoch";
    pub const FORMAT: &[u8] = b"m\0format";
    pub const KEY_GROUPS: &[u8] = b"m\0key_groups";

    fn named(tag: u8, name: &str, extra: usize) -> Vec<u8> {
        let mut k = Vec::with_capacity(name.len() + 3 + extra);
        k.push(tag);
        k.push(0);
        k.extend_from_slice(name.as_bytes());
        k.push(0);
        k
    }

    pub fn signature(node: &str) -> Vec<u8> {
        let mut k = named(b'g', node, 0);
        k.pop();
        k
    }

    pub fn state_prefix(node: &str) -> Vec<u8> {
        named(b's', node, 0)
    }

    pub fn state(node: &str, kg: u16, key: &[u8]) -> Vec<u8> {
        let mut k = named(b's', node, 2 + key.len());
        k.extend_from_slice(&kg.to_be_bytes());
        k.extend_from_slice(key);
        k
    }

    pub fn position(source: &str, partition: u32) -> Vec<u8> {
        let mut k = named(b'p', source, 4);
        k.extend_from_slice(&partition.to_be_bytes());
        k
    }

    pub fn watermark(source: &str, partition: u32) -> Vec<u8> {
        let mut k = named(b'w', source, 4);
        k.extend_from_slice(&partition.to_be_bytes());
        k
    }

    pub fn ack(sink: &str) -> Vec<u8> {
        let mut k = named(b'a', sink, 0);
        k.pop();
        k
    }

    pub fn outbox(sink: &str, epoch: u64) -> Vec<u8> {
        let mut k = named(b'o', sink, 8);
        k.extend_from_slice(&epoch.to_be_bytes());
        k
    }
}

/// Encodes with bincode (standard config).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("encoding to a Vec cannot fail")
}

fn decode<T: serde::de::DeserializeOwned>(k: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: e.to_string(),
        })
}

/// The sled database of one pipeline.
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens (creating if needed) the state directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 << 20)
            .segment_size(1 << 20)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|source| StoreError::Open {
                dir: dir.display().to_string(),
                source,
            })?;
        if let Some(v) = db.get(key::FORMAT)? {
            let found = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4]));
            if found != FORMAT_VERSION {
                return Err(StoreError::Format { found });
            }
        }
        Ok(Store { db })
    }

    /// Reads back the last committed checkpoint.
    pub fn restore(&self) -> Result<Restored, StoreError> {
        let mut r = Restored::default();
        let corrupt = |k: &[u8], n: usize| StoreError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: format!("expected {n} bytes"),
        };
        if let Some(v) = self.db.get(key::EPOCH)? {
            let bytes = v.as_ref().try_into().map_err(|_| corrupt(key::EPOCH, 8))?;
            r.epoch = u64::from_be_bytes(bytes);
        }
        if let Some(v) = self.db.get(key::KEY_GROUPS)? {
            let bytes = v
                .as_ref()
                .try_into()
                .map_err(|_| corrupt(key::KEY_GROUPS, 2))?;
            r.key_groups = Some(u16::from_be_bytes(bytes));
        }
        for item in self.db.iter() {
            let (k, v) = item?;
            let Some((&tag, rest)) = k.split_first() else {
                continue;
            };
            let rest = &rest[1..];
            let split = rest.iter().position(|&b| b == 0);
            let (name, tail) = match split {
                Some(p) => (&rest[..p], &rest[p + 1..]),
                None => (rest, &[][..]),
            };
            let name = String::from_utf8_lossy(name).into_owned();
            match tag {
                b'g' => {
                    r.signatures
                        .insert(name, String::from_utf8_lossy(&v).into_owned());
                }
                b's' if tail.len() >= 2 => {
                    let kg = u16::from_be_bytes([tail[0], tail[1]]);
                    r.state
                        .entry(name)
                        .or_default()
                        .push((kg, tail[2..].to_vec(), v.to_vec()));
                }
                b'p' if tail.len() == 4 => {
                    let p = u32::from_be_bytes(tail.try_into().expect("4 bytes"));
                    r.positions.entry(name).or_default().insert(p, v.to_vec());
                }
                b'w' if tail.len() == 4 && v.len() == 8 => {
                    let p = u32::from_be_bytes(tail.try_into().expect("4 bytes"));
                    let t = i64::from_be_bytes(v.as_ref().try_into().expect("8 bytes"));
                    r.watermarks.entry(name).or_default().insert(p, t);
                }
                b'a' => {
                    r.acks.insert(name, decode(&k, &v)?);
                }
                b'o' if tail.len() == 8 => {
                    let epoch = u64::from_be_bytes(tail.try_into().expect("8 bytes"));
                    let records: Vec<SinkRecord> = decode(&k, &v)?;
                    r.outbox.entry(name).or_default().push((epoch, records));
                }
                _ => {}
            }
        }
        Ok(r)
    }

    /// Applies a checkpoint atomically and makes it durable.
    pub fn commit(&self, batch: sled::Batch) -> Result<(), StoreError> {
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Bytes on disk (approximate).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// A checkpoint ready to be written.
pub struct CheckpointJob {
    pub epoch: u64,
    pub batch: sled::Batch,
    pub bytes: u64,
    pub started: Instant,
}

/// The result of writing one.
#[derive(Debug)]
pub struct CheckpointDone {
    pub epoch: u64,
    pub bytes: u64,
    pub duration: Duration,
    pub result: Result<(), super::CheckpointError>,
}

/// Runs the checkpoint writer on its own thread: jobs in, results out.
/// Processing continues while a checkpoint is being written. After each
/// durable checkpoint, and before reporting it (so before any sink sees
/// its epoch), the state marker in `marker_dir` is updated to its epoch.
pub fn spawn_writer(
    store: std::sync::Arc<Store>,
    marker_dir: std::path::PathBuf,
    jobs: std::sync::mpsc::Receiver<CheckpointJob>,
    done: tokio::sync::mpsc::UnboundedSender<CheckpointDone>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("sluice-checkpoint".into())
        .spawn(move || {
            while let Ok(job) = jobs.recv() {
                let result = store
                    .commit(job.batch)
                    .map_err(super::CheckpointError::from);
                let result = result.and_then(|()| {
                    super::marker::write(&marker_dir, super::marker::Marker { epoch: job.epoch })
                        .map_err(super::CheckpointError::from)
                });
                let msg = CheckpointDone {
                    epoch: job.epoch,
                    bytes: job.bytes,
                    duration: job.started.elapsed(),
                    result,
                };
                if done.send(msg).is_err() {
                    break;
                }
            }
        })
        .expect("spawning the checkpoint thread")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::RowKind;
    use crate::value::Value;

    #[test]
    fn checkpoint_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = sled::Batch::default();
        b.insert(key::EPOCH, &7u64.to_be_bytes());
        b.insert(key::state("agg", 3, b"GT"), b"v1".as_slice());
        b.insert(key::position("src", 2), b"pos".as_slice());
        b.insert(key::watermark("src", 2), &(-5i64).to_be_bytes());
        b.insert(
            key::ack("out"),
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
        b.insert(key::outbox("out", 7), encode(&vec![rec.clone()]));
        b.insert(key::signature("agg"), b"sig".as_slice());
        store.commit(b).unwrap();
        drop(store);
        let r = Store::open(dir.path()).unwrap().restore().unwrap();
        assert_eq!(r.epoch, 7);
        assert_eq!(r.state["agg"], vec![(3, b"GT".to_vec(), b"v1".to_vec())]);
        assert_eq!(r.positions["src"][&2], b"pos".to_vec());
        assert_eq!(r.watermarks["src"][&2], -5);
        assert_eq!(r.acks["out"].epoch, 6);
        assert_eq!(r.outbox["out"], vec![(7, vec![rec])]);
        assert_eq!(r.signatures["agg"], "sig");
    }

    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// sled releases its directory lock shortly after the last handle is
    /// dropped (its background threads hold one); a process restart never
    /// sees this, an in-process reopen can.
    fn reopen_store(dir: &Path) -> Store {
        for _ in 0..200 {
            match Store::open(dir) {
                Ok(s) => return s,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        Store::open(dir).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Model-based: checkpoints of random puts and deletes over
        /// operators, key groups and keys, with the store reopened at
        /// random points, always restore exactly what a BTreeMap holds.
        #[test]
        fn store_agrees_with_a_btreemap(
            checkpoints in proptest::collection::vec(
                (proptest::collection::vec((0u8..3, 0u16..4, proptest::collection::vec(any::<u8>(), 0..6), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20))), 0..25), any::<bool>()),
                1..12)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::open(dir.path()).unwrap();
            let mut model: BTreeMap<(String, u16, Vec<u8>), Vec<u8>> = BTreeMap::new();
            for (epoch, (ops, reopen)) in checkpoints.into_iter().enumerate() {
                let mut b = sled::Batch::default();
                for (node, kg, k, v) in ops {
                    let node = format!("op{node}");
                    let full = key::state(&node, kg, &k);
                    match v {
                        Some(v) => { b.insert(full, v.clone()); model.insert((node, kg, k), v); }
                        None => { b.remove(full); model.remove(&(node, kg, k)); }
                    }
                }
                b.insert(key::EPOCH, &(epoch as u64 + 1).to_be_bytes());
                store.commit(b).unwrap();
                if reopen {
                    drop(store);
                    store = reopen_store(dir.path());
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
        }
    }
}
