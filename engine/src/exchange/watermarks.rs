//! The receiver's watermark: the minimum over the source partitions that
//! senders report, in batches and in heartbeats. Pure logic: the caller
//! passes the clock.

use std::collections::BTreeMap;

use super::marks::{PartitionId, PartitionWatermark};

#[derive(Debug, Clone, Copy)]
struct Reported {
    watermark: i64,
    last_seen_ms: i64,
}

/// The watermarks of the source partitions feeding a receiver.
///
/// A partition's watermark never goes backwards, whichever sender reports it
/// (after a Kafka rebalance the new reader may report a lower one at first).
/// A partition not reported for the idle timeout stops holding the
/// receiver's watermark back; the receiver's watermark never goes backwards.
#[derive(Debug, Clone)]
pub struct InboundWatermarks {
    partitions: BTreeMap<PartitionId, Reported>,
    current: i64,
}

impl Default for InboundWatermarks {
    fn default() -> Self {
        InboundWatermarks {
            partitions: BTreeMap::new(),
            current: i64::MIN,
        }
    }
}

impl InboundWatermarks {
    /// Takes a partition's watermark as reported at `now_ms`.
    pub fn observe(&mut self, partition: &PartitionId, watermark: i64, now_ms: i64) {
        let entry = self
            .partitions
            .entry(partition.clone())
            .or_insert(Reported {
                watermark,
                last_seen_ms: now_ms,
            });
        entry.watermark = entry.watermark.max(watermark);
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
    }

    /// The watermark at `now_ms`: the minimum over the partitions reported
    /// within `idle_timeout_ms` (all of them without a timeout); unchanged
    /// when every partition is idle; `i64::MIN` before any report.
    pub fn current(&mut self, now_ms: i64, idle_timeout_ms: Option<i64>) -> i64 {
        let active = self
            .partitions
            .values()
            .filter(|r| idle_timeout_ms.is_none_or(|t| now_ms.saturating_sub(r.last_seen_ms) < t))
            .map(|r| r.watermark)
            .min();
        if let Some(min) = active {
            self.current = self.current.max(min);
        }
        self.current
    }

    /// The minimum of the watermarks reported for `source` (entries keyed
    /// `(source, sender)`) within `idle_timeout_ms` (all without one), and
    /// the senders that reported it at all.
    pub fn of_source(
        &self,
        source: &str,
        now_ms: i64,
        idle_timeout_ms: Option<i64>,
    ) -> (Option<i64>, Vec<u32>) {
        let mut min = None::<i64>;
        let mut senders = Vec::new();
        for ((s, sender), r) in &self.partitions {
            if s.as_str() != source {
                continue;
            }
            senders.push(*sender);
            if idle_timeout_ms.is_none_or(|t| now_ms.saturating_sub(r.last_seen_ms) < t) {
                min = Some(min.map_or(r.watermark, |m| m.min(r.watermark)));
            }
        }
        (min, senders)
    }

    /// The partitions' watermarks, for a checkpoint.
    pub fn snapshot(&self) -> Vec<PartitionWatermark> {
        self.partitions
            .iter()
            .map(|((source, partition), r)| PartitionWatermark {
                source: source.clone(),
                partition: *partition,
                watermark: r.watermark,
            })
            .collect()
    }

    /// Restores the partitions of a checkpoint, as reported at `now_ms`.
    pub fn restore(saved: &[PartitionWatermark], now_ms: i64) -> Self {
        let mut w = InboundWatermarks::default();
        for p in saved {
            w.observe(&(p.source.clone(), p.partition), p.watermark, now_ms);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(source: &str, partition: u32) -> PartitionId {
        (source.into(), partition)
    }

    #[test]
    fn minimum_over_partitions_of_all_senders() {
        let mut w = InboundWatermarks::default();
        assert_eq!(w.current(0, None), i64::MIN);
        w.observe(&p("kafka", 0), 100, 0); // from worker 0
        w.observe(&p("kafka", 1), 50, 0); // from worker 1
        w.observe(&p("http", 2), 80, 0); // worker 2's journal
        assert_eq!(w.current(0, None), 50);
        w.observe(&p("kafka", 1), 120, 1);
        assert_eq!(w.current(1, None), 80);
        // a partition's watermark never goes back (a new reader after a rebalance)
        w.observe(&p("kafka", 0), 10, 2);
        w.observe(&p("http", 2), 200, 2);
        assert_eq!(w.current(2, None), 100);
    }

    #[test]
    fn idle_partitions_stop_holding_back() {
        let mut w = InboundWatermarks::default();
        w.observe(&p("a", 0), 10, 0);
        w.observe(&p("a", 1), 500, 0);
        assert_eq!(w.current(999, Some(1000)), 10);
        w.observe(&p("a", 1), 600, 900);
        // partition 0 silent for 1000 ms: only partition 1 counts
        assert_eq!(w.current(1000, Some(1000)), 600);
        // everything idle: the watermark stays, never goes back
        assert_eq!(w.current(5000, Some(1000)), 600);
        w.observe(&p("a", 0), 20, 5000);
        assert_eq!(w.current(5000, Some(1000)), 600);
    }

    #[test]
    fn snapshots_restore() {
        let mut w = InboundWatermarks::default();
        w.observe(&p("a", 0), 10, 0);
        w.observe(&p("b", 1), 30, 0);
        let mut back = InboundWatermarks::restore(&w.snapshot(), 100);
        assert_eq!(back.current(100, Some(10)), 10);
    }
}
