//! The processor: one thread that owns every operator, pushes batches
//! through the graph, advances watermarks, and runs the checkpoint protocol.
//!
//! Checkpoint protocol (epoch `e`):
//! 1. operators get `on_checkpoint` (continuous aggregates emit their
//!    changed results, which flow to the sinks' outboxes);
//! 2. one sled batch is built with: every operator's changed state, every
//!    source position and partition max event time, each sink's outbox for
//!    `e`, the sink acknowledgements received since `e-1` (and the deletion
//!    of outboxes they cover), and the epoch number;
//! 3. the writer thread applies and fsyncs it while processing continues;
//! 4. once durable: the outboxes of `e` go to the sinks and every source
//!    gets a [`Commit`] with its positions, so it may release upstream.
//!
//! A crash before 4 restarts from `e-1`: state, positions and outboxes all
//! belong to the same consistent cut, and replaying the input from the
//! positions re-derives the same results. Committed outboxes not yet
//! acknowledged are re-delivered (sinks write absolute values, idempotently).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Label;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch};

use super::store::{encode, key, CheckpointDone, CheckpointJob, SinkAck, FORMAT_VERSION};
use super::watermark::WatermarkTracker;
use super::{CheckpointError, RunError, RunReport};
use crate::batch::{Batch, RowKind};
use crate::dead_letter::{DeadLetter, ErrorType};
use crate::error::{Classify, Report};
use crate::graph::{Graph, NodeKind};
use crate::keys::{decode_key, GroupKey};
use crate::metrics as m;
use crate::operator::{Emitter, Operator, StateWriter};
use crate::sink::{SinkEpoch, SinkEvent, SinkRecord};
use crate::source::{Commit, SourceEvent, SourceHealth};
use crate::time::now_ms;
use crate::value::{Str, Value};

mod checkpoint;

/// Sink records buffered in the current epoch that trigger a checkpoint
/// before the interval elapses (bounds the memory held by outboxes).
const EARLY_CHECKPOINT_RECORDS: usize = 20_000;

/// On a requested shutdown, how long to wait for sinks to acknowledge the
/// last committed epochs. What they have not acknowledged by then is safe in
/// the checkpoint's outbox and is re-delivered at the next start.
const SINK_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Everything the processor is built from.
pub(super) struct ProcessorParts {
    pub pipeline: Arc<str>,
    pub graph: Graph,
    pub n_sources: usize,
    pub operators: Vec<Option<Box<dyn Operator>>>,
    pub stateful: Vec<bool>,
    pub upstream: Vec<BTreeSet<usize>>,
    pub source_names: Vec<String>,
    pub sink_names: Vec<String>,
    pub sink_txs: Vec<mpsc::UnboundedSender<SinkEpoch>>,
    pub commit_txs: Vec<mpsc::UnboundedSender<Commit>>,
    pub tracker: WatermarkTracker,
    pub epoch: u64,
    /// Per sink: (epochs re-delivered at start, outbox epochs stored, last ack).
    pub redeliver: Vec<(Vec<u64>, BTreeSet<u64>, Option<SinkAck>)>,
    pub key_groups: u16,
    pub signatures: Vec<(String, String)>,
    pub checkpoint_interval: Duration,
    pub max_pending_epochs: usize,
    pub jobs: std::sync::mpsc::Sender<CheckpointJob>,
    pub stop: watch::Sender<bool>,
    /// Per source: told how many events were processed (readiness backlog).
    pub health: Vec<Arc<SourceHealth>>,
}

/// The records of one sink collected during the current epoch; upserts
/// and deletes of the same key replace each other.
#[derive(Default)]
struct Outbox {
    records: Vec<SinkRecord>,
    by_key: FxHashMap<GroupKey, usize>,
}

impl Outbox {
    fn take(&mut self) -> Vec<SinkRecord> {
        self.by_key.clear();
        std::mem::take(&mut self.records)
    }
}

struct SinkState {
    name: String,
    tx: Option<mpsc::UnboundedSender<SinkEpoch>>,
    outbox: Outbox,
    /// Epochs sent (or about to be) and not yet acknowledged.
    pending: BTreeSet<u64>,
    /// Outbox epochs present in sled.
    stored: BTreeSet<u64>,
    ack: Option<SinkAck>,
    ack_dirty: bool,
}

struct Inflight {
    epoch: u64,
    positions: Vec<BTreeMap<u32, Vec<u8>>>,
    outboxes: Vec<(usize, Arc<Vec<SinkRecord>>)>,
}

pub(super) struct Processor {
    pipeline: Arc<str>,
    graph: Graph,
    n_sources: usize,
    operators: Vec<Option<Box<dyn Operator>>>,
    names: Vec<Arc<str>>,
    /// Graph index -> sink index, for sink nodes.
    sink_of: Vec<Option<usize>>,
    /// Stateful operator nodes in topological order, with their sources.
    timed: Vec<(usize, Vec<usize>, i64)>,
    /// Per source: the other sources feeding a stateful operator it feeds
    /// (their watermarks cap the watermark stamped on its rows).
    co_sources: Vec<Vec<usize>>,
    stateful: Vec<bool>,
    sources: Vec<String>,
    source_labels: Vec<Vec<Label>>,
    health: Vec<Arc<SourceHealth>>,
    positions: Vec<BTreeMap<u32, Vec<u8>>>,
    positions_dirty: bool,
    sources_finished: usize,
    commit_txs: Vec<mpsc::UnboundedSender<Commit>>,
    sinks: Vec<SinkState>,
    tracker: WatermarkTracker,
    epoch: u64,
    key_groups: u16,
    signatures: Vec<(String, String)>,
    checkpoint_interval: Duration,
    max_pending_epochs: usize,
    jobs: std::sync::mpsc::Sender<CheckpointJob>,
    stop: watch::Sender<bool>,
    inflight: Option<Inflight>,
    changed: bool,
    dead_count: HashMap<(Arc<str>, ErrorType), u64>,
    events_in: u64,
    dead_letters: u64,
    failure: Option<RunError>,
}

impl Processor {
    pub(super) fn new(parts: ProcessorParts) -> Self {
        let ProcessorParts {
            pipeline,
            graph,
            n_sources,
            operators,
            stateful,
            upstream,
            source_names,
            sink_names,
            sink_txs,
            commit_txs,
            tracker,
            epoch,
            redeliver,
            key_groups,
            signatures,
            checkpoint_interval,
            max_pending_epochs,
            jobs,
            stop,
            health,
        } = parts;
        let names: Vec<Arc<str>> = graph
            .nodes
            .iter()
            .map(|n| Arc::from(n.name.as_str()))
            .collect();
        let n_transforms = operators.len();
        let mut sink_of = vec![None; graph.nodes.len()];
        for (i, slot) in sink_of.iter_mut().enumerate() {
            if graph.nodes[i].kind == NodeKind::Sink {
                *slot = Some(i - n_sources - n_transforms);
            }
        }
        let timed: Vec<(usize, Vec<usize>, i64)> = graph
            .order
            .iter()
            .filter(|&&n| n >= n_sources && n < n_sources + n_transforms && stateful[n - n_sources])
            .map(|&n| (n, upstream[n].iter().copied().collect(), i64::MIN))
            .collect();
        let mut co_sources = vec![BTreeSet::new(); source_names.len()];
        for (_, sources, _) in &timed {
            for &a in sources {
                co_sources[a].extend(sources.iter().copied().filter(|&b| b != a));
            }
        }
        let co_sources = co_sources
            .into_iter()
            .map(|s| s.into_iter().collect())
            .collect();
        let source_labels = source_names
            .iter()
            .map(|s| m::component_labels(&pipeline, s, "source"))
            .collect();
        let sinks = sink_names
            .into_iter()
            .zip(sink_txs)
            .zip(redeliver)
            .map(|((name, tx), (pending, stored, ack))| SinkState {
                name,
                tx: Some(tx),
                outbox: Outbox::default(),
                pending: pending.into_iter().collect(),
                stored,
                ack,
                ack_dirty: false,
            })
            .collect();
        metrics::gauge!(m::CHECKPOINT_INTERVAL, m::pipeline_labels(&pipeline))
            .set(checkpoint_interval.as_secs_f64());
        metrics::gauge!(m::CHECKPOINT_EPOCH, m::pipeline_labels(&pipeline)).set(epoch as f64);
        Processor {
            positions: vec![BTreeMap::new(); source_names.len()],
            sources: source_names,
            source_labels,
            health,
            pipeline,
            graph,
            n_sources,
            operators,
            names,
            sink_of,
            timed,
            co_sources,
            stateful,
            positions_dirty: false,
            sources_finished: 0,
            commit_txs,
            sinks,
            tracker,
            epoch,
            key_groups,
            signatures,
            checkpoint_interval,
            max_pending_epochs,
            jobs,
            stop,
            inflight: None,
            changed: false,
            dead_count: HashMap::new(),
            events_in: 0,
            dead_letters: 0,
            failure: None,
        }
    }

    fn outbox_records(&self) -> usize {
        self.sinks.iter().map(|s| s.outbox.records.len()).sum()
    }

    fn backpressured(&self) -> bool {
        self.sinks
            .iter()
            .any(|s| s.pending.len() >= self.max_pending_epochs)
    }

    fn quiescent(&self) -> bool {
        self.inflight.is_none() && !self.changed && self.sinks.iter().all(|s| s.pending.is_empty())
    }

    /// The main loop. Returns when all sources are done (or stopped) and
    /// every committed epoch has been acknowledged by the sinks.
    pub(super) async fn run(
        &mut self,
        mut data: mpsc::Receiver<SourceEvent>,
        mut sink_events: mpsc::UnboundedReceiver<SinkEvent>,
        mut checkpoints: mpsc::UnboundedReceiver<CheckpointDone>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<RunReport, RunError> {
        let mut tick = tokio::time::interval(self.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(Duration::from_millis(200));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut data_open = true;
        let mut stopping = *shutdown.borrow();
        let mut drained_at: Option<Instant> = None;
        if stopping {
            let _ = self.stop.send(true);
        }
        loop {
            let accepting = data_open && !self.backpressured() && self.failure.is_none();
            tokio::select! {
                biased;
                Some(done) = checkpoints.recv() => self.on_checkpoint_done(done),
                Some(ev) = sink_events.recv() => self.on_sink_event(ev),
                changed = shutdown.changed(), if !stopping => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!("shutdown requested: draining sources, then a final checkpoint");
                        stopping = true;
                        let _ = self.stop.send(true);
                    }
                }
                msg = data.recv(), if accepting => match msg {
                    Some(ev) => self.on_source_event(ev),
                    None => data_open = false,
                },
                _ = tick.tick() => {
                    if self.inflight.is_none() && self.changed {
                        self.start_checkpoint();
                    } else if self.quiescent() {
                        // Idle: the last checkpoint covers everything, so
                        // the durable state is as current as a new one
                        // would make it (an idle pipeline is healthy).
                        metrics::gauge!(m::CHECKPOINT_LAST_SUCCESS, m::pipeline_labels(&self.pipeline))
                            .set(now_ms() as f64 / 1000.0);
                    }
                }
                _ = housekeeping.tick() => {
                    self.advance_watermarks();
                    self.report_pending();
                }
            }
            if self.failure.is_some() {
                let _ = self.stop.send(true);
                // Stop without a final checkpoint: the last durable one is consistent.
                break;
            }
            if !data_open {
                // All sources are gone: flush (end of input fires every window),
                // commit, and wait for the sinks.
                self.advance_watermarks();
                if self.inflight.is_none() && self.changed {
                    self.start_checkpoint();
                }
                if self.quiescent() {
                    break;
                }
                if stopping && self.inflight.is_none() && !self.changed {
                    let since = *drained_at.get_or_insert_with(Instant::now);
                    if since.elapsed() >= SINK_DRAIN_GRACE {
                        for s in self.sinks.iter().filter(|s| !s.pending.is_empty()) {
                            tracing::warn!(sink = %s.name, epochs = ?s.pending,
                                "stopping before the sink acknowledged these epochs; they are in the checkpoint and will be re-delivered at the next start");
                        }
                        break;
                    }
                }
            }
        }
        for s in &mut self.sinks {
            s.tx = None;
        }
        if let Some(err) = self.failure.take() {
            return Err(err);
        }
        Ok(RunReport {
            epoch: self.epoch,
            events_in: self.events_in,
            dead_letters: self.dead_letters,
            input_exhausted: self.sources_finished == self.sources.len() && !stopping,
        })
    }

    fn on_source_event(&mut self, ev: SourceEvent) {
        let now = now_ms();
        match ev {
            SourceEvent::Data {
                source,
                partition,
                batch,
                dead,
                position,
                bytes,
                events,
            } => {
                self.health[source].processed(events);
                let labels = &self.source_labels[source];
                metrics::counter!(m::EVENTS_IN, labels.clone()).increment(events);
                metrics::counter!(m::BYTES_IN, labels.clone()).increment(bytes);
                metrics::histogram!(m::BATCH_SIZE, labels.clone()).record(events as f64);
                self.events_in += events;
                let mut batch = batch;
                if !batch.meta.is_empty() {
                    let cap = self.co_sources[source]
                        .iter()
                        .map(|&s| self.tracker.source_watermark(s, now))
                        .min()
                        .unwrap_or(i64::MAX);
                    self.tracker
                        .observe_rows(source, partition, &mut batch.meta, cap, now);
                }
                self.positions[source].insert(partition, position);
                self.positions_dirty = true;
                self.changed = true;
                self.dead_letters(dead);
                let started = Instant::now();
                if !batch.is_empty() {
                    self.forward(source, batch);
                }
                self.advance_watermarks();
                // Bound memory: a large outbox triggers an early checkpoint.
                if self.inflight.is_none() && self.outbox_records() >= EARLY_CHECKPOINT_RECORDS {
                    self.start_checkpoint();
                }
                metrics::histogram!(m::PROCESSING_LATENCY, m::pipeline_labels(&self.pipeline))
                    .record(started.elapsed().as_secs_f64());
            }
            SourceEvent::Partitions { source, partitions } => {
                self.tracker.declare(source, &partitions, now);
            }
            SourceEvent::PartitionDone { source, partition } => {
                // As for `Finished`: a source stopping because of a shutdown
                // has not reached the end of its input.
                if !*self.stop.borrow() {
                    self.tracker.partition_done(source, partition, now);
                    self.advance_watermarks();
                }
            }
            SourceEvent::PartitionsReleased { source, partitions } => {
                self.tracker.release(source, &partitions);
                self.advance_watermarks();
            }
            SourceEvent::Finished { source } => {
                self.sources_finished += 1;
                if !*self.stop.borrow() {
                    self.tracker.source_finished(source);
                }
                tracing::info!(source = %self.sources[source], "source finished");
                self.advance_watermarks();
            }
            SourceEvent::Failed { source, error } => {
                tracing::error!(source = %self.sources[source], error = %Report(&error), class = %error.class(), "source failed");
                self.failure = Some(RunError::Source {
                    name: self.sources[source].clone(),
                    error,
                });
            }
        }
    }

    /// Sends `batch`, the output of `from`, to every node reading it.
    fn forward(&mut self, from: usize, batch: Batch) {
        let n = self.graph.outputs[from].len();
        let mut batch = Some(batch);
        for k in 0..n {
            let child = self.graph.outputs[from][k];
            let b = if k + 1 == n {
                batch.take().expect("taken once")
            } else {
                batch.clone().expect("present until the last")
            };
            self.push(child, b);
        }
    }

    fn push(&mut self, node: usize, batch: Batch) {
        if let Some(sink) = self.sink_of[node] {
            self.add_to_outbox(sink, batch);
            return;
        }
        let t = node - self.n_sources;
        let mut out = Vec::new();
        let mut dead = Vec::new();
        if let Some(op) = self.operators[t].as_mut() {
            op.process(
                batch,
                &mut Emitter {
                    out: &mut out,
                    dead: &mut dead,
                },
            );
        }
        self.dead_letters(dead);
        for b in out {
            self.forward(node, b);
        }
    }

    fn advance_watermarks(&mut self) {
        let now = now_ms();
        for i in 0..self.timed.len() {
            let (node, ref sources, last) = self.timed[i];
            let wm = self.tracker.watermark_of(sources, now);
            if wm <= last {
                continue;
            }
            self.timed[i].2 = wm;
            if wm != i64::MAX && wm != i64::MIN {
                let labels = m::component_labels(&self.pipeline, &self.names[node], "transform");
                metrics::gauge!(m::WATERMARK_DELAY, labels.clone()).set((now - wm) as f64 / 1000.0);
            }
            let mut out = Vec::new();
            let mut dead = Vec::new();
            if let Some(op) = self.operators[node - self.n_sources].as_mut() {
                op.on_watermark(
                    wm,
                    &mut Emitter {
                        out: &mut out,
                        dead: &mut dead,
                    },
                );
            }
            if !out.is_empty() {
                self.changed = true;
            }
            self.dead_letters(dead);
            for b in out {
                self.forward(node, b);
            }
        }
    }

    fn add_to_outbox(&mut self, sink: usize, batch: Batch) {
        let outbox = &mut self.sinks[sink].outbox;
        let origin = batch.origin.clone();
        let keyed = batch.is_keyed();
        let Batch {
            rows,
            meta,
            keys,
            kinds,
            ..
        } = batch;
        for (i, (value, meta)) in rows.into_iter().zip(meta).enumerate() {
            let kind = kinds.get(i).copied().unwrap_or(RowKind::Insert);
            let id = match (&origin, keyed) {
                (_, true) => key_id(&keys[i]),
                (Some(o), false) => {
                    Str::from(format!("{}:{}:{}", o.source, o.partition, meta.offset))
                }
                (None, false) => Str::from(format!("{}:{}", self.epoch + 1, outbox.records.len())),
            };
            let record = SinkRecord {
                kind,
                id,
                value,
                time: meta.time,
            };
            if kind != RowKind::Insert && keyed {
                match outbox.by_key.get(&keys[i]) {
                    Some(&at) => outbox.records[at] = record,
                    None => {
                        outbox.by_key.insert(keys[i].clone(), outbox.records.len());
                        outbox.records.push(record);
                    }
                }
            } else {
                outbox.records.push(record);
            }
        }
        self.changed = true;
    }

    fn dead_letters(&mut self, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        let dlq = self.sinks.len() - 1;
        for d in dead {
            self.dead_letters += 1;
            let count = self
                .dead_count
                .entry((d.component.clone(), d.error_type))
                .or_default();
            *count += 1;
            let labels = m::with_error(
                &m::component_labels(&self.pipeline, &d.component, "pipeline"),
                d.error_type.as_str(),
            );
            metrics::counter!(m::DEAD_LETTERS, labels.clone()).increment(1);
            if count.is_power_of_two() {
                tracing::warn!(component = %d.component, error_type = d.error_type.as_str(),
                    reason = %d.reason, total = *count, "event sent to the dead-letter output");
            }
            let id = Str::from(format!(
                "{}:{}:{}:{}:{}",
                d.source.as_deref().unwrap_or("-"),
                d.partition,
                d.offset,
                d.component,
                d.error_type.as_str()
            ));
            self.sinks[dlq].outbox.records.push(SinkRecord {
                kind: RowKind::Insert,
                id,
                value: d.to_value(),
                time: d.event_time.unwrap_or(0),
            });
        }
        self.changed = true;
    }

    fn on_sink_event(&mut self, ev: SinkEvent) {
        match ev {
            SinkEvent::Acked {
                sink,
                epoch,
                progress,
                rejected,
            } => {
                let s = &mut self.sinks[sink];
                s.pending.remove(&epoch);
                s.ack = Some(SinkAck { epoch, progress });
                s.ack_dirty = true;
                self.changed = true;
                if rejected.is_empty() {
                    return;
                }
                let name: Arc<str> = Arc::from(s.name.as_str());
                if sink == self.sinks.len() - 1 {
                    for (record, reason) in rejected {
                        tracing::error!(sink = %name, %reason, record = %record.value,
                            "the dead-letter sink refused a record; it is only in this log");
                    }
                    return;
                }
                let dead = rejected
                    .into_iter()
                    .map(|(record, reason)| {
                        let mut raw = Vec::new();
                        crate::json::write_value(&mut raw, &record.value);
                        DeadLetter {
                            error_type: ErrorType::SinkRejected,
                            reason,
                            component: name.clone(),
                            source: None,
                            partition: 0,
                            offset: 0,
                            event_time: Some(record.time),
                            raw,
                        }
                    })
                    .collect();
                self.dead_letters(dead);
            }
            SinkEvent::Failed { sink, error } => {
                tracing::error!(sink = %self.sinks[sink].name, error = %Report(&error), class = %error.class(), "sink failed");
                self.failure = Some(RunError::Sink {
                    name: self.sinks[sink].name.clone(),
                    error,
                });
            }
        }
    }

    fn report_pending(&self) {
        for s in &self.sinks {
            let labels = m::component_labels(&self.pipeline, &s.name, "sink");
            metrics::gauge!(m::SINK_PENDING_EPOCHS, labels.clone()).set(s.pending.len() as f64);
        }
    }
}

/// A readable id for an upsert key: its values joined by `|` (strings as
/// they are, other values as JSON); `all` for the empty key.
fn key_id(key: &GroupKey) -> Str {
    if key.is_empty() {
        // the single group of an aggregate without group_by
        return Str::from("all");
    }
    let Some(values) = decode_key(key) else {
        return Str::from(format!("{key:02x?}"));
    };
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        match v {
            Value::Str(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
    }
    Str::from(out)
}
