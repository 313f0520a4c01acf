//! The restart snapshot: the operators' whole state at a clean stop, in one
//! file of the state directory, so that the next start on that directory
//! builds its operators from one sequential read instead of walking the
//! store entry by entry (for a million keys, about a second of sled's
//! iteration at every restart).
//!
//! The store stays the truth. The file is only an alternative reading of
//! the store's last checkpoint, and it is used only when it provably is
//! one: it is written after the stop's final checkpoint is durable, only if
//! no operator changed its state since that checkpoint's snapshot
//! ([`crate::operator::Operator::snapshot_all`]); it names that checkpoint's
//! epoch, the key groups it covers and each operator's signature, and the
//! start takes it only if the store's epoch and the pipeline's signatures
//! are the same. The start removes the file as it reads it (before any new
//! checkpoint), so a later start never sees a stale one; a damaged or
//! unreadable file is reported and the store is read instead.
//!
//! Layout: `SLUSNAP1`, then the CRC-32 of the rest (u32 LE), then: epoch
//! (u64), key groups (u16), covered key groups start and end (u16 each),
//! number of operators (u32); per operator its name and signature (each a
//! u32 length and the bytes) and its number of entries (u64), then per
//! entry its key group (u16), key and value (each a u32 length and the
//! bytes). Integers are little-endian.

use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::operator::StateEntry;

/// The file's name in the state directory.
pub const FILE: &str = "restart-snapshot";
const MAGIC: &[u8; 8] = b"SLUSNAP1";

/// One operator's state in a [`RestartSnapshot`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeState {
    /// The operator's name.
    pub node: String,
    /// Its signature (what determines its state's meaning).
    pub signature: String,
    /// Its entries: (key group, key, value).
    pub entries: Vec<StateEntry>,
}

/// The operators' state as of the checkpoint `epoch`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RestartSnapshot {
    /// The checkpoint the state is that of.
    pub epoch: u64,
    /// The pipeline's key groups.
    pub key_groups: u16,
    /// The key groups whose state this holds (all of it).
    pub groups: Range<u16>,
    /// Every stateful operator.
    pub nodes: Vec<NodeState>,
}

impl RestartSnapshot {
    /// Whether this is the state of the store's last checkpoint (`epoch`)
    /// for exactly the stateful operators `signatures` (name, signature) of
    /// a pipeline of `key_groups` key groups.
    pub fn matches(&self, epoch: u64, key_groups: u16, signatures: &[(String, String)]) -> bool {
        epoch > 0
            && self.epoch == epoch
            && self.key_groups == key_groups
            && self.nodes.len() == signatures.len()
            && self.nodes.iter().all(|n| {
                signatures
                    .iter()
                    .any(|(name, sig)| *name == n.node && *sig == n.signature)
            })
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes `snap` in the file's layout.
pub fn encode(snap: &RestartSnapshot) -> Vec<u8> {
    let size: usize = snap
        .nodes
        .iter()
        .flat_map(|n| &n.entries)
        .map(|(_, k, v)| 10 + k.len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(64 + size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&snap.epoch.to_le_bytes());
    out.extend_from_slice(&snap.key_groups.to_le_bytes());
    out.extend_from_slice(&snap.groups.start.to_le_bytes());
    out.extend_from_slice(&snap.groups.end.to_le_bytes());
    out.extend_from_slice(&(snap.nodes.len() as u32).to_le_bytes());
    for n in &snap.nodes {
        put_bytes(&mut out, n.node.as_bytes());
        put_bytes(&mut out, n.signature.as_bytes());
        out.extend_from_slice(&(n.entries.len() as u64).to_le_bytes());
        for (g, k, v) in &n.entries {
            out.extend_from_slice(&g.to_le_bytes());
            put_bytes(&mut out, k);
            put_bytes(&mut out, v);
        }
    }
    let crc = crc32fast::hash(&out[12..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
}

/// Decodes a file written by [`encode`]; says what is wrong otherwise.
pub fn decode(bytes: &[u8]) -> Result<RestartSnapshot, String> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err("not a restart snapshot of this version".into());
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[12..]) != crc {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader(&bytes[12..]);
    let epoch = r.u64()?;
    let key_groups = r.u16()?;
    let groups = r.u16()?..r.u16()?;
    let n_nodes = r.u32()?;
    let mut nodes = Vec::new();
    for _ in 0..n_nodes {
        let node = r.text()?;
        let signature = r.text()?;
        let n = r.u64()?;
        // Each entry takes at least 10 bytes: a damaged count cannot
        // reserve more than the file could hold.
        let mut entries = Vec::with_capacity((n as usize).min(r.0.len() / 10));
        for _ in 0..n {
            let g = r.u16()?;
            let k = r.bytes()?.to_vec();
            let v = r.bytes()?.to_vec();
            entries.push((g, k, v));
        }
        nodes.push(NodeState {
            node,
            signature,
            entries,
        });
    }
    if !r.0.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(RestartSnapshot {
        epoch,
        key_groups,
        groups,
        nodes,
    })
}

/// Writes `snap` to the state directory `dir`, durably and atomically
/// (a temporary file, fsync, rename, fsync of the directory).
pub fn write(dir: &Path, snap: &RestartSnapshot) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&encode(snap))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path(dir))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the file from `dir` (durably); Ok if there was none.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path(dir)) {
        Ok(()) => std::fs::File::open(dir)?.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads the file of `dir` and removes it, so that no later start reads it
/// again. None if there is none; a file that cannot be read or removed, or
/// that is damaged, is reported (a warning) and not used: the store holds
/// the same state.
pub fn take(dir: &Path) -> Option<RestartSnapshot> {
    let bytes = match std::fs::read(path(dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path(dir).display(), error = %e, "cannot read the restart snapshot; reading the state store instead");
            let _ = remove(dir);
            return None;
        }
    };
    if let Err(e) = remove(dir) {
        tracing::warn!(file = %path(dir).display(), error = %e, "cannot remove the restart snapshot; reading the state store instead");
        return None;
    }
    match decode(&bytes) {
        Ok(snap) => Some(snap),
        Err(reason) => {
            tracing::warn!(file = %path(dir).display(), reason, "the restart snapshot is damaged; reading the state store instead");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RestartSnapshot {
        RestartSnapshot {
            epoch: 42,
            key_groups: 128,
            groups: 0..64,
            nodes: vec![
                NodeState {
                    node: "per_key".into(),
                    signature: "aggregate(k)".into(),
                    entries: vec![
                        (3, b"\x01key".to_vec(), vec![1, 2, 3]),
                        (0, b"\x00w".to_vec(), vec![]),
                    ],
                },
                NodeState {
                    node: "empty".into(),
                    signature: "s".into(),
                    entries: vec![],
                },
            ],
        }
    }

    #[test]
    fn a_written_snapshot_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &sample()).unwrap();
        assert_eq!(take(dir.path()), Some(sample()));
        assert_eq!(
            take(dir.path()),
            None,
            "a second start must not read it again"
        );
    }

    #[test]
    fn a_damaged_snapshot_is_not_used() {
        let bytes = encode(&sample());
        for cut in [0, 5, 12, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in [0, 9, 20, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_err(), "flipped byte {i}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(take(dir.path()), None);
        assert!(!dir.path().join(FILE).exists());
    }
}
