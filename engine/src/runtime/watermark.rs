//! Watermark tracking, per source partition. Pure logic: the processor
//! feeds it observations and the clock.
//!
//! A partition's watermark is the largest event time it has shown minus the
//! source's bounded disorder. A source's watermark is the minimum over its
//! partitions that are neither finished nor idle (no data for
//! `idle_timeout`), and never goes backwards. A source with no known
//! partition yet holds its watermark at the minimum; a finished source (end
//! of bounded input) is at `i64::MAX`, which fires every window.
//! Processing-time sources use the wall clock.

use std::collections::BTreeMap;

/// Watermark settings of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkSettings {
    /// Whether the source has an event-time field (else processing time).
    pub event_time: bool,
    /// Bounded out-of-orderness, in ms.
    pub max_disorder_ms: i64,
    /// A partition with no data for this long stops holding the watermark back.
    pub idle_timeout_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct Partition {
    max_time: i64,
    last_seen_ms: i64,
    done: bool,
}

#[derive(Debug, Clone)]
struct SourceState {
    settings: WatermarkSettings,
    partitions: BTreeMap<u32, Partition>,
    finished: bool,
    current: i64,
}

/// Tracks the watermark of every source.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    sources: Vec<SourceState>,
}

impl WatermarkTracker {
    /// A tracker for the sources with these settings, in source order.
    pub fn new(settings: Vec<WatermarkSettings>) -> Self {
        WatermarkTracker {
            sources: settings
                .into_iter()
                .map(|settings| SourceState {
                    settings,
                    partitions: BTreeMap::new(),
                    finished: false,
                    current: i64::MIN,
                })
                .collect(),
        }
    }

    /// Restores the max event time of a partition from a checkpoint.
    pub fn restore(&mut self, source: usize, partition: u32, max_time: i64, now_ms: i64) {
        let p = self.partition(source, partition, now_ms);
        p.max_time = p.max_time.max(max_time);
    }

    fn partition(&mut self, source: usize, partition: u32, now_ms: i64) -> &mut Partition {
        self.sources[source]
            .partitions
            .entry(partition)
            .or_insert(Partition {
                max_time: i64::MIN,
                last_seen_ms: now_ms,
                done: false,
            })
    }

    /// Declares partitions (they hold the watermark back until they show data).
    pub fn declare(&mut self, source: usize, partitions: &[u32], now_ms: i64) {
        for &p in partitions {
            self.partition(source, p, now_ms);
        }
    }

    /// Records a batch from `partition` whose largest event time is `max_time`.
    pub fn observe(&mut self, source: usize, partition: u32, max_time: i64, now_ms: i64) {
        let p = self.partition(source, partition, now_ms);
        p.max_time = p.max_time.max(max_time);
        p.last_seen_ms = now_ms;
        p.done = false;
    }

    /// Records the rows of one batch of `partition`, in log order, and
    /// stamps each with the watermark in force when it arrives: the
    /// partition's largest event time *before* that row minus the disorder
    /// bound, combined (minimum) with the current watermarks of the
    /// source's other partitions and with `cap` (the sources sharing a
    /// windowed operator with this one), and never below what the source
    /// already reached. For a single partition this depends only on the
    /// log, not on where batches begin and end, so a replay after a crash
    /// judges every row the same way.
    pub fn observe_rows(
        &mut self,
        source: usize,
        partition: u32,
        rows: &mut [crate::batch::RowMeta],
        cap: i64,
        now_ms: i64,
    ) {
        if !self.sources[source].settings.event_time {
            let wm = self.source_watermark(source, now_ms).min(cap);
            for r in rows.iter_mut() {
                r.watermark = wm;
            }
            return;
        }
        let others = self.others_watermark(source, partition, now_ms);
        let s = &mut self.sources[source];
        let disorder = s.settings.max_disorder_ms;
        let floor = s.current;
        let p = s.partitions.entry(partition).or_insert(Partition {
            max_time: i64::MIN,
            last_seen_ms: now_ms,
            done: false,
        });
        let mut max = p.max_time;
        for r in rows.iter_mut() {
            let own = if max == i64::MIN {
                i64::MIN
            } else {
                max.saturating_sub(disorder)
            };
            r.watermark = own.min(others).min(cap).max(floor);
            max = max.max(r.time);
        }
        p.max_time = max;
        p.last_seen_ms = now_ms;
        p.done = false;
    }

    /// The minimum watermark of the partitions of `source` other than
    /// `partition` that hold it back (`i64::MAX` when none does).
    fn others_watermark(&self, source: usize, partition: u32, now_ms: i64) -> i64 {
        let s = &self.sources[source];
        if s.finished {
            return i64::MAX;
        }
        s.partitions
            .iter()
            .filter(|(&k, p)| {
                let idle = s
                    .settings
                    .idle_timeout_ms
                    .is_some_and(|t| now_ms.saturating_sub(p.last_seen_ms) >= t);
                k != partition && !p.done && !idle
            })
            .map(|(_, p)| p.max_time.saturating_sub(s.settings.max_disorder_ms))
            .min()
            .unwrap_or(i64::MAX)
    }

    /// The partition reached the end of its input: it no longer holds the
    /// watermark back.
    pub fn partition_done(&mut self, source: usize, partition: u32, now_ms: i64) {
        self.partition(source, partition, now_ms).done = true;
    }

    /// Forgets partitions this source no longer reads (given to another
    /// worker). They stop holding the watermark back; with none left the
    /// watermark holds (as when every partition is idle). It is not the
    /// end of the input, which `partition_done` is.
    pub fn release(&mut self, source: usize, partitions: &[u32]) {
        let s = &mut self.sources[source];
        for p in partitions {
            s.partitions.remove(p);
        }
    }

    /// Every partition of the source reached the end of its input.
    pub fn source_finished(&mut self, source: usize) {
        self.sources[source].finished = true;
    }

    /// The largest event time seen per partition (for checkpoints).
    pub fn max_times(&self, source: usize) -> impl Iterator<Item = (u32, i64)> + '_ {
        self.sources[source]
            .partitions
            .iter()
            .filter(|(_, p)| p.max_time != i64::MIN)
            .map(|(&k, p)| (k, p.max_time))
    }

    /// Recomputes and returns the watermark of `source` at `now_ms`.
    pub fn source_watermark(&mut self, source: usize, now_ms: i64) -> i64 {
        let s = &mut self.sources[source];
        let computed = if s.finished {
            i64::MAX
        } else if !s.settings.event_time {
            now_ms
        } else if s.partitions.is_empty() {
            // None known yet, or all released: hold (never goes backwards).
            i64::MIN
        } else {
            let mut min = i64::MAX;
            let mut any_active = false;
            for p in s.partitions.values() {
                if p.done {
                    continue;
                }
                let idle = s
                    .settings
                    .idle_timeout_ms
                    .is_some_and(|t| now_ms.saturating_sub(p.last_seen_ms) >= t);
                if idle {
                    continue;
                }
                any_active = true;
                min = min.min(p.max_time.saturating_sub(s.settings.max_disorder_ms));
            }
            if any_active {
                min
            } else if s.partitions.values().all(|p| p.done) {
                i64::MAX
            } else {
                // every live partition is idle: keep the current watermark
                s.current
            }
        };
        s.current = s.current.max(computed);
        s.current
    }

    /// The watermark of a node fed by `sources`: the minimum of theirs.
    pub fn watermark_of(&mut self, sources: &[usize], now_ms: i64) -> i64 {
        sources
            .iter()
            .map(|&s| self.source_watermark(s, now_ms))
            .min()
            .unwrap_or(i64::MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(disorder: i64, idle: Option<i64>) -> WatermarkSettings {
        WatermarkSettings {
            event_time: true,
            max_disorder_ms: disorder,
            idle_timeout_ms: idle,
        }
    }

    #[test]
    fn min_over_partitions_minus_disorder() {
        let mut t = WatermarkTracker::new(vec![event(2_000, None)]);
        assert_eq!(t.source_watermark(0, 0), i64::MIN);
        t.observe(0, 0, 10_000, 0);
        assert_eq!(t.source_watermark(0, 0), 8_000);
        t.declare(0, &[1], 0);
        // partition 1 declared but silent: it holds the watermark (monotonic though)
        assert_eq!(t.source_watermark(0, 0), 8_000);
        t.observe(0, 0, 20_000, 0);
        assert_eq!(t.source_watermark(0, 0), 8_000);
        t.observe(0, 1, 15_000, 0);
        assert_eq!(t.source_watermark(0, 0), 13_000);
    }

    #[test]
    fn never_goes_backwards() {
        let mut t = WatermarkTracker::new(vec![event(0, None)]);
        t.observe(0, 0, 100, 0);
        assert_eq!(t.source_watermark(0, 0), 100);
        t.observe(0, 1, 50, 0);
        assert_eq!(t.source_watermark(0, 0), 100);
    }

    #[test]
    fn idle_partitions_stop_holding_back() {
        let mut t = WatermarkTracker::new(vec![event(0, Some(1_000))]);
        t.observe(0, 0, 100, 0);
        t.observe(0, 1, 5_000, 0);
        assert_eq!(t.source_watermark(0, 500), 100);
        t.observe(0, 1, 6_000, 1_500);
        assert_eq!(t.source_watermark(0, 1_500), 6_000);
    }

    #[test]
    fn finished_sources_release_everything() {
        let mut t = WatermarkTracker::new(vec![event(0, None), event(0, None)]);
        t.observe(0, 0, 100, 0);
        t.observe(1, 0, 50, 0);
        assert_eq!(t.watermark_of(&[0, 1], 0), 50);
        t.partition_done(1, 0, 0);
        assert_eq!(t.watermark_of(&[0, 1], 0), 100);
        t.source_finished(0);
        assert_eq!(t.watermark_of(&[0], 0), i64::MAX);
    }

    /// A consumer-group rebalance revokes partitions: they stop holding the
    /// watermark back, but losing all of them is not the end of the input
    /// (it once moved the watermark to i64::MAX, closing every window and
    /// making every later event late).
    #[test]
    fn released_partitions_are_not_finished() {
        let mut t = WatermarkTracker::new(vec![event(0, None)]);
        t.observe(0, 0, 100, 0);
        t.observe(0, 1, 50, 0);
        assert_eq!(t.source_watermark(0, 0), 50);
        t.release(0, &[1]);
        assert_eq!(t.source_watermark(0, 0), 100);
        t.release(0, &[0]);
        assert_eq!(t.source_watermark(0, 0), 100, "all released: it holds");
        // Assigned again: declared partitions hold it until they show data.
        t.declare(0, &[0, 1], 0);
        assert_eq!(t.source_watermark(0, 0), 100);
        t.observe(0, 0, 300, 0);
        t.observe(0, 1, 200, 0);
        assert_eq!(t.source_watermark(0, 0), 200);
        assert_eq!(t.max_times(0).count(), 2);
    }

    #[test]
    fn processing_time_follows_the_clock() {
        let mut t = WatermarkTracker::new(vec![WatermarkSettings {
            event_time: false,
            max_disorder_ms: 0,
            idle_timeout_ms: None,
        }]);
        assert_eq!(t.source_watermark(0, 1_234), 1_234);
        assert_eq!(t.source_watermark(0, 2_000), 2_000);
    }
}
