//! Write fencing shared by the sinks that update data in place (Redis,
//! PostgreSQL): every write carries a fence `generation * 2^40 + epoch`,
//! and a destination keeps a value unless the incoming fence is at least
//! the one stored with it.
//!
//! The epoch is the checkpoint epoch the records were committed in, so
//! within one incarnation of a pipeline an older epoch replayed late can
//! never overwrite a newer one, while re-delivering the same epoch rewrites
//! the same values. The generation is drawn from the destination when a
//! sink starts from empty state (epochs restart at 1) and is kept in the
//! sink's checkpointed progress afterwards, so a pipeline whose state was
//! wiped or rebuilt supersedes what an earlier incarnation wrote.

/// Epochs must stay below 2^40 (35,000 years of 1 s checkpoints).
pub const EPOCH_BITS: u32 = 40;

/// The fence of `epoch` in `generation`; None if out of range (the result
/// always fits a signed 64-bit integer).
pub fn fence(generation: u64, epoch: u64) -> Option<u64> {
    if epoch >= 1 << EPOCH_BITS || generation >= 1 << (63 - EPOCH_BITS) {
        return None;
    }
    Some((generation << EPOCH_BITS) | epoch)
}

/// The generation a fence was written in.
pub fn generation_of(fence: u64) -> u64 {
    fence >> EPOCH_BITS
}

/// The rule every destination applies: a write with fence `new` replaces a
/// value written with fence `stored` iff `stored <= new`.
pub fn accepts(stored: Option<u64>, new: u64) -> bool {
    match stored {
        None => true,
        Some(s) => s <= new,
    }
}

/// Progress bytes of a fenced sink: its generation.
pub fn encode_progress(generation: u64) -> Vec<u8> {
    generation.to_be_bytes().to_vec()
}

/// Reads progress written by [`encode_progress`].
pub fn decode_progress(progress: &[u8]) -> Option<u64> {
    progress.try_into().ok().map(u64::from_be_bytes)
}

/// The epoch a fence was written in.
pub fn epoch_of(fence: u64) -> u64 {
    fence & ((1 << EPOCH_BITS) - 1)
}

/// What the newest fence at a destination (`newest`, None when it holds
/// none) shows that the restored state does not explain: values written
/// while the store holds no checkpoint (the state of an earlier run was
/// lost), by a newer write generation than the restored one, or in a newer
/// epoch of the same generation (the state is older than what the sink
/// saw). `progress` is the sink's restored progress (its generation).
pub fn unexplained(
    destination: &str,
    newest: Option<u64>,
    restored_epoch: u64,
    progress: Option<&[u8]>,
) -> Option<String> {
    let newest = newest.filter(|&f| f > 0)?;
    let (g, e) = (generation_of(newest), epoch_of(newest));
    if restored_epoch == 0 {
        return Some(format!(
            "{destination} holds values an earlier run wrote (write generation {g}, epoch {e})"
        ));
    }
    // Without progress the sink had not confirmed an epoch yet: its
    // generation was not recorded, so there is nothing to compare with.
    let ours = decode_progress(progress?)?;
    if g > ours {
        Some(format!(
            "{destination} holds values of write generation {g}, newer than the restored state's \
             generation {ours}: another run wrote after this state was saved"
        ))
    } else if g == ours && e > restored_epoch {
        Some(format!(
            "{destination} holds values of epoch {e}, newer than the restored checkpoint \
             epoch {restored_epoch}: the state is older than what the sink already saw"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_the_state_does_not_explain() {
        let f = |g, e| fence(g, e);
        let p = encode_progress(3);
        assert_eq!(unexplained("t", None, 0, None), None);
        assert_eq!(unexplained("t", None, 9, Some(&p)), None);
        assert!(unexplained("t", f(3, 9), 0, None)
            .unwrap()
            .contains("earlier run"));
        assert_eq!(unexplained("t", f(3, 9), 9, Some(&p)), None);
        assert_eq!(unexplained("t", f(2, 90), 9, Some(&p)), None);
        assert!(unexplained("t", f(3, 10), 9, Some(&p))
            .unwrap()
            .contains("epoch 10"));
        assert!(unexplained("t", f(4, 1), 9, Some(&p))
            .unwrap()
            .contains("generation 4"));
        assert_eq!(unexplained("t", f(4, 1), 9, None), None);
    }

    #[test]
    fn generations_order_before_epochs() {
        let f = |g, e| fence(g, e).unwrap();
        assert!(f(1, 5) > f(1, 3));
        assert!(f(2, 1) > f(1, (1 << 40) - 1));
        assert_eq!(generation_of(f(7, 123)), 7);
        assert_eq!(fence(1, 1 << 40), None);
        assert_eq!(fence(1 << 23, 1), None);
        assert!(fence((1 << 23) - 1, (1 << 40) - 1).unwrap() <= i64::MAX as u64);
        assert!(accepts(None, f(1, 1)));
        assert!(accepts(Some(f(1, 5)), f(1, 5)), "re-delivery rewrites");
        assert!(
            !accepts(Some(f(1, 5)), f(1, 3)),
            "an older epoch never overwrites"
        );
        assert!(accepts(Some(f(1, 900)), f(2, 1)), "a new generation wins");
        assert_eq!(decode_progress(&encode_progress(42)), Some(42));
        assert_eq!(decode_progress(b"bad"), None);
    }
}
