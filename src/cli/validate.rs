//! `sluice validate`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub(crate) struct ValidateArgs {
    /// Pipeline files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub(crate) fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for file in &args.files {
        match super::load(file) {
            Ok(p) => {
                println!(
                    "{}: ok — pipeline `{}`: {} source(s), {} transform(s), {} sink(s); state in {}",
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
