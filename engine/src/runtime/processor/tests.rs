//! The processor with the real checkpoint writer over the in-memory
//! backend: a run whose sink fails after an epoch was delivered, then a
//! restart from what the store holds, which re-delivers that epoch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{Processor, ProcessorParts};
use crate::batch::{Batch, Origin, RowMeta};
use crate::checkpoint::{self, Action, Protocol};
use crate::graph::{build_graph, GraphNode, NodeKind};
use crate::runtime::store::spawn_writer;
use crate::runtime::watermark::{WatermarkSettings, WatermarkTracker};
use crate::runtime::{RunError, RunReport};
use crate::sink::SinkError;
use crate::sink::{SinkEpoch, SinkEvent};
use crate::source::{Commit, SourceEvent, SourceHealth};
use crate::state::{MemoryBackend, StateBackend};
use crate::value::Value;

/// The channels a test drives a processor through.
struct Harness {
    data: mpsc::Sender<SourceEvent>,
    sink_events: mpsc::UnboundedSender<SinkEvent>,
    /// What the sink `out` is given.
    out: mpsc::UnboundedReceiver<SinkEpoch>,
    commits: mpsc::UnboundedReceiver<Commit>,
    result: tokio::task::JoinHandle<Result<RunReport, RunError>>,
    _shutdown: watch::Sender<bool>,
    _dead: mpsc::UnboundedReceiver<SinkEpoch>,
}

/// Starts a processor for `in -> out` (and the dead-letter sink) restored
/// from `store`; returns the harness and the re-deliveries of the restore.
fn start(store: &MemoryBackend, marker_dir: &std::path::Path) -> (Harness, Vec<Action>) {
    let node = |name: &str, kind, inputs: &[&str]| GraphNode {
        name: name.into(),
        kind,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
    };
    let graph = build_graph(vec![
        node("in", NodeKind::Source, &[]),
        node("out", NodeKind::Sink, &["in"]),
    ])
    .expect("valid graph");
    let config = checkpoint::Config {
        sources: vec![Arc::from("in")],
        sinks: vec![Arc::from("out"), Arc::from("dead")],
        key_groups: 4,
        signatures: Vec::new(),
        max_pending_epochs: 4,
        early_checkpoint_records: 1000,
        drain_grace: Duration::from_secs(10),
    };
    let store = store.reopen().expect("same format");
    let mut restored = store.restore().expect("readable");
    let (protocol, redeliveries) = Protocol::restore(config, &mut restored);
    let (out_tx, out) = mpsc::unbounded_channel();
    let (dead_tx, dead) = mpsc::unbounded_channel();
    let (commit_tx, commits) = mpsc::unbounded_channel();
    let (data, data_rx) = mpsc::channel(16);
    let (sink_events, sink_events_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (jobs, jobs_rx) = std::sync::mpsc::channel();
    let (shutdown, shutdown_rx) = watch::channel(false);
    spawn_writer(
        Arc::new(store),
        marker_dir.to_path_buf(),
        jobs_rx,
        done_tx,
        None,
        None,
    );
    let parts = ProcessorParts {
        pipeline: Arc::from("test"),
        upstream: graph.upstream_sources(),
        graph,
        n_sources: 1,
        operators: Vec::new(),
        stateful: Vec::new(),
        source_names: vec!["in".into()],
        sink_names: vec![Arc::from("out"), Arc::from("dead")],
        sink_txs: vec![out_tx, dead_tx],
        commit_txs: vec![commit_tx],
        tracker: WatermarkTracker::new(vec![WatermarkSettings {
            event_time: false,
            max_disorder_ms: 0,
            idle_timeout_ms: None,
        }]),
        protocol,
        checkpoint_interval: Duration::from_millis(20),
        jobs,
        stop: watch::channel(false).0,
        health: vec![Arc::new(SourceHealth::default())],
        cluster: None,
        drain_peers_on_stop: false,
        fold_targets: Vec::new(),
    };
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || {
        let mut processor = Processor::new(parts);
        handle.block_on(processor.run(data_rx, sink_events_rx, done_rx, shutdown_rx))
    });
    let harness = Harness {
        data,
        sink_events,
        out,
        commits,
        result: tokio::spawn(async move { result.await.expect("processor thread") }),
        _shutdown: shutdown,
        _dead: dead,
    };
    (harness, redeliveries)
}

fn batch(offsets: std::ops::Range<u64>) -> SourceEvent {
    let n = offsets.end - offsets.start;
    SourceEvent::Data {
        source: 0,
        partition: 0,
        batch: Batch {
            rows: offsets.clone().map(|o| Value::Int(o as i64)).collect(),
            meta: offsets
                .clone()
                .map(|offset| RowMeta {
                    offset,
                    ..RowMeta::default()
                })
                .collect(),
            origin: Some(Origin {
                source: Arc::from("in"),
                partition: 0,
            }),
            ..Batch::default()
        },
        dead: Vec::new(),
        position: offsets.end.to_be_bytes().to_vec(),
        bytes: n,
        events: n,
        folded: None,
    }
}

fn ids(epoch: &SinkEpoch) -> Vec<String> {
    epoch.records.iter().map(|r| r.id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_epoch_is_redelivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryBackend::new();

    // Run 1: two records, checkpointed and delivered; the sink then fails
    // before acknowledging, which stops the run.
    let (mut run, redeliveries) = start(&store, dir.path());
    assert!(redeliveries.is_empty());
    run.data.send(batch(0..2)).await.unwrap();
    let epoch = run.out.recv().await.expect("epoch delivered");
    assert_eq!(ids(&epoch), ["in:0:0", "in:0:1"]);
    let commit = run.commits.recv().await.expect("positions committed");
    assert_eq!(commit.epoch, epoch.epoch);
    assert_eq!(
        commit.positions,
        BTreeMap::from([(0, 2u64.to_be_bytes().to_vec())])
    );
    run.sink_events
        .send(SinkEvent::Failed {
            sink: 0,
            error: SinkError::Fatal("destination gone".into()),
        })
        .unwrap();
    let result = run.result.await.unwrap();
    assert!(matches!(result, Err(RunError::Sink { .. })), "{result:?}");

    // Run 2, from the store: the epoch comes again, with the same records.
    let (run, redeliveries) = start(&store, dir.path());
    let again: Vec<(u64, Vec<String>)> = redeliveries
        .iter()
        .map(|a| match a {
            Action::Deliver {
                sink: 0,
                epoch,
                records,
            } => (*epoch, records.iter().map(|r| r.id.to_string()).collect()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(again, [(epoch.epoch, ids(&epoch))]);
    // Acknowledged, and the input ends: a last checkpoint records the ack
    // and drops the outbox, then the run ends by itself.
    run.sink_events
        .send(SinkEvent::Acked {
            sink: 0,
            epoch: epoch.epoch,
            progress: None,
            rejected: Vec::new(),
        })
        .unwrap();
    drop(run.data);
    let report = run.result.await.unwrap().expect("clean end");
    assert_eq!(report.epoch, epoch.epoch + 1);
    let restored = store.restore().unwrap();
    assert_eq!(restored.epoch, epoch.epoch + 1);
    assert_eq!(restored.acks["out"].epoch, epoch.epoch);
    assert!(restored.outbox.is_empty(), "{:?}", restored.outbox.keys());
    assert_eq!(restored.positions["in"][&0], 2u64.to_be_bytes().to_vec());
}
