//! The bookkeeping behind "ack only after the checkpoint" and "never count
//! a redelivery twice", as pure logic (no sockets, no clocks) so that it is
//! tested on its own.
//!
//! The tracker remembers, as a multiset of 63-bit message ids, every message
//! the pipeline has processed whose acknowledgement the broker has not yet
//! confirmed (the `live` set). That set *is* the source position: it is
//! stored in every checkpoint. Three situations make the broker deliver a
//! message again although a checkpoint already holds it:
//!
//! 1. sluice crashes after the checkpoint but before (or while) acking;
//! 2. the connection drops before the ack reaches the broker;
//! 3. a checkpoint covering messages of a lost channel completes after the
//!    reconnect (their delivery tags died with the channel).
//!
//! In each case the ids are in `orphans` (restored from the checkpoint, or
//! moved there when the channel was lost), and the redelivered copy (flagged
//! `redelivered` by the broker) is skipped: acknowledged after the next
//! checkpoint, never processed. Orphans that are never redelivered (their
//! ack did reach the broker) are forgotten after a retention period.
//!
//! A message id identifies a message by its whole content (see
//! `source::dedup_id`), never by its `message_id` alone, so two publishes
//! that share a `message_id` are two messages, in runs with and without
//! crashes alike. Positions of version 1 held ids computed from the
//! `message_id` alone; restored, they become `legacy` orphans, matched
//! against the legacy id of each redelivery until they expire.
//!
//! Delivery tags are per channel: acks only ever name tags of the current
//! channel generation, because losing a channel drops every record of it.

use std::collections::{HashMap, VecDeque};

/// Position layout version: 2 = content ids; 1 = `message_id` ids (read
/// only, for upgrades).
const VERSION: u8 = 2;
const VERSION_LEGACY_IDS: u8 = 1;
const HEADER: usize = 1 + 8 + 8 + 4;

/// A message's dedup id (63 bits, also used as its `offset`).
pub type MessageId = u64;

/// What to do with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New to the pipeline: process it.
    Process,
    /// A redelivery of a message a checkpoint already holds: skip it (it is
    /// acknowledged with the next checkpoint).
    Skip,
}

/// A corrupt or foreign position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored AMQP source position is unreadable ({0}); was the state written by another source type?")]
pub struct PositionError(&'static str);

/// An emitted batch awaiting its checkpoint.
#[derive(Debug, Default)]
struct Record {
    seq: u64,
    /// Highest delivery tag of the current channel covered.
    max_tag: u64,
    /// Ids to release from `live` once the ack is confirmed: processed ones
    /// (and, once sealed, skipped redeliveries too).
    ids: Vec<MessageId>,
    /// In the open batch: skipped redeliveries (already in `live`).
    skipped: Vec<MessageId>,
    /// ... of them, those matched by a legacy id.
    skipped_legacy: Vec<MessageId>,
}

/// An ack to send: `basic_ack(tag, multiple = true)`, covering `messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPlan {
    pub tag: u64,
    pub messages: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Tracker {
    instance: u64,
    live: HashMap<MessageId, u32>,
    live_len: usize,
    orphans: HashMap<MessageId, u32>,
    /// Orphans restored from a version 1 position (legacy ids).
    legacy_orphans: HashMap<MessageId, u32>,
    /// When the orphans may be forgotten (ms), once a channel is up.
    orphans_expire: Option<u64>,
    records: VecDeque<Record>,
    open: Record,
    /// Acks sent, awaiting the broker's confirmation: (tag, ids).
    acking: VecDeque<(u64, Vec<MessageId>)>,
    acked_tag: u64,
    next_seq: u64,
    /// `live` changed since the last emitted position.
    dirty: bool,
}

fn add(set: &mut HashMap<MessageId, u32>, id: MessageId) {
    *set.entry(id).or_default() += 1;
}

/// Removes one occurrence; false if absent.
fn take(set: &mut HashMap<MessageId, u32>, id: MessageId) -> bool {
    match set.get_mut(&id) {
        Some(n) if *n > 1 => {
            *n -= 1;
            true
        }
        Some(_) => {
            set.remove(&id);
            true
        }
        None => false,
    }
}

impl Tracker {
    /// A tracker resuming from `restored` (the position of the last
    /// checkpoint, if any). `instance` tells this process's positions from
    /// those of earlier runs.
    pub fn restore(restored: Option<&[u8]>, instance: u64) -> Result<Self, PositionError> {
        let mut t = Tracker {
            instance,
            live: HashMap::new(),
            live_len: 0,
            orphans: HashMap::new(),
            legacy_orphans: HashMap::new(),
            orphans_expire: None,
            records: VecDeque::new(),
            open: Record::default(),
            acking: VecDeque::new(),
            acked_tag: 0,
            next_seq: 1,
            dirty: false,
        };
        if let Some(bytes) = restored {
            let legacy = bytes.first() == Some(&VERSION_LEGACY_IDS);
            for id in decode_ids(bytes)? {
                add(&mut t.live, id);
                add(
                    if legacy {
                        &mut t.legacy_orphans
                    } else {
                        &mut t.orphans
                    },
                    id,
                );
                t.live_len += 1;
            }
        }
        Ok(t)
    }

    /// A new channel is consuming (tags restart at 1). `expire_at` is when
    /// orphans may be forgotten: now + the redelivery window.
    pub fn new_channel(&mut self, expire_at: u64) {
        debug_assert!(self.records.is_empty() && self.acking.is_empty());
        self.acked_tag = 0;
        if !self.orphans.is_empty() || !self.legacy_orphans.is_empty() {
            self.orphans_expire = Some(expire_at);
        }
    }

    /// True while orphans of a version 1 position remain: deliveries then
    /// need their legacy id too ([`on_delivery_with_legacy`](Self::on_delivery_with_legacy)).
    pub fn needs_legacy_ids(&self) -> bool {
        !self.legacy_orphans.is_empty()
    }

    /// Classifies a delivery of the current channel and records it in the
    /// open batch.
    pub fn on_delivery(&mut self, tag: u64, id: MessageId, redelivered: bool) -> Verdict {
        self.on_delivery_with_legacy(tag, id, None, redelivered)
    }

    /// [`on_delivery`](Self::on_delivery), also matching `legacy` (the id
    /// the message had in version 1 positions) against legacy orphans.
    pub fn on_delivery_with_legacy(
        &mut self,
        tag: u64,
        id: MessageId,
        legacy: Option<MessageId>,
        redelivered: bool,
    ) -> Verdict {
        self.open.max_tag = self.open.max_tag.max(tag);
        if redelivered && take(&mut self.orphans, id) {
            // Already in `live`; now released by the open batch's ack.
            self.open.skipped.push(id);
            return Verdict::Skip;
        }
        if let Some(old) = legacy.filter(|&old| redelivered && take(&mut self.legacy_orphans, old))
        {
            self.open.skipped_legacy.push(old);
            return Verdict::Skip;
        }
        self.open.ids.push(id);
        add(&mut self.live, id);
        self.live_len += 1;
        self.dirty = true;
        Verdict::Process
    }

    /// True when the open batch or the position has something to emit.
    pub fn has_pending_emit(&self) -> bool {
        !self.open.ids.is_empty()
            || !self.open.skipped.is_empty()
            || !self.open.skipped_legacy.is_empty()
            || self.dirty
    }

    /// Closes the open batch; returns the position to emit with it (None
    /// when there is nothing to emit).
    pub fn seal(&mut self) -> Option<Vec<u8>> {
        if !self.has_pending_emit() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut record = std::mem::take(&mut self.open);
        record.seq = seq;
        let skipped = std::mem::take(&mut record.skipped);
        record.ids.extend(skipped);
        let skipped = std::mem::take(&mut record.skipped_legacy);
        record.ids.extend(skipped);
        if !record.ids.is_empty() {
            self.records.push_back(record);
        }
        self.dirty = false;
        Some(self.encode(seq))
    }

    /// A checkpoint holding `position` is durable: the ack to send, if any.
    /// The acked ids stay in `live` until [`confirmed`](Self::confirmed).
    pub fn on_commit(&mut self, position: &[u8]) -> Option<AckPlan> {
        let (instance, seq) = decode_header(position).ok()?;
        if instance != self.instance {
            return None;
        }
        let mut tag = 0;
        let mut ids = Vec::new();
        while self.records.front().is_some_and(|r| r.seq <= seq) {
            let r = self.records.pop_front()?;
            tag = tag.max(r.max_tag);
            ids.extend(r.ids);
        }
        if ids.is_empty() || tag <= self.acked_tag {
            return None;
        }
        self.acked_tag = tag;
        let messages = ids.len();
        self.acking.push_back((tag, ids));
        Some(AckPlan { tag, messages })
    }

    /// The broker has processed every ack up to `tag` (a later synchronous
    /// call on the same channel returned): forget those messages.
    pub fn confirmed(&mut self, tag: u64) {
        while self.acking.front().is_some_and(|(t, _)| *t <= tag) {
            if let Some((_, ids)) = self.acking.pop_front() {
                for id in ids {
                    if take(&mut self.live, id) {
                        self.live_len -= 1;
                        self.dirty = true;
                    }
                }
            }
        }
    }

    /// The channel is gone: everything emitted through it and not confirmed
    /// becomes an orphan awaiting redelivery. Normally called after emitting
    /// the open batch; deliveries of an open batch that was never emitted
    /// were not processed, so they are forgotten (the broker redelivers them).
    pub fn channel_lost(&mut self) {
        let open = std::mem::take(&mut self.open);
        for id in open.ids {
            if take(&mut self.live, id) {
                self.live_len -= 1;
            }
        }
        for id in open.skipped {
            add(&mut self.orphans, id);
        }
        for id in open.skipped_legacy {
            add(&mut self.legacy_orphans, id);
        }
        let records = std::mem::take(&mut self.records);
        let acking = std::mem::take(&mut self.acking);
        for id in records
            .into_iter()
            .flat_map(|r| r.ids)
            .chain(acking.into_iter().flat_map(|(_, ids)| ids))
        {
            add(&mut self.orphans, id);
        }
        self.orphans_expire = None;
        self.acked_tag = 0;
        self.dirty = true;
    }

    /// Forgets orphans whose retention ran out (their acks evidently reached
    /// the broker, or they went to another consumer).
    pub fn expire_orphans(&mut self, now: u64) -> usize {
        if self.orphans_expire.is_none_or(|at| now < at) {
            return 0;
        }
        self.orphans_expire = None;
        let mut n = 0;
        let legacy = std::mem::take(&mut self.legacy_orphans);
        for (id, count) in std::mem::take(&mut self.orphans).into_iter().chain(legacy) {
            for _ in 0..count {
                if take(&mut self.live, id) {
                    self.live_len -= 1;
                    n += 1;
                }
            }
        }
        self.dirty |= n > 0;
        n
    }

    /// Messages processed and not yet known to be acknowledged.
    pub fn live_len(&self) -> usize {
        self.live_len
    }

    pub fn orphans_len(&self) -> usize {
        self.orphans
            .values()
            .chain(self.legacy_orphans.values())
            .map(|&n| n as usize)
            .sum()
    }

    /// Emitted batches whose checkpoint has not completed yet, plus acks
    /// awaiting confirmation.
    pub fn unsettled(&self) -> usize {
        self.records.len() + self.acking.len()
    }

    /// The highest tag acked on the current channel.
    pub fn acked_tag(&self) -> u64 {
        self.acked_tag
    }

    fn encode(&self, seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.live_len * 8);
        out.push(VERSION);
        out.extend_from_slice(&self.instance.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&(self.live_len as u32).to_be_bytes());
        for (&id, &n) in &self.live {
            for _ in 0..n {
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        out
    }
}

/// Merges positions at a rescale (see `sluice_engine::source::MergePositions`):
/// every id of every position, as often as each holds it (two workers may
/// each hold a publish of the same content). The result is a version 2
/// position unless every input is a version 1 one.
pub(super) fn merge_positions(mine: Option<&[u8]>, released: &[&[u8]]) -> Result<Vec<u8>, PositionError> {
    let mut t = Tracker::restore(None, 0)?;
    let mut legacy = true;
    for bytes in mine.into_iter().chain(released.iter().copied()) {
        legacy &= bytes.first() == Some(&VERSION_LEGACY_IDS);
        for id in decode_ids(bytes)? {
            add(&mut t.live, id);
            t.live_len += 1;
        }
    }
    let mut out = t.encode(0);
    if legacy && (mine.is_some() || !released.is_empty()) {
        out[0] = VERSION_LEGACY_IDS;
    }
    Ok(out)
}

fn decode_header(bytes: &[u8]) -> Result<(u64, u64), PositionError> {
    if bytes.len() < HEADER {
        return Err(PositionError("too short"));
    }
    if bytes[0] != VERSION && bytes[0] != VERSION_LEGACY_IDS {
        return Err(PositionError("unknown version"));
    }
    let word = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or(PositionError("truncated"))
    };
    Ok((word(1)?, word(9)?))
}

/// The ids stored in a position.
pub(super) fn decode_ids(bytes: &[u8]) -> Result<Vec<MessageId>, PositionError> {
    decode_header(bytes)?;
    let count = bytes
        .get(17..21)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(PositionError("truncated"))? as usize;
    let body = &bytes[HEADER..];
    if body.len() != count * 8 {
        return Err(PositionError("length does not match the id count"));
    }
    Ok(body
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_be_bytes(w)
        })
        .collect())
}
