//! The checkpoint and recovery protocol, as pure logic: [`Protocol`] takes
//! [`Event`]s and answers with [`Action`]s (what to write, whom to tell).
//! It does no I/O; the processor executes what it returns.
//!
//! # What a checkpoint is
//!
//! The processor runs batches from the sources through the operators. What
//! reaches a sink is not sent at once: it is collected in that sink's
//! *outbox* for the current *epoch*. A checkpoint closes the epoch `e`:
//!
//! 1. [`Action::TakeSnapshot`]: operators get `on_checkpoint` (continuous
//!    aggregates emit their changed results into the outboxes), then the
//!    processor hands their changed state back in [`Event::Snapshot`];
//! 2. [`Action::Write`]: one [`WriteSet`] holds every operator's changed
//!    state, every source position and partition max event time, each
//!    sink's outbox for `e`, the sink acknowledgements received since the
//!    last checkpoint (and the deletion of the outboxes they cover), and the
//!    epoch number. The backend applies it atomically and durably while
//!    processing goes on. Only one checkpoint is in flight at a time;
//! 3. once the write is durable ([`Event::WriteDone`]): [`Action::Deliver`]
//!    hands the outboxes of `e` to the sinks, and [`Action::Commit`] tells
//!    every source the positions `e` covers, so it may release them upstream
//!    (acknowledge messages, commit offsets). Nothing leaves the process
//!    before the checkpoint that produced it is durable.
//!
//! A sink acknowledges an epoch once written ([`Event::SinkAcked`]); the
//! next checkpoint records the acknowledgement and deletes the outboxes up
//! to it.
//!
//! # Recovery
//!
//! A crash before step 3 restarts from `e-1`: state, positions and outboxes
//! all belong to the same consistent cut, and the sources replay their
//! input from the positions, which re-derives the same results. The
//! outboxes that were committed but not acknowledged are delivered again
//! ([`Protocol::restore`]); sinks write absolute values under deterministic
//! ids, so a second delivery has the effect of one. A position is never
//! committed to a source before the records it covers are durable, so
//! nothing a source released is needed again.
//!
//! # Flow control and shutdown
//!
//! - While any sink has `max_pending_epochs` epochs it has not
//!   acknowledged, [`Protocol::accepts_input`] is false and the processor
//!   stops reading from the sources (backpressure).
//! - An outbox of more than `early_checkpoint_records` records starts a
//!   checkpoint before the interval elapses (bounds memory).
//! - [`Event::ShutdownRequested`] asks the sources to stop
//!   ([`Action::StopSources`]). Once the input is finished
//!   ([`Event::InputFinished`]), a final checkpoint covers what is left,
//!   then the run ends ([`Action::Finish`]) when the sinks have acknowledged
//!   everything or, after a shutdown, when `drain_grace` has passed: what
//!   they have not acknowledged is in the checkpoint and is re-delivered at
//!   the next start.
//! - A failed write ([`Action::Fail`]) stops the run without a further
//!   checkpoint: the previous one is intact.
//!
//! The tests in `tests.rs` walk through these steps one by one; `model.rs`
//! checks the guarantees over random interleavings against a reference.

mod outbox;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::keys::GroupKey;
use crate::operator::StateWriter;
use crate::sink::SinkRecord;
use crate::state::{encode, Key, Restored, SinkAck, WriteSet, FORMAT_VERSION};
use outbox::Outbox;

/// What does not change during a run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Source names, by source index.
    pub sources: Vec<Arc<str>>,
    /// Sink names, by sink index (the dead-letter sink included).
    pub sinks: Vec<Arc<str>>,
    /// The number of key groups, written with each checkpoint so a restart
    /// with another count is refused.
    pub key_groups: u16,
    /// `(node, signature)` of every stateful node, written with each
    /// checkpoint.
    pub signatures: Vec<(Arc<str>, String)>,
    /// Epochs a sink may leave unacknowledged before input is paused (>= 1).
    pub max_pending_epochs: usize,
    /// Outbox records that start a checkpoint before the interval elapses.
    pub early_checkpoint_records: usize,
    /// After a shutdown, how long to wait for the sinks' acknowledgements.
    pub drain_grace: Duration,
}

/// The operator state handed over for a checkpoint.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Per stateful node: its changed entries.
    pub state: Vec<(Arc<str>, StateWriter)>,
    /// Per source index: the largest event time seen on each partition.
    pub max_times: Vec<Vec<(u32, i64)>>,
    /// In a run of several workers: the worker's cluster state (what it
    /// took in from the others), written with the state it went into.
    pub cluster: Option<Vec<u8>>,
}

/// Something that happened, for the protocol to react to.
#[derive(Debug)]
pub enum Event {
    /// A source batch went through the graph (its records are in the
    /// outboxes); `position` is where the partition resumes after it.
    BatchProcessed {
        /// The source's index in [`Config::sources`].
        source: usize,
        /// The partition the batch was read from.
        partition: u32,
        /// The source's opaque position bytes after the batch.
        position: Vec<u8>,
    },
    /// Operators changed state or produced output outside a batch (a
    /// watermark fired windows): the next checkpoint has something to save.
    StateChanged,
    /// The checkpoint interval elapsed.
    CheckpointDue,
    /// The answer to [`Action::TakeSnapshot`].
    Snapshot(Snapshot),
    /// The write of `epoch` is durable.
    WriteDone {
        /// The epoch of the [`Action::Write`] that completed.
        epoch: u64,
    },
    /// The write of `epoch` failed.
    WriteFailed {
        /// The epoch of the [`Action::Write`] that failed.
        epoch: u64,
        /// The backend's error, as text.
        error: String,
    },
    /// A sink wrote `epoch`; `progress` is its own resume data.
    SinkAcked {
        /// The sink's index in [`Config::sinks`].
        sink: usize,
        /// The epoch whose records the sink has written.
        epoch: u64,
        /// The sink's resume data, stored with the next checkpoint; `None`
        /// if the sink keeps none.
        progress: Option<Vec<u8>>,
    },
    /// A graceful stop was requested.
    ShutdownRequested,
    /// Every source has ended (stopped or exhausted). Sent again on every
    /// turn until [`Action::Finish`], with the current time for the grace.
    InputFinished {
        /// The current time, measured against the drain grace after a
        /// shutdown.
        now: Instant,
    },
}

/// What the protocol asks for.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Run `on_checkpoint` on the operators, route what they emit, then
    /// send [`Event::Snapshot`] with their changed state.
    TakeSnapshot,
    /// Apply `writes` atomically and durably, then report
    /// [`Event::WriteDone`] or [`Event::WriteFailed`].
    Write {
        /// The epoch this checkpoint closes.
        epoch: u64,
        /// Every change of the checkpoint, the epoch number included.
        writes: WriteSet,
    },
    /// Send `records`, the output of `epoch`, to `sink`.
    Deliver {
        /// The sink's index in [`Config::sinks`].
        sink: usize,
        /// The durable epoch the records belong to; the sink acknowledges it.
        epoch: u64,
        /// The sink's outbox of `epoch`, as stored in the checkpoint.
        records: Arc<Vec<SinkRecord>>,
    },
    /// Tell `source` that `positions` are durable: it may release them.
    Commit {
        /// The source's index in [`Config::sources`].
        source: usize,
        /// The durable epoch the positions belong to.
        epoch: u64,
        /// Per partition: the position the epoch covers up to.
        positions: BTreeMap<u32, Vec<u8>>,
    },
    /// Ask every source to stop reading.
    StopSources,
    /// Nothing to checkpoint and nothing outstanding: the durable state is
    /// as current as a new checkpoint would make it.
    Idle,
    /// End the run. `unacked` lists, per sink, the epochs it had not
    /// acknowledged when the drain grace ran out (they are re-delivered at
    /// the next start).
    Finish {
        /// `(sink index, epochs)` of every sink with unacknowledged epochs.
        unacked: Vec<(usize, Vec<u64>)>,
    },
    /// The write of `epoch` failed: stop without a further checkpoint.
    Fail {
        /// The epoch whose write failed.
        epoch: u64,
        /// The backend's error, as text.
        error: String,
    },
}

/// The protocol's view of one sink.
struct SinkState {
    name: Arc<str>,
    outbox: Outbox,
    /// Epochs delivered (or about to be) and not yet acknowledged.
    pending: BTreeSet<u64>,
    /// Outbox epochs present in the store.
    stored: BTreeSet<u64>,
    ack: Option<SinkAck>,
    /// `ack` changed since the last checkpoint.
    ack_dirty: bool,
}

/// The checkpoint being written.
struct Inflight {
    epoch: u64,
    positions: Vec<BTreeMap<u32, Vec<u8>>>,
    outboxes: Vec<(usize, Arc<Vec<SinkRecord>>)>,
}

/// The checkpoint protocol of one run (see the module docs).
pub struct Protocol {
    config: Config,
    /// The last epoch started (durable unless `inflight` holds it).
    epoch: u64,
    /// Per source: partition -> the position after the last batch.
    positions: Vec<BTreeMap<u32, Vec<u8>>>,
    positions_dirty: bool,
    sinks: Vec<SinkState>,
    inflight: Option<Inflight>,
    /// Something happened that the last checkpoint does not cover.
    changed: bool,
    stopping: bool,
    /// When the input was finished with nothing left to write, after a
    /// shutdown (start of the drain grace).
    drained_at: Option<Instant>,
}

impl Protocol {
    /// Resumes from what the store gave back. Takes the sinks' acks and
    /// outboxes out of `restored` and returns, with the protocol, the
    /// re-delivery of every stored outbox its sink has not acknowledged.
    pub fn restore(config: Config, restored: &mut Restored) -> (Protocol, Vec<Action>) {
        let mut actions = Vec::new();
        let mut sinks = Vec::with_capacity(config.sinks.len());
        for (i, name) in config.sinks.iter().enumerate() {
            let ack = restored.acks.remove(name.as_ref());
            let acked_epoch = ack.as_ref().map_or(0, |a| a.epoch);
            let mut pending = BTreeSet::new();
            let mut stored = BTreeSet::new();
            for (epoch, records) in restored.outbox.remove(name.as_ref()).unwrap_or_default() {
                stored.insert(epoch);
                if epoch > acked_epoch {
                    pending.insert(epoch);
                    actions.push(Action::Deliver {
                        sink: i,
                        epoch,
                        records: Arc::new(records),
                    });
                }
            }
            sinks.push(SinkState {
                name: name.clone(),
                outbox: Outbox::default(),
                pending,
                stored,
                ack,
                ack_dirty: false,
            });
        }
        let protocol = Protocol {
            positions: vec![BTreeMap::new(); config.sources.len()],
            config,
            epoch: restored.epoch,
            positions_dirty: false,
            sinks,
            inflight: None,
            changed: false,
            stopping: false,
            drained_at: None,
        };
        (protocol, actions)
    }

    /// Adds a record to `sink`'s outbox for the next epoch. With an
    /// `upsert_key`, it replaces the record of the same key in this epoch.
    pub fn record(&mut self, sink: usize, record: SinkRecord, upsert_key: Option<&GroupKey>) {
        self.sinks[sink].outbox.push(record, upsert_key);
        self.changed = true;
    }

    /// Reacts to `event`.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::BatchProcessed {
                source,
                partition,
                position,
            } => {
                self.positions[source].insert(partition, position);
                self.positions_dirty = true;
                self.changed = true;
                let outboxes: usize = self.sinks.iter().map(|s| s.outbox.len()).sum();
                if self.inflight.is_none() && outboxes >= self.config.early_checkpoint_records {
                    return vec![Action::TakeSnapshot];
                }
                Vec::new()
            }
            Event::StateChanged => {
                self.changed = true;
                Vec::new()
            }
            Event::CheckpointDue => {
                if self.inflight.is_none() && self.changed {
                    vec![Action::TakeSnapshot]
                } else if self.quiescent() {
                    vec![Action::Idle]
                } else {
                    Vec::new()
                }
            }
            Event::Snapshot(snapshot) => vec![self.start_checkpoint(snapshot)],
            Event::WriteDone { epoch } => self.write_done(epoch),
            Event::WriteFailed { epoch, error } => vec![Action::Fail { epoch, error }],
            Event::SinkAcked {
                sink,
                epoch,
                progress,
            } => {
                let s = &mut self.sinks[sink];
                s.pending.remove(&epoch);
                s.ack = Some(SinkAck { epoch, progress });
                s.ack_dirty = true;
                self.changed = true;
                Vec::new()
            }
            Event::ShutdownRequested => {
                self.stopping = true;
                vec![Action::StopSources]
            }
            Event::InputFinished { now } => self.input_finished(now),
        }
    }

    /// False while a sink has `max_pending_epochs` unacknowledged epochs:
    /// read no more input until it catches up.
    pub fn accepts_input(&self) -> bool {
        self.sinks
            .iter()
            .all(|s| s.pending.len() < self.config.max_pending_epochs)
    }

    /// The last epoch started (the last committed one once the run ends).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The epoch the records now being collected will belong to.
    pub fn next_epoch(&self) -> u64 {
        self.epoch + 1
    }

    /// Records in `sink`'s outbox for the next epoch.
    pub fn outbox_len(&self, sink: usize) -> usize {
        self.sinks[sink].outbox.len()
    }

    /// Epochs delivered (or being written) that `sink` has not acknowledged.
    pub fn pending(&self, sink: usize) -> &BTreeSet<u64> {
        &self.sinks[sink].pending
    }

    /// True when a checkpoint is being written.
    pub fn in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    fn quiescent(&self) -> bool {
        self.inflight.is_none() && !self.changed && self.sinks.iter().all(|s| s.pending.is_empty())
    }

    fn start_checkpoint(&mut self, snapshot: Snapshot) -> Action {
        debug_assert!(
            self.inflight.is_none(),
            "one checkpoint in flight at a time"
        );
        self.epoch += 1;
        let epoch = self.epoch;
        let mut writes = WriteSet::default();
        for (node, changes) in snapshot.state {
            for (group, key, value) in changes.entries {
                let key = Key::State {
                    node: node.clone(),
                    group,
                    key,
                };
                match value {
                    Some(v) => writes.put(key, v),
                    None => writes.delete(key),
                }
            }
        }
        for (node, signature) in &self.config.signatures {
            writes.put(Key::Signature(node.clone()), signature.as_bytes().to_vec());
        }
        if self.positions_dirty {
            for (s, parts) in self.positions.iter().enumerate() {
                let source = &self.config.sources[s];
                for (&partition, pos) in parts {
                    let key = Key::Position {
                        source: source.clone(),
                        partition,
                    };
                    writes.put(key, pos.clone());
                }
                for &(partition, t) in snapshot.max_times.get(s).into_iter().flatten() {
                    let key = Key::MaxEventTime {
                        source: source.clone(),
                        partition,
                    };
                    writes.put(key, t.to_be_bytes().to_vec());
                }
            }
            self.positions_dirty = false;
        }
        let mut outboxes = Vec::new();
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            if !sink.outbox.is_empty() {
                let records = sink.outbox.take();
                let key = Key::Outbox {
                    sink: sink.name.clone(),
                    epoch,
                };
                writes.put(key, encode(&records));
                sink.stored.insert(epoch);
                sink.pending.insert(epoch);
                outboxes.push((i, Arc::new(records)));
            }
            if sink.ack_dirty {
                if let Some(ack) = &sink.ack {
                    writes.put(Key::Ack(sink.name.clone()), encode(ack));
                    // An outbox goes once its sink has written it.
                    let covered: Vec<u64> = sink.stored.range(..=ack.epoch).copied().collect();
                    for e in covered {
                        let key = Key::Outbox {
                            sink: sink.name.clone(),
                            epoch: e,
                        };
                        writes.delete(key);
                        sink.stored.remove(&e);
                    }
                }
                sink.ack_dirty = false;
            }
        }
        if let Some(cluster) = snapshot.cluster {
            writes.put(Key::Cluster, cluster);
        }
        writes.put(Key::Epoch, epoch.to_be_bytes().to_vec());
        writes.put(Key::Format, FORMAT_VERSION.to_be_bytes().to_vec());
        let key_groups = self.config.key_groups.to_be_bytes().to_vec();
        writes.put(Key::KeyGroups, key_groups);
        self.inflight = Some(Inflight {
            epoch,
            positions: self.positions.clone(),
            outboxes,
        });
        self.changed = false;
        Action::Write { epoch, writes }
    }

    fn write_done(&mut self, epoch: u64) -> Vec<Action> {
        let Some(inflight) = self.inflight.take() else {
            return Vec::new();
        };
        debug_assert_eq!(inflight.epoch, epoch);
        let mut actions = Vec::new();
        for (sink, records) in inflight.outboxes {
            actions.push(Action::Deliver {
                sink,
                epoch: inflight.epoch,
                records,
            });
        }
        for (source, positions) in inflight.positions.into_iter().enumerate() {
            if !positions.is_empty() {
                actions.push(Action::Commit {
                    source,
                    epoch: inflight.epoch,
                    positions,
                });
            }
        }
        actions
    }

    fn input_finished(&mut self, now: Instant) -> Vec<Action> {
        if self.inflight.is_none() && self.changed {
            return vec![Action::TakeSnapshot];
        }
        if self.quiescent() {
            return vec![Action::Finish {
                unacked: Vec::new(),
            }];
        }
        if self.stopping && self.inflight.is_none() {
            let since = *self.drained_at.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.config.drain_grace {
                let unacked = self
                    .sinks
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !s.pending.is_empty())
                    .map(|(i, s)| (i, s.pending.iter().copied().collect()))
                    .collect();
                return vec![Action::Finish { unacked }];
            }
        }
        Vec::new()
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
