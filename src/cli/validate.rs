//! `sluice validate`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub(crate) struct ValidateArgs {
    /// Pipeline files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Check each file as this worker of N sees it.
    #[command(flatten)]
    pub workers: super::workers::WorkerArgs,
}

pub(crate) fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let worker = match super::worker(&args.workers) {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let mut ok = true;
    for file in &args.files {
        match super::load_as(file, worker) {
            Ok(p) => {
                let cluster = if worker.is_single() {
                    String::new()
                } else {
                    format!("; {worker}")
                };
                println!(
                    "{}: ok — pipeline `{}`: {} source(s), {} transform(s), {} sink(s); state in {}{cluster}",
                    p.path.display(),
                    p.name,
                    p.sources.len(),
                    p.transforms.len(),
                    p.sinks.len(),
                    p.state_dir().display()
                );
            }
            Err(_) => ok = false,
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
