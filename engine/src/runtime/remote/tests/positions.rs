//! A takeover merges the positions of shared-queue sources (AMQP) that the
//! previous owners released: a message one of them read but may not have
//! acknowledged can be redelivered to any worker of the new count.

use super::*;

/// A position of source `queue` in these tests: one byte per held message
/// id; merged as the AMQP source merges (every id of every position).
pub(super) fn merge(mine: Option<&[u8]>, released: &[&[u8]]) -> Result<Vec<u8>, String> {
    let mut merged: Vec<u8> = mine.unwrap_or_default().to_vec();
    merged.extend(released.iter().flat_map(|p| p.iter()));
    merged.sort_unstable();
    Ok(merged)
}

fn queue_position(held: &[u8]) -> WriteSet {
    let mut w = WriteSet::default();
    w.put(
        Key::Position {
            source: Arc::from("queue"),
            partition: 0,
        },
        held.to_vec(),
    );
    w
}

fn held(store: &dyn StateBackend) -> Vec<u8> {
    entries(store, &key::position("queue", 0))
        .into_values()
        .next()
        .unwrap_or_default()
}

/// 1 -> 3 -> 1: each new worker holds what the workers it took key groups
/// from held (the directory's own writer counted once), so that the one a
/// redelivery reaches skips it.
#[test]
fn a_takeover_holds_the_unacknowledged_messages_of_every_previous_owner() {
    let f = fixture();
    let (single, _, _) = f.single_worker(31, 3, |_, w| {
        w.writes.extend(queue_position(&[1, 2, 3]).writes)
    });
    // Killed before it acknowledged 1, 2 and 3; the operator releases it.
    f.release(WorkerId::SINGLE);
    let three: Vec<WorkerId> = (0..3).map(|w| WorkerId::new(w, 3).unwrap()).collect();
    let fresh = [MemoryBackend::new(), MemoryBackend::new()];
    let stores: [&dyn StateBackend; 3] = [&single, &fresh[0], &fresh[1]];
    let mut uploaders = Vec::new();
    for (w, store) in three.iter().zip(stores) {
        let (r, up) = f.prepare(store, *w).unwrap();
        assert_eq!(r, Recovery::Rescale);
        assert_eq!(held(store), vec![1, 2, 3], "{w}");
        uploaders.push(up);
    }
    // A restart of one of them changes nothing.
    f.prepare(stores[1], three[1]).unwrap();
    assert_eq!(held(stores[1]), vec![1, 2, 3]);
    // Nor does redoing the takeover: worker 2's run ended before it
    // claimed its groups; then the same again after its volume is lost.
    let unclaim = || {
        for g in three[2].owned(GROUPS) {
            let path = f._dir.path().join(crate::state::remote::claim_name(g, 2));
            std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    };
    unclaim();
    f.prepare(stores[2], three[2]).unwrap();
    assert_eq!(held(stores[2]), vec![1, 2, 3]);
    unclaim();
    let lost = MemoryBackend::new();
    let (r, up) = f.prepare(&lost, three[2]).unwrap();
    assert_eq!(r, Recovery::LostVolume, "(then the rest of the takeover)");
    assert_eq!(held(&lost), vec![1, 2, 3]);
    uploaders[2] = up;

    // Each acknowledged those, then read more; 3 -> 1 on worker 0's
    // directory.
    let stores: [&dyn StateBackend; 3] = [&single, &fresh[0], &lost];
    for (i, (store, up)) in stores.iter().zip(&mut uploaders).enumerate() {
        let i = i as u8;
        f.checkpoint(up, *store, 10, queue_position(&[10 + i, 20]));
        f.release(three[i as usize]);
    }
    let (r, _) = f.prepare(&single, WorkerId::SINGLE).unwrap();
    assert_eq!(r, Recovery::Rescale);
    assert_eq!(held(&single), vec![10, 11, 12, 20, 20, 20]);
}
