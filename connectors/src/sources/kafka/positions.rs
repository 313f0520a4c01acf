//! Kafka positions in sluice's checkpoints, and the engine partition ids of
//! (topic, partition) pairs. Pure logic.
//!
//! The engine knows partitions by a `u32`. Each (topic, Kafka partition)
//! gets one: ids are assigned in the order partitions are first seen,
//! starting after the largest id in the restored checkpoint. The id table
//! itself is stored in the positions: a position's bytes name its topic and
//! partition, so a restart rebuilds the table from the checkpoint and keeps
//! every id stable (the processor's positions and per-partition watermarks
//! are keyed by it). An id is never reused for another partition, so there
//! are no collisions, unlike a hash.
//!
//! Position bytes, version 1: `[1][next offset: i64 BE][partition: i32 BE][topic: UTF-8]`,
//! where "next offset" is the offset of the first event not yet read.

use std::collections::{BTreeMap, HashMap};

const VERSION: u8 = 1;

/// A (topic, partition) pair.
pub(super) type TopicPartition = (String, i32);

/// Where a source stands in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    /// The offset of the next event to read.
    pub next: i64,
}

/// A checkpointed position that is not a Kafka position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum PositionError {
    #[error("position of partition {id} is not a Kafka position (was this source of another type before? rebuild the state with `sluice replay`)")]
    NotKafka { id: u32 },
    #[error("partitions {first} and {second} both hold the position of {topic}[{partition}]")]
    Duplicate {
        first: u32,
        second: u32,
        topic: String,
        partition: i32,
    },
}

/// Encodes a position for the checkpoint.
pub fn encode(topic: &str, partition: i32, next: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(13 + topic.len());
    v.push(VERSION);
    v.extend_from_slice(&next.to_be_bytes());
    v.extend_from_slice(&partition.to_be_bytes());
    v.extend_from_slice(topic.as_bytes());
    v
}

/// Decodes a position written by [`encode`].
pub fn decode(bytes: &[u8]) -> Option<Position> {
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION {
        return None;
    }
    let (next, rest) = rest.split_at_checked(8)?;
    let (partition, topic) = rest.split_at_checked(4)?;
    Some(Position {
        topic: std::str::from_utf8(topic).ok()?.to_string(),
        partition: i32::from_be_bytes(partition.try_into().ok()?),
        next: i64::from_be_bytes(next.try_into().ok()?),
    })
}

/// The engine partition id of every (topic, partition) this source knows.
#[derive(Debug, Default)]
pub(super) struct PartitionIds {
    ids: HashMap<TopicPartition, u32>,
    next_id: u32,
    /// With several workers: the configured topics, which fix every id
    /// (`topic index << 16 | partition`), the same on every worker, since
    /// the workers of a consumer group share (and move) partitions.
    fixed: Option<Vec<String>>,
}

/// Ids of partitions of topics outside the fixed list start here.
const UNLISTED: u32 = 1 << 31;

impl PartitionIds {
    /// Rebuilds the table from restored positions; also returns the
    /// restored next offset of each partition.
    pub(super) fn restore(
        restored: &BTreeMap<u32, Vec<u8>>,
    ) -> Result<(Self, HashMap<TopicPartition, i64>), PositionError> {
        let mut table = PartitionIds::default();
        let mut next = HashMap::new();
        for (&id, bytes) in restored {
            let pos = decode(bytes).ok_or(PositionError::NotKafka { id })?;
            let tp = (pos.topic, pos.partition);
            if let Some(&first) = table.ids.get(&tp) {
                return Err(PositionError::Duplicate {
                    first,
                    second: id,
                    topic: tp.0,
                    partition: tp.1,
                });
            }
            table.next_id = table.next_id.max(id.saturating_add(1));
            table.ids.insert(tp.clone(), id);
            next.insert(tp, pos.next);
        }
        Ok((table, next))
    }

    /// Makes ids a function of (topic, partition) alone, the same on every
    /// worker (runs of several workers).
    pub(super) fn fix(&mut self, topics: &[String]) {
        self.fixed = Some(topics.to_vec());
    }

    /// Every id known: restored from the checkpoint or assigned since.
    pub(super) fn known(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.values().copied()
    }

    /// The id of `(topic, partition)`, assigning a new one if needed.
    pub(super) fn id(&mut self, topic: &str, partition: i32) -> u32 {
        if let Some(&id) = self.ids.get(&(topic.to_string(), partition)) {
            return id;
        }
        if let Some(topics) = &self.fixed {
            let id = match topics.iter().position(|t| t == topic) {
                Some(t) if (0..1 << 16).contains(&partition) => ((t as u32) << 16) | partition as u32,
                _ => {
                    self.next_id = self.next_id.max(UNLISTED);
                    let id = self.next_id;
                    self.next_id = self.next_id.saturating_add(1);
                    id
                }
            };
            self.ids.insert((topic.to_string(), partition), id);
            return id;
        }
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        self.ids.insert((topic.to_string(), partition), id);
        id
    }
}

/// Whether a bounded run (`sluice run --once`, replay) has read a partition
/// up to `end`, the high watermark it had when assigned. `next` is the next
/// offset to read if known; `start_at` is where a partition without a
/// position starts: its low watermark for `earliest`, None for `latest`
/// (which reads nothing in a bounded run).
pub(super) fn reached_end(next: Option<i64>, start_at: Option<i64>, end: i64) -> bool {
    match next.or(start_at) {
        Some(n) => n >= end,
        None => true,
    }
}
