//! The processor: one thread that owns every operator, pushes batches
//! through the graph, advances watermarks and routes dead letters. Every
//! checkpoint decision (when to checkpoint, what to write, when to deliver
//! to sinks and commit to sources, when to stop) belongs to the checkpoint
//! protocol ([`crate::checkpoint`]); the processor feeds it events and
//! carries out the actions it returns (`processor/checkpoint.rs`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Label;
use tokio::sync::{mpsc, watch};

use super::cluster::ClusterRun;
use super::store::{CheckpointDone, CheckpointJob};
use super::watermark::WatermarkTracker;
use super::{CheckpointError, RunError, RunReport};
use crate::checkpoint::{Event, Protocol};
use crate::dead_letter::ErrorType;
use crate::error::{Classify, Report};
use crate::exchange::inbound::Journaled;
use crate::exchange::{ExchangeError, InboundCheckpoint};
use crate::graph::{Graph, NodeKind};
use crate::metrics as m;
use crate::operator::Operator;
use crate::sink::{SinkEpoch, SinkEvent};
use crate::source::{Commit, SourceEvent, SourceHealth};
use crate::time::now_ms;

mod checkpoint;
mod routing;

/// Everything the processor is built from.
pub(super) struct ProcessorParts {
    pub pipeline: Arc<str>,
    pub graph: Graph,
    pub n_sources: usize,
    pub operators: Vec<Option<Box<dyn Operator>>>,
    pub stateful: Vec<bool>,
    pub upstream: Vec<BTreeSet<usize>>,
    pub source_names: Vec<String>,
    /// Sink names, the dead-letter sink last.
    pub sink_names: Vec<Arc<str>>,
    pub sink_txs: Vec<mpsc::UnboundedSender<SinkEpoch>>,
    pub commit_txs: Vec<mpsc::UnboundedSender<Commit>>,
    pub tracker: WatermarkTracker,
    /// The checkpoint protocol, restored.
    pub protocol: Protocol,
    pub checkpoint_interval: Duration,
    pub jobs: std::sync::mpsc::Sender<CheckpointJob>,
    pub stop: watch::Sender<bool>,
    /// Per source: told how many events were processed (readiness backlog).
    pub health: Vec<Arc<SourceHealth>>,
    /// The other workers, in a run of more than one.
    pub cluster: Option<ClusterRun>,
    /// See [`Processor::drain_peers_on_stop`].
    pub drain_peers_on_stop: bool,
    /// Per source: the node that merges the partial results the source
    /// folds its rows into (see [`crate::source::SourceOutput::with_fold`]).
    pub fold_targets: Vec<Option<usize>>,
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
    sources_finished: usize,
    commit_txs: Vec<mpsc::UnboundedSender<Commit>>,
    sink_names: Vec<Arc<str>>,
    /// Per sink; None once the run is over (the sink ends).
    sink_txs: Vec<Option<mpsc::UnboundedSender<SinkEpoch>>>,
    tracker: WatermarkTracker,
    protocol: Protocol,
    checkpoint_interval: Duration,
    jobs: std::sync::mpsc::Sender<CheckpointJob>,
    /// When the checkpoint being prepared started (for its duration).
    checkpoint_started: Option<Instant>,
    stop: watch::Sender<bool>,
    /// The protocol said the run is over.
    finished: bool,
    dead_count: HashMap<(Arc<str>, ErrorType), u64>,
    events_in: u64,
    dead_letters: u64,
    failure: Option<RunError>,
    /// The cause of a failed checkpoint write, until the protocol says stop.
    write_error: Option<CheckpointError>,
    /// The other workers, in a run of more than one.
    cluster: Option<ClusterRun>,
    /// The inbound position the checkpoint being written covers.
    inflight_inbound: Option<InboundCheckpoint>,
    /// A checkpoint write that could not pass its exchange gate.
    gate_failures: (
        mpsc::UnboundedSender<String>,
        mpsc::UnboundedReceiver<String>,
    ),
    /// Since when a stopping run waits for the exchange to deliver.
    draining_since: Option<Instant>,
    /// When to log again what an ended input waits for.
    next_wait_log: Duration,
    /// A stopping worker first waits (up to the drain grace) for every
    /// other worker to stop sending, so that its final checkpoint holds
    /// everything of its key groups (needed to release them for a rescale).
    drain_peers_on_stop: bool,
    /// See [`ProcessorParts::fold_targets`].
    fold_targets: Vec<Option<usize>>,
    /// At the end of the input (or stop): whether nothing more could come
    /// from other workers (set once, when the final checkpoint is asked for).
    quiescent_at_end: Option<bool>,
    /// The protocol finished with every sink's epochs acknowledged.
    all_acked: bool,
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
            protocol,
            checkpoint_interval,
            jobs,
            stop,
            health,
            cluster,
            drain_peers_on_stop,
            fold_targets,
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
        metrics::gauge!(m::CHECKPOINT_INTERVAL, m::pipeline_labels(&pipeline))
            .set(checkpoint_interval.as_secs_f64());
        metrics::gauge!(m::CHECKPOINT_EPOCH, m::pipeline_labels(&pipeline))
            .set(protocol.epoch() as f64);
        // The restored state's size, until the first checkpoint reports it.
        for (t, op) in operators.iter().enumerate() {
            if let (true, Some(op)) = (stateful[t], op) {
                let stats = op.state_stats();
                let labels = m::component_labels(&pipeline, &names[n_sources + t], "transform");
                metrics::gauge!(m::STATE_KEYS, labels.clone()).set(stats.keys as f64);
                metrics::gauge!(m::STATE_BYTES, labels).set(stats.bytes as f64);
            }
        }
        Processor {
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
            sources_finished: 0,
            commit_txs,
            sink_names,
            sink_txs: sink_txs.into_iter().map(Some).collect(),
            tracker,
            protocol,
            checkpoint_interval,
            jobs,
            checkpoint_started: None,
            stop,
            finished: false,
            dead_count: HashMap::new(),
            events_in: 0,
            dead_letters: 0,
            failure: None,
            write_error: None,
            cluster,
            inflight_inbound: None,
            gate_failures: mpsc::unbounded_channel(),
            drain_peers_on_stop,
            fold_targets,
            quiescent_at_end: None,
            all_acked: false,
            draining_since: None,
            next_wait_log: Duration::from_secs(5),
        }
    }

    /// The operators' whole state as of the last checkpoint, for the next
    /// start ([`crate::state::restart`]): only once the protocol finished
    /// (the final checkpoint is durable) and if no operator changed its
    /// state since that checkpoint's snapshot; None otherwise.
    pub(super) fn restart_snapshot(
        &self,
        key_groups: u16,
        groups: std::ops::Range<u16>,
        signatures: &[(String, String)],
    ) -> Option<crate::state::restart::RestartSnapshot> {
        use crate::state::restart::{NodeState, RestartSnapshot};
        if !self.finished || self.failure.is_some() || self.protocol.epoch() == 0 {
            return None;
        }
        let mut nodes = Vec::new();
        for (t, op) in self.operators.iter().enumerate() {
            if !self.stateful[t] {
                continue;
            }
            let op = op.as_ref()?;
            let name = &self.names[self.n_sources + t];
            let signature = signatures.iter().find(|(n, _)| **n == **name)?.1.clone();
            let mut w = crate::operator::StateWriter::default();
            if !op.snapshot_all(&mut w) {
                return None;
            }
            let entries = w
                .entries
                .into_iter()
                .filter(|(g, _, _)| groups.contains(g))
                .map(|(g, k, v)| v.map(|v| (g, k, v)))
                .collect::<Option<Vec<_>>>()?;
            nodes.push(NodeState {
                node: name.to_string(),
                signature,
                entries,
            });
        }
        Some(RestartSnapshot {
            epoch: self.protocol.epoch(),
            key_groups,
            groups,
            nodes,
        })
    }

    /// The main loop. Returns when all sources are done (or stopped) and
    /// every committed epoch has been acknowledged by the sinks (or the
    /// drain grace after a shutdown has passed).
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
        let mut inbound = self.cluster.as_mut().and_then(ClusterRun::take_inbound);
        let mut exchange_tick = tokio::time::interval(Duration::from_millis(20));
        exchange_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if stopping {
            let actions = self.protocol.handle(Event::ShutdownRequested);
            self.execute(actions);
        }
        loop {
            let applying = self.protocol.accepts_input() && self.failure.is_none();
            let accepting = data_open
                && applying
                && self.cluster.as_ref().is_none_or(ClusterRun::accepts_input);
            tokio::select! {
                biased;
                Some(done) = checkpoints.recv() => self.on_checkpoint_done(done),
                Some(ev) = sink_events.recv() => self.on_sink_event(ev),
                Some(reason) = self.gate_failures.1.recv() => {
                    self.failure = Some(RunError::Exchange(reason));
                }
                Some(read) = recv_some(&mut inbound), if applying => self.on_inbound(read),
                changed = shutdown.changed(), if !stopping => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!("shutdown requested: draining sources, then a final checkpoint");
                        stopping = true;
                        let actions = self.protocol.handle(Event::ShutdownRequested);
                        self.execute(actions);
                    }
                }
                msg = data.recv(), if accepting => match msg {
                    Some(ev) => self.on_source_event(ev),
                    None => data_open = false,
                },
                _ = tick.tick() => {
                    let actions = self.protocol.handle(Event::CheckpointDue);
                    self.execute(actions);
                }
                _ = exchange_tick.tick(), if self.cluster.is_some() => self.exchange_tick(),
                _ = housekeeping.tick() => {
                    self.advance_watermarks();
                    self.report_pending();
                    if let Some(c) = &mut self.cluster {
                        c.report();
                    }
                }
            }
            if self.failure.is_some() {
                let _ = self.stop.send(true);
                // Stop without a final checkpoint: the last durable one is consistent.
                break;
            }
            if !data_open {
                if !self.cluster_drained(stopping) {
                    continue;
                }
                // All sources are gone: flush (end of input fires every
                // window), commit, and wait for the sinks.
                self.advance_watermarks();
                if self.quiescent_at_end.is_none() {
                    self.quiescent_at_end =
                        Some(self.cluster.as_ref().is_none_or(ClusterRun::peers_finished));
                }
                let now = Instant::now();
                let actions = self.protocol.handle(Event::InputFinished { now });
                self.execute(actions);
                if self.failure.is_some() || self.finished {
                    break;
                }
                if stopping
                    && self
                        .draining_since
                        .is_some_and(|t| t.elapsed() >= 2 * super::SINK_DRAIN_GRACE)
                {
                    tracing::warn!("stopping without a final checkpoint: other workers did not take this worker's last rows in time (the last durable checkpoint is consistent; they are sent again at the next start)");
                    break;
                }
            }
        }
        for tx in &mut self.sink_txs {
            *tx = None;
        }
        if let Some(c) = &mut self.cluster {
            c.shutdown().await;
        }
        if let Some(err) = self.failure.take() {
            return Err(err);
        }
        Ok(RunReport {
            epoch: self.protocol.epoch(),
            events_in: self.events_in,
            dead_letters: self.dead_letters,
            input_exhausted: self.sources_finished == self.sources.len() && !stopping,
            clean_stop: self.finished && self.all_acked && self.quiescent_at_end == Some(true),
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
                folded,
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
                self.dead_letters(dead);
                let started = Instant::now();
                if let (Some(c), Some(origin)) = (&self.cluster, batch.origin.as_mut()) {
                    origin.partition = c.global_partition(source, origin.partition);
                }
                match (folded, self.fold_targets.get(source).copied().flatten()) {
                    (Some(folded), Some(node)) => self.apply_folded(source, node, batch, *folded),
                    (Some(_), None) => {
                        debug_assert!(false, "a source folded rows nobody merges");
                    }
                    (None, _) if !batch.is_empty() => self.forward(source, batch),
                    (None, _) => {}
                }
                if self.cluster.as_ref().is_some_and(ClusterRun::should_flush) {
                    self.flush_exchange(false);
                }
                self.advance_watermarks();
                let actions = self.protocol.handle(Event::BatchProcessed {
                    source,
                    partition,
                    position,
                });
                self.execute(actions);
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

    fn on_sink_event(&mut self, ev: SinkEvent) {
        match ev {
            SinkEvent::Acked {
                sink,
                epoch,
                progress,
                rejected,
            } => {
                let actions = self.protocol.handle(Event::SinkAcked {
                    sink,
                    epoch,
                    progress,
                });
                self.execute(actions);
                if !rejected.is_empty() {
                    self.sink_rejected(sink, rejected);
                }
            }
            SinkEvent::Failed { sink, error } => {
                tracing::error!(sink = %self.sink_names[sink], error = %Report(&error), class = %error.class(), "sink failed");
                self.failure = Some(RunError::Sink {
                    name: self.sink_names[sink].to_string(),
                    error,
                });
            }
        }
    }

    /// Applies batches other workers sent.
    fn on_inbound(&mut self, read: Result<Vec<Journaled>, ExchangeError>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        match read {
            Ok(journaled) => {
                let (batches, news) = c.take(journaled);
                for (node, batch, partial) in batches {
                    if partial {
                        self.apply_partials(node, batch);
                    } else {
                        self.apply(node, batch);
                    }
                }
                if news {
                    // State and marks moved: the next checkpoint must
                    // record them (heartbeats alone go with the next one).
                    self.protocol.handle(Event::StateChanged);
                }
                self.advance_watermarks();
            }
            Err(e) => {
                self.failure = Some(RunError::Exchange(e.to_string()));
            }
        }
    }

    /// Sends buffered rows and, when due, heartbeats.
    fn exchange_tick(&mut self) {
        let heartbeat = self.cluster.as_ref().is_some_and(ClusterRun::heartbeat_due);
        self.flush_exchange(heartbeat);
    }

    pub(super) fn flush_exchange(&mut self, heartbeat: bool) {
        let now = now_ms();
        let tracker = &mut self.tracker;
        if let Some(c) = self.cluster.as_mut() {
            c.flush(heartbeat, &mut |s| tracker.source_watermark(s, now));
        }
    }

    /// In a run of several workers, whether this one may end: when its
    /// input is exhausted, only once every other worker's input is too and
    /// everything they sent is applied, and everything it sent is durable.
    /// When stopping, only its own deliveries are waited for (up to the
    /// drain grace).
    fn cluster_drained(&mut self, stopping: bool) -> bool {
        let now = now_ms();
        let tracker = &mut self.tracker;
        let Some(c) = self.cluster.as_mut() else {
            return true;
        };
        if stopping {
            let since = *self.draining_since.get_or_insert_with(Instant::now);
            if self.drain_peers_on_stop && since.elapsed() < super::SINK_DRAIN_GRACE {
                // Say this worker sends nothing more, and wait a while for
                // the others to say so too (all stopping: a rescale).
                c.input_finished(&mut |s| tracker.source_watermark(s, now));
                let all = c.peers_finished() && {
                    c.flush(false, &mut |s| tracker.source_watermark(s, now));
                    c.all_delivered()
                };
                if !all && since.elapsed() >= self.next_wait_log {
                    self.next_wait_log += Duration::from_secs(5);
                    tracing::info!(waiting = %c.waiting_for(), "stopping; waiting for the other workers to stop sending (their key groups are released only then)");
                }
                return all;
            }
            // Only this worker stops (or the others did not answer in
            // time): wait for its own deliveries only.
            let grace = if self.drain_peers_on_stop { 2 } else { 1 } * super::SINK_DRAIN_GRACE;
            c.flush(false, &mut |s| tracker.source_watermark(s, now));
            return c.all_delivered() || since.elapsed() >= grace;
        }
        c.input_finished(&mut |s| tracker.source_watermark(s, now));
        let since = *self.draining_since.get_or_insert_with(Instant::now);
        let done = c.peers_finished() && {
            c.flush(false, &mut |s| tracker.source_watermark(s, now));
            c.all_delivered()
        };
        if !done && since.elapsed() >= self.next_wait_log {
            self.next_wait_log += Duration::from_secs(5);
            tracing::info!(waiting = %c.waiting_for(), "input finished; waiting for the other workers");
        }
        done
    }

    fn report_pending(&self) {
        for (i, name) in self.sink_names.iter().enumerate() {
            let labels = m::component_labels(&self.pipeline, name, "sink");
            let pending = self.protocol.pending(i).len();
            metrics::gauge!(m::SINK_PENDING_EPOCHS, labels.clone()).set(pending as f64);
        }
    }
}

/// The next message of an optional channel (pending forever without one).
async fn recv_some<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
