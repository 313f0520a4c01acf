//! The state a start takes from the remote copy is written into the store
//! after the start (by the checkpoint writer): what happens when a run ends
//! before that write is done, or the volume is lost in the middle of it.

use std::collections::BTreeMap;

use super::*;

/// The state a start takes from the remote copy is written into the store
/// after the start (by the checkpoint writer); a run that ends before that
/// leaves the list of those groups, and the next start writes them again:
/// for a lost volume and for groups that moved in a rescale.
#[test]
fn a_start_finishes_writing_state_its_previous_run_took_but_did_not_write() {
    let f = fixture();
    let (single, _, _) = f.single_worker(17, 3, |_, _| {});
    let whole = all(&single);

    // Lost volume, the run ends at once.
    let fresh = MemoryBackend::new();
    let (r, _, fetched) = f.prepare_unfinished(&fresh, WorkerId::SINGLE, &[]).unwrap();
    assert_eq!(r, Recovery::LostVolume);
    assert!(fetched.import.is_some());
    assert!(
        entries(&fresh, b"s\0").is_empty(),
        "the state is written later"
    );
    assert_eq!(entries(&fresh, key::IMPORT).len(), 1);
    let (r, _, fetched) = f.prepare_unfinished(&fresh, WorkerId::SINGLE, &[]).unwrap();
    assert_eq!(r, Recovery::Local);
    assert!(fetched.import.is_none());
    assert_eq!(all(&fresh), whole, "the next start wrote it");
    assert!(!fetched.groups.is_empty() && fetched.replaced == fetched.groups);

    // A rescale 1 -> 2: worker 1's run ends before the moved state is written.
    f.release(WorkerId::SINGLE);
    let w0 = WorkerId::new(0, 2).unwrap();
    let w1 = WorkerId::new(1, 2).unwrap();
    let store1 = MemoryBackend::new();
    f.prepare(&single, w0).unwrap();
    let (r, _, fetched) = f.prepare_unfinished(&store1, w1, &[]).unwrap();
    assert_eq!(r, Recovery::Rescale);
    assert!(fetched.import.is_some());
    assert!(entries(&store1, b"s\0").is_empty());
    assert!(
        !f.rt
            .block_on(f.remote.list("manifests/"))
            .unwrap()
            .is_empty(),
        "claims were made before the state was written"
    );
    f.prepare(&store1, w1).unwrap();
    let expected: BTreeMap<Vec<u8>, Vec<u8>> = whole
        .iter()
        .filter(|(k, _)| key::parse_state(k).is_some_and(|(_, g, _)| w1.owned(GROUPS).contains(&g)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(entries(&store1, b"s\0"), expected);
    assert!(entries(&store1, key::IMPORT).is_empty());
    // And nothing of the list reached the remote copy.
    let (_, m) =
        f.rt.block_on(f.remote.latest_manifest(w1))
            .unwrap()
            .unwrap();
    assert!(m.meta.iter().all(|(k, _)| k != key::IMPORT));
}

/// A worker whose volume is lost in the middle of a takeover (some of its
/// groups claimed, others not yet) gets all of them back: those it had
/// claimed from its own manifest, the others from their previous owner.
#[test]
fn a_volume_lost_in_the_middle_of_a_takeover_comes_back_whole() {
    let f = fixture();
    let (single, _, _) = f.single_worker(23, 3, |_, _| {});
    let whole = all(&single);
    f.release(WorkerId::SINGLE);
    let w0 = WorkerId::new(0, 2).unwrap();
    let w1 = WorkerId::new(1, 2).unwrap();
    f.prepare(&single, w0).unwrap();
    let lost = MemoryBackend::new();
    f.prepare_unfinished(&lost, w1, &[]).unwrap();
    // Its run ended after claiming only the first half of its groups.
    let groups: Vec<u16> = w1.owned(GROUPS).collect();
    let unclaimed = &groups[groups.len() / 2..];
    for &g in unclaimed {
        let path = f._dir.path().join(crate::state::remote::claim_name(g, 2));
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    // And its volume is gone.
    let fresh = MemoryBackend::new();
    let (r, _, _) = f.prepare_fetched(&fresh, w1, &[]).unwrap();
    assert_eq!(r, Recovery::LostVolume);
    let expected: BTreeMap<Vec<u8>, Vec<u8>> = whole
        .iter()
        .filter(|(k, _)| key::parse_state(k).is_some_and(|(_, g, _)| w1.owned(GROUPS).contains(&g)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(entries(&fresh, b"s\0"), expected, "the state directory");
    for &g in &groups {
        let (_, c) = f.rt.block_on(f.remote.latest_claim(g)).unwrap().unwrap();
        assert_eq!(c.owner(), w1, "group {g}");
    }
    // What it uploaded holds them too: another lost volume gets them back.
    let again = MemoryBackend::new();
    f.prepare(&again, w1).unwrap();
    assert_eq!(entries(&again, b"s\0"), expected, "the remote copy");
}
