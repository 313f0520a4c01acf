//! A worker among N: the processor's side of the exchange between workers
//! ([`crate::exchange`]).
//!
//! Rows read from a source are routed at the first stateful operator they
//! reach (an *exchange point*): each row's routing key picks its key group,
//! the key group its owner. Rows this worker owns go on into the operator
//! at once; the others are buffered per owner and sent in batches, each
//! row identified by `(source, partition, offset)` and tagged with the
//! exchange point it is for (the *stream*, `source\0node`). A partition of
//! a source each worker reads for itself (HTTP, AMQP, files) is numbered
//! per worker (`worker << 20 | partition`) so that ids never collide; a
//! Kafka partition keeps its number on every worker.
//!
//! Exactly once: a checkpoint's write waits until every batch sent before
//! its snapshot is durable at its owner, so a checkpoint never covers a
//! source position whose rows could still be lost; the owners drop what
//! they receive twice by the marks of [`InboundState`], checkpointed in the
//! same write as the state the rows went into (`m\0cluster`). Rows a worker
//! reads from a Kafka partition and keeps go through the same marks, since
//! the partition may have been read by another worker before.
//!
//! Watermarks: every batch, and a heartbeat every 200 ms, carries the
//! sender's watermark of each source feeding an exchange point; a worker's
//! watermark of a source is the minimum of its own and every other
//! worker's. Until every other worker has reported a source, it holds the
//! source back (as one worker holds back a partition it has not read yet),
//! except that a worker silent for the source's `idle_timeout` stops
//! counting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Label;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::batch::{Batch, Origin, RowMeta};
use crate::cluster::{ClusterSpec, WorkerId};
use crate::dead_letter::DeadLetter;
use crate::exchange::inbound::{InboundState, Journaled};
use crate::exchange::wire::{PartitionBatch, Record};
use crate::exchange::{
    open_inbound, ExchangeError, ExchangeServer, InboundCheckpoint, PeerStatus, ReceiverOptions,
    SenderOptions,
};
use crate::health::SourceHealth;
use crate::journal::JournalOptions;
use crate::keys::{key_group, GroupKey};
use crate::metrics as m;
use crate::operator::Operator;
use crate::source::Distribution;
use crate::state::encode;
use crate::value::{Str, Value};

mod fold;
mod link;
mod route;
mod setup;

use fold::Folding;

use link::Peer;
use setup::next_session;
pub(super) use setup::{check_cluster_state, exchange_points, topology_signature};

/// The partition of heartbeat entries (no records).
const HEARTBEAT: u32 = u32::MAX;
/// The stream of the entry by which a sender says its input has ended.
const FINISHED_STREAM: &str = "";
/// Buffered outgoing records that trigger a send before the next tick.
const FLUSH_RECORDS: usize = 4096;
/// Batches queued for a peer and not yet durable there before the worker
/// stops reading its sources.
const MAX_QUEUED: u64 = 16;
/// Inbound batches journaled but not yet applied before peers get 503.
const MAX_INBOUND_BACKLOG: u64 = 512;

/// What is stored with each checkpoint under `m\0cluster`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ClusterState {
    pub worker: u32,
    pub workers: u32,
    pub inbound: InboundCheckpoint,
}

/// A checkpoint write waiting for the batches sent before its snapshot.
pub(super) struct Gate {
    targets: Vec<(watch::Receiver<u64>, u64)>,
}

impl Gate {
    /// Resolves once every peer holds what was sent before the gate was
    /// made; `Err` if a link ended first.
    pub(super) async fn passed(self) -> Result<(), String> {
        for (mut durable, target) in self.targets {
            durable
                .wait_for(|&d| d >= target)
                .await
                .map_err(|_| "the exchange link to a peer ended".to_string())?;
        }
        Ok(())
    }
}

/// The processor's view of the other workers.
pub(super) struct ClusterRun {
    me: WorkerId,
    key_groups: u16,
    /// Per graph node: rows read from a source are routed here.
    points: Vec<bool>,
    /// Node index by name (inbound streams name their exchange point).
    node_index: HashMap<String, usize>,
    source_index: HashMap<Str, usize>,
    source_names: Vec<Str>,
    distribution: Vec<Distribution>,
    /// Per source: the idle timeout after which a silent worker stops
    /// holding its watermark back.
    idle_ms: Vec<Option<i64>>,
    /// Sources feeding an exchange point (their watermarks are sent).
    exchanged: Vec<usize>,
    /// Indexed by worker; `None` for this worker.
    peers: Vec<Option<Peer>>,
    /// Outgoing records per worker, per (stream, partition).
    out: Vec<BTreeMap<(Str, u32), PartitionBatch>>,
    out_records: usize,
    /// Rows folded into partial results, per worker, per (stream, partition).
    folding: Vec<BTreeMap<(Str, u32), Folding>>,
    /// Rows folded and not sent yet; keys holding a partial result.
    folded_rows: usize,
    folded_keys: usize,
    /// Per graph node: whether its operator has a combiner (asked once).
    combinable: Vec<Option<bool>>,
    inbound: InboundState,
    inbound_rx: Option<mpsc::Receiver<Result<Vec<Journaled>, ExchangeError>>>,
    /// Workers whose input has ended.
    finished: BTreeSet<u32>,
    /// This worker told the others its input ended.
    sent_finished: bool,
    started_ms: i64,
    last_heartbeat: Instant,
    health: Arc<SourceHealth>,
    server: Option<ExchangeServer>,
    pipeline_labels: Vec<Label>,
    /// Every peer has answered at least once.
    reached_all: bool,
    /// Records received from other workers.
    received: u64,
    replayed: u64,
}

/// Everything the cluster run is built from.
pub(super) struct ClusterParts<'a> {
    pub spec: &'a ClusterSpec,
    pub me: WorkerId,
    pub signature: String,
    pub key_groups: u16,
    pub state_dir: &'a std::path::Path,
    pub restored: Option<ClusterState>,
    pub graph: &'a crate::graph::Graph,
    pub points: Vec<bool>,
    pub sources: Vec<(Str, Distribution, Option<i64>)>,
    pub pipeline: &'a str,
}

/// The stream id of rows of `source` bound for exchange point `node`.
fn stream_id(source: &str, node: &str) -> Str {
    Str::from(format!("{source}\0{node}"))
}

fn split_stream(stream: &str) -> Option<(&str, &str)> {
    stream.split_once('\0')
}

impl ClusterRun {
    /// Opens the inbound journal, starts the exchange server and a link to
    /// every other worker.
    pub(super) async fn start(parts: ClusterParts<'_>) -> Result<ClusterRun, ExchangeError> {
        let ClusterParts {
            spec,
            me,
            signature,
            key_groups,
            state_dir,
            restored,
            graph,
            points,
            sources,
            pipeline,
        } = parts;
        let restored_inbound = restored.map(|c| c.inbound).unwrap_or_default();
        let dir = state_dir.join("exchange-inbound");
        let options = JournalOptions {
            max_backlog_events: Some(MAX_INBOUND_BACKLOG),
            metric_labels: Vec::new(),
            ..JournalOptions::default()
        };
        let (log, reader) =
            tokio::task::block_in_place(|| open_inbound(&dir, options, &restored_inbound))?;
        let server =
            ExchangeServer::start(&spec.listen, log, ReceiverOptions::new(signature.clone()))
                .await?;
        tracing::info!(listen = %server.local_addr(), %me, "exchange listening");
        let (mut tail, mut inbound) = reader.split();
        // Messages of a shared queue are identified by id, not by order.
        let mut unordered = Vec::new();
        for (node, &point) in points.iter().enumerate() {
            if !point {
                continue;
            }
            for (s, (name, distribution, _)) in sources.iter().enumerate() {
                let mut feeding = BTreeSet::new();
                collect_sources(graph, node, sources.len(), &mut feeding);
                if *distribution == Distribution::SharedQueue && feeding.contains(&s) {
                    unordered.push(stream_id(name, &graph.nodes[node].name));
                }
            }
        }
        inbound.set_unordered(unordered);
        let (tx, inbound_rx) = mpsc::channel(2);
        tokio::spawn(
            async move {
                loop {
                    let read = tail.next(64).await;
                    let failed = read.is_err();
                    if tx.send(read).await.is_err() || failed {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        let session_file = state_dir.join("exchange-session");
        let session = tokio::task::spawn_blocking(move || next_session(&session_file))
            .await
            .map_err(|e| ExchangeError::Peers(format!("choosing a session: {e}")))?
            .map_err(|e| {
                ExchangeError::Peers(format!("cannot record the exchange session: {e}"))
            })?;
        let mut peers = Vec::new();
        for w in 0..me.workers {
            if w == me.worker {
                peers.push(None);
                continue;
            }
            let address = spec
                .peers
                .address(w, me.workers)
                .map_err(|e| ExchangeError::Peers(e.to_string()))?;
            let mut options = SenderOptions::new(signature.clone(), me.worker);
            options.session = session;
            let labels = vec![
                Label::new("pipeline", pipeline.to_string()),
                Label::new("peer", w.to_string()),
            ];
            peers.push(Some(Peer::start(w, address, options, labels)));
        }
        let n_sources = sources.len();
        let mut exchanged = BTreeSet::new();
        for (node, &point) in points.iter().enumerate() {
            if point {
                collect_sources(graph, node, n_sources, &mut exchanged);
            }
        }
        let p = m::pipeline_labels(pipeline);
        metrics::gauge!(
            m::WORKER_INFO,
            vec![
                Label::new("pipeline", pipeline.to_string()),
                Label::new("worker", me.worker.to_string()),
                Label::new("workers", me.workers.to_string()),
            ]
        )
        .set(1.0);
        let owned = me.owned(key_groups);
        metrics::gauge!(m::KEY_GROUPS_OWNED, p.clone()).set(f64::from(owned.end - owned.start));
        metrics::counter!(m::EXCHANGE_RECEIVED_RECORDS, p.clone()).increment(0);
        metrics::counter!(m::EXCHANGE_REPLAYED_RECORDS, p.clone()).increment(0);
        let health = Arc::new(SourceHealth::default());
        health.down("connecting to the other workers");
        Ok(ClusterRun {
            me,
            key_groups,
            node_index: graph
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.clone(), i))
                .collect(),
            points,
            source_index: sources
                .iter()
                .enumerate()
                .map(|(i, (n, _, _))| (n.clone(), i))
                .collect(),
            source_names: sources.iter().map(|(n, _, _)| n.clone()).collect(),
            distribution: sources.iter().map(|(_, d, _)| *d).collect(),
            idle_ms: sources.iter().map(|(_, _, i)| *i).collect(),
            exchanged: exchanged.into_iter().collect(),
            out: (0..me.workers).map(|_| BTreeMap::new()).collect(),
            folding: (0..me.workers).map(|_| BTreeMap::new()).collect(),
            folded_rows: 0,
            folded_keys: 0,
            combinable: vec![None; graph.nodes.len()],
            peers,
            out_records: 0,
            inbound,
            inbound_rx: Some(inbound_rx),
            finished: BTreeSet::new(),
            sent_finished: false,
            started_ms: crate::time::now_ms(),
            // the first heartbeat goes out at once: its answer tells from
            // where rows may be folded (and the peer is reached sooner)
            last_heartbeat: Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
            health,
            server: Some(server),
            pipeline_labels: p,
            reached_all: false,
            received: 0,
            replayed: 0,
        })
    }

    /// The readiness entry of the exchange (down until every peer answered).
    pub(super) fn health(&self) -> Arc<SourceHealth> {
        self.health.clone()
    }

    /// The inbound batches, for the processor's loop (taken once).
    pub(super) fn take_inbound(
        &mut self,
    ) -> Option<mpsc::Receiver<Result<Vec<Journaled>, ExchangeError>>> {
        self.inbound_rx.take()
    }

    /// Whether rows read from a source are routed at `node`.
    pub(super) fn is_point(&self, node: usize) -> bool {
        self.points[node]
    }

    /// The partition number rows of `source` carry on their way through the
    /// pipeline (unique across workers).
    pub(super) fn global_partition(&self, source: usize, partition: u32) -> u32 {
        match self.distribution[source] {
            Distribution::SharedPartitions | Distribution::SharedQueue => partition,
            Distribution::PerWorker | Distribution::FirstWorker => {
                (self.me.worker << 20) | (partition & 0xF_FFFF)
            }
        }
    }

    /// True when enough records are buffered to send them now.
    pub(super) fn should_flush(&self) -> bool {
        self.out_records + self.folded_keys >= FLUSH_RECORDS
    }

    /// Sends the buffered records, each peer's batch with this worker's
    /// watermark of every exchanged source (`watermark(source)`); with
    /// `heartbeat`, peers with nothing buffered and nothing queued get the
    /// watermarks alone.
    pub(super) fn flush(&mut self, heartbeat: bool, watermark: &mut dyn FnMut(usize) -> i64) {
        if self.peers.len() <= 1 {
            return;
        }
        let marks: Vec<(usize, i64)> = self.exchanged.iter().map(|&s| (s, watermark(s))).collect();
        for w in 0..self.peers.len() {
            let Some(peer) = self.peers[w].as_mut() else {
                continue;
            };
            let buffered = std::mem::take(&mut self.out[w]);
            let idle = peer.enqueued == *peer.durable.borrow();
            let finishing = self.sent_finished && !peer.finished_sent;
            let folded = self.folding[w].values().any(|f| f.rows > 0);
            let news = !buffered.is_empty() || folded || finishing;
            if !(news || heartbeat && idle) {
                continue;
            }
            // A partition's records come before its partial results (they
            // are at lower offsets).
            let mut parts: Vec<PartitionBatch> = buffered.into_values().collect();
            let mut folded_rows = 0;
            for ((stream, partition), f) in &mut self.folding[w] {
                folded_rows += f.rows;
                if let Some(part) = f.take(stream, *partition, self.key_groups) {
                    parts.push(part);
                }
            }
            if folded_rows > 0 {
                metrics::counter!(m::EXCHANGE_FOLDED_ROWS, peer.labels.clone())
                    .increment(folded_rows as u64);
            }
            let mut records = 0u64;
            for part in &mut parts {
                records += part.records.len() as u64;
                let source = split_stream(&part.source)
                    .and_then(|(s, _)| self.source_index.get(s))
                    .copied();
                part.watermark = source
                    .and_then(|s| marks.iter().find(|(x, _)| *x == s))
                    .map_or(i64::MIN, |(_, wm)| *wm);
            }
            for &(s, wm) in &marks {
                parts.push(PartitionBatch {
                    source: self.source_names[s].clone(),
                    partition: HEARTBEAT,
                    watermark: wm,
                    records: Vec::new(),
                    combined_from: None,
                });
            }
            if self.sent_finished {
                parts.push(finished_entry());
            }
            let data = records > 0 || finishing;
            peer.finished_sent |= self.sent_finished;
            metrics::counter!(m::EXCHANGE_SENT_RECORDS, peer.labels.clone()).increment(records);
            peer.send(parts, data);
        }
        self.out_records = 0;
        self.folded_rows = 0;
        self.folded_keys = 0;
        if heartbeat {
            self.last_heartbeat = Instant::now();
        }
    }

    /// Time for a heartbeat.
    pub(super) fn heartbeat_due(&self) -> bool {
        self.last_heartbeat.elapsed() >= Duration::from_millis(200)
    }

    /// Tells every peer this worker's input has ended (with the final
    /// watermarks); repeated with every later heartbeat.
    pub(super) fn input_finished(&mut self, watermark: &mut dyn FnMut(usize) -> i64) {
        if !self.sent_finished {
            self.sent_finished = true;
            self.flush(true, watermark);
        }
    }

    /// Makes a gate for a checkpoint write: call after the final flush
    /// before the snapshot.
    pub(super) fn gate(&self) -> Gate {
        Gate {
            targets: self
                .peers
                .iter()
                .flatten()
                .map(|p| (p.durable.clone(), p.enqueued_data))
                .collect(),
        }
    }

    /// Whether the worker may read more input: no peer has too many
    /// batches queued.
    pub(super) fn accepts_input(&self) -> bool {
        self.peers
            .iter()
            .flatten()
            .all(|p| p.enqueued - *p.durable.borrow() < MAX_QUEUED)
    }

    /// Every batch sent is durable at its owner.
    pub(super) fn all_delivered(&self) -> bool {
        self.out_records == 0
            && self.folded_rows == 0
            && self
                .peers
                .iter()
                .flatten()
                .all(|p| *p.durable.borrow() >= p.enqueued_data)
    }

    /// Every other worker said its input ended, and everything they sent
    /// has been applied.
    pub(super) fn peers_finished(&self) -> bool {
        self.finished.len() + 1 >= self.me.workers as usize && self.inbound.pending() == 0
    }

    /// Why the end of the input is not reached yet, for a log line.
    pub(super) fn waiting_for(&self) -> String {
        let missing: Vec<u32> = (0..self.me.workers)
            .filter(|&w| w != self.me.worker && !self.finished.contains(&w))
            .collect();
        let undelivered: Vec<String> = self
            .peers
            .iter()
            .flatten()
            .filter(|p| *p.durable.borrow() < p.enqueued_data)
            .map(|p| {
                format!(
                    "worker {}: {} of {} batches durable",
                    p.worker,
                    *p.durable.borrow(),
                    p.enqueued_data
                )
            })
            .collect();
        format!(
            "input of workers {missing:?} not finished; {} inbound batches not applied; undelivered: {undelivered:?}; {} rows buffered, {} folded",
            self.inbound.pending(),
            self.out_records,
            self.folded_rows
        )
    }

    /// Takes in journaled batches: returns, per exchange point, the rows to
    /// apply (with true for partial results: `keys` the group keys, `rows`
    /// the partial values), and whether anything but heartbeats came (a
    /// heartbeat alone does not call for a checkpoint: an idle cluster
    /// would never be).
    pub(super) fn take(&mut self, journaled: Vec<Journaled>) -> (Vec<(usize, Batch, bool)>, bool) {
        let now = crate::time::now_ms();
        let mut out = Vec::new();
        let mut news = false;
        for j in journaled {
            for delivered in self.inbound.take(j, now) {
                let part = delivered.records;
                if part.source.as_str() == FINISHED_STREAM {
                    news |= self.finished.insert(delivered.sender);
                    continue;
                }
                self.replayed += delivered.replayed as u64;
                if delivered.replayed > 0 {
                    metrics::counter!(m::EXCHANGE_REPLAYED_RECORDS, self.pipeline_labels.clone())
                        .increment(delivered.replayed as u64);
                }
                if part.records.is_empty() {
                    continue;
                }
                let Some((source, node)) = split_stream(&part.source) else {
                    continue;
                };
                let Some(&node) = self.node_index.get(node) else {
                    continue;
                };
                let n = part.records.len();
                self.received += n as u64;
                metrics::counter!(m::EXCHANGE_RECEIVED_RECORDS, self.pipeline_labels.clone())
                    .increment(n as u64);
                let mut batch = Batch::with_capacity(n);
                batch.origin = Some(Origin {
                    source: Arc::from(source),
                    partition: part.partition,
                });
                let partial = part.combined_from.is_some();
                if partial {
                    batch.keys.reserve(n);
                }
                for r in part.records {
                    if partial {
                        batch.keys.push(GroupKey::from_vec(r.key));
                    }
                    batch.rows.push(r.value);
                    batch.meta.push(RowMeta {
                        time: r.time,
                        offset: r.offset,
                        raw_start: 0,
                        raw_len: 0,
                        watermark: r.watermark,
                    });
                }
                out.push((node, batch, partial));
                news = true;
            }
        }
        (out, news)
    }

    /// The other workers' watermark of `source` at `now_ms`: the minimum
    /// over the workers that reported it (and were heard from within its
    /// idle timeout); `i64::MIN` while a worker has not reported it yet
    /// (unless the idle timeout has passed since the start); `i64::MAX`
    /// when nobody else holds it back.
    pub(super) fn peer_watermark(&self, source: usize, now_ms: i64) -> i64 {
        if self.peers.len() <= 1 {
            return i64::MAX;
        }
        let idle = self.idle_ms[source];
        let (min, reporters) =
            self.inbound
                .watermarks()
                .of_source(&self.source_names[source], now_ms, idle);
        let all_reported = (0..self.me.workers)
            .filter(|&w| w != self.me.worker)
            .all(|w| reporters.contains(&w));
        let grace_over = idle.is_some_and(|t| now_ms.saturating_sub(self.started_ms) >= t);
        if !all_reported && !grace_over {
            return i64::MIN;
        }
        min.unwrap_or(i64::MAX)
    }

    /// What goes into the next checkpoint, and the inbound position it
    /// covers (to truncate the journal once the checkpoint is durable).
    pub(super) fn checkpoint(&self) -> (Vec<u8>, InboundCheckpoint) {
        let inbound = self.inbound.checkpoint();
        let state = ClusterState {
            worker: self.me.worker,
            workers: self.me.workers,
            inbound: inbound.clone(),
        };
        (encode(&state), inbound)
    }

    /// A checkpoint holding `inbound` is durable: the journal before it can go.
    pub(super) fn committed(&self, inbound: &InboundCheckpoint) {
        if let Err(e) = self.inbound.commit(inbound) {
            tracing::warn!(error = %e, "could not truncate the exchange inbound journal");
        }
    }

    /// Refreshes readiness and the per-peer gauges. The exchange is ready
    /// once every peer answered once; later outages only hold data back
    /// (the sources slow down), except a peer refusing this worker.
    pub(super) fn report(&mut self) {
        let mut waiting = Vec::new();
        for p in self.peers.iter().flatten() {
            let status = p.status.borrow().clone();
            let up = matches!(status, PeerStatus::Connected);
            metrics::gauge!(m::EXCHANGE_PEER_UP, p.labels.clone()).set(if up { 1.0 } else { 0.0 });
            metrics::gauge!(m::EXCHANGE_IN_FLIGHT, p.labels.clone())
                .set((p.enqueued - *p.durable.borrow()) as f64);
            match status {
                PeerStatus::Connected => {}
                PeerStatus::Connecting => waiting.push(format!("worker {}: connecting", p.worker)),
                PeerStatus::Unreachable { error } => {
                    waiting.push(format!("worker {} unreachable: {error}", p.worker))
                }
                PeerStatus::Refused { reason } => waiting.push(format!(
                    "worker {} refuses this worker (another pipeline or worker count?): {reason}",
                    p.worker
                )),
            }
        }
        metrics::gauge!(m::EXCHANGE_INBOUND_BACKLOG, self.pipeline_labels.clone())
            .set(self.inbound.pending() as f64);
        let refused = self
            .peers
            .iter()
            .flatten()
            .any(|p| matches!(*p.status.borrow(), PeerStatus::Refused { .. }));
        if waiting.is_empty() {
            self.reached_all = true;
        }
        if (self.reached_all && !refused) || waiting.is_empty() {
            self.health.up();
        } else {
            self.health.down(waiting.join("; "));
        }
    }

    /// Stops the server and the links. After the end of the input, the
    /// server lingers a moment so that the other workers get the answers to
    /// their last batches.
    pub(super) async fn shutdown(&mut self) {
        if self.sent_finished {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        for p in &mut self.peers {
            *p = None;
        }
    }
}

fn finished_entry() -> PartitionBatch {
    PartitionBatch {
        source: Str::from(FINISHED_STREAM),
        partition: HEARTBEAT,
        watermark: i64::MAX,
        records: Vec::new(),
        combined_from: None,
    }
}

/// Adds the sources feeding `node` (through any path) to `out`.
fn collect_sources(
    graph: &crate::graph::Graph,
    node: usize,
    n_sources: usize,
    out: &mut BTreeSet<usize>,
) {
    if node < n_sources {
        out.insert(node);
        return;
    }
    for &i in &graph.inputs[node] {
        collect_sources(graph, i, n_sources, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_follow_the_key_group_ranges() {
        let me = WorkerId::new(1, 3).unwrap();
        for kg in me.owned(128) {
            assert_eq!(me.owner_of(kg, 128), 1);
        }
        assert_eq!(stream_id("http", "agg").as_str(), "http\0agg");
        assert_eq!(split_stream("http\0agg"), Some(("http", "agg")));
    }
}
