//! `sluice graph`: the pipeline's graph as Mermaid or DOT, for docs and
//! reviews (the status page draws the same graph).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::status::Topology;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// A Mermaid flowchart (renders in GitHub and GitLab Markdown).
    Mermaid,
    /// Graphviz DOT (`dot -Tsvg`).
    Dot,
}

#[derive(Args)]
pub(crate) struct GraphArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "mermaid")]
    pub format: Format,
}

pub(crate) fn run(args: GraphArgs) -> anyhow::Result<ExitCode> {
    let pipeline = match super::load(&args.pipeline) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let topology = Topology::of(&pipeline);
    print!(
        "{}",
        match args.format {
            Format::Mermaid => topology.to_mermaid(),
            Format::Dot => topology.to_dot(),
        }
    );
    Ok(ExitCode::SUCCESS)
}
