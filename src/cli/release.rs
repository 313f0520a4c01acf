//! `sluice release`: the operator's action for a worker that is gone for
//! good (its volume lost while it was not stopped cleanly): releases its
//! key groups in the remote copy as of its last uploaded checkpoint, so
//! that the workers of a rescale may claim them (docs/scaling.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use sluice_engine::state::remote::RemoteStore;

#[derive(Args)]
pub(crate) struct ReleaseArgs {
    /// The pipeline file (its `[state] remote` names the remote copy).
    pub file: PathBuf,
    /// The worker to release: its id (0 to N-1) in the run of N workers
    /// it belonged to, given with --workers N --worker I.
    #[command(flatten)]
    pub workers: super::workers::WorkerArgs,
}

pub(crate) fn run(args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    let worker = match super::worker(&args.workers) {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let p = match super::load_as(&args.file, worker) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let Some(url) = p.state.remote.clone() else {
        eprintln!(
            "error: {}: the pipeline has no `[state] remote`: there is nothing to release",
            args.file.display()
        );
        return Ok(ExitCode::from(2));
    };
    super::runtime()?.block_on(async move {
        let remote = RemoteStore::open(&url)?;
        let Some((manifest, m)) = remote.latest_manifest(worker).await? else {
            println!(
                "{worker} never uploaded a checkpoint to {url}: its key groups hold no state, and the other workers take them without a release"
            );
            return Ok(ExitCode::SUCCESS);
        };
        if let Some(r) = remote.latest_release(worker).await? {
            if r.manifest == manifest {
                println!("{worker} already released its key groups at epoch {} ({})", r.epoch, manifest);
                return Ok(ExitCode::SUCCESS);
            }
        }
        sluice_engine::runtime::remote::release(&remote, worker, &manifest, m.epoch, true).await?;
        println!(
            "released the key groups of {worker} as of its last checkpoint in the remote copy (epoch {}, {manifest}); \
             if that worker runs again, stop it: a late write of it is fenced at the sinks",
            m.epoch
        );
        Ok(ExitCode::SUCCESS)
    })
}
