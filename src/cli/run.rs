//! `sluice run`

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use tokio::sync::watch;

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
    /// Serve /metrics, /health, /ready and /tables on this address
    /// (overrides `[admin] address`).
    #[arg(long)]
    pub admin: Option<std::net::SocketAddr>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let pipeline = match super::load(&args.pipeline) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let started = Instant::now();
    let rt = super::runtime()?;
    let admin = args.admin.or(pipeline.admin.address);
    let report = rt.block_on(async {
        let shutdown = super::shutdown_on_signals();
        let ready = Arc::new(AtomicBool::new(false));
        let (stop_admin, admin_stop) = watch::channel(false);
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
                    admin_stop,
                    access,
                )))
            }
            None => None,
        };
        let result = super::execute(
            &pipeline,
            args.state_dir.clone(),
            args.once,
            shutdown,
            Vec::new(),
            ready,
            false,
        )
        .await;
        let _ = stop_admin.send(true);
        if let Some(server) = server {
            let _ = server.await;
        }
        result
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
