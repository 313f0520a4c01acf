//! `sluice run`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

#[derive(Args)]
pub struct RunArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Override `[state] dir`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Process the input available now and exit (files are not followed).
    #[arg(long)]
    pub once: bool,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let pipeline = match super::load(&args.pipeline) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let started = Instant::now();
    let rt = super::runtime()?;
    let report = rt.block_on(async {
        let shutdown = super::shutdown_on_signals();
        super::execute(
            &pipeline,
            args.state_dir.clone(),
            args.once,
            shutdown,
            Vec::new(),
        )
        .await
    })?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
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
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(ExitCode::SUCCESS)
}
