//! The memory budget for request bodies: one byte count shared by every
//! request in flight, so that many slow or half-sent bodies cannot hold
//! more than `max_buffered_bytes` between them. No I/O.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use metrics::Gauge;

/// The bytes reserved by all requests in flight, against a cap.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    cap: usize,
    gauge: Gauge,
}

impl Budget {
    pub(super) fn new(cap: usize, gauge: Gauge) -> Arc<Budget> {
        gauge.set(0.0);
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            cap,
            gauge,
        })
    }

    /// Bytes reserved right now.
    #[cfg(test)]
    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// An empty reservation, grown with [`Reservation::grow_to`].
    pub(super) fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            held: 0,
        }
    }

    fn take(&self, n: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.cap)
            })
            .is_ok();
        if taken {
            self.gauge.increment(n as f64);
        }
        taken
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.gauge.decrement(n as f64);
    }
}

/// Bytes one request holds; given back when dropped (the request was
/// answered, or its connection went away).
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    held: usize,
}

impl Reservation {
    /// Makes the reservation at least `n` bytes. False (and unchanged) when
    /// that would take the budget over its cap.
    #[must_use]
    pub(super) fn grow_to(&mut self, n: usize) -> bool {
        if n <= self.held {
            return true;
        }
        if !self.budget.take(n - self.held) {
            return false;
        }
        self.held = n;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.give_back(self.held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_cap_and_give_back_on_drop() {
        let budget = Budget::new(100, metrics::Gauge::noop());
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.grow_to(60));
        assert!(a.grow_to(40), "shrinking requests are no-ops");
        assert!(!b.grow_to(41), "60 + 41 > 100");
        assert!(b.grow_to(40));
        assert_eq!(budget.used(), 100);
        assert!(!a.grow_to(61));
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow_to(100));
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
