//! The on-disk layout of a checkpoint: which key holds what, how values
//! are encoded, and how a store's entries are read back into [`Restored`].
//! Every backend stores these bytes as they are, so a state directory
//! written by one build restores in the next.
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
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::operator::StateEntry;
use crate::sink::SinkRecord;

/// On-disk format written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// What a sink has acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkAck {
    /// The last epoch whose records the sink committed; 0 if none.
    pub epoch: u64,
    /// The sink's own progress token (e.g. a file length) for resuming after
    /// `epoch`; `None` if the sink keeps none.
    pub progress: Option<Vec<u8>>,
}

/// Everything read back from the last checkpoint.
#[derive(Debug, Default)]
pub struct Restored {
    /// The last committed epoch; 0 when the store is empty.
    pub epoch: u64,
    /// The number of key groups the state was written with; `None` when
    /// the store is empty. A run with another count is refused.
    pub key_groups: Option<u16>,
    /// Per stateful node: the state signature it was written with.
    pub signatures: HashMap<String, String>,
    /// Per stateful node: its state entries, in key order.
    pub state: HashMap<String, Vec<StateEntry>>,
    /// Per source, per partition: the source's opaque position bytes.
    pub positions: HashMap<String, BTreeMap<u32, Vec<u8>>>,
    /// Per source, per partition: the largest event time seen (ms).
    pub watermarks: HashMap<String, BTreeMap<u32, i64>>,
    /// Per sink: what it acknowledged last.
    pub acks: HashMap<String, SinkAck>,
    /// Per sink: the stored outbox epochs, in order.
    pub outbox: HashMap<String, Vec<(u64, Vec<SinkRecord>)>>,
    /// The worker's cluster state (`m\0cluster`), in runs of several workers.
    pub cluster: Option<Vec<u8>>,
}

/// A key of the layout, by what it means rather than by its bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// The last committed epoch.
    Epoch,
    /// The format version of the directory.
    Format,
    /// The number of key groups state is spread over.
    KeyGroups,
    /// The state signature of a stateful node.
    Signature(Arc<str>),
    /// One entry of a node's state.
    State {
        /// The stateful node's id.
        node: Arc<str>,
        /// The key group the key hashes to.
        group: u16,
        /// The operator's key bytes.
        key: Vec<u8>,
    },
    /// A source partition's position.
    Position {
        /// The source's node id.
        source: Arc<str>,
        /// The partition number.
        partition: u32,
    },
    /// The largest event time seen on a source partition.
    MaxEventTime {
        /// The source's node id.
        source: Arc<str>,
        /// The partition number.
        partition: u32,
    },
    /// What a sink acknowledged last.
    Ack(Arc<str>),
    /// This worker's place among the workers and what it took in from
    /// the others (see `runtime::cluster`).
    Cluster,
    /// A sink's records of one epoch.
    Outbox {
        /// The sink's node id.
        sink: Arc<str>,
        /// The checkpoint epoch the records belong to.
        epoch: u64,
    },
    /// A key given by its stored bytes, as read back from a copy of the
    /// store (the remote copy, [`super::remote`]).
    Raw(Vec<u8>),
}

impl Key {
    /// The key's bytes in the store.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Key::Epoch => key::EPOCH.to_vec(),
            Key::Format => key::FORMAT.to_vec(),
            Key::KeyGroups => key::KEY_GROUPS.to_vec(),
            Key::Cluster => key::CLUSTER.to_vec(),
            Key::Signature(node) => key::signature(node),
            Key::State { node, group, key } => key::state(node, *group, key),
            Key::Position { source, partition } => key::position(source, *partition),
            Key::MaxEventTime { source, partition } => key::watermark(source, *partition),
            Key::Ack(sink) => key::ack(sink),
            Key::Outbox { sink, epoch } => key::outbox(sink, *epoch),
            Key::Raw(bytes) => bytes.clone(),
        }
    }

    /// `self.encode().len()`, without building the bytes.
    pub fn encoded_len(&self) -> usize {
        // tag, NUL, name, NUL, then the fixed-size tail
        let named = |name: &str| name.len() + 3;
        match self {
            Key::Epoch => key::EPOCH.len(),
            Key::Format => key::FORMAT.len(),
            Key::KeyGroups => key::KEY_GROUPS.len(),
            Key::Cluster => key::CLUSTER.len(),
            Key::Signature(name) | Key::Ack(name) => named(name) - 1,
            Key::State { node, key, .. } => named(node) + 2 + key.len(),
            Key::Position { source, .. } | Key::MaxEventTime { source, .. } => named(source) + 4,
            Key::Outbox { sink, .. } => named(sink) + 8,
            Key::Raw(bytes) => bytes.len(),
        }
    }
}

/// Key builders: the byte layout of each key.
pub mod key {
    /// Holds the last committed epoch (u64 BE).
    pub const EPOCH: &[u8] = b"m\0epoch";
    /// Holds the on-disk format version (u32 BE).
    pub const FORMAT: &[u8] = b"m\0format";
    /// Holds the number of key groups (u16 BE).
    pub const KEY_GROUPS: &[u8] = b"m\0key_groups";
    /// Holds the worker's cluster state (bincode).
    pub const CLUSTER: &[u8] = b"m\0cluster";
    /// Lists key groups taken from the remote copy whose state is still
    /// being written into the store (bincode; see
    /// `runtime::remote::PendingImport`). Never uploaded.
    pub const IMPORT: &[u8] = b"m\0import";
    /// Names the released manifests whose source positions a takeover
    /// merged into this directory's (bincode list): a start that redoes
    /// the takeover does not merge them twice.
    pub const POSITIONS_MERGED: &[u8] = b"m\0positions_merged";

    fn named(tag: u8, name: &str, extra: usize) -> Vec<u8> {
        let mut k = Vec::with_capacity(name.len() + 3 + extra);
        k.push(tag);
        k.push(0);
        k.extend_from_slice(name.as_bytes());
        k.push(0);
        k
    }

    /// `g\0{node}`: a stateful node's state signature.
    pub fn signature(node: &str) -> Vec<u8> {
        let mut k = named(b'g', node, 0);
        k.pop();
        k
    }

    /// `s\0{node}\0`: the prefix shared by all of a node's state entries.
    pub fn state_prefix(node: &str) -> Vec<u8> {
        named(b's', node, 0)
    }

    /// `s\0{node}\0{kg:u16 BE}{key}`: one operator state entry.
    pub fn state(node: &str, kg: u16, key: &[u8]) -> Vec<u8> {
        let mut k = named(b's', node, 2 + key.len());
        k.extend_from_slice(&kg.to_be_bytes());
        k.extend_from_slice(key);
        k
    }

    /// `p\0{source}\0{partition:u32 BE}`: a source partition's position.
    pub fn position(source: &str, partition: u32) -> Vec<u8> {
        let mut k = named(b'p', source, 4);
        k.extend_from_slice(&partition.to_be_bytes());
        k
    }

    /// `w\0{source}\0{partition:u32 BE}`: a source partition's max event time.
    pub fn watermark(source: &str, partition: u32) -> Vec<u8> {
        let mut k = named(b'w', source, 4);
        k.extend_from_slice(&partition.to_be_bytes());
        k
    }

    /// `a\0{sink}`: a sink's last acknowledged epoch and progress.
    pub fn ack(sink: &str) -> Vec<u8> {
        let mut k = named(b'a', sink, 0);
        k.pop();
        k
    }

    /// The prefixes of every entry that is not operator state (`s\0`).
    pub const NOT_STATE: [&[u8]; 6] = [b"m\0", b"g\0", b"p\0", b"w\0", b"a\0", b"o\0"];

    /// `s\0{node}\0{kg:u16 BE}`: the prefix of a node's entries in one key group.
    pub fn state_group_prefix(node: &str, kg: u16) -> Vec<u8> {
        let mut k = named(b's', node, 2);
        k.extend_from_slice(&kg.to_be_bytes());
        k
    }

    /// Splits an operator state key into (node, key group, key).
    pub fn parse_state(k: &[u8]) -> Option<(&str, u16, &[u8])> {
        let rest = k.strip_prefix(b"s\0")?;
        let nul = rest.iter().position(|&b| b == 0)?;
        let node = std::str::from_utf8(&rest[..nul]).ok()?;
        let tail = &rest[nul + 1..];
        let kg = u16::from_be_bytes([*tail.first()?, *tail.get(1)?]);
        Some((node, kg, &tail[2..]))
    }

    /// `o\0{sink}\0{epoch:u64 BE}`: a sink's records of one epoch.
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

fn fixed<const N: usize>(k: &[u8], v: &[u8]) -> Result<[u8; N], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: format!("expected {N} bytes"),
    })
}

/// Refuses a store written in another format version.
pub(super) fn check_format(value: Option<&[u8]>) -> Result<(), StoreError> {
    if let Some(v) = value {
        let found = u32::from_be_bytes(v.try_into().unwrap_or([0; 4]));
        if found != FORMAT_VERSION {
            return Err(StoreError::Format { found });
        }
    }
    Ok(())
}

impl Restored {
    /// Adds one stored entry; entries are expected in key order (outbox
    /// epochs come out in order). Unknown keys are ignored.
    pub(crate) fn add(&mut self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        if k == key::EPOCH {
            self.epoch = u64::from_be_bytes(fixed(k, v)?);
            return Ok(());
        }
        if k == key::KEY_GROUPS {
            self.key_groups = Some(u16::from_be_bytes(fixed(k, v)?));
            return Ok(());
        }
        if k == key::CLUSTER {
            self.cluster = Some(v.to_vec());
            return Ok(());
        }
        let Some((&tag, rest)) = k.split_first() else {
            return Ok(());
        };
        let rest = rest.get(1..).unwrap_or_default();
        let (name, tail) = match rest.iter().position(|&b| b == 0) {
            Some(p) => (&rest[..p], &rest[p + 1..]),
            None => (rest, &[][..]),
        };
        let name = String::from_utf8_lossy(name).into_owned();
        match tag {
            b'g' => {
                self.signatures
                    .insert(name, String::from_utf8_lossy(v).into_owned());
            }
            b's' if tail.len() >= 2 => {
                let kg = u16::from_be_bytes([tail[0], tail[1]]);
                self.state
                    .entry(name)
                    .or_default()
                    .push((kg, tail[2..].to_vec(), v.to_vec()));
            }
            b'p' if tail.len() == 4 => {
                let p = u32::from_be_bytes(tail.try_into().expect("4 bytes"));
                self.positions
                    .entry(name)
                    .or_default()
                    .insert(p, v.to_vec());
            }
            b'w' if tail.len() == 4 && v.len() == 8 => {
                let p = u32::from_be_bytes(tail.try_into().expect("4 bytes"));
                let t = i64::from_be_bytes(v.try_into().expect("8 bytes"));
                self.watermarks.entry(name).or_default().insert(p, t);
            }
            b'a' => {
                self.acks.insert(name, decode(k, v)?);
            }
            b'o' if tail.len() == 8 => {
                let epoch = u64::from_be_bytes(tail.try_into().expect("8 bytes"));
                let records: Vec<SinkRecord> = decode(k, v)?;
                self.outbox.entry(name).or_default().push((epoch, records));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_matches_the_bytes() {
        let n: Arc<str> = Arc::from("node");
        let keys = [
            Key::Epoch,
            Key::Format,
            Key::KeyGroups,
            Key::Signature(n.clone()),
            Key::State {
                node: n.clone(),
                group: 7,
                key: b"abc".to_vec(),
            },
            Key::Position {
                source: n.clone(),
                partition: 3,
            },
            Key::MaxEventTime {
                source: n.clone(),
                partition: 3,
            },
            Key::Ack(n.clone()),
            Key::Outbox { sink: n, epoch: 9 },
        ];
        for k in keys {
            assert_eq!(k.encoded_len(), k.encode().len(), "{k:?}");
        }
    }

    /// The bytes of each key are the format on disk: a change here breaks
    /// every existing state directory.
    #[test]
    fn key_bytes_are_stable() {
        assert_eq!(key::signature("agg"), b"g\0agg");
        assert_eq!(key::state("agg", 2, b"k"), b"s\0agg\0\0\x02k");
        assert_eq!(key::position("in", 1), b"p\0in\0\0\0\0\x01");
        assert_eq!(key::watermark("in", 1), b"w\0in\0\0\0\0\x01");
        assert_eq!(key::ack("out"), b"a\0out");
        assert_eq!(key::outbox("out", 1), b"o\0out\0\0\0\0\0\0\0\0\x01");
    }
}
