//! What a worker taking key groups over merges from the workers it takes
//! them from, besides their state: the positions of shared-queue sources
//! (messages they read but may not have acknowledged) and the receivers'
//! replay marks (records they applied).

use std::collections::{BTreeMap, BTreeSet};

use super::start::Prepare;
use crate::exchange::marks::MAX_RECENT_IDS;
use crate::runtime::cluster::ClusterState;
use crate::runtime::RunError;
use crate::state::layout::key;
use crate::state::remote::Manifest;
use crate::state::{Key, WriteSet};

/// The positions of the shared-queue sources after a takeover, into
/// `writes`: each merges this directory's (`dir_meta` when the directory
/// goes back to another checkpoint, else the store's) with those of the
/// `released` manifests (see [`crate::source::MergePositions`]), once:
/// the directory records which manifests it merged
/// ([`key::POSITIONS_MERGED`]), and a start that redoes the takeover finds
/// them there.
pub(super) fn merge_positions(
    p: &Prepare<'_>,
    dir_meta: Option<&[(Vec<u8>, Vec<u8>)]>,
    released: &[(&String, &Manifest)],
    writes: &mut WriteSet,
) -> Result<(), RunError> {
    let dir = |prefix: &[u8]| -> Result<BTreeMap<Vec<u8>, Vec<u8>>, RunError> {
        Ok(match dir_meta {
            Some(meta) => meta
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .cloned()
                .collect(),
            None => {
                let mut found = BTreeMap::new();
                p.store.for_each_prefix(prefix, &mut |k, v| {
                    found.insert(k.to_vec(), v.to_vec());
                    Ok(())
                })?;
                found
            }
        })
    };
    let mut names: Vec<&str> = released.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let names = crate::state::encode(&names);
    if p.merged_positions.is_empty()
        || released.is_empty()
        || dir(key::POSITIONS_MERGED)?.get(key::POSITIONS_MERGED) == Some(&names)
    {
        return Ok(());
    }
    for (source, merge) in p.merged_positions {
        let mut prefix = key::position(source, 0);
        prefix.truncate(prefix.len() - 4);
        let mut theirs: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
        for (_, man) in released {
            for (k, v) in man.meta.iter().filter(|(k, _)| k.starts_with(&prefix)) {
                theirs.entry(k).or_default().push(v);
            }
        }
        if theirs.is_empty() {
            continue;
        }
        let mine = dir(&prefix)?;
        for (k, positions) in theirs {
            let merged = merge(mine.get(k).map(Vec::as_slice), &positions).map_err(|e| {
                RunError::Remote(format!(
                    "cannot merge the positions of source `{source}` that the previous workers released: {e}"
                ))
            })?;
            writes.put(Key::Raw(k.to_vec()), merged);
        }
    }
    writes.put(Key::Raw(key::POSITIONS_MERGED.to_vec()), names);
    Ok(())
}

/// Merges what other receivers remember of applied records (replays of
/// records they applied are dropped here too).
pub(super) fn merge_marks(into: &mut ClusterState, from: &[ClusterState]) {
    for other in from {
        for mark in &other.inbound.partitions {
            match into
                .inbound
                .partitions
                .iter_mut()
                .find(|m| m.source == mark.source && m.partition == mark.partition)
            {
                Some(m) => m.next_offset = m.next_offset.max(mark.next_offset),
                None => into.inbound.partitions.push(mark.clone()),
            }
        }
        for ids in &other.inbound.ids {
            match into
                .inbound
                .ids
                .iter_mut()
                .find(|i| i.source == ids.source && i.partition == ids.partition)
            {
                Some(i) => {
                    let known: BTreeSet<u64> = i.ids.iter().copied().collect();
                    i.ids
                        .extend(ids.ids.iter().filter(|id| !known.contains(id)));
                    let excess = i.ids.len().saturating_sub(MAX_RECENT_IDS);
                    i.ids.drain(..excess);
                }
                None => into.inbound.ids.push(ids.clone()),
            }
        }
    }
}
