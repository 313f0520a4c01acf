//! `sluice`: run, validate, replay and test stream-processing pipelines
//! declared in TOML.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sluice::{config, plan};

mod admin;
mod cli;
mod status;

/// Sluice: an event-sourced stream processor. A pipeline file (TOML) declares
/// sources, transforms and sinks; sluice runs it with durable state,
/// checkpoints and exactly-once results.
#[derive(Parser)]
#[command(name = "sluice", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    /// Log lines on stderr as `text` (coloured only on a terminal) or `json`
    /// (one object per line, for log collectors).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "SLUICE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: cli::LogFormat,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  sluice validate examples/weather-file.toml     check a pipeline file
  sluice run examples/weather-file.toml          run it (Ctrl-C stops gracefully)
  sluice run --once pipeline.toml                process what is there now, then exit
  sluice replay pipeline.toml                    rebuild state from the log into a fresh directory
  sluice test tests/pipelines/*                  run golden pipelines and compare results
  sluice graph examples/weather-file.toml        print its graph as Mermaid (--format dot: Graphviz)
  sluice validate --workers 3 --worker 1 examples/weather-cluster.toml
                                                 check worker 1 of a pipeline run as 3 workers

Logs go to stderr (--log-format json for one JSON object per line); set
RUST_LOG (e.g. RUST_LOG=debug) for more. ${VAR} in a
pipeline file is replaced by the environment variable VAR; ${SLUICE_WORKER_ID}
by this worker's id (--worker, SLUICE_WORKER_ID or the host name's ordinal:
docs/scaling.md).";

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until its input ends or it is stopped (SIGTERM/SIGINT:
    /// drain, final checkpoint, exit 0).
    Run(cli::run::RunArgs),
    /// Check pipeline files and report every mistake with file:line:column.
    Validate(cli::validate::ValidateArgs),
    /// Rebuild all state by re-reading the sources from the beginning into a
    /// fresh state directory (e.g. after changing a pipeline).
    Replay(cli::replay::ReplayArgs),
    /// Run golden pipelines (dir with pipeline.toml, input.ndjson,
    /// expected.ndjson) and compare their final results.
    Test(cli::test::TestArgs),
    /// Print the pipeline's graph (sources -> transforms -> sinks) as
    /// Mermaid or Graphviz DOT.
    Graph(cli::graph::GraphArgs),
    /// Release the key groups of a worker that is gone for good (its volume
    /// lost), as of its last checkpoint in the remote copy, so that a
    /// rescale can move them (docs/scaling.md).
    Release(cli::release::ReleaseArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    cli::init_logging(log_format);
    let result = match cli.command {
        Command::Run(a) => cli::run::run(a),
        Command::Validate(a) => cli::validate::run(a),
        Command::Replay(a) => cli::replay::run(a),
        Command::Test(a) => cli::test::run(a),
        Command::Graph(a) => cli::graph::run(a),
        Command::Release(a) => cli::release::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // The error and its causes, each shown once.
            let shown = sluice_engine::error::Report(e.as_ref());
            if log_format == cli::LogFormat::Json {
                tracing::error!("{shown}");
            } else {
                eprintln!("error: {shown}");
            }
            ExitCode::from(1)
        }
    }
}
