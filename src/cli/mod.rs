//! The subcommands, one file each, and what they share.

pub(crate) mod graph;
pub(crate) mod release;
pub(crate) mod reload;
pub(crate) mod replay;
pub(crate) mod run;
pub(crate) mod test;
pub(crate) mod validate;
pub(crate) mod workers;

use sluice_engine::cluster::WorkerId;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use sluice_engine::health::Readiness;
use sluice_engine::runtime::{self, RunOptions, RunReport};
use sluice_engine::source::Progress;
use tokio::sync::watch;

use crate::config::{self, Pipeline};

/// How log lines are written on stderr (`--log-format`, `SLUICE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields.message`, the
    /// event's other fields, and the spans (`pipeline`...) it happened in.
    Json,
}

/// Changes the log filter of the running process (`[log] level`).
type LevelHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_LEVEL: std::sync::OnceLock<LevelHandle> = std::sync::OnceLock::new();

/// Structured logs on stderr, filtered by RUST_LOG (default: info, or the
/// pipeline's `[log] level`, see [`set_log_level`]).
pub(crate) fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Text => registry
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .try_init(),
        LogFormat::Json => registry
            .with(layer.json().with_current_span(false).with_span_list(true))
            .try_init(),
    };
    if installed.is_ok() {
        let _ = LOG_LEVEL.set(handle);
    }
}

/// Applies a pipeline's `[log] level` (at start and at every reload),
/// unless RUST_LOG is set, which wins.
pub(crate) fn set_log_level(level: Option<&str>) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    let Some(handle) = LOG_LEVEL.get() else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_new(level.unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if let Err(e) = handle.reload(filter) {
        tracing::warn!(error = %e, "cannot change the log level");
    }
}

/// Loads a pipeline, printing every error; `Err(exit code)` on failure.
pub(crate) fn load(path: &Path) -> Result<Pipeline, ExitCode> {
    load_with(path, |name| std::env::var(name).ok())
}

/// Decides which worker this is (see [`workers::resolve`]); `Err(exit
/// code)`, with the reason printed, when it cannot be decided.
pub(crate) fn worker(args: &workers::WorkerArgs) -> Result<WorkerId, ExitCode> {
    workers::resolve(args, workers::host_name).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// Loads a pipeline as `worker` sees it (`${SLUICE_WORKER_ID}` is its
/// id) and checks that it can run as that worker (`[cluster]` when there
/// are several); prints every error, `Err(exit code)` on failure.
pub(crate) fn load_as(path: &Path, worker: WorkerId) -> Result<Pipeline, ExitCode> {
    let p = load_with(path, workers::lookup(worker))?;
    match crate::plan::cluster(&p, worker) {
        Ok(_) => Ok(p),
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn load_with(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Pipeline, ExitCode> {
    config::load(path, env).map_err(|errors| {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("{} error(s) in {}", errors.len(), path.display());
        ExitCode::from(2)
    })
}

/// A multi-threaded runtime sized for the machine.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

/// A multi-threaded runtime with `threads` worker threads, or one per CPU
/// this process may use (its cgroup's CPU quota counts) when `None`.
pub(crate) fn runtime_with(
    threads: Option<std::num::NonZeroUsize>,
) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.get());
    }
    Ok(builder.enable_all().thread_name("sluice-worker").build()?)
}

/// Turns SIGTERM/SIGINT into a graceful-shutdown request.
pub(crate) fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        let _ = tx.send(true);
    });
    rx
}

/// How a pipeline is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `sluice run`: refuses to start on lost or damaged state.
    Run,
    /// `sluice run --accept-empty-state`: starts from the state as it is.
    RunAcceptingEmptyState,
    /// `sluice replay`: builds fresh state from the sources' logs.
    Replay,
}

/// How a pipeline starts, and as which worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    pub mode: Mode,
    pub worker: WorkerId,
}

impl Start {
    /// `mode`, as the only worker.
    pub(crate) fn single(mode: Mode) -> Start {
        Start {
            mode,
            worker: WorkerId::SINGLE,
        }
    }
}

/// Runs a pipeline on the current runtime.
pub(crate) async fn execute(
    p: &Pipeline,
    state_dir: Option<std::path::PathBuf>,
    bounded: bool,
    shutdown: watch::Receiver<bool>,
    progress: Vec<Arc<Progress>>,
    ready: Arc<Readiness>,
    start: Start,
) -> anyhow::Result<RunReport> {
    let Start { mode, worker } = start;
    let spec = crate::plan::to_spec(p, state_dir, mode == Mode::Replay, worker)?;
    let opts = RunOptions {
        bounded,
        shutdown,
        ready,
        progress,
        accept_empty_state: mode != Mode::Run,
    };
    Ok(runtime::run(spec, opts).await?)
}
