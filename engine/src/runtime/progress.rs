//! The readiness monitor of a run: keeps `sluice_ready`,
//! `sluice_source_backlog_events` and `sluice_restore_seconds` current,
//! logs every change of readiness with its reasons, and while a source
//! catches up logs a progress line every few seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::health::{Readiness, ReadyReport};
use crate::metrics as m;

/// How often readiness is evaluated for the metrics and the logs.
const TICK: Duration = Duration::from_millis(500);
/// How often the progress line is logged while catching up.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Catch-up progress of one source.
struct CatchUp {
    /// The largest backlog seen while catching up.
    peak: u64,
    last: u64,
    at: Instant,
}

pub(super) async fn monitor(
    ready: Arc<Readiness>,
    pipeline: Arc<str>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let labels = m::pipeline_labels(&pipeline);
    let mut was_ready: Option<bool> = None;
    let mut ever_ready = false;
    let mut catching_up: HashMap<String, CatchUp> = HashMap::new();
    let mut last_progress: Option<Instant> = None;
    loop {
        let report = ready.report();
        metrics::gauge!(m::READY, labels.clone()).set(if report.ready { 1.0 } else { 0.0 });
        for s in &report.sources {
            if let Some(b) = s.backlog_events {
                let l = m::component_labels(&pipeline, &s.name, "source");
                metrics::gauge!(m::SOURCE_BACKLOG, l).set(b as f64);
            }
        }
        if !ever_ready {
            metrics::gauge!(m::RESTORE_SECONDS, labels.clone())
                .set(started.elapsed().as_secs_f64());
        }
        if was_ready != Some(report.ready) {
            if report.ready {
                if ever_ready {
                    tracing::info!("ready again");
                } else {
                    tracing::info!(
                        seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
                        "ready: state restored and sources caught up"
                    );
                }
                ever_ready = true;
            } else if was_ready == Some(true) {
                tracing::warn!(reasons = ?report.reasons, "not ready");
            } else {
                tracing::info!(reasons = ?report.reasons, "not ready yet");
            }
            was_ready = Some(report.ready);
        }
        let due = last_progress.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if !report.ready && due && log_progress(&report, ready.max_backlog(), &mut catching_up) {
            last_progress = Some(Instant::now());
        }
        if report.ready {
            catching_up.clear();
            last_progress = None;
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = crate::source::wait_shutdown(&mut stop) => return,
        }
    }
}

/// Logs one line per source that is catching up; false if none is.
fn log_progress(
    report: &ReadyReport,
    max_backlog: u64,
    catching_up: &mut HashMap<String, CatchUp>,
) -> bool {
    let mut logged = false;
    let now = Instant::now();
    for s in &report.sources {
        let Some(backlog) = s.backlog_events.filter(|&b| b > max_backlog) else {
            continue;
        };
        let entry = catching_up.entry(s.name.clone()).or_insert(CatchUp {
            peak: backlog,
            last: backlog,
            at: now,
        });
        entry.peak = entry.peak.max(backlog);
        let secs = now.duration_since(entry.at).as_secs_f64();
        let rate = if secs > 0.0 && entry.last > backlog {
            (entry.last - backlog) as f64 / secs
        } else {
            0.0
        };
        let left = if rate > 0.0 {
            format!(
                ", about {:.0} s left",
                (backlog - max_backlog) as f64 / rate
            )
        } else {
            String::new()
        };
        tracing::info!(
            source = %s.name,
            backlog_events = backlog,
            ready_max_backlog = max_backlog,
            events_per_second = rate as u64,
            "catching up: source {}, {backlog} of {} events behind, {:.0} events/s{left}",
            s.name,
            entry.peak,
            rate
        );
        entry.last = backlog;
        entry.at = now;
        logged = true;
    }
    for reason in &report.reasons {
        if reason.contains("bytes of its files left") {
            tracing::info!("{reason}");
            logged = true;
        }
    }
    logged
}
