//! Running a pipeline: building the dataflow from a [`PipelineSpec`],
//! restoring the last checkpoint, and driving sources, the processor and
//! sinks until the input ends or shutdown is requested.
//!
//! Threads and tasks:
//! - each source runs as a tokio task (or its own thread) and decodes its
//!   input before sending batches over one bounded channel;
//! - the processor (one dedicated thread) owns every operator and its state,
//!   runs batches through the graph, tracks watermarks and starts checkpoints;
//! - the checkpoint writer thread applies each checkpoint to sled and fsyncs,
//!   while the processor carries on;
//! - each sink runs as a tokio task fed with committed epochs.

mod error;
pub mod marker;
mod processor;
mod progress;
pub mod store;
pub mod watermark;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::decode::{Decoder, EventTimeSpec};
use crate::error::Report;
use crate::graph::{build_graph, GraphNode, NodeKind};
use crate::health::{Readiness, SourceHealth};
use crate::operator::{BuildContext, FieldPath, Operator, OperatorSpec};
use crate::sink::{drive_sink, RetryPolicy, Sink, SinkEpoch};
use crate::source::{Progress, Source, SourceContext, SourceEvent, SourceOutput};
use processor::{Processor, ProcessorParts};
use store::Store;
use watermark::{WatermarkSettings, WatermarkTracker};

pub use error::{CheckpointError, RunError};

/// A source as configured.
pub struct SourceSpec {
    pub name: String,
    pub event_time: Option<EventTimeSpec>,
    pub max_disorder: Duration,
    pub idle_timeout: Option<Duration>,
    pub max_event_bytes: usize,
    pub source: Box<dyn Source>,
}

/// A transform (operator) as configured.
pub struct TransformSpec {
    pub name: String,
    pub inputs: Vec<String>,
    pub spec: Box<dyn OperatorSpec>,
}

/// A sink as configured.
pub struct SinkSpec {
    pub name: String,
    pub inputs: Vec<String>,
    pub sink: Box<dyn Sink>,
}

/// A whole pipeline, ready to run.
pub struct PipelineSpec {
    pub name: String,
    pub state_dir: PathBuf,
    /// Where sources keep their own durable files (e.g. the HTTP journal).
    /// Usually the state directory; `sluice replay` builds state elsewhere
    /// but reads the sources' files from here.
    pub source_dir: PathBuf,
    pub checkpoint_interval: Duration,
    pub key_groups: u16,
    /// Epochs a sink may fall behind before sources are slowed down.
    pub max_pending_epochs: usize,
    /// Batches buffered between sources and the processor.
    pub channel_capacity: usize,
    pub sources: Vec<SourceSpec>,
    pub transforms: Vec<TransformSpec>,
    pub sinks: Vec<SinkSpec>,
    /// Where dead letters go (has no inputs).
    pub dead_letter: SinkSpec,
    pub retry: RetryPolicy,
}

/// How to run.
pub struct RunOptions {
    /// Sources read what is there now and finish (replay, batch runs).
    pub bounded: bool,
    /// Turns true to request a graceful stop (SIGTERM).
    pub shutdown: watch::Receiver<bool>,
    /// Readiness (`/ready`): this run reports restoring, running with its
    /// sources' health, and stopped (see [`crate::health`]).
    pub ready: Arc<Readiness>,
    /// Progress of each source (bytes), for progress bars.
    pub progress: Vec<Arc<Progress>>,
    /// Start even if the state store is empty or older than what an earlier
    /// run left behind (`--accept-empty-state`, `sluice replay`); without
    /// it such a start is refused ([`RunError::StateLost`]).
    pub accept_empty_state: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// The last committed epoch.
    pub epoch: u64,
    pub events_in: u64,
    pub dead_letters: u64,
    /// True when every source reached the end of its input.
    pub input_exhausted: bool,
}

/// Validates the graph and plans what each source decodes. Returns the
/// graph nodes in spec order: sources, then transforms, then sinks.
fn graph_nodes(spec: &PipelineSpec) -> Vec<GraphNode> {
    let mut nodes = Vec::new();
    for s in &spec.sources {
        nodes.push(GraphNode {
            name: s.name.clone(),
            kind: NodeKind::Source,
            inputs: Vec::new(),
        });
    }
    for t in &spec.transforms {
        nodes.push(GraphNode {
            name: t.name.clone(),
            kind: NodeKind::Transform,
            inputs: t.inputs.clone(),
        });
    }
    for s in &spec.sinks {
        nodes.push(GraphNode {
            name: s.name.clone(),
            kind: NodeKind::Sink,
            inputs: s.inputs.clone(),
        });
    }
    nodes
}

/// Runs `spec` to completion (bounded input exhausted, or shutdown). Every
/// log line of the run (sources, processor, sinks) carries the pipeline's
/// name in a `pipeline` span.
pub async fn run(spec: PipelineSpec, opts: RunOptions) -> Result<RunReport, RunError> {
    let span = tracing::info_span!("pipeline", pipeline = %spec.name);
    let ready = opts.ready.clone();
    ready.restoring();
    let result = run_in_span(spec, opts).instrument(span).await;
    ready.stopped();
    result
}

async fn run_in_span(spec: PipelineSpec, opts: RunOptions) -> Result<RunReport, RunError> {
    let graph = build_graph(graph_nodes(&spec)).map_err(|errors| {
        let nodes = graph_nodes(&spec);
        RunError::Plan(
            errors
                .iter()
                .map(|e| e.describe(&nodes))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let n_sources = spec.sources.len();
    let n_transforms = spec.transforms.len();
    let transform_of = |node: usize| {
        (node >= n_sources && node < n_sources + n_transforms).then(|| node - n_sources)
    };

    // Planning: fields each source must decode, sources feeding each node,
    // group keys flowing through key_by.
    let needs = graph.plan_reads(|node, need| match transform_of(node) {
        Some(t) => spec.transforms[t].spec.input_reads(need),
        None => need.clone(),
    });
    let upstream = graph.upstream_sources();
    let mut keys: Vec<Option<Vec<FieldPath>>> = vec![None; graph.nodes.len()];
    for &node in &graph.order {
        if let Some(t) = transform_of(node) {
            let input_key = graph.inputs[node].first().and_then(|&i| keys[i].clone());
            keys[node] = spec.transforms[t].spec.output_key(input_key.as_deref());
        }
    }

    // Changelogs: what each node reads, and wirings that cannot work.
    let (streams, stream_errors) = graph.plan_streams(
        |node, input| transform_of(node).map(|t| spec.transforms[t].spec.output_stream(input)),
        |node, input| match transform_of(node) {
            Some(t) => spec.transforms[t].spec.check_input(input),
            None => Ok(()),
        },
    );
    if let Some((node, e)) = stream_errors.first() {
        return Err(RunError::Plan(format!(
            "transform `{}` {e}",
            graph.nodes[*node].name
        )));
    }

    let started = std::time::Instant::now();
    let pipeline: Arc<str> = Arc::from(spec.name.as_str());
    let pipeline_name = pipeline.clone();
    let mut operators: Vec<Option<Box<dyn Operator>>> = Vec::new();
    let mut signatures = Vec::new();
    for (t, tspec) in spec.transforms.iter().enumerate() {
        let node = n_sources + t;
        let sources: Vec<usize> = upstream[node].iter().copied().collect();
        let event_time = sources
            .iter()
            .all(|&s| spec.sources[s].event_time.is_some());
        if tspec.spec.needs_event_time() && !event_time {
            let missing: Vec<_> = sources
                .iter()
                .filter(|&&s| spec.sources[s].event_time.is_none())
                .map(|&s| spec.sources[s].name.as_str())
                .collect();
            return Err(RunError::Plan(format!(
                "transform `{}` uses event time, but source(s) {} have no `event_time` field configured",
                tspec.name,
                missing.join(", ")
            )));
        }
        let input_key = graph.inputs[node].first().and_then(|&i| keys[i].clone());
        let ctx = BuildContext {
            name: Arc::from(tspec.name.as_str()),
            key_groups: spec.key_groups,
            upstream_key: input_key,
            event_time,
            input: graph.inputs[node]
                .first()
                .map(|&i| streams[i])
                .unwrap_or_default(),
        };
        let op = tspec.spec.build(&ctx).map_err(RunError::Build)?;
        operators.push(Some(op));
        if tspec.spec.is_stateful() {
            signatures.push((tspec.name.clone(), tspec.spec.state_signature()));
        }
    }

    crate::metrics::register_pipeline(
        &spec.name,
        &spec
            .sources
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>(),
        &spec
            .transforms
            .iter()
            .map(|t| (t.name.clone(), t.spec.is_stateful()))
            .collect::<Vec<_>>(),
        &spec
            .sinks
            .iter()
            .map(|s| s.name.clone())
            .chain([spec.dead_letter.name.clone()])
            .collect::<Vec<_>>(),
    );

    // Restore.
    std::fs::create_dir_all(&spec.state_dir).map_err(|source| RunError::StateDir {
        dir: spec.state_dir.display().to_string(),
        source,
    })?;
    let store = Arc::new(Store::open(&spec.state_dir)?);
    let mut restored = store.restore()?;
    let dir = spec.state_dir.display().to_string();
    if let Some(kg) = restored.key_groups {
        if kg != spec.key_groups {
            return Err(RunError::StateMismatch {
                dir,
                reason: format!(
                    "it was written with {kg} key groups, the pipeline says {}",
                    spec.key_groups
                ),
            });
        }
    }
    for (name, sig) in &signatures {
        if let Some(old) = restored.signatures.get(name) {
            if old != sig {
                return Err(RunError::StateMismatch {
                    dir,
                    reason: format!("transform `{name}` changed (was `{old}`, now `{sig}`)"),
                });
            }
        }
    }
    for (t, tspec) in spec.transforms.iter().enumerate() {
        if let Some(entries) = restored.state.remove(&tspec.name) {
            let op = operators[t].as_mut().expect("built above");
            op.restore(entries).map_err(|error| RunError::Restore {
                name: tspec.name.clone(),
                error,
            })?;
        }
    }
    if restored.epoch > 0 {
        tracing::info!(epoch = restored.epoch, dir = %spec.state_dir.display(), "restored checkpoint");
    }

    // Lost or damaged state is never taken for a fresh start.
    let mut all_sinks: Vec<SinkSpec> = spec.sinks;
    all_sinks.push(spec.dead_letter);
    let old_marker = marker::read(&spec.state_dir)?;
    let mut traces = Vec::new();
    {
        for s in &mut all_sinks {
            let progress = restored.acks.get(&s.name).and_then(|a| a.progress.clone());
            match s
                .sink
                .earlier_output(restored.epoch, progress.as_deref())
                .await
            {
                Ok(Some(t)) => traces.push(format!("sink `{}`: {t}", s.name)),
                Ok(None) => {}
                // A destination that is down at start cannot be checked;
                // the sink retries once running, and the start goes on
                // (ingest stays available), with the state marker's check.
                Err(e) if e.is_retryable() => {
                    tracing::warn!(sink = %s.name, error = %Report(&e),
                        "cannot check the sink's destination for values the restored state does not explain (it is unreachable); starting with the state marker's check only");
                }
                Err(error) => {
                    return Err(RunError::Sink {
                        name: s.name.clone(),
                        error,
                    })
                }
            }
        }
    }
    if let Err(refusal) = marker::check(old_marker, restored.epoch, &traces) {
        if !opts.accept_empty_state {
            return Err(RunError::StateLost { dir, refusal });
        }
        tracing::warn!(dir = %spec.state_dir.display(), restored = %refusal.restored,
            evidence = ?refusal.evidence,
            "starting from the state as it is (--accept-empty-state), although an earlier run left more");
    }
    if old_marker.map(|m| m.epoch) != Some(restored.epoch) {
        marker::write(
            &spec.state_dir,
            marker::Marker {
                epoch: restored.epoch,
            },
        )?;
    }

    // Watermarks.
    let now = crate::time::now_ms();
    let mut tracker = WatermarkTracker::new(
        spec.sources
            .iter()
            .map(|s| WatermarkSettings {
                event_time: s.event_time.is_some(),
                max_disorder_ms: s.max_disorder.as_millis() as i64,
                idle_timeout_ms: s.idle_timeout.map(|d| d.as_millis() as i64),
            })
            .collect(),
    );
    for (i, s) in spec.sources.iter().enumerate() {
        if let Some(parts) = restored.watermarks.get(&s.name) {
            for (&p, &t) in parts {
                tracker.restore(i, p, t, now);
            }
        }
    }

    // Sinks (the dead-letter sink is the last one).
    let (sink_events_tx, sink_events_rx) = mpsc::unbounded_channel();
    let mut sink_names = Vec::new();
    let mut sink_txs = Vec::new();
    let mut sink_tasks = Vec::new();
    let mut redeliver = Vec::new();
    for (i, s) in all_sinks.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<SinkEpoch>();
        let ack = restored.acks.remove(&s.name);
        let acked_epoch = ack.as_ref().map_or(0, |a| a.epoch);
        let mut pending = Vec::new();
        let mut stored = BTreeSet::new();
        for (epoch, records) in restored.outbox.remove(&s.name).unwrap_or_default() {
            stored.insert(epoch);
            if epoch > acked_epoch {
                pending.push(epoch);
                let _ = tx.send(SinkEpoch {
                    epoch,
                    records: Arc::new(records),
                });
            }
        }
        if !pending.is_empty() {
            tracing::info!(sink = %s.name, epochs = ?pending, "re-delivering committed output not yet acknowledged by the sink");
        }
        let progress = ack.as_ref().and_then(|a| a.progress.clone());
        redeliver.push((pending, stored, ack));
        sink_tasks.push(tokio::spawn(
            drive_sink(
                i,
                Arc::from(s.name.as_str()),
                pipeline.clone(),
                s.sink,
                progress,
                rx,
                sink_events_tx.clone(),
                spec.retry.clone(),
            )
            .in_current_span(),
        ));
        sink_names.push(s.name);
        sink_txs.push(tx);
    }
    drop(sink_events_tx);

    // Sources.
    let (data_tx, data_rx) = mpsc::channel::<SourceEvent>(spec.channel_capacity.max(1));
    let mut commit_txs = Vec::new();
    let mut source_names = Vec::new();
    let mut source_tasks = Vec::new();
    let mut healths = Vec::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    for (i, s) in spec.sources.into_iter().enumerate() {
        let name: Arc<str> = Arc::from(s.name.as_str());
        let decoder = Arc::new(Decoder::new(
            name.clone(),
            &needs[i],
            s.event_time.clone(),
            s.max_event_bytes,
        ));
        let progress = opts.progress.get(i).cloned().unwrap_or_default();
        let health = Arc::new(SourceHealth::default());
        healths.push((name.clone(), health.clone()));
        let output = SourceOutput::new(i, decoder, data_tx.clone(), progress).with_health(health);
        let (commit_tx, commit_rx) = mpsc::unbounded_channel();
        let ctx = SourceContext {
            name: name.clone(),
            pipeline: pipeline.clone(),
            state_dir: spec.source_dir.clone(),
            restored: restored.positions.remove(&s.name).unwrap_or_default(),
            bounded: opts.bounded,
            accept_empty_state: opts.accept_empty_state,
            shutdown: stop_rx.clone(),
            commits: commit_rx,
            output,
        };
        let events = data_tx.clone();
        let source = s.source;
        source_tasks.push(tokio::spawn(
            async move {
                let msg = match source.run(ctx).await {
                    Ok(()) => SourceEvent::Finished { source: i },
                    Err(error) => SourceEvent::Failed { source: i, error },
                };
                let _ = events.send(msg).await;
            }
            .in_current_span(),
        ));
        commit_txs.push(commit_tx);
        source_names.push(s.name);
    }
    drop(data_tx);

    let (ckpt_done_tx, ckpt_done_rx) = mpsc::unbounded_channel();
    let (job_tx, job_rx) = std::sync::mpsc::channel();
    let writer = store::spawn_writer(store.clone(), spec.state_dir.clone(), job_rx, ckpt_done_tx);

    let parts = ProcessorParts {
        pipeline,
        graph,
        n_sources,
        operators,
        stateful: spec
            .transforms
            .iter()
            .map(|t| t.spec.is_stateful())
            .collect(),
        upstream,
        source_names,
        sink_names,
        sink_txs,
        commit_txs,
        tracker,
        epoch: restored.epoch,
        redeliver,
        key_groups: spec.key_groups,
        signatures,
        checkpoint_interval: spec.checkpoint_interval,
        max_pending_epochs: spec.max_pending_epochs.max(1),
        jobs: job_tx,
        stop: stop_tx,
        health: healths.iter().map(|(_, h)| h.clone()).collect(),
    };
    opts.ready.running(healths);
    let (monitor_stop, monitor_stopped) = watch::channel(false);
    let monitor = tokio::spawn(
        progress::monitor(opts.ready.clone(), pipeline_name, started, monitor_stopped)
            .in_current_span(),
    );
    let handle = tokio::runtime::Handle::current();
    let shutdown = opts.shutdown;
    let span = tracing::Span::current();
    let result = tokio::task::spawn_blocking(move || {
        let _span = span.enter();
        let mut processor = Processor::new(parts);
        handle.block_on(processor.run(data_rx, sink_events_rx, ckpt_done_rx, shutdown))
    })
    .await
    .map_err(|e| RunError::Checkpoint(CheckpointError::ProcessorPanicked(e)))?;
    opts.ready.stopped();
    let _ = monitor_stop.send(true);
    let _ = monitor.await;
    // Sources and sinks normally end on their own once the processor is
    // gone; one stuck retrying an unreachable service is abandoned (its work
    // is in the checkpoint and is redone at the next start).
    for t in source_tasks.into_iter().chain(sink_tasks) {
        let abort = t.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            tracing::warn!("a source or sink did not stop within 10 s; abandoning it");
            abort.abort();
        }
    }
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    result
}
