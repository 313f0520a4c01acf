//! The state-directory marker: a small file beside the state store
//! recording the last checkpoint epoch committed to the store, so that lost
//! or damaged state is never mistaken for a fresh start.
//!
//! The store's database recovers from damage by keeping what it can still
//! read: a deleted, truncated or corrupted database opens as an empty or
//! older one, without an error. The marker lives outside the store and is
//! rewritten (atomically: temporary file, fsync, rename, fsync of the
//! directory) after every durable checkpoint, and created at the first
//! start. At the next start [`check`] compares it, and the traces sinks
//! report, with what the store gave back; any sign of an earlier
//! incarnation that the store does not reflect stops the start unless the
//! operator accepted it (`--accept-empty-state`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The marker's file name inside the state directory.
pub const FILE: &str = "sluice-checkpoint";

/// What a marker records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The last checkpoint epoch known to be durable in the store (0: the
    /// directory was initialised, nothing committed yet).
    pub epoch: u64,
}

/// Why the marker could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("cannot {what} {path}: {source}")]
    /// A file system call on the marker or its directory failed.
    Io {
        /// The operation that failed ("read", "create", "fsync", ...).
        what: &'static str,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    #[error("the state marker {path} is damaged ({text:?}); remove it only if the state directory is known to be complete")]
    /// The marker file exists but does not hold an epoch.
    Damaged {
        /// The marker file.
        path: PathBuf,
        /// Its contents, as read.
        text: String,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MarkerError + 'a {
    move |source| MarkerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the marker of `dir`; None if there is none.
pub fn read(dir: &Path) -> Result<Option<Marker>, MarkerError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    let epoch = text
        .lines()
        .find_map(|l| l.strip_prefix("epoch "))
        .and_then(|v| v.trim().parse().ok());
    match epoch {
        Some(epoch) => Ok(Some(Marker { epoch })),
        None => Err(MarkerError::Damaged { path, text }),
    }
}

/// Writes the marker of `dir` atomically.
pub fn write(dir: &Path, marker: Marker) -> Result<(), MarkerError> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    let text = format!(
        "# sluice: the last checkpoint committed to the state store in this directory.\n\
         # Do not edit; see docs/operations.md (Damaged or lost state).\n\
         epoch {}\n",
        marker.epoch
    );
    f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io("rename into", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// Why a start is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What shows an earlier incarnation, one line each.
    pub evidence: Vec<String>,
    /// What the store gave back.
    pub restored: String,
}

/// Decides whether state restored at `restored_epoch` may be used, given
/// the marker and the traces of an earlier run that sinks reported (only
/// asked for when the store has no checkpoint). Pure: no I/O.
pub fn check(
    marker: Option<Marker>,
    restored_epoch: u64,
    sink_traces: &[String],
) -> Result<(), Refusal> {
    let restored = if restored_epoch == 0 {
        "no checkpoint at all (an empty store)".to_string()
    } else {
        format!("checkpoint epoch {restored_epoch}")
    };
    let mut evidence = Vec::new();
    if let Some(m) = marker {
        if m.epoch > restored_epoch {
            evidence.push(format!(
                "the state marker records that checkpoint epoch {} was committed",
                m.epoch
            ));
        }
    }
    // Sinks report only what the restored state does not explain.
    evidence.extend(sink_traces.iter().cloned());
    if evidence.is_empty() {
        Ok(())
    } else {
        Err(Refusal { evidence, restored })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), Marker { epoch: 42 }).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(Marker { epoch: 42 }));
        write(dir.path(), Marker { epoch: 43 }).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(Marker { epoch: 43 }));
        std::fs::write(dir.path().join(FILE), "").unwrap();
        assert!(matches!(read(dir.path()), Err(MarkerError::Damaged { .. })));
    }

    #[test]
    fn an_older_or_empty_store_than_the_marker_is_refused() {
        let m = |epoch| Some(Marker { epoch });
        // fresh directory, first start, normal restarts
        assert_eq!(check(None, 0, &[]), Ok(()));
        assert_eq!(check(m(0), 0, &[]), Ok(()));
        assert_eq!(check(m(7), 7, &[]), Ok(()));
        // a crash between the store's flush and the marker's rewrite
        assert_eq!(check(m(7), 8, &[]), Ok(()));
        // a state directory from before markers existed
        assert_eq!(check(None, 9, &[]), Ok(()));
        // the store lost everything, or went back in time
        let r = check(m(7), 0, &[]).unwrap_err();
        assert!(r.restored.contains("empty store"), "{r:?}");
        assert!(r.evidence[0].contains("epoch 7"), "{r:?}");
        let r = check(m(7), 5, &[]).unwrap_err();
        assert_eq!(r.restored, "checkpoint epoch 5");
        // sinks report only what the restored state does not explain
        // (`Sink::earlier_output`), so every trace counts
        let traces = vec!["out.ndjson holds 10 bytes".to_string()];
        let r = check(None, 0, &traces).unwrap_err();
        assert_eq!(r.evidence, traces);
        let r = check(m(3), 3, &traces).unwrap_err();
        assert_eq!(r.evidence, traces);
        assert_eq!(check(m(3), 3, &[]), Ok(()));
    }
}
