//! Model test: the protocol driven through random interleavings of input,
//! checkpoint ticks, writes that complete, fail or are cut by a crash,
//! sinks that write and acknowledge at their own pace, shutdowns and
//! restarts from what the store holds. A small world plays the I/O: an
//! in-memory store, sources with fixed input that resume from the restored
//! positions, and sink destinations that keep the last value per id.
//!
//! Checked after every step ([`World`]'s `check_*` methods) and at the end:
//! - a sink gets an epoch only once it is durable, in order, never after its
//!   acknowledgement is durable (re-delivery stops once acked);
//! - a position reaches a source only once durable, and every record it
//!   covers is in a durable outbox (positions never run ahead of records);
//! - an outbox is deleted only once its sink acknowledged it;
//! - one write in flight at a time; input is read only while no sink has
//!   `max_pending_epochs` unacknowledged epochs, and no sink ever has more;
//! - at the end every destination holds exactly the records the reference
//!   routing sends it (none lost, none invented), and nothing is left to
//!   deliver.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{Action, Config, Event, Protocol, Snapshot};
use crate::batch::RowKind;
use crate::sink::SinkRecord;
use crate::state::{MemoryBackend, Restored, StateBackend, WriteSet};
use crate::value::Value;

const SOURCES: usize = 2;
const PARTITIONS: u32 = 2;
const SINKS: usize = 2;
const GRACE: Duration = Duration::from_secs(5);

/// One step of the world.
#[derive(Debug, Clone)]
enum Op {
    /// A source batch of up to `n` records, if input is accepted.
    Read {
        source: usize,
        partition: u32,
        n: u64,
    },
    /// The checkpoint interval elapsed.
    Tick,
    /// The write in flight becomes durable.
    WriteCompletes,
    /// The write in flight fails (the run stops).
    WriteFails,
    /// A sink writes the oldest epoch it was given to its destination.
    SinkWrites(usize),
    /// A sink acknowledges the oldest epoch it wrote.
    SinkAcks(usize),
    /// A graceful stop is requested.
    Shutdown,
    /// The process dies; a write in flight lands or not.
    Crash { write_lands: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..SOURCES, 0..PARTITIONS, 1u64..4)
            .prop_map(|(source, partition, n)| Op::Read { source, partition, n }),
        3 => Just(Op::Tick),
        3 => Just(Op::WriteCompletes),
        1 => Just(Op::WriteFails),
        3 => (0..SINKS).prop_map(Op::SinkWrites),
        3 => (0..SINKS).prop_map(Op::SinkAcks),
        1 => Just(Op::Shutdown),
        1 => any::<bool>().prop_map(|write_lands| Op::Crash { write_lands }),
    ]
}

/// The reference routing: sink 0 gets every record, sink 1 the records at
/// even offsets.
fn routed_to(sink: usize, offset: u64) -> bool {
    sink == 0 || offset.is_multiple_of(2)
}

fn record_id(source: usize, partition: u32, offset: u64) -> String {
    format!("{source}:{partition}:{offset}")
}

fn record(source: usize, partition: u32, offset: u64) -> SinkRecord {
    SinkRecord {
        kind: RowKind::Insert,
        id: record_id(source, partition, offset).into(),
        value: Value::Int(offset as i64),
        time: 0,
    }
}

/// One incarnation of the process: lost at a crash.
struct Run {
    protocol: Protocol,
    /// Per source and partition: the next offset to read.
    next: Vec<Vec<u64>>,
    stopped: bool,
    write: Option<(u64, WriteSet)>,
    /// Per sink: epochs handed over, not yet written.
    given: Vec<VecDeque<(u64, Arc<Vec<SinkRecord>>)>>,
    /// Per sink: epochs written, not yet acknowledged.
    written: Vec<VecDeque<u64>>,
    /// Per sink: the last epoch handed over in this run.
    last_given: Vec<u64>,
    /// The protocol ended the run (finished or failed).
    over: bool,
    /// It ended because a write failed.
    failed: bool,
}

struct World {
    max_pending: usize,
    /// Records per source partition.
    input: u64,
    store: MemoryBackend,
    /// What the store holds now.
    durable: Restored,
    /// Per sink: every record id ever stored in a durable outbox.
    ever_durable: Vec<BTreeSet<String>>,
    /// Per source and partition: the highest position released upstream.
    released: Vec<Vec<u64>>,
    /// Per sink: the destination, id -> value.
    destination: Vec<BTreeMap<String, SinkRecord>>,
    /// Per sink: the highest epoch it acknowledged, in any run.
    acked: Vec<u64>,
    run: Option<Run>,
    now: Instant,
}

fn sink_index(name: &str) -> usize {
    name["sink".len()..].parse().expect("named sink<i>")
}

fn position(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("8-byte positions"))
}

impl World {
    fn new(max_pending: usize, input: u64) -> World {
        World {
            max_pending,
            input,
            store: MemoryBackend::new(),
            durable: Restored::default(),
            ever_durable: vec![BTreeSet::new(); SINKS],
            released: vec![vec![0; PARTITIONS as usize]; SOURCES],
            destination: vec![BTreeMap::new(); SINKS],
            acked: vec![0; SINKS],
            run: None,
            now: Instant::now(),
        }
    }

    fn config(&self) -> Config {
        Config {
            sources: (0..SOURCES).map(|s| Arc::from(format!("src{s}"))).collect(),
            sinks: (0..SINKS).map(|s| Arc::from(format!("sink{s}"))).collect(),
            key_groups: 4,
            signatures: Vec::new(),
            max_pending_epochs: self.max_pending,
            early_checkpoint_records: 5,
            drain_grace: GRACE,
        }
    }

    /// Starts a run from what the store holds, as the runtime does.
    fn start(&mut self) -> Result<(), TestCaseError> {
        let store = self.store.reopen().expect("same format");
        let mut restored = store.restore().expect("readable");
        let mut next = vec![vec![0; PARTITIONS as usize]; SOURCES];
        for (s, parts) in next.iter_mut().enumerate() {
            if let Some(stored) = restored.positions.get(&format!("src{s}")) {
                for (&p, pos) in stored {
                    parts[p as usize] = position(pos);
                }
            }
            for (p, &from) in parts.iter().enumerate() {
                prop_assert!(
                    from >= self.released[s][p],
                    "source {s}:{p} resumes at {from}, before what it released ({})",
                    self.released[s][p]
                );
            }
        }
        let (protocol, actions) = Protocol::restore(self.config(), &mut restored);
        self.run = Some(Run {
            protocol,
            next,
            stopped: false,
            write: None,
            given: vec![VecDeque::new(); SINKS],
            written: vec![VecDeque::new(); SINKS],
            last_given: vec![0; SINKS],
            over: false,
            failed: false,
        });
        self.execute(actions)
    }

    fn run(&mut self) -> &mut Run {
        self.run.as_mut().expect("started")
    }

    fn handle(&mut self, event: Event) -> Result<(), TestCaseError> {
        let actions = self.run().protocol.handle(event);
        self.execute(actions)
    }

    fn execute(&mut self, actions: Vec<Action>) -> Result<(), TestCaseError> {
        for action in actions {
            match action {
                Action::TakeSnapshot => self.handle(Event::Snapshot(Snapshot::default()))?,
                Action::Write { epoch, writes } => self.check_write(epoch, writes)?,
                Action::Deliver {
                    sink,
                    epoch,
                    records,
                } => self.check_deliver(sink, epoch, records)?,
                Action::Commit {
                    source,
                    epoch,
                    positions,
                } => self.check_commit(source, epoch, positions)?,
                Action::StopSources => self.run().stopped = true,
                Action::Idle => {}
                Action::Finish { .. } => self.run().over = true,
                Action::Fail { .. } => {
                    self.run().over = true;
                    self.run().failed = true;
                }
            }
        }
        Ok(())
    }

    fn check_write(&mut self, epoch: u64, writes: WriteSet) -> Result<(), TestCaseError> {
        let in_flight = self.run().write.is_some();
        prop_assert!(!in_flight, "a second write while one is in flight");
        for w in &writes.writes {
            if let crate::state::Write::Delete(crate::state::Key::Outbox { sink, epoch: e }) = w {
                let s = sink_index(sink);
                prop_assert!(
                    *e <= self.acked[s],
                    "outbox {e} of sink {s} deleted, acknowledged only up to {}",
                    self.acked[s]
                );
            }
        }
        self.run().write = Some((epoch, writes));
        Ok(())
    }

    fn check_deliver(
        &mut self,
        sink: usize,
        epoch: u64,
        records: Arc<Vec<SinkRecord>>,
    ) -> Result<(), TestCaseError> {
        prop_assert!(
            epoch <= self.durable.epoch,
            "epoch {epoch} delivered, durable only up to {}",
            self.durable.epoch
        );
        let name = format!("sink{sink}");
        let durable_ack = self.durable.acks.get(&name).map_or(0, |a| a.epoch);
        prop_assert!(
            epoch > durable_ack,
            "epoch {epoch} delivered again after its acknowledgement ({durable_ack}) was durable"
        );
        let stored = self
            .durable
            .outbox
            .get(&name)
            .and_then(|o| o.iter().find(|(e, _)| *e == epoch).map(|(_, r)| r.clone()));
        prop_assert_eq!(
            stored.as_ref(),
            Some(records.as_ref()),
            "delivered != stored"
        );
        let run = self.run.as_mut().expect("started");
        prop_assert!(epoch > run.last_given[sink], "epochs out of order");
        run.last_given[sink] = epoch;
        run.given[sink].push_back((epoch, records));
        Ok(())
    }

    fn check_commit(
        &mut self,
        source: usize,
        epoch: u64,
        positions: BTreeMap<u32, Vec<u8>>,
    ) -> Result<(), TestCaseError> {
        prop_assert!(epoch <= self.durable.epoch, "commit of a non-durable epoch");
        let durable = self.durable.positions.get(&format!("src{source}"));
        for (p, pos) in positions {
            let pos = position(&pos);
            let stored = durable.and_then(|d| d.get(&p)).map_or(0, |v| position(v));
            prop_assert!(pos <= stored, "position {pos} committed, {stored} durable");
            for offset in 0..pos {
                for sink in (0..SINKS).filter(|&k| routed_to(k, offset)) {
                    let id = record_id(source, p, offset);
                    prop_assert!(
                        self.ever_durable[sink].contains(&id),
                        "position {pos} of {source}:{p} committed before record {id} was durable"
                    );
                }
            }
            let released = &mut self.released[source][p as usize];
            *released = (*released).max(pos);
        }
        Ok(())
    }

    /// Applies `writes` to the store as the backend would, atomically.
    fn land(&mut self, writes: WriteSet) {
        self.store.apply(writes).expect("in memory");
        self.durable = self.store.restore().expect("readable");
        for (name, epochs) in &self.durable.outbox {
            let sink = sink_index(name);
            for (_, records) in epochs {
                self.ever_durable[sink].extend(records.iter().map(|r| r.id.to_string()));
            }
        }
    }

    /// Starts a new run when there is none (or it ended), as a restart of
    /// the process would.
    fn ensure_started(&mut self) -> Result<(), TestCaseError> {
        if self.run.as_ref().is_none_or(|r| r.over) {
            self.start()?;
        }
        Ok(())
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        self.now += Duration::from_secs(1);
        match op {
            Op::Read {
                source,
                partition,
                n,
            } => {
                let input = self.input;
                let run = self.run();
                let from = run.next[source][partition as usize];
                if run.stopped || from >= input {
                    return self.input_finished_if_done();
                }
                if !run.protocol.accepts_input() {
                    return Ok(());
                }
                let to = (from + n).min(input);
                for offset in from..to {
                    for sink in (0..SINKS).filter(|&k| routed_to(k, offset)) {
                        run.protocol
                            .record(sink, record(source, partition, offset), None);
                    }
                }
                run.next[source][partition as usize] = to;
                self.handle(Event::BatchProcessed {
                    source,
                    partition,
                    position: to.to_be_bytes().to_vec(),
                })?;
            }
            Op::Tick => self.handle(Event::CheckpointDue)?,
            Op::WriteCompletes => {
                if let Some((epoch, writes)) = self.run().write.take() {
                    self.land(writes);
                    self.handle(Event::WriteDone { epoch })?;
                }
            }
            Op::WriteFails => {
                if let Some((epoch, _)) = self.run().write.take() {
                    let error = "injected".to_string();
                    self.handle(Event::WriteFailed { epoch, error })?;
                    prop_assert!(self.run().over, "a failed write must stop the run");
                }
            }
            Op::SinkWrites(sink) => {
                if let Some((epoch, records)) = self.run().given[sink].pop_front() {
                    for r in records.iter() {
                        self.destination[sink].insert(r.id.to_string(), r.clone());
                    }
                    self.run().written[sink].push_back(epoch);
                }
            }
            Op::SinkAcks(sink) => {
                if let Some(epoch) = self.run().written[sink].pop_front() {
                    self.acked[sink] = self.acked[sink].max(epoch);
                    self.handle(Event::SinkAcked {
                        sink,
                        epoch,
                        progress: None,
                    })?;
                }
            }
            Op::Shutdown => {
                if !self.run().stopped {
                    self.handle(Event::ShutdownRequested)?;
                }
            }
            Op::Crash { write_lands } => {
                if let Some((_, writes)) = self.run().write.take() {
                    if write_lands {
                        self.land(writes);
                    }
                }
                self.run = None;
                return Ok(());
            }
        }
        self.check_pending()
    }

    /// With the sources stopped or every input read, the runtime tells the
    /// protocol the input is finished.
    fn input_finished_if_done(&mut self) -> Result<(), TestCaseError> {
        let input = self.input;
        let run = self.run();
        let all_read = run.next.iter().flatten().all(|&n| n >= input);
        if run.stopped || all_read {
            let now = self.now;
            self.handle(Event::InputFinished { now })?;
        }
        Ok(())
    }

    fn check_pending(&mut self) -> Result<(), TestCaseError> {
        let max = self.max_pending;
        if let Some(run) = &self.run {
            for sink in 0..SINKS {
                let pending = run.protocol.pending(sink).len();
                prop_assert!(pending <= max, "sink {sink}: {pending} epochs pending");
            }
        }
        Ok(())
    }

    /// Lets everything settle: restarts, reads all input, completes writes,
    /// lets sinks write and acknowledge, until a run that was not asked to
    /// stop ends on its own.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        let mut round = Vec::new();
        round.push(Op::WriteCompletes);
        for sink in 0..SINKS {
            round.extend([Op::SinkWrites(sink), Op::SinkAcks(sink)]);
        }
        for source in 0..SOURCES {
            for partition in 0..PARTITIONS {
                round.push(Op::Read {
                    source,
                    partition,
                    n: 3,
                });
            }
        }
        round.push(Op::Tick);
        for _ in 0..1_000 {
            if let Some(run) = &self.run {
                if run.over && !run.stopped && !run.failed {
                    return Ok(());
                }
            }
            self.ensure_started()?;
            for op in &round {
                if self.run.as_ref().is_some_and(|r| r.over) {
                    break;
                }
                self.step(op.clone())?;
            }
        }
        prop_assert!(false, "the run never ended");
        Ok(())
    }

    fn check_end(&self) -> Result<(), TestCaseError> {
        for sink in 0..SINKS {
            let mut expected = BTreeMap::new();
            for source in 0..SOURCES {
                for partition in 0..PARTITIONS {
                    for offset in (0..self.input).filter(|&o| routed_to(sink, o)) {
                        let r = record(source, partition, offset);
                        expected.insert(r.id.to_string(), r);
                    }
                }
            }
            prop_assert_eq!(&self.destination[sink], &expected, "sink {}", sink);
        }
        prop_assert!(
            self.durable.outbox.values().all(Vec::is_empty),
            "outboxes left after every epoch was acknowledged: {:?}",
            self.durable.outbox.keys().collect::<Vec<_>>()
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn every_record_reaches_every_sink_through_any_interleaving(
        max_pending in 1usize..4,
        input in 1u64..8,
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let mut world = World::new(max_pending, input);
        for op in ops {
            world.ensure_started()?;
            world.step(op)?;
        }
        // A run that was stopped is followed by one that reads to the end.
        if world.run.as_ref().is_some_and(|r| r.stopped) {
            world.run = None;
        }
        world.settle()?;
        world.check_end()?;
    }
}
