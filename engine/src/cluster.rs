//! Who this worker is among the pipeline's workers, and what all of them
//! must agree on.
//!
//! A pipeline runs as N workers numbered `0..N`. Key groups are owned in
//! contiguous ranges ([`crate::keys::owned_key_groups`]); every keyed
//! operator's state for a key group lives only at its owner. Membership is
//! Kubernetes': the worker id is the ordinal of a StatefulSet pod, N is set
//! together with `replicas`; there is no protocol of our own.

use std::ops::Range;

use crate::exchange::PeerAddresses;
use crate::keys::owned_key_groups;

/// This worker's id and the number of workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId {
    /// This worker, in `0..workers`.
    pub worker: u32,
    /// How many workers run the pipeline (>= 1).
    pub workers: u32,
}

impl WorkerId {
    /// The only worker of a single-worker run.
    pub const SINGLE: WorkerId = WorkerId {
        worker: 0,
        workers: 1,
    };

    /// `worker` of `workers`; `None` unless `worker < workers`.
    pub fn new(worker: u32, workers: u32) -> Option<WorkerId> {
        (worker < workers).then_some(WorkerId { worker, workers })
    }

    /// True for a run of one worker (no exchange).
    pub fn is_single(&self) -> bool {
        self.workers <= 1
    }

    /// The key groups this worker owns.
    pub fn owned(&self, key_groups: u16) -> Range<u16> {
        owned_key_groups(self.worker, self.workers, key_groups)
    }

    /// The worker owning `key_group`.
    pub fn owner_of(&self, key_group: u16, key_groups: u16) -> u32 {
        owner_of(key_group, self.workers, key_groups)
    }
}

impl Default for WorkerId {
    fn default() -> Self {
        WorkerId::SINGLE
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker {} of {}", self.worker, self.workers)
    }
}

/// The worker owning `key_group` when `workers` workers share `key_groups`
/// (the inverse of [`owned_key_groups`]).
pub fn owner_of(key_group: u16, workers: u32, key_groups: u16) -> u32 {
    let workers = workers.max(1);
    let kg = u32::from(key_groups.max(1));
    // owned_key_groups gives worker w the range [kg*w/N, kg*(w+1)/N).
    let mut w = (u32::from(key_group) * workers) / kg;
    while w + 1 < workers && owned_key_groups(w + 1, workers, key_groups).start <= key_group {
        w += 1;
    }
    while w > 0 && owned_key_groups(w, workers, key_groups).start > key_group {
        w -= 1;
    }
    w
}

/// The `[cluster]` section: where this worker's exchange listens and where
/// the others are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// This worker's exchange address (`host:port`).
    pub listen: String,
    /// Every worker's exchange address.
    pub peers: PeerAddresses,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_of_inverts_the_owned_ranges() {
        for workers in 1..=7u32 {
            for key_groups in [1u16, 2, 3, 7, 128, 1000] {
                for w in 0..workers {
                    for kg in owned_key_groups(w, workers, key_groups) {
                        assert_eq!(
                            owner_of(kg, workers, key_groups),
                            w,
                            "kg {kg} of {key_groups}, {workers} workers"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn worker_ids_must_be_below_the_count() {
        assert!(WorkerId::new(3, 3).is_none());
        assert_eq!(WorkerId::new(2, 3).unwrap().owned(128), 85..128);
        assert!(WorkerId::SINGLE.is_single());
    }
}
