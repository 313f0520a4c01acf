//! The remote copy of the state in object storage (`[state] remote`): what
//! is stored where, and the client that reads and writes it.
//!
//! Objects under the configured prefix, each written once and never
//! overwritten (a conditional create where the store supports it):
//!
//! | object | holds |
//! |---|---|
//! | `segments/{workers}-{worker}/{epoch:020}-{run:016x}` | one checkpoint's changes of the key groups the worker owns: per group a delta (puts and deletes) or a full base |
//! | `manifests/{workers}-{worker}/{epoch:020}-{run:016x}` | one checkpoint: per owned key group the segments that rebuild it (a base, then deltas), and every entry that is not operator state (positions, acknowledgements, outboxes, the cluster state) |
//! | `releases/{workers}-{worker}/{epoch:020}-{run:016x}` | the worker stopped cleanly after that manifest (or an operator released it): its key groups may move |
//! | `claims/{group:05}/{generation:010}` | who owns the key group from that generation on, and which manifest the state came from |
//!
//! Every object is `SLR1`, a CRC-32 of the body, then the bincode body, so a
//! damaged object is refused rather than taken for state. Names sort by
//! epoch (or generation), so the newest is the last one listed.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::cluster::WorkerId;

/// The format of the objects this build writes.
pub const REMOTE_FORMAT: u32 = 1;

const MAGIC: &[u8; 4] = b"SLR1";

/// Why the remote copy could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The `remote` setting is not a URL sluice can use.
    #[error("`[state] remote = \"{url}\"`: {reason}")]
    Config {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store answered with an error, or could not be reached.
    #[error("remote state store {url}: {source}")]
    Store {
        /// The store's URL.
        url: String,
        /// The object store's error.
        #[source]
        source: object_store::Error,
    },
    /// An object is not what sluice wrote.
    #[error("remote state object {path} is damaged: {reason}")]
    Corrupt {
        /// The object's path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One key's change in a key group: `None` removes the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The stateful node the key belongs to.
    pub node: String,
    /// The operator's key bytes.
    pub key: Vec<u8>,
    /// The new value; `None` when the key was removed (deltas only).
    pub value: Option<Vec<u8>>,
}

/// A key group's part of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSection {
    /// The key group.
    pub group: u16,
    /// A full copy of the group (replaces everything before it) rather
    /// than the changes since the previous segment.
    pub base: bool,
    /// The entries (a base holds no removals).
    pub entries: Vec<Entry>,
}

/// One checkpoint's changes of the key groups a worker owns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The checkpoint's epoch.
    pub epoch: u64,
    /// Per changed key group, in group order.
    pub groups: Vec<GroupSection>,
}

/// One checkpoint of one worker, as the remote copy holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`REMOTE_FORMAT`] of the writer.
    pub format: u32,
    /// The worker that wrote it.
    pub worker: u32,
    /// Of how many workers.
    pub workers: u32,
    /// The checkpoint's epoch.
    pub epoch: u64,
    /// The writing run's id (objects of two runs never share a name).
    pub run: u64,
    /// The number of key groups of the state.
    pub key_groups: u16,
    /// Per owned key group: the segments that rebuild it, oldest first
    /// (the first holds the group's base).
    pub chains: BTreeMap<u16, Vec<String>>,
    /// Every stored entry that is not operator state, as stored.
    pub meta: Vec<(Vec<u8>, Vec<u8>)>,
    /// When it was written (ms since the epoch), for operators.
    pub written_ms: i64,
}

impl Manifest {
    /// The worker that wrote it.
    pub fn writer(&self) -> WorkerId {
        WorkerId::new(self.worker, self.workers).unwrap_or(WorkerId::SINGLE)
    }
}

/// A worker's statement that it stopped cleanly after a manifest: nothing
/// it took in is missing from it, every sink acknowledged its output, so
/// its key groups may be claimed by other workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The released manifest's path.
    pub manifest: String,
    /// Its epoch.
    pub epoch: u64,
    /// Written by an operator (`sluice release`) for a worker that is gone,
    /// rather than by the worker at a clean stop.
    pub forced: bool,
    /// When it was written (ms since the epoch).
    pub written_ms: i64,
}

/// Who owns a key group from a generation on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The owner.
    pub worker: u32,
    /// Of how many workers.
    pub workers: u32,
    /// The manifest the owner took the group's state from (`None` for the
    /// first claim of a group, which starts from the owner's own state).
    pub from: Option<String>,
    /// When it was written (ms since the epoch).
    pub written_ms: i64,
}

impl Claim {
    /// The owner.
    pub fn owner(&self) -> WorkerId {
        WorkerId::new(self.worker, self.workers).unwrap_or(WorkerId::SINGLE)
    }
}

/// Whether a write-once put created the object or found it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The object was created.
    Created,
    /// An object of that name already existed; nothing was written.
    Existed,
}

/// A worker's directory name in `segments/`, `manifests/`, `releases/`.
pub fn worker_dir(w: WorkerId) -> String {
    format!("{}-{}", w.workers, w.worker)
}

/// The name of a checkpoint's objects.
pub fn epoch_name(epoch: u64, run: u64) -> String {
    format!("{epoch:020}-{run:016x}")
}

/// The epoch of an object named by [`epoch_name`].
pub fn epoch_of_name(name: &str) -> Option<u64> {
    name.rsplit('/').next()?.split('-').next()?.parse().ok()
}

/// Encodes an object: magic, CRC-32 of the body, bincode body.
pub fn encode_object<T: Serialize>(value: &T) -> Vec<u8> {
    let body = super::encode(value);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes an object written by [`encode_object`].
pub fn decode_object<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, RemoteError> {
    let corrupt = |reason: String| RemoteError::Corrupt {
        path: path.to_string(),
        reason,
    };
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(corrupt("not a sluice state object".into()));
    }
    let crc = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let body = &bytes[8..];
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| corrupt(e.to_string()))
}

/// The remote copy: an object store and the prefix the pipeline's objects
/// live under.
#[derive(Clone)]
pub struct RemoteStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("url", &self.url)
            .finish()
    }
}

impl RemoteStore {
    /// Opens the store a `[state] remote` URL names: `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix` (credentials and
    /// endpoints from each cloud's standard environment variables), or
    /// `file:///absolute/dir`.
    pub fn open(url: &str) -> Result<RemoteStore, RemoteError> {
        let config = |reason: String| RemoteError::Config {
            url: url.to_string(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| config("expected scheme://location (s3, gs, az or file)".into()))?;
        let store_error = |source: object_store::Error| RemoteError::Store {
            url: url.to_string(),
            source,
        };
        // The crypto provider of the HTTPS client (no-op when one is set).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(config(
                        "a file:// URL needs an absolute path (file:///dir)".into(),
                    ));
                }
                std::fs::create_dir_all(rest).map_err(|e| config(e.to_string()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(rest)
                    .map_err(store_error)?;
                (Arc::new(fs), String::new())
            }
            "s3" | "gs" | "az" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(config("no bucket".into()));
                }
                let base = format!("{scheme}://{bucket}");
                let store: Arc<dyn ObjectStore> = match scheme {
                    "s3" => Arc::new(
                        object_store::aws::AmazonS3Builder::from_env()
                            .with_url(base)
                            .build()
                            .map_err(store_error)?,
                    ),
                    "gs" => Arc::new(
                        object_store::gcp::GoogleCloudStorageBuilder::from_env()
                            .with_url(base)
                            .build()
                            .map_err(store_error)?,
                    ),
                    _ => Arc::new(
                        object_store::azure::MicrosoftAzureBuilder::from_env()
                            .with_url(base)
                            .build()
                            .map_err(store_error)?,
                    ),
                };
                (store, prefix.trim_matches('/').to_string())
            }
            other => {
                return Err(config(format!(
                    "unknown scheme `{other}` (expected s3, gs, az or file)"
                )))
            }
        };
        Ok(RemoteStore {
            store,
            prefix,
            url: url.to_string(),
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, name: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }

    fn err(&self, source: object_store::Error) -> RemoteError {
        RemoteError::Store {
            url: self.url.clone(),
            source,
        }
    }

    /// Writes `bytes` under `name` unless an object of that name exists.
    pub async fn put_once(&self, name: &str, bytes: Vec<u8>) -> Result<Put, RemoteError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(name), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::Existed),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Reads an object; `None` if there is none of that name.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>, RemoteError> {
        match self.store.get(&self.path(name)).await {
            Ok(r) => r.bytes().await.map(Some).map_err(|e| self.err(e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Reads and decodes an object; `None` if there is none of that name.
    pub async fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, RemoteError> {
        match self.get(name).await? {
            Some(bytes) => decode_object(name, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Removes an object (a missing one is not an error).
    pub async fn delete(&self, name: &str) -> Result<(), RemoteError> {
        match self.store.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// The names (relative to the prefix) of the objects under `dir`, in
    /// order.
    pub async fn list(&self, dir: &str) -> Result<Vec<String>, RemoteError> {
        let prefix = self.path(dir);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut names: Vec<String> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.as_ref()[strip..].to_string())
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        names.sort();
        Ok(names)
    }

    /// The newest object under `dir`, decoded, with its name.
    async fn newest<T: DeserializeOwned>(
        &self,
        dir: &str,
    ) -> Result<Option<(String, T)>, RemoteError> {
        let names = self.list(dir).await?;
        match names.last() {
            Some(name) => Ok(self.read(name).await?.map(|v| (name.clone(), v))),
            None => Ok(None),
        }
    }

    /// The newest manifest `w` wrote, with its name.
    pub async fn latest_manifest(
        &self,
        w: WorkerId,
    ) -> Result<Option<(String, Manifest)>, RemoteError> {
        self.newest(&format!("manifests/{}/", worker_dir(w))).await
    }

    /// The newest release of `w`.
    pub async fn latest_release(&self, w: WorkerId) -> Result<Option<Release>, RemoteError> {
        Ok(self
            .newest(&format!("releases/{}/", worker_dir(w)))
            .await?
            .map(|(_, r)| r))
    }

    /// The key group's newest claim and its generation.
    pub async fn latest_claim(&self, group: u16) -> Result<Option<(u64, Claim)>, RemoteError> {
        let Some((name, claim)) = self.newest::<Claim>(&claim_dir(group)).await? else {
            return Ok(None);
        };
        let generation = name
            .rsplit('/')
            .next()
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| RemoteError::Corrupt {
                path: name.clone(),
                reason: "not a claim name".into(),
            })?;
        Ok(Some((generation, claim)))
    }
}

/// The directory of a key group's claims.
pub fn claim_dir(group: u16) -> String {
    format!("claims/{group:05}/")
}

/// The name of a key group's claim of one generation.
pub fn claim_name(group: u16, generation: u64) -> String {
    format!("claims/{group:05}/{generation:010}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_and_damage_is_refused() {
        let m = Manifest {
            format: REMOTE_FORMAT,
            worker: 1,
            workers: 3,
            epoch: 7,
            chains: BTreeMap::from([(4, vec!["segments/3-1/x".into()])]),
            meta: vec![(b"m\0epoch".to_vec(), 7u64.to_be_bytes().to_vec())],
            ..Default::default()
        };
        let bytes = encode_object(&m);
        assert_eq!(decode_object::<Manifest>("m", &bytes).unwrap(), m);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            decode_object::<Manifest>("m", &flipped),
            Err(RemoteError::Corrupt { .. })
        ));
        assert!(decode_object::<Manifest>("m", b"garbage!!").is_err());
    }

    #[test]
    fn names_sort_by_epoch() {
        let a = epoch_name(9, 0xffff);
        let b = epoch_name(10, 1);
        assert!(a < b);
        assert_eq!(epoch_of_name(&format!("manifests/1-0/{b}")), Some(10));
    }

    #[tokio::test]
    async fn file_store_writes_once_lists_in_order_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let r = RemoteStore::open(&url).unwrap();
        assert_eq!(
            r.put_once("a/x", b"1".to_vec()).await.unwrap(),
            Put::Created
        );
        assert_eq!(
            r.put_once("a/x", b"2".to_vec()).await.unwrap(),
            Put::Existed
        );
        assert_eq!(r.get("a/x").await.unwrap().unwrap().as_ref(), b"1");
        r.put_once("a/w", b"0".to_vec()).await.unwrap();
        assert_eq!(r.list("a/").await.unwrap(), vec!["a/w", "a/x"]);
        assert_eq!(r.get("a/none").await.unwrap(), None);
        let claim = Claim {
            worker: 0,
            workers: 2,
            from: None,
            written_ms: 0,
        };
        r.put_once(&claim_name(3, 1), encode_object(&claim))
            .await
            .unwrap();
        r.put_once(&claim_name(3, 2), encode_object(&claim))
            .await
            .unwrap();
        assert_eq!(r.latest_claim(3).await.unwrap().unwrap().0, 2);
        assert!(r.latest_claim(4).await.unwrap().is_none());
        assert!(RemoteStore::open("ftp://x").is_err());
        assert!(RemoteStore::open("file://relative").is_err());
    }
}
