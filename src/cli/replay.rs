//! `sluice replay`: rebuild state from the log into a fresh directory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_engine::source::Progress;

#[derive(Args)]
pub(crate) struct ReplayArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Where to build the new state (default: `<state dir>.replay`). Must
    /// not exist or be empty.
    #[arg(long)]
    pub into: Option<PathBuf>,
}

pub(crate) fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let pipeline = match super::load(&args.pipeline) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let into = args.into.unwrap_or_else(|| {
        let mut s = pipeline.state_dir().into_os_string();
        s.push(".replay");
        PathBuf::from(s)
    });
    if into.exists() && std::fs::read_dir(&into)?.next().is_some() {
        anyhow::bail!(
            "{} already exists and is not empty; choose another --into or remove it",
            into.display()
        );
    }
    let progress: Vec<Arc<Progress>> = pipeline.sources.iter().map(|_| Arc::default()).collect();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} replay [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let rt = super::runtime()?;
    let report = rt.block_on(async {
        let shutdown = super::shutdown_on_signals();
        let watch = progress.clone();
        let bar2 = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let (done, total) = watch.iter().fold((0, 0), |(d, t), p| {
                    (
                        d + p.done.load(std::sync::atomic::Ordering::Relaxed),
                        t + p.total.load(std::sync::atomic::Ordering::Relaxed),
                    )
                });
                bar2.set_length(total.max(done));
                bar2.set_position(done);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let r = super::execute(
            &pipeline,
            Some(into.clone()),
            true,
            shutdown,
            progress,
            Default::default(),
            super::Start::single(super::Mode::Replay),
        )
        .await;
        ticker.abort();
        r
    })?;
    bar.finish();
    println!(
        "rebuilt the state of `{}` into {}: {} events, {} dead letters, checkpoint epoch {}.\n\
         To use it, stop sluice and point [state] dir at it (or move it over {}).",
        pipeline.name,
        into.display(),
        report.events_in,
        report.dead_letters,
        report.epoch,
        pipeline.state_dir().display()
    );
    Ok(ExitCode::SUCCESS)
}
