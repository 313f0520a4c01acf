//! Running a pipeline: building the dataflow from a [`PipelineSpec`],
//! restoring the last checkpoint, and driving sources, the processor and
//! sinks until the input ends or shutdown is requested.
//!
//! Threads and tasks:
//! - each source runs as a tokio task (or its own thread) and decodes its
//!   input before sending batches over one bounded channel;
//! - the processor (one dedicated thread) owns every operator and its state,
//!   runs batches through the graph, tracks watermarks and starts checkpoints;
//! - the checkpoint writer thread applies each checkpoint to the state
//!   backend ([`crate::state`]) durably, while the processor carries on;
//! - each sink runs as a tokio task fed with committed epochs.

mod cluster;
mod error;
mod fold;
pub mod marker;
mod processor;
mod progress;
pub mod remote;
mod restore;
pub mod store;
pub mod watermark;

use crate::cluster::{ClusterSpec, WorkerId};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::checkpoint::{self, Action, Protocol};
use crate::decode::{Decoder, EventTimeSpec};
use crate::error::Report;
use crate::graph::Graph;
use crate::health::{Readiness, SourceHealth};
use crate::operator::{FieldSet, Operator, OperatorSpec};
use crate::plan::Plan;
use crate::sink::{drive_sink, RetryPolicy, Sink, SinkEpoch, SinkEvent};
use crate::source::{Commit, Progress, Source, SourceContext, SourceEvent, SourceOutput};
use crate::state::{Restored, StateBackend};
use processor::{Processor, ProcessorParts};
use restore::{check_lost_state, open_store, restore, write_restart_snapshot, RestartTarget};
use watermark::{WatermarkSettings, WatermarkTracker};

/// Sink records buffered in the current epoch that trigger a checkpoint
/// before the interval elapses (bounds the memory held by outboxes).
const EARLY_CHECKPOINT_RECORDS: usize = 20_000;

/// On a requested shutdown, how long to wait for sinks to acknowledge the
/// last committed epochs. What they have not acknowledged by then is safe in
/// the checkpoint's outbox and is re-delivered at the next start.
const SINK_DRAIN_GRACE: Duration = Duration::from_secs(10);

pub use error::{CheckpointError, RunError};

/// A source as configured.
pub struct SourceSpec {
    /// The component's name in the pipeline; it keys the source's stored
    /// positions, so renaming it loses them.
    pub name: String,
    /// Where each event's time is read from; `None` for processing time
    /// (the arrival clock).
    pub event_time: Option<EventTimeSpec>,
    /// How far behind the largest event time seen the watermark is held,
    /// so events this late still count.
    pub max_disorder: Duration,
    /// A partition with no data for this long stops holding the watermark
    /// back; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Events longer than this many bytes become dead letters.
    pub max_event_bytes: usize,
    /// The connector that reads the events.
    pub source: Box<dyn Source>,
}

/// A transform (operator) as configured.
pub struct TransformSpec {
    /// The component's name in the pipeline; it keys the operator's stored
    /// state, so renaming it loses that state.
    pub name: String,
    /// Names of the sources and transforms whose output it reads.
    pub inputs: Vec<String>,
    /// Builds the operator and describes its state.
    pub spec: Box<dyn OperatorSpec>,
}

/// A sink as configured.
pub struct SinkSpec {
    /// The component's name in the pipeline; it keys the sink's stored
    /// acknowledgements and outbox.
    pub name: String,
    /// Names of the sources and transforms whose output it writes.
    pub inputs: Vec<String>,
    /// The connector that writes the records.
    pub sink: Box<dyn Sink>,
    /// Builds the connector again as another worker: used to write the
    /// unacknowledged output of a former owner of key groups that is gone
    /// (see [`Sink::restore_former`]). None where that cannot be built.
    pub former: Option<FormerSink>,
}

/// Builds a sink as the given worker (see [`SinkSpec::former`]).
pub type FormerSink = Arc<dyn Fn(WorkerId) -> Box<dyn Sink> + Send + Sync>;

/// A whole pipeline, ready to run.
pub struct PipelineSpec {
    /// The pipeline's name, carried by every log line and metric of the run.
    pub name: String,
    /// The directory of the state store and its marker.
    pub state_dir: PathBuf,
    /// Where sources keep their own durable files (e.g. the HTTP journal).
    /// Usually the state directory; `sluice replay` builds state elsewhere
    /// but reads the sources' files from here.
    pub source_dir: PathBuf,
    /// Time between checkpoints (one is also taken early when sinks buffer
    /// many records).
    pub checkpoint_interval: Duration,
    /// How many key groups keyed state is spread over; must match the
    /// restored state, or the start is refused.
    pub key_groups: u16,
    /// Epochs a sink may fall behind before sources are slowed down.
    pub max_pending_epochs: usize,
    /// Batches buffered between sources and the processor.
    pub channel_capacity: usize,
    /// The pipeline's sources, in configuration order.
    pub sources: Vec<SourceSpec>,
    /// The pipeline's transforms, in configuration order.
    pub transforms: Vec<TransformSpec>,
    /// The pipeline's sinks, in configuration order.
    pub sinks: Vec<SinkSpec>,
    /// Where dead letters go (has no inputs).
    pub dead_letter: SinkSpec,
    /// How sinks back off between retries of a failed write.
    pub retry: RetryPolicy,
    /// This worker among the pipeline's workers ([`WorkerId::SINGLE`] for
    /// a run of one).
    pub worker: WorkerId,
    /// The `[cluster]` section: required when `worker.workers > 1`.
    pub cluster: Option<ClusterSpec>,
    /// `[state] remote`: the URL of the remote copy of the state, if any.
    pub remote: Option<String>,
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
    /// Events the processor received from sources during this run.
    pub events_in: u64,
    /// Dead letters produced during this run.
    pub dead_letters: u64,
    /// True when every source reached the end of its input.
    pub input_exhausted: bool,
    /// True when the run ended with a final checkpoint that every sink
    /// acknowledged and, with several workers, after every other worker's
    /// input ended too and all it sent was applied: nothing of this
    /// worker's key groups is anywhere but in that checkpoint.
    pub clean_stop: bool,
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

/// The dataflow planned from a spec: the graph, what each source decodes,
/// the sources feeding each node, and the operators built.
struct Planned {
    graph: Graph,
    /// Per source: the fields it must decode.
    needs: Vec<FieldSet>,
    /// Per node: the sources feeding it.
    upstream: Vec<BTreeSet<usize>>,
    /// Per transform, in spec order.
    operators: Vec<Option<Box<dyn Operator>>>,
    /// `(transform, state signature)` of every stateful transform.
    signatures: Vec<(String, String)>,
    /// Per node: rows read from a source are routed to their key group's
    /// owner here (the first stateful operator on their path).
    points: Vec<bool>,
}

/// Plans the dataflow (the same planner `sluice validate` uses) and builds
/// the operators.
fn plan(spec: &PipelineSpec) -> Result<Planned, RunError> {
    let plan = Plan::of_spec(spec).map_err(RunError::Plan)?;
    let n_sources = spec.sources.len();
    let points = cluster::exchange_points(spec, &plan)?;
    let mut operators: Vec<Option<Box<dyn Operator>>> = Vec::new();
    let mut signatures = Vec::new();
    for (t, tspec) in spec.transforms.iter().enumerate() {
        let ctx = plan.build_context(n_sources + t, spec.key_groups);
        let op = tspec.spec.build(&ctx).map_err(RunError::Build)?;
        operators.push(Some(op));
        if tspec.spec.is_stateful() {
            signatures.push((tspec.name.clone(), tspec.spec.state_signature()));
        }
    }
    let Plan {
        graph,
        reads: needs,
        upstream,
        ..
    } = plan;

    Ok(Planned {
        graph,
        needs,
        upstream,
        operators,
        signatures,
        points,
    })
}

async fn run_in_span(spec: PipelineSpec, opts: RunOptions) -> Result<RunReport, RunError> {
    let Planned {
        graph,
        needs,
        upstream,
        mut operators,
        signatures,
        points,
    } = plan(&spec)?;
    let me = spec.worker;
    if !me.is_single() && spec.cluster.is_none() {
        return Err(RunError::Plan(format!(
            "{me}: a run of {} workers needs a [cluster] section (listen, peers)",
            me.workers
        )));
    }
    let topology = cluster::topology_signature(&spec);
    let started = std::time::Instant::now();
    let pipeline: Arc<str> = Arc::from(spec.name.as_str());
    register_metrics(&spec);
    // Read while the store opens (see `restore`).
    let restart_snapshot = {
        let dir = spec.state_dir.clone();
        std::thread::spawn(move || crate::state::restart::take(&dir))
    };
    let opened = std::time::Instant::now();
    let store = open_store(&spec)?;
    let open_ms = opened.elapsed().as_millis() as u64;
    if spec.remote.is_none() && remote::import_pending(store.as_ref())? {
        return Err(RunError::StateMismatch {
            dir: spec.state_dir.display().to_string(),
            reason: "a run with `[state] remote` took key groups from the remote copy and ended before it wrote them into this directory; start it again with the same `[state] remote` (it finishes the write)".into(),
        });
    }
    let mut uploader = match &spec.remote {
        Some(url) => {
            let connectors = remote::Connectors::of(&spec);
            let prepared = remote::prepare_run(
                (spec.worker, spec.key_groups, &spec.name),
                &spec.state_dir,
                url,
                &store,
                &signatures,
                &connectors,
                &opts.ready,
            );
            // A stop requested meanwhile (the start may wait for other
            // workers' releases for as long as they run) ends the start
            // where it is: like a crash there, which a later start redoes,
            // but at once and with a clean exit.
            let mut stop = opts.shutdown.clone();
            let stopped = async move {
                if stop.wait_for(|&s| s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                prepared = prepared => Some(prepared?),
                () = stopped => {
                    tracing::info!("stop requested before the start took its key groups over: stopped without processing anything");
                    return Ok(RunReport {
                        epoch: 0,
                        events_in: 0,
                        dead_letters: 0,
                        input_exhausted: false,
                        clean_stop: false,
                    });
                }
            }
        }
        None => None,
    };
    let remote_progress = uploader.as_ref().map(|(_, u, _)| u.progress());
    let restored_remotely = uploader
        .as_ref()
        .is_some_and(|(r, _, _)| *r == remote::Recovery::LostVolume);
    let mut fetched = uploader
        .as_mut()
        .map(|(_, _, f)| std::mem::take(f))
        .unwrap_or_default();
    let import = fetched.import.take();
    let (store, mut restored) = restore(
        &spec,
        store,
        &signatures,
        &mut operators,
        (open_ms, fetched),
        restart_snapshot,
    )?;
    if spec.remote.is_some() && !me.is_single() {
        drop_unowned_in_background(store.clone(), &signatures, me, spec.key_groups);
    }
    let cluster_state = cluster::check_cluster_state(&spec, &restored)?;
    let mut all_sinks: Vec<SinkSpec> = spec.sinks;
    all_sinks.push(spec.dead_letter);
    check_lost_state(
        &spec.state_dir,
        &mut all_sinks,
        &restored,
        opts.accept_empty_state,
    )
    .await?;
    let tracker = watermark_tracker(&spec.sources, &restored);
    let sink_progress: Vec<Option<Vec<u8>>> = all_sinks
        .iter()
        .map(|s| restored.acks.get(&s.name).and_then(|a| a.progress.clone()))
        .collect();
    let config = checkpoint::Config {
        sources: spec
            .sources
            .iter()
            .map(|s| Arc::from(s.name.as_str()))
            .collect(),
        sinks: all_sinks
            .iter()
            .map(|s| Arc::from(s.name.as_str()))
            .collect(),
        key_groups: spec.key_groups,
        signatures: signatures
            .iter()
            .map(|(node, sig)| (Arc::from(node.as_str()), sig.clone()))
            .collect(),
        max_pending_epochs: spec.max_pending_epochs.max(1),
        early_checkpoint_records: EARLY_CHECKPOINT_RECORDS,
        drain_grace: SINK_DRAIN_GRACE,
    };
    let (protocol, redeliveries) = Protocol::restore(config, &mut restored);
    let stateful = spec
        .transforms
        .iter()
        .map(|t| t.spec.is_stateful())
        .collect();
    let sinks = start_sinks(
        all_sinks,
        sink_progress,
        redeliveries,
        &pipeline,
        &spec.retry,
    );
    let cluster = match &spec.cluster {
        Some(c) if !me.is_single() => {
            let sources = spec
                .sources
                .iter()
                .map(|s| {
                    (
                        crate::value::Str::from(s.name.as_str()),
                        s.source.distribution(),
                        s.idle_timeout.map(|d| d.as_millis() as i64),
                    )
                })
                .collect();
            let run = cluster::ClusterRun::start(cluster::ClusterParts {
                spec: c,
                me,
                signature: topology,
                key_groups: spec.key_groups,
                state_dir: &spec.state_dir,
                restored: cluster_state,
                graph: &graph,
                points,
                sources,
                pipeline: &spec.name,
            })
            .await
            .map_err(|e| RunError::Exchange(e.to_string()))?;
            Some(run)
        }
        _ => None,
    };
    let folds = fold::fold_plan(&graph, &operators, spec.sources.len(), cluster.is_some());
    let sources = start_sources(
        spec.sources,
        &needs,
        &mut restored,
        &opts,
        &pipeline,
        &spec.source_dir,
        spec.channel_capacity,
        me,
        restored_remotely,
        &folds,
    );

    let (ckpt_done_tx, ckpt_done_rx) = mpsc::unbounded_channel();
    let (job_tx, job_rx) = std::sync::mpsc::channel();
    let writer = store::spawn_writer(
        store,
        spec.state_dir.clone(),
        job_rx,
        ckpt_done_tx,
        uploader.map(|(_, u, _)| u),
        import,
    );
    if let Some(progress) = &remote_progress {
        // Once a stop is requested, uploads that keep failing give up
        // after a while instead of holding the stop forever.
        let progress = progress.clone();
        let mut shutdown = opts.shutdown.clone();
        tokio::spawn(async move {
            if shutdown.wait_for(|&s| s).await.is_ok() {
                progress
                    .stopping
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let parts = ProcessorParts {
        pipeline: pipeline.clone(),
        graph,
        n_sources: sources.names.len(),
        operators,
        stateful,
        upstream,
        source_names: sources.names,
        sink_names: sinks.names,
        sink_txs: sinks.txs,
        commit_txs: sources.commit_txs,
        tracker,
        protocol,
        checkpoint_interval: spec.checkpoint_interval,
        jobs: job_tx,
        stop: sources.stop,
        health: sources.healths.iter().map(|(_, h)| h.clone()).collect(),
        cluster,
        drain_peers_on_stop: spec.remote.is_some(),
        fold_targets: folds
            .iter()
            .map(|f| f.as_ref().map(|(node, _)| *node))
            .collect(),
    };
    let mut healths = sources.healths;
    if let Some(c) = &parts.cluster {
        healths.push((Arc::from("exchange"), c.health()));
    }
    let (monitor_stop, monitor_stopped) = watch::channel(false);
    let monitor = tokio::spawn(
        progress::monitor(opts.ready.clone(), pipeline, started, monitor_stopped).in_current_span(),
    );
    let restart = RestartTarget {
        dir: spec.state_dir.clone(),
        key_groups: spec.key_groups,
        groups: me.owned(spec.key_groups),
        signatures: signatures.clone(),
    };
    // Ready once the processor holds the restored state and has published
    // its size (`sluice_state_keys`), so `/ready` never precedes it.
    let ready = opts.ready.clone();
    let result = run_processor(
        parts,
        sources.data,
        sinks.events,
        ckpt_done_rx,
        opts.shutdown,
        restart,
        move || ready.running(healths),
    )
    .await;
    opts.ready.stopped();
    let _ = monitor_stop.send(true);
    let _ = monitor.await;
    stop(
        sources.tasks.into_iter().chain(sinks.tasks).collect(),
        writer,
    )
    .await;
    if let (Ok(report), Some(progress), Some(url)) = (&result, &remote_progress, &spec.remote) {
        remote::release_if_clean(report, progress, url, me).await;
    }
    result
}

/// Removes what the store holds of key groups this worker does not own
/// (left by a rescale), without delaying the start.
fn drop_unowned_in_background(
    store: Arc<dyn StateBackend>,
    signatures: &[(String, String)],
    me: WorkerId,
    key_groups: u16,
) {
    let nodes: Vec<Arc<str>> = signatures
        .iter()
        .map(|(n, _)| Arc::from(n.as_str()))
        .collect();
    let spawned = std::thread::Builder::new()
        .name("sluice-drop-unowned".into())
        .spawn(move || match remote::drop_unowned(store.as_ref(), &nodes, me, key_groups) {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "removed the state of key groups this worker no longer owns"),
            Err(e) => tracing::warn!(error = %Report(&e), "cannot remove the state of key groups this worker no longer owns (done again at the next start)"),
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start removing the state of key groups this worker no longer owns");
    }
}

fn register_metrics(spec: &PipelineSpec) {
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
}

/// The watermark tracker, with each partition's restored max event time.
fn watermark_tracker(sources: &[SourceSpec], restored: &Restored) -> WatermarkTracker {
    let now = crate::time::now_ms();
    let mut tracker = WatermarkTracker::new(
        sources
            .iter()
            .map(|s| WatermarkSettings {
                event_time: s.event_time.is_some(),
                max_disorder_ms: s.max_disorder.as_millis() as i64,
                idle_timeout_ms: s.idle_timeout.map(|d| d.as_millis() as i64),
            })
            .collect(),
    );
    for (i, s) in sources.iter().enumerate() {
        if let Some(parts) = restored.watermarks.get(&s.name) {
            for (&p, &t) in parts {
                tracker.restore(i, p, t, now);
            }
        }
    }
    tracker
}

/// The running sinks (the dead-letter sink last).
struct RunningSinks {
    names: Vec<Arc<str>>,
    txs: Vec<mpsc::UnboundedSender<SinkEpoch>>,
    events: mpsc::UnboundedReceiver<SinkEvent>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts every sink with its acknowledged progress, after queueing the
/// committed epochs it has not acknowledged (`redeliveries`).
fn start_sinks(
    sinks: Vec<SinkSpec>,
    progress: Vec<Option<Vec<u8>>>,
    redeliveries: Vec<Action>,
    pipeline: &Arc<str>,
    retry: &RetryPolicy,
) -> RunningSinks {
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut queued: Vec<Vec<SinkEpoch>> = sinks.iter().map(|_| Vec::new()).collect();
    for action in redeliveries {
        if let Action::Deliver {
            sink,
            epoch,
            records,
        } = action
        {
            queued[sink].push(SinkEpoch { epoch, records });
        }
    }
    let mut running = RunningSinks {
        names: Vec::new(),
        txs: Vec::new(),
        events,
        tasks: Vec::new(),
    };
    for (i, ((s, progress), queued)) in sinks.into_iter().zip(progress).zip(queued).enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<SinkEpoch>();
        if !queued.is_empty() {
            let epochs: Vec<u64> = queued.iter().map(|e| e.epoch).collect();
            tracing::info!(sink = %s.name, epochs = ?epochs, "re-delivering committed output not yet acknowledged by the sink");
        }
        for epoch in queued {
            let _ = tx.send(epoch);
        }
        let name: Arc<str> = Arc::from(s.name.as_str());
        running.tasks.push(tokio::spawn(
            drive_sink(
                i,
                name.clone(),
                pipeline.clone(),
                s.sink,
                progress,
                rx,
                events_tx.clone(),
                retry.clone(),
            )
            .in_current_span(),
        ));
        running.names.push(name);
        running.txs.push(tx);
    }
    running
}

/// The running sources.
struct RunningSources {
    names: Vec<String>,
    data: mpsc::Receiver<SourceEvent>,
    commit_txs: Vec<mpsc::UnboundedSender<Commit>>,
    healths: Vec<(Arc<str>, Arc<SourceHealth>)>,
    /// Turns true to ask every source to stop.
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts every source from its restored positions.
#[allow(clippy::too_many_arguments)] // each is one part of the run's set-up, named
fn start_sources(
    sources: Vec<SourceSpec>,
    needs: &[FieldSet],
    restored: &mut Restored,
    opts: &RunOptions,
    pipeline: &Arc<str>,
    source_dir: &Path,
    channel_capacity: usize,
    worker: WorkerId,
    restored_remotely: bool,
    folds: &fold::Folds,
) -> RunningSources {
    let (data_tx, data) = mpsc::channel::<SourceEvent>(channel_capacity.max(1));
    let (stop, stop_rx) = watch::channel(false);
    let mut running = RunningSources {
        names: Vec::new(),
        data,
        commit_txs: Vec::new(),
        healths: Vec::new(),
        stop,
        tasks: Vec::new(),
    };
    for (i, s) in sources.into_iter().enumerate() {
        let name: Arc<str> = Arc::from(s.name.as_str());
        if worker.worker != 0 && s.source.distribution() == crate::source::Distribution::FirstWorker
        {
            // Runs on worker 0 only: here it ends at once.
            tracing::info!(source = %name, "this source runs on worker 0 only");
            let events = data_tx.clone();
            running.tasks.push(tokio::spawn(async move {
                let _ = events.send(SourceEvent::Finished { source: i }).await;
            }));
            let (commit_tx, _) = mpsc::unbounded_channel();
            running.commit_txs.push(commit_tx);
            running.names.push(s.name);
            continue;
        }
        let decoder = Arc::new(Decoder::new(
            name.clone(),
            &needs[i],
            s.event_time.clone(),
            s.max_event_bytes,
        ));
        let progress = opts.progress.get(i).cloned().unwrap_or_default();
        let health = Arc::new(SourceHealth::default());
        running.healths.push((name.clone(), health.clone()));
        let mut output =
            SourceOutput::new(i, decoder, data_tx.clone(), progress).with_health(health);
        if let Some(Some((_, combiner))) = folds.get(i) {
            output = output.with_fold(combiner.clone());
        }
        let (commit_tx, commit_rx) = mpsc::unbounded_channel();
        let ctx = SourceContext {
            name: name.clone(),
            pipeline: pipeline.clone(),
            state_dir: source_dir.to_path_buf(),
            restored: restored.positions.remove(&s.name).unwrap_or_default(),
            bounded: opts.bounded,
            accept_empty_state: opts.accept_empty_state,
            restored_remotely,
            shutdown: stop_rx.clone(),
            commits: commit_rx,
            output,
        };
        let events = data_tx.clone();
        let source = s.source;
        running.tasks.push(tokio::spawn(
            async move {
                let msg = match source.run(ctx).await {
                    Ok(()) => SourceEvent::Finished { source: i },
                    Err(error) => SourceEvent::Failed { source: i, error },
                };
                let _ = events.send(msg).await;
            }
            .in_current_span(),
        ));
        running.commit_txs.push(commit_tx);
        running.names.push(s.name);
    }
    running
}

/// Runs the processor on a thread of its own until the run ends; `started`
/// is called once it is built (state restored and its size published).
async fn run_processor(
    parts: ProcessorParts,
    data: mpsc::Receiver<SourceEvent>,
    sink_events: mpsc::UnboundedReceiver<SinkEvent>,
    checkpoints: mpsc::UnboundedReceiver<store::CheckpointDone>,
    shutdown: watch::Receiver<bool>,
    restart: RestartTarget,
    started: impl FnOnce() + Send + 'static,
) -> Result<RunReport, RunError> {
    let handle = tokio::runtime::Handle::current();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _span = span.enter();
        let mut processor = Processor::new(parts);
        started();
        let result = handle.block_on(processor.run(data, sink_events, checkpoints, shutdown));
        if result.is_ok() {
            write_restart_snapshot(&processor, &restart);
        }
        result
    })
    .await
    .map_err(|e| RunError::Checkpoint(CheckpointError::ProcessorPanicked(e)))?
}

/// Waits for the sources and sinks to end and the checkpoint writer to
/// finish its last write.
async fn stop(tasks: Vec<tokio::task::JoinHandle<()>>, writer: std::thread::JoinHandle<()>) {
    // Sources and sinks normally end on their own once the processor is
    // gone; one stuck retrying an unreachable service is abandoned (its work
    // is in the checkpoint and is redone at the next start).
    for t in tasks {
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
}
