//! The output a former owner of key groups committed but its sinks never
//! acknowledged, written on its behalf.
//!
//! A worker that stops cleanly releases its key groups only once every
//! sink acknowledged everything (nothing is left). A worker that is gone
//! (killed, its volume perhaps lost) is released by an operator (`sluice
//! release`) at its last uploaded checkpoint, whose outboxes may hold
//! epochs its sinks never acknowledged: windows it closed and totals it
//! updated there exist nowhere else, because its input up to that
//! checkpoint was released upstream and is never read again. One of the
//! new owners (the owner of the gone worker's first key group, so that
//! each epoch is written once) writes those epochs before it takes the
//! groups over, through each sink built as the gone worker and restored
//! with its last acknowledged progress ([`Sink::restore_former`]): under
//! the gone worker's write generation, so a value a newer owner already
//! wrote is never replaced, and what nobody wrote since is filled in.
//! The write happens before the takeover is recorded locally, so a start
//! interrupted meanwhile writes the epochs again (the same values under
//! the same fence).

use std::time::Duration;

use super::Prepare;
use crate::cluster::WorkerId;
use crate::error::Report;
use crate::metrics as m;
use crate::runtime::{FormerSink, RunError};
use crate::sink::{backoff_delay, RetryPolicy, Sink, SinkError, SinkRecord, WriteOutcome};
use crate::state::remote::Manifest;
use crate::state::Restored;

/// A sink of the pipeline, buildable as another worker.
pub struct FormerSinkSpec {
    /// The sink's name in the pipeline (it keys its outbox).
    pub name: String,
    /// Builds it as a given worker; None when it cannot be.
    pub build: Option<FormerSink>,
}

/// The epochs of one sink a former owner committed after the last one
/// its sink acknowledged, with that acknowledgement's progress.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub sink: String,
    pub progress: Option<Vec<u8>>,
    pub epochs: Vec<(u64, Vec<SinkRecord>)>,
}

/// Per sink, what `manifest` (a former owner's last checkpoint) holds
/// that its sinks never acknowledged.
pub(super) fn unacknowledged(manifest: &Manifest) -> Result<Vec<Pending>, RunError> {
    let mut restored = Restored::default();
    for (k, v) in &manifest.meta {
        restored.add(k, v)?;
    }
    let mut out: Vec<Pending> = Vec::new();
    let mut sinks: Vec<_> = restored.outbox.into_iter().collect();
    sinks.sort_by(|a, b| a.0.cmp(&b.0));
    for (sink, epochs) in sinks {
        let ack = restored.acks.get(&sink).cloned().unwrap_or_default();
        let epochs: Vec<_> = epochs.into_iter().filter(|(e, _)| *e > ack.epoch).collect();
        if !epochs.is_empty() {
            out.push(Pending {
                sink,
                progress: ack.progress,
                epochs,
            });
        }
    }
    Ok(out)
}

/// Whether this worker writes `former`'s unacknowledged output: the new
/// owner of its first key group does.
pub(super) fn delivers_for(me: WorkerId, former: WorkerId, key_groups: u16) -> bool {
    let mut groups = former.owned(key_groups);
    groups
        .next()
        .is_some_and(|g| me.owner_of(g, key_groups) == me.worker)
}

/// Writes what `manifest`'s sinks never acknowledged, as its writer.
pub(super) async fn deliver(p: &Prepare<'_>, manifest: &Manifest) -> Result<(), RunError> {
    let former = manifest.writer();
    for pending in unacknowledged(manifest)? {
        let records: usize = pending.epochs.iter().map(|(_, r)| r.len()).sum();
        let (first, last) = (
            pending.epochs.first().map_or(0, |e| e.0),
            pending.epochs.last().map_or(0, |e| e.0),
        );
        let spec = p.sinks.iter().find(|s| s.name == pending.sink);
        let mut sink: Option<Box<dyn Sink>> =
            spec.and_then(|s| s.build.as_ref()).map(|b| b(former));
        let able = match sink.as_mut() {
            Some(s) => s
                .restore_former(pending.progress.as_deref())
                .await
                .map_err(|e| {
                    RunError::Remote(format!(
                        "sink `{}`: cannot write the unacknowledged output of worker {former}: {}",
                        pending.sink,
                        Report(&e)
                    ))
                })?,
            None => false,
        };
        let Some(mut sink) = sink.filter(|_| able) else {
            tracing::error!(sink = %pending.sink, former = %former, records, first_epoch = first, last_epoch = last,
                "the gone worker's sink never acknowledged these epochs and this sink cannot write another worker's output safely: they are not delivered (docs/scaling.md)");
            continue;
        };
        let labels = m::component_labels(p.pipeline, &pending.sink, "sink");
        for (epoch, batch) in &pending.epochs {
            let outcome = write_retrying(p, sink.as_mut(), &pending.sink, *epoch, batch).await?;
            metrics::counter!(m::EVENTS_OUT, labels.clone())
                .increment((batch.len() - outcome.rejected.len()) as u64);
            if outcome.fenced > 0 {
                metrics::counter!(m::SINK_FENCED_WRITES, labels.clone()).increment(outcome.fenced);
            }
            if !outcome.rejected.is_empty() {
                let examples: Vec<String> = outcome
                    .rejected
                    .iter()
                    .take(3)
                    .filter_map(|(i, why)| batch.get(*i).map(|r| format!("{}: {why}", r.id)))
                    .collect();
                tracing::error!(sink = %pending.sink, former = %former, epoch, rejected = outcome.rejected.len(), ?examples,
                    "the destination refused records of the gone worker's output");
            }
        }
        if let Err(e) = sink.close().await {
            tracing::warn!(sink = %pending.sink, error = %Report(&e), "sink close failed");
        }
        tracing::warn!(sink = %pending.sink, former = %former, records, first_epoch = first, last_epoch = last,
            "wrote the output the gone worker's sink never acknowledged, under its write generation");
    }
    Ok(())
}

/// One epoch, retried with backoff while the destination is unreachable.
async fn write_retrying(
    p: &Prepare<'_>,
    sink: &mut dyn Sink,
    name: &str,
    epoch: u64,
    records: &[SinkRecord],
) -> Result<WriteOutcome, RunError> {
    let policy = RetryPolicy::default();
    let mut attempt = 0;
    loop {
        match sink.write(epoch, records).await {
            Ok(outcome) => return Ok(outcome),
            Err(e) if !e.is_retryable() => return Err(fatal(name, &e)),
            Err(e) => {
                let text = format!(
                    "waiting for sink `{name}` to write a gone worker's unacknowledged output: {}",
                    Report(&e)
                );
                (p.waiting)(&text);
                tracing::warn!("{text}");
                let delay = backoff_delay(attempt, policy.base, policy.max, 0.75);
                tokio::time::sleep(delay.min(Duration::from_secs(5))).await;
                attempt += 1;
            }
        }
    }
}

fn fatal(name: &str, e: &SinkError) -> RunError {
    RunError::Remote(format!(
        "sink `{name}`: cannot write a gone worker's unacknowledged output: {}",
        Report(e)
    ))
}
