//! What a receiver has already taken in, as plain data: per source
//! partition the high-water mark of applied offsets, per sender the next
//! batch expected. Pure logic; the receiver's checkpoint holds it.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::wire::{BatchHeader, Span};
use crate::value::Str;

/// A source partition: `(source name, partition)`.
pub type PartitionId = (Str, u32);

/// Per source partition, the offset after the last applied record.
///
/// A partition's records reach a receiver with increasing offsets from any
/// one sender, and every sender of a partition reads the same log (a
/// sender that takes a Kafka partition over resumes at an offset the
/// receiver already holds), so "offset below the mark" means "applied".
///
/// Partitions of *unordered* streams ([`AppliedMarks::set_unordered`]) keep
/// instead the ids of the last [`MAX_RECENT_IDS`] records: their offsets
/// are message ids without an order (an AMQP message's hash), and a
/// message may be redelivered to any worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedMarks {
    next: BTreeMap<PartitionId, u64>,
    recent: BTreeMap<PartitionId, RecentIds>,
    unordered: BTreeSet<Str>,
}

/// Ids remembered per unordered partition (8 bytes each in a checkpoint).
pub const MAX_RECENT_IDS: usize = 1 << 16;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RecentIds {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl RecentIds {
    fn admit(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > MAX_RECENT_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

impl AppliedMarks {
    /// Whether the record at `offset` of `partition` is new; if so it is
    /// marked applied.
    pub fn admit(&mut self, partition: &PartitionId, offset: u64) -> bool {
        if self.unordered.contains(&partition.0) {
            return self
                .recent
                .entry(partition.clone())
                .or_default()
                .admit(offset);
        }
        match self.next.get_mut(partition) {
            Some(next) if offset < *next => false,
            Some(next) => {
                *next = offset.saturating_add(1);
                true
            }
            None => {
                self.next
                    .insert(partition.clone(), offset.saturating_add(1));
                true
            }
        }
    }

    /// Keeps the items of `items` (records of `partition`, in the order
    /// they arrived) that [`AppliedMarks::admit`] admits, one after the
    /// other, looking the partition up once.
    pub fn retain_new<T>(
        &mut self,
        partition: &PartitionId,
        items: &mut Vec<T>,
        offset: impl Fn(&T) -> u64,
    ) {
        if items.is_empty() {
            return;
        }
        if self.unordered.contains(&partition.0) {
            let recent = self.recent.entry(partition.clone()).or_default();
            items.retain(|item| recent.admit(offset(item)));
            return;
        }
        let next = self.next.entry(partition.clone()).or_insert(0);
        items.retain(|item| {
            let o = offset(item);
            if o < *next {
                return false;
            }
            *next = o.saturating_add(1);
            true
        });
    }

    /// Whether partial results folded from the records at offsets
    /// `first..=last` of `partition` (an ordered stream's) are new: all of
    /// them ([`RangeAdmission::New`], then the range counts as applied),
    /// none ([`RangeAdmission::Applied`]), or some
    /// ([`RangeAdmission::Overlap`]: the receiver refuses such batches
    /// before journaling them, see [`JournaledMarks::check`]; the range
    /// then counts as applied).
    pub fn admit_range(
        &mut self,
        partition: &PartitionId,
        first: u64,
        last: u64,
    ) -> RangeAdmission {
        let next = self.next.entry(partition.clone()).or_insert(0);
        let admission = if first >= *next {
            RangeAdmission::New
        } else if last < *next {
            RangeAdmission::Applied
        } else {
            RangeAdmission::Overlap
        };
        *next = (*next).max(last.saturating_add(1));
        admission
    }

    /// Takes the records of `streams` (source names as the senders give
    /// them) by id rather than by offset order.
    pub fn set_unordered(&mut self, streams: impl IntoIterator<Item = Str>) {
        self.unordered = streams.into_iter().collect();
    }

    fn recent_ids(&self) -> Vec<PartitionIds> {
        self.recent
            .iter()
            .map(|((source, partition), r)| PartitionIds {
                source: source.clone(),
                partition: *partition,
                ids: r.order.iter().copied().collect(),
            })
            .collect()
    }

    /// The offset after the last applied record of `partition`, if any.
    pub fn next_offset(&self, partition: &PartitionId) -> Option<u64> {
        self.next.get(partition).copied()
    }

    fn marks(&self) -> Vec<PartitionMark> {
        self.next
            .iter()
            .map(|((source, partition), &next_offset)| PartitionMark {
                source: source.clone(),
                partition: *partition,
                next_offset,
            })
            .collect()
    }

    fn from_marks(marks: &[PartitionMark], ids: &[PartitionIds]) -> Self {
        AppliedMarks {
            next: marks
                .iter()
                .map(|m| ((m.source.clone(), m.partition), m.next_offset))
                .collect(),
            recent: ids
                .iter()
                .map(|p| {
                    let mut r = RecentIds::default();
                    for &id in &p.ids {
                        r.admit(id);
                    }
                    ((p.source.clone(), p.partition), r)
                })
                .collect(),
            unordered: BTreeSet::new(),
        }
    }
}

/// See [`AppliedMarks::admit_range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAdmission {
    /// Nothing of the range was applied before.
    New,
    /// All of it was.
    Applied,
    /// Part of it was.
    Overlap,
}

/// Per source partition, the offset after the last record journaled: the
/// receiver's view as of the end of its inbound journal (its applied marks
/// plus the batches journaled after them).
///
/// A sender that folds rows into partial results must not fold rows some
/// earlier run of it may have sent already: the receiver could hold part
/// of the range and could take the partial results neither whole nor
/// apart. So each acknowledgement tells the sender these marks for its
/// partitions ([`JournaledMarks::of_sender`]); the sender folds only rows
/// at or above the marks of the first acknowledgement its process gets
/// (after which an earlier process can journal nothing more), and the
/// receiver refuses a batch whose partial results overlap what it holds
/// ([`JournaledMarks::check`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournaledMarks {
    next: BTreeMap<PartitionId, u64>,
}

impl JournaledMarks {
    /// Starts from the applied marks of a checkpoint.
    pub fn from_checkpoint(checkpoint: &InboundCheckpoint) -> Self {
        JournaledMarks {
            next: checkpoint
                .partitions
                .iter()
                .map(|m| ((m.source.clone(), m.partition), m.next_offset))
                .collect(),
        }
    }

    /// Records the offsets of a journaled batch.
    pub fn journaled(&mut self, spans: &[Span]) {
        for s in spans {
            let next = self
                .next
                .entry((s.source.clone(), s.partition))
                .or_insert(0);
            *next = (*next).max(s.last.saturating_add(1));
        }
    }

    /// Checks a batch before it is journaled: an error when partial
    /// results cover a range of which some, but not all, is journaled.
    ///
    /// # Errors
    /// The reason, for the sender.
    pub fn check(&self, spans: &[Span]) -> Result<(), String> {
        for s in spans.iter().filter(|s| s.combined) {
            let next = self
                .next
                .get(&(s.source.clone(), s.partition))
                .copied()
                .unwrap_or(0);
            if s.first < next && s.last >= next {
                return Err(format!(
                    "partial results of partition {} of `{}` cover offsets {}..={}, and this worker holds them up to {} already",
                    s.partition,
                    s.source.replace('\0', "."),
                    s.first,
                    s.last,
                    next - 1
                ));
            }
        }
        Ok(())
    }

    /// The marks of the partitions `sender` numbers for itself (those of a
    /// source each worker reads for itself: `sender << 20 | p`).
    pub fn of_sender(&self, sender: u32) -> Vec<PartitionMark> {
        self.next
            .iter()
            .filter(|((_, partition), _)| partition >> 20 == sender)
            .map(|((source, partition), &next_offset)| PartitionMark {
                source: source.clone(),
                partition: *partition,
                next_offset,
            })
            .collect()
    }
}

/// What to do with a batch, given the batches already taken from its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The next batch of its sender: take it.
    Take,
    /// Taken before (a retry whose answer was lost): answer it as done.
    Duplicate,
    /// From an earlier session of its sender (a stale process).
    Stale,
    /// An earlier batch of its sender has not been taken yet.
    NotYet,
}

/// Per sender, its current session and the next batch number expected.
///
/// Batches of one sender must be journaled in the order they were sent:
/// with several batches in flight, a later one may arrive first, and if it
/// were journaled first the partition marks would take the earlier one,
/// arriving next, for a replay and drop it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderCursors {
    next: BTreeMap<u32, (u64, u64)>,
}

impl SenderCursors {
    /// Decides about a batch (no change).
    pub fn admission(&self, header: &BatchHeader) -> Admission {
        match self.next.get(&header.sender) {
            Some(&(session, _)) if header.session < session => Admission::Stale,
            Some(&(session, next)) if header.session == session => {
                if header.seq < next {
                    Admission::Duplicate
                } else if header.seq == next {
                    Admission::Take
                } else {
                    Admission::NotYet
                }
            }
            // A new session (or a sender not seen before) starts at 0.
            _ if header.seq == 0 => Admission::Take,
            _ => Admission::NotYet,
        }
    }

    /// Records that the batch was taken.
    pub fn taken(&mut self, header: &BatchHeader) {
        let next = header.seq.saturating_add(1);
        let entry = self
            .next
            .entry(header.sender)
            .or_insert((header.session, next));
        if header.session > entry.0 || (header.session == entry.0 && next > entry.1) {
            *entry = (header.session, next);
        }
    }

    fn marks(&self) -> Vec<SenderMark> {
        self.next
            .iter()
            .map(|(&sender, &(session, next_seq))| SenderMark {
                sender,
                session,
                next_seq,
            })
            .collect()
    }

    fn from_marks(marks: &[SenderMark]) -> Self {
        SenderCursors {
            next: marks
                .iter()
                .map(|m| (m.sender, (m.session, m.next_seq)))
                .collect(),
        }
    }
}

/// The receive side's part of a checkpoint: store it with the operator
/// state it goes with, and restore both together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundCheckpoint {
    /// The inbound journal position to resume reading from; the journal may
    /// be truncated before it once this checkpoint is durable.
    pub position: u64,
    /// Per source partition: the high-water mark of the offsets applied
    /// (a replayed record below it is dropped).
    pub partitions: Vec<PartitionMark>,
    /// Per sender: the batch it is expected to send next.
    pub senders: Vec<SenderMark>,
    /// Per source partition: the watermark its sender last reported.
    pub watermarks: Vec<PartitionWatermark>,
    /// Per partition of an unordered stream: the ids applied last, oldest
    /// first.
    pub ids: Vec<PartitionIds>,
}

/// The ids applied last on a partition of an unordered stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionIds {
    /// The source's name as the senders give it.
    pub source: Str,
    /// The partition within the source.
    pub partition: u32,
    /// The ids, oldest first.
    pub ids: Vec<u64>,
}

/// A partition's applied high-water mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMark {
    /// The source's name in the pipeline.
    pub source: Str,
    /// The partition within the source.
    pub partition: u32,
    /// The offset after the last applied record.
    pub next_offset: u64,
}

/// A sender's position in its stream to this receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderMark {
    /// The sender's worker id.
    pub sender: u32,
    /// The sender's latest session seen (see [`super::wire::BatchHeader::session`]);
    /// batches of earlier sessions are stale.
    pub session: u64,
    /// The `seq` of the next batch expected in that session.
    pub next_seq: u64,
}

/// A partition's watermark as last reported by its sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionWatermark {
    /// The source's name in the pipeline.
    pub source: Str,
    /// The partition within the source.
    pub partition: u32,
    /// The watermark, epoch milliseconds.
    pub watermark: i64,
}

impl InboundCheckpoint {
    pub(crate) fn new(
        position: u64,
        marks: &AppliedMarks,
        senders: &SenderCursors,
        watermarks: Vec<PartitionWatermark>,
    ) -> Self {
        InboundCheckpoint {
            position,
            partitions: marks.marks(),
            senders: senders.marks(),
            watermarks,
            ids: marks.recent_ids(),
        }
    }

    pub(crate) fn applied_marks(&self) -> AppliedMarks {
        AppliedMarks::from_marks(&self.partitions, &self.ids)
    }

    pub(crate) fn sender_cursors(&self) -> SenderCursors {
        SenderCursors::from_marks(&self.senders)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(sender: u32, session: u64, seq: u64) -> BatchHeader {
        BatchHeader {
            signature: "s".into(),
            sender,
            session,
            seq,
        }
    }

    proptest::proptest! {
        /// A batch of records taken at once keeps exactly the records that
        /// admitting them one by one keeps, for ordered and unordered
        /// streams, and leaves the same marks.
        #[test]
        fn retaining_a_batch_equals_admitting_each_record(
            batches in proptest::collection::vec(proptest::collection::vec(0u64..40, 0..12), 1..6),
            unordered in proptest::bool::ANY,
        ) {
            let p: PartitionId = ("s\0agg".into(), 1);
            let mut one = AppliedMarks::default();
            let mut all = AppliedMarks::default();
            if unordered {
                one.set_unordered(["s\0agg".into()]);
                all.set_unordered(["s\0agg".into()]);
            }
            for batch in batches {
                let expected: Vec<u64> = batch.iter().copied().filter(|&o| one.admit(&p, o)).collect();
                let mut kept = batch.clone();
                all.retain_new(&p, &mut kept, |&o| o);
                proptest::prop_assert_eq!(kept, expected);
                proptest::prop_assert_eq!(&all, &one);
            }
        }
    }

    #[test]
    fn marks_drop_replays_from_any_sender() {
        let p: PartitionId = ("orders".into(), 2);
        let mut marks = AppliedMarks::default();
        // worker 0 reads offsets 0..5 (a gap: 3 was filtered out)
        for o in [0, 1, 2, 4] {
            assert!(marks.admit(&p, o));
        }
        // worker 1 takes the partition over from the committed offset 2
        assert!(!marks.admit(&p, 2));
        assert!(!marks.admit(&p, 4));
        assert!(marks.admit(&p, 5));
        // another partition is independent
        assert!(marks.admit(&("orders".into(), 3), 0));
        assert_eq!(marks.next_offset(&p), Some(6));
    }

    #[test]
    fn unordered_streams_drop_replays_by_id() {
        let p: PartitionId = ("amqp\0agg".into(), 0);
        let mut marks = AppliedMarks::default();
        marks.set_unordered(["amqp\0agg".into()]);
        assert!(marks.admit(&p, 900));
        assert!(marks.admit(&p, 5));
        assert!(!marks.admit(&p, 900), "a redelivery to another worker");
        let cp = InboundCheckpoint::new(1, &marks, &SenderCursors::default(), Vec::new());
        let mut back = cp.applied_marks();
        back.set_unordered(["amqp\0agg".into()]);
        assert!(!back.admit(&p, 5), "the ids survive a checkpoint");
        assert!(back.admit(&p, 6));
        // an ordered stream with the same offsets uses its high-water mark
        assert!(marks.admit(&("kafka\0agg".into(), 0), 900));
        assert!(!marks.admit(&("kafka\0agg".into(), 0), 5));
    }

    #[test]
    fn senders_are_taken_in_order() {
        let mut c = SenderCursors::default();
        assert_eq!(c.admission(&header(1, 10, 1)), Admission::NotYet);
        assert_eq!(c.admission(&header(1, 10, 0)), Admission::Take);
        c.taken(&header(1, 10, 0));
        assert_eq!(c.admission(&header(1, 10, 0)), Admission::Duplicate);
        assert_eq!(c.admission(&header(1, 10, 2)), Admission::NotYet);
        assert_eq!(c.admission(&header(1, 10, 1)), Admission::Take);
        c.taken(&header(1, 10, 1));
        // the sender restarted: a new session starts at 0
        assert_eq!(c.admission(&header(1, 20, 1)), Admission::NotYet);
        assert_eq!(c.admission(&header(1, 20, 0)), Admission::Take);
        c.taken(&header(1, 20, 0));
        // the old process, resumed, is stale
        assert_eq!(c.admission(&header(1, 10, 2)), Admission::Stale);
        // other senders are independent
        assert_eq!(c.admission(&header(2, 5, 0)), Admission::Take);
    }

    #[test]
    fn checkpoints_round_trip() {
        let mut marks = AppliedMarks::default();
        marks.admit(&("a".into(), 0), 7);
        marks.admit(&("b".into(), 3), 1);
        let mut senders = SenderCursors::default();
        senders.taken(&header(2, 9, 4));
        let cp = InboundCheckpoint::new(42, &marks, &senders, Vec::new());
        let bytes = bincode::serde::encode_to_vec(&cp, bincode::config::standard()).unwrap();
        let (back, _): (InboundCheckpoint, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, cp);
        assert_eq!(back.applied_marks(), marks);
        assert_eq!(back.sender_cursors(), senders);
    }

    #[test]
    fn a_combined_range_is_taken_whole_or_not_at_all() {
        let p: PartitionId = ("in\0agg".into(), 1 << 20);
        let mut marks = AppliedMarks::default();
        assert!(marks.admit(&p, 4));
        assert_eq!(marks.admit_range(&p, 5, 9), RangeAdmission::New);
        assert_eq!(marks.next_offset(&p), Some(10));
        // a replay of the same range, or of a part of it
        assert_eq!(marks.admit_range(&p, 5, 9), RangeAdmission::Applied);
        assert_eq!(marks.admit_range(&p, 0, 7), RangeAdmission::Applied);
        assert!(!marks.admit(&p, 9));
        // a range straddling the mark
        assert_eq!(marks.admit_range(&p, 8, 12), RangeAdmission::Overlap);
        assert_eq!(marks.next_offset(&p), Some(13));
        assert!(marks.admit(&p, 13));
    }

    fn span(partition: u32, first: u64, last: u64, combined: bool) -> Span {
        Span {
            source: "in\0agg".into(),
            partition,
            first,
            last,
            combined,
        }
    }

    #[test]
    fn journaled_marks_refuse_partial_results_over_what_is_held() {
        let mut marks = AppliedMarks::default();
        marks.admit(&("in\0agg".into(), 1 << 20), 99);
        let cp = InboundCheckpoint::new(0, &marks, &SenderCursors::default(), Vec::new());
        let mut j = JournaledMarks::from_checkpoint(&cp);
        // worker 1's partition holds offsets up to 99
        assert_eq!(
            j.of_sender(1),
            vec![PartitionMark {
                source: "in\0agg".into(),
                partition: 1 << 20,
                next_offset: 100
            }]
        );
        assert!(j.of_sender(2).is_empty());
        // records below the mark are fine (the marks drop them later)
        assert!(j.check(&[span(1 << 20, 50, 150, false)]).is_ok());
        j.journaled(&[span(1 << 20, 50, 150, false)]);
        assert_eq!(j.of_sender(1)[0].next_offset, 151);
        // partial results wholly above or wholly below: fine
        assert!(j.check(&[span(1 << 20, 151, 300, true)]).is_ok());
        assert!(j.check(&[span(1 << 20, 10, 150, true)]).is_ok());
        // straddling: refused, with the offsets in the reason
        let e = j.check(&[span(1 << 20, 140, 300, true)]).unwrap_err();
        assert!(e.contains("140..=300") && e.contains("150"), "{e}");
        // another partition is independent
        assert!(j.check(&[span(2 << 20, 140, 300, true)]).is_ok());
    }
}
