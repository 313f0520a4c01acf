//! The sink side: the [`Sink`] trait connectors implement, the records they
//! receive, and the engine's sink driver (retries with backoff, acks,
//! metrics).
//!
//! Sinks are fed per checkpoint epoch, and only with committed data: the
//! processor collects each epoch's records in an outbox that is written to
//! the state store with the checkpoint; once that checkpoint is durable the records go
//! to the sink. Upserts carry absolute values keyed by (group key, window),
//! so writing an epoch twice (after a crash before its ack was recorded)
//! leaves the same result. A sink acknowledges an epoch with an optional
//! progress token (e.g. a file length) that is stored in the next checkpoint
//! and handed back to [`Sink::restore`] on restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::batch::RowKind;
use crate::error::{BoxError, Classify, ErrorClass, Report};
use crate::metrics as m;
use crate::source::BoxFuture;
use crate::value::{Str, Value};

/// One record for a sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkRecord {
    /// Whether the record appends an event, replaces the value for its
    /// key, or deletes the key.
    pub kind: RowKind,
    /// A readable, deterministic id: the upsert key (`GT|1732147200000`) or,
    /// for events, `source:partition:offset`. Usable as a document `_id` or
    /// a dedup key.
    pub id: Str,
    /// The record (an object); for deletes, the key fields.
    pub value: Value,
    /// Event time (ms); for window results, the window end - 1.
    pub time: i64,
}

/// The records of one checkpoint epoch for one sink.
#[derive(Debug, Clone)]
pub struct SinkEpoch {
    /// The checkpoint epoch the records were committed in; acks name it.
    pub epoch: u64,
    /// The records to write, in order.
    pub records: Arc<Vec<SinkRecord>>,
}

/// What a successful write reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteOutcome {
    /// Sink-specific progress to store with the next checkpoint.
    pub progress: Option<Vec<u8>>,
    /// Records the destination refused permanently: `(index, reason)`.
    /// They go to the dead-letter output.
    pub rejected: Vec<(usize, String)>,
    /// Records the destination left alone because a newer write fence was
    /// already stored beside their key (another writer, or a newer
    /// incarnation of this one, wrote it). Counted in
    /// `sluice_sink_fenced_writes_total` and logged once per epoch.
    pub fenced: u64,
}

/// Errors from a sink. Retryable ones are retried with backoff (forever);
/// any other stops the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying (connection refused, timeout, broker unavailable):
    /// [`ErrorClass::External`].
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help (bad credentials, missing table, bad config):
    /// [`ErrorClass::User`].
    #[error("{0}")]
    Fatal(String),
    /// A bug (used before restore, a panic in the sink's task):
    /// [`ErrorClass::Internal`].
    #[error("{0}")]
    Internal(String),
    /// A failure with its cause; see [`SinkError::retryable`] and
    /// [`SinkError::fatal`].
    #[error("{context}")]
    Caused {
        /// What was being done when it failed.
        context: String,
        /// Who has to act on it.
        class: ErrorClass,
        /// Whether the driver retries the write.
        retryable: bool,
        /// The underlying error.
        #[source]
        cause: BoxError,
    },
}

impl SinkError {
    /// A failure outside sluice worth retrying, keeping its cause
    /// (shown as `"{context}: {cause}"`).
    pub fn retryable(context: impl Into<String>, cause: impl Into<BoxError>) -> Self {
        SinkError::Caused {
            context: context.into(),
            class: ErrorClass::External,
            retryable: true,
            cause: cause.into(),
        }
    }

    /// A failure retrying cannot help, of `class`, keeping its cause.
    pub fn fatal(
        class: ErrorClass,
        context: impl Into<String>,
        cause: impl Into<BoxError>,
    ) -> Self {
        SinkError::Caused {
            context: context.into(),
            class,
            retryable: false,
            cause: cause.into(),
        }
    }

    /// Whether the sink driver retries the operation.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Retryable(_) => true,
            SinkError::Caused { retryable, .. } => *retryable,
            SinkError::Fatal(_) | SinkError::Internal(_) => false,
        }
    }
}

impl Classify for SinkError {
    fn class(&self) -> ErrorClass {
        match self {
            SinkError::Retryable(_) => ErrorClass::External,
            SinkError::Fatal(_) => ErrorClass::User,
            SinkError::Internal(_) => ErrorClass::Internal,
            SinkError::Caused { class, .. } => *class,
        }
    }
}

/// A configured sink, ready to run.
pub trait Sink: Send + 'static {
    /// Called once before any write, with the progress of the last
    /// acknowledged epoch (None on a fresh start). The default has nothing
    /// to restore.
    fn restore<'a>(
        &'a mut self,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        let _ = progress;
        Box::pin(async { Ok(()) })
    }

    /// What the destination shows that the restored state does not
    /// explain, if anything (e.g. "/out/counts.ndjson holds 2048 bytes").
    /// Asked once, before [`restore`](Self::restore), with the epoch of the
    /// restored checkpoint and this sink's restored progress. Sinks are
    /// only ever given committed epochs, so output while the store holds
    /// no checkpoint (`restored_epoch == 0`) means the state of an earlier
    /// run was lost, and values written in an epoch newer than the restored
    /// one mean the state is older than what the sink already saw. Either
    /// way the pipeline refuses to start (unless the operator accepted it).
    /// The default finds nothing.
    fn earlier_output<'a>(
        &'a mut self,
        restored_epoch: u64,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Option<String>, SinkError>> {
        let _ = (restored_epoch, progress);
        Box::pin(async { Ok(None) })
    }

    /// Prepares the sink, instead of [`restore`](Self::restore), to write
    /// the committed but unacknowledged epochs of a former owner of key
    /// groups that is gone (a forced release, see `sluice release`), as
    /// that owner would have written them: with `progress`, the owner's
    /// last acknowledged progress (None if it acknowledged nothing), and
    /// never drawing anything new. The sink is built as that owner
    /// ([`crate::connector::ConnectorContext::worker`]). Returns false when
    /// the sink cannot do this safely (the default): only a destination
    /// where writing a record again leaves the same result, and where a
    /// write under the former owner's fence never replaces a newer owner's
    /// value, may return true.
    fn restore_former<'a>(
        &'a mut self,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<bool, SinkError>> {
        let _ = progress;
        Box::pin(async { Ok(false) })
    }

    /// Writes one epoch's records; must be idempotent for the same epoch.
    /// Returns once the records are durable at the destination.
    fn write<'a>(
        &'a mut self,
        epoch: u64,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<WriteOutcome, SinkError>>;

    /// Flushes and releases resources at shutdown.
    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Messages from sink drivers to the processor.
#[derive(Debug)]
pub enum SinkEvent {
    /// The sink wrote an epoch.
    Acked {
        /// Index of the sink among the pipeline's sinks.
        sink: usize,
        /// The epoch written.
        epoch: u64,
        /// The sink's progress token, stored with the next checkpoint.
        progress: Option<Vec<u8>>,
        /// Records the destination refused, with the reason; they go to
        /// the dead-letter output.
        rejected: Vec<(SinkRecord, String)>,
    },
    /// The sink stopped on an error that is not retried (in restore or a write).
    Failed {
        /// Index of the sink among the pipeline's sinks.
        sink: usize,
        /// Why it stopped.
        error: SinkError,
    },
}

/// Exponential backoff with full jitter: `base * 2^attempt`, capped at
/// `max`, then scaled by `jitter` in `[0.5, 1.0]`.
pub fn backoff_delay(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(20));
    exp.min(max).mul_f64(jitter.clamp(0.5, 1.0))
}

/// Cheap pseudo-random jitter in `[0.5, 1.0]` without a dependency.
fn jitter(seed: &mut u64) -> f64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    0.5 + (*seed % 1000) as f64 / 2000.0
}

/// Settings of the sink driver.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The delay before the first retry (before jitter); it doubles on each
    /// further one.
    pub base: Duration,
    /// The longest delay between retries (before jitter).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

/// Drives one sink: restore, then write each epoch (retrying retryable
/// errors forever with backoff) and report acks. Returns when `epochs`
/// closes.
#[allow(clippy::too_many_arguments)]
pub async fn drive_sink(
    index: usize,
    name: Arc<str>,
    pipeline: Arc<str>,
    mut sink: Box<dyn Sink>,
    restored: Option<Vec<u8>>,
    mut epochs: mpsc::UnboundedReceiver<SinkEpoch>,
    events: mpsc::UnboundedSender<SinkEvent>,
    policy: RetryPolicy,
) {
    let labels = m::component_labels(&pipeline, &name, "sink");
    let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1);
    let mut attempt = 0;
    loop {
        match sink.restore(restored.as_deref()).await {
            Ok(()) => break,
            Err(error) if !error.is_retryable() => {
                let _ = events.send(SinkEvent::Failed { sink: index, error });
                return;
            }
            Err(error) => {
                let error = Report(&error).to_string();
                let delay = backoff_delay(attempt, policy.base, policy.max, jitter(&mut seed));
                tracing::warn!(component = %name, %error, ?delay, "sink not reachable at start; retrying");
                metrics::counter!(m::SINK_RETRIES, labels.clone()).increment(1);
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
    while let Some(epoch) = epochs.recv().await {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            match sink.write(epoch.epoch, &epoch.records).await {
                Ok(outcome) => {
                    metrics::histogram!(m::SINK_LATENCY, labels.clone())
                        .record(started.elapsed().as_secs_f64());
                    let written = epoch.records.len() - outcome.rejected.len();
                    metrics::counter!(m::EVENTS_OUT, labels.clone()).increment(written as u64);
                    if outcome.fenced > 0 {
                        metrics::counter!(m::SINK_FENCED_WRITES, labels.clone())
                            .increment(outcome.fenced);
                        tracing::warn!(component = %name, epoch = epoch.epoch, fenced = outcome.fenced,
                            "writes fenced out: the destination holds newer values for these keys (written by another worker or a newer incarnation of this one)");
                    }
                    metrics::counter!(m::BYTES_OUT, labels.clone())
                        .increment(json_bytes(&epoch.records));
                    let rejected = outcome
                        .rejected
                        .into_iter()
                        .filter_map(|(i, reason)| epoch.records.get(i).map(|r| (r.clone(), reason)))
                        .collect();
                    let ack = SinkEvent::Acked {
                        sink: index,
                        epoch: epoch.epoch,
                        progress: outcome.progress,
                        rejected,
                    };
                    if events.send(ack).is_err() {
                        return;
                    }
                    break;
                }
                Err(error) if !error.is_retryable() => {
                    let _ = events.send(SinkEvent::Failed { sink: index, error });
                    return;
                }
                Err(error) => {
                    let error = Report(&error).to_string();
                    let delay = backoff_delay(attempt, policy.base, policy.max, jitter(&mut seed));
                    tracing::warn!(component = %name, epoch = epoch.epoch, %error, ?delay, "sink write failed; retrying");
                    metrics::counter!(m::SINK_RETRIES, labels.clone()).increment(1);
                    metrics::counter!(m::ERRORS, m::with_error(&labels, "sink_write")).increment(1);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
    if let Err(error) = sink.close().await {
        tracing::warn!(component = %name, error = %Report(&error), "sink close failed");
    }
}

/// Size of the records as JSON: the payload bytes a sink was given
/// (`sluice_bytes_out_total`).
fn json_bytes(records: &[SinkRecord]) -> u64 {
    let mut scratch = Vec::with_capacity(256);
    records
        .iter()
        .map(|r| {
            scratch.clear();
            crate::json::write_value(&mut scratch, &r.value);
            scratch.len() as u64 + 1
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        assert_eq!(backoff_delay(0, base, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(3, base, max, 1.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(30, base, max, 1.0), max);
        assert_eq!(backoff_delay(3, base, max, 0.5), Duration::from_millis(400));
        let mut seed = 7;
        for _ in 0..1000 {
            let j = jitter(&mut seed);
            assert!((0.5..=1.0).contains(&j));
        }
    }
}
