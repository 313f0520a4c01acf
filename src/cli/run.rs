//! `sluice run`

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use sluice_engine::health::Readiness;
use tokio::sync::watch;

#[derive(Args)]
pub(crate) struct RunArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Override `[state] dir`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Process the input available now and exit (files are not followed).
    #[arg(long)]
    pub once: bool,
    /// Serve the status page (/), /status, /metrics, /health, /ready and
    /// /tables on this address
    /// (overrides `[admin] address`).
    #[arg(long)]
    pub admin: Option<std::net::SocketAddr>,
    /// Reload the pipeline file when it changes (as on SIGHUP).
    #[arg(long, env = "SLUICE_WATCH")]
    pub watch: bool,
    /// Start even though the state directory is missing or damaged, or
    /// holds an older checkpoint than an earlier run committed (sluice
    /// refuses such a start by default). Results computed before are lost
    /// or recomputed from what the sources still hold; see
    /// docs/operations.md, "Damaged or lost state".
    #[arg(long)]
    pub accept_empty_state: bool,
    /// Threads that run sources, sinks and the exchange (default: one per
    /// CPU this process may use). With several workers on one machine,
    /// give each its share of the CPUs (docs/scaling.md).
    #[arg(long, env = "SLUICE_THREADS")]
    pub threads: Option<std::num::NonZeroUsize>,
    /// Which worker of how many this process is (docs/scaling.md).
    #[command(flatten)]
    pub workers: super::workers::WorkerArgs,
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let worker = match super::worker(&args.workers) {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let pipeline = match super::load_as(&args.pipeline, worker) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let started = Instant::now();
    let rt = super::runtime_with(args.threads)?;
    tracing::info!(
        pipeline = %pipeline.name,
        threads = rt.metrics().num_workers(),
        "runtime threads for sources, sinks and the exchange: {}",
        rt.metrics().num_workers()
    );
    let admin = args.admin.or(pipeline.admin.address);
    let report = rt.block_on(async {
        let shutdown = super::shutdown_on_signals();
        let ready = Arc::new(Readiness::new(pipeline.admin.ready_max_backlog));
        let (stop_admin, admin_stop) = watch::channel(false);
        // The graph the status page shows; a reload replaces it.
        let topology = Arc::new(std::sync::RwLock::new(crate::status::Topology::of(
            &pipeline,
        )));
        let server = match admin {
            Some(addr) => {
                let handle = crate::admin::install_metrics()?;
                let access = crate::admin::Access::from_config(&pipeline.admin)?;
                // Bind first so that a port conflict fails the start, not later.
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("admin server cannot listen on {addr}: {e}"))?;
                Some(tokio::spawn(crate::admin::serve(
                    listener,
                    handle,
                    ready.clone(),
                    pipeline.name.clone(),
                    topology.clone(),
                    admin_stop,
                    access,
                )))
            }
            None => None,
        };
        let result =
            run_reloading(&args, worker, pipeline.clone(), shutdown, ready, topology).await;
        let _ = stop_admin.send(true);
        if let Some(server) = server {
            let _ = server.await;
        }
        result
    })?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        pipeline = %pipeline.name,
        events = report.events_in,
        dead_letters = report.dead_letters,
        epoch = report.epoch,
        seconds = format!("{secs:.3}"),
        events_per_second = (report.events_in as f64 / secs.max(1e-9)) as u64,
        "pipeline `{}` stopped{}",
        pipeline.name,
        if report.input_exhausted {
            " at the end of its input"
        } else {
            ""
        }
    );
    if report.input_exhausted && report.events_in == 0 && report.epoch > 0 {
        tracing::warn!(
            "nothing new to read: the state in {} was already at the end of the input, \
             from an earlier run. `sluice replay {}` rebuilds everything from the beginning",
            args.state_dir
                .clone()
                .unwrap_or_else(|| pipeline.state_dir())
                .display(),
            args.pipeline.display()
        );
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(ExitCode::SUCCESS)
}

/// Runs the pipeline, replacing it by the file's new contents on every
/// accepted reload (see [`super::reload`]), until a shutdown or the end of
/// a bounded input.
async fn run_reloading(
    args: &RunArgs,
    worker: sluice_engine::cluster::WorkerId,
    mut current: crate::config::Pipeline,
    mut signals: watch::Receiver<bool>,
    ready: Arc<Readiness>,
    topology: Arc<std::sync::RwLock<crate::status::Topology>>,
) -> anyhow::Result<sluice_engine::runtime::RunReport> {
    let mut reloads = super::reload::requests(
        args.pipeline.clone(),
        args.watch,
        std::time::Duration::from_millis(500),
    );
    // Only the first start may accept missing state; after a reload the
    // state is the one just checkpointed.
    let mut mode = if args.accept_empty_state {
        super::Mode::RunAcceptingEmptyState
    } else {
        super::Mode::Run
    };
    loop {
        super::set_log_level(current.log.level.as_deref());
        let (stop, stopped) = watch::channel(*signals.borrow());
        let mut next = None;
        let report = {
            let run = super::execute(
                &current,
                args.state_dir.clone(),
                args.once,
                stopped,
                Vec::new(),
                ready.clone(),
                super::Start { mode, worker },
            );
            tokio::pin!(run);
            // Once the signal task has said stop (and ended, dropping its
            // sender), `changed()` would answer at once forever: a busy
            // loop for the whole drain. Watch it only until then.
            let mut signalled = *signals.borrow();
            loop {
                tokio::select! {
                    report = &mut run => break report?,
                    changed = signals.changed(), if !signalled => {
                        if changed.is_err() || *signals.borrow() {
                            signalled = true;
                            let _ = stop.send(true);
                        }
                    }
                    Some(why) = reloads.recv(), if next.is_none() && !*stop.borrow() => {
                        match super::reload::prepare(&args.pipeline, &current, worker) {
                            Ok(new) => {
                                tracing::info!(reason = why, file = %args.pipeline.display(),
                                    "reloading: stopping at a checkpoint, then starting the new pipeline");
                                next = Some(new);
                                let _ = stop.send(true);
                            }
                            Err(e) => tracing::error!(reason = why, file = %args.pipeline.display(),
                                "reload refused, the running pipeline goes on unchanged: {e}"),
                        }
                    }
                }
            }
        };
        match next {
            Some(new) if !*signals.borrow() && !report.input_exhausted => {
                current = new;
                ready.set_max_backlog(current.admin.ready_max_backlog);
                mode = super::Mode::Run;
                if let Ok(mut t) = topology.write() {
                    *t = crate::status::Topology::of(&current);
                }
                tracing::info!(
                    epoch = report.epoch,
                    "reloaded `{}`",
                    current.path.display()
                );
            }
            _ => return Ok(report),
        }
    }
}
