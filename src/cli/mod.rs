//! The subcommands, one file each, and what they share.

pub mod graph;
pub mod reload;
pub mod replay;
pub mod run;
pub mod test;
pub mod validate;

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
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields.message`, the
    /// event's other fields, and the spans (`pipeline`...) it happened in.
    Json,
}

/// Structured logs on stderr, filtered by RUST_LOG (default: info).
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
}

/// Loads a pipeline, printing every error; `Err(exit code)` on failure.
pub fn load(path: &Path) -> Result<Pipeline, ExitCode> {
    config::load(path, |name| std::env::var(name).ok()).map_err(|errors| {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("{} error(s) in {}", errors.len(), path.display());
        ExitCode::from(2)
    })
}

/// A multi-threaded runtime sized for the machine.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-worker")
        .build()?)
}

/// Turns SIGTERM/SIGINT into a graceful-shutdown request.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
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
pub enum Mode {
    /// `sluice run`: refuses to start on lost or damaged state.
    Run,
    /// `sluice run --accept-empty-state`: starts from the state as it is.
    RunAcceptingEmptyState,
    /// `sluice replay`: builds fresh state from the sources' logs.
    Replay,
}

/// Runs a pipeline on the current runtime.
pub async fn execute(
    p: &Pipeline,
    state_dir: Option<std::path::PathBuf>,
    bounded: bool,
    shutdown: watch::Receiver<bool>,
    progress: Vec<Arc<Progress>>,
    ready: Arc<Readiness>,
    mode: Mode,
) -> anyhow::Result<RunReport> {
    let spec = crate::plan::to_spec(p, state_dir, mode == Mode::Replay)?;
    let opts = RunOptions {
        bounded,
        shutdown,
        ready,
        progress,
        accept_empty_state: mode != Mode::Run,
    };
    Ok(runtime::run(spec, opts).await?)
}
