//! The change-stream source at run time: open the stream (resuming from the
//! checkpointed token), read events into batches, emit them with their
//! position, reopen after retryable errors, stop plainly on lost history.

use std::sync::Arc;
use std::time::Duration;

use metrics::Gauge;
use sluice_engine::metrics as m;
use sluice_engine::sink::backoff_delay;
use sluice_engine::source::{BoxFuture, RawBatch, RawEvent, Source, SourceContext, SourceError};
use sluice_engine::time::now_ms;

use super::change::{decode_change, decode_position, encode_position, history_lost_message};
use super::config::MongoSourceConfig;
use crate::lines::OVERSIZED_KEEP;
use crate::mongo::commands::token_bytes;
use crate::mongo::{ChangeEvents, DriverClient, ErrorClass, MongoClient, MongoError, WatchSpec};

/// A batch buffer never grows past this (RawEvent offsets are u32).
const MAX_BATCH_BYTES: usize = 64 << 20;

/// A configured change-stream source on any [`MongoClient`].
pub struct MongoSource<C: MongoClient = DriverClient> {
    config: MongoSourceConfig,
    client: C,
}

impl MongoSource<DriverClient> {
    pub fn new(config: MongoSourceConfig) -> Self {
        let client = DriverClient::new(&config.uri);
        MongoSource { config, client }
    }
}

impl<C: MongoClient> MongoSource<C> {
    pub fn with_client(config: MongoSourceConfig, client: C) -> Self {
        MongoSource { config, client }
    }
}

impl<C: MongoClient> Source for MongoSource<C> {
    fn distribution(&self) -> sluice_engine::source::Distribution {
        sluice_engine::source::Distribution::FirstWorker
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(run(self.config, self.client, ctx))
    }
}

/// Events read but not yet emitted.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    events: Vec<RawEvent>,
    bytes: u64,
}

struct Reader {
    name: Arc<str>,
    seq: u64,
    /// Position bytes of the last event read (emitted with the batch).
    position: Option<Vec<u8>>,
    /// Resume token bytes of the last event read.
    token: Option<Vec<u8>>,
    lag: Gauge,
}

async fn run<C: MongoClient>(
    config: MongoSourceConfig,
    client: C,
    mut ctx: SourceContext,
) -> Result<(), SourceError> {
    let name = ctx.name.clone();
    let start_at = config
        .start_at()
        .map_err(|e| SourceError::Config(e.into()))?;
    let (seq, token) = match ctx.restored.get(&0) {
        Some(bytes) => {
            let (seq, token) = decode_position(bytes).ok_or_else(|| {
                SourceError::Config(format!(
                    "mongodb source `{name}`: the checkpointed position is not a change-stream resume token (was this source another type before?)"
                ))
            })?;
            (seq, Some(token))
        }
        None => (0, None),
    };
    let labels = m::component_labels(&ctx.pipeline, &name, "source");
    let mut reader = Reader {
        name: name.clone(),
        seq,
        position: None,
        token,
        lag: metrics::gauge!(m::SOURCE_LAG_SECONDS, labels.clone()),
    };
    let reconnects = metrics::counter!(m::SOURCE_RECONNECTS, labels);
    if ctx.output.partitions(vec![0]).await.is_err() {
        return Ok(());
    }
    let mut attempt = 0u32;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    loop {
        let spec = WatchSpec {
            database: config.database.clone(),
            collection: config.collection.clone(),
            full_document: config.full_document,
            resume_after: reader.token.clone(),
            start_at: if reader.token.is_none() {
                start_at
            } else {
                None
            },
            batch_size: config.batch_size,
            max_await: config.max_await.0,
        };
        let result = match client.watch(&spec).await {
            Ok(mut stream) => {
                if reader.token.is_none() {
                    tracing::info!(component = %name, "change stream opened (fresh start)");
                }
                read(&config, &mut reader, &mut stream, &mut ctx).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => break,
            Err(e) => match e.class {
                ErrorClass::HistoryLost => {
                    return Err(SourceError::External(history_lost_message(
                        &name, &e.message,
                    )))
                }
                ErrorClass::Fatal => {
                    return Err(SourceError::External(format!(
                        "mongodb source `{name}`: {e}"
                    )))
                }
                ErrorClass::Retryable => {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let jitter = 0.5 + (seed % 1000) as f64 / 2000.0;
                    let delay = backoff_delay(
                        attempt.min(10),
                        Duration::from_millis(200),
                        Duration::from_secs(30),
                        jitter,
                    );
                    tracing::warn!(component = %name, error = %e, ?delay, "change stream failed; reopening");
                    reconnects.increment(1);
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = sluice_engine::source::wait_shutdown(&mut ctx.shutdown) => break,
                    }
                }
            },
        }
    }
    // The end of the input only for a bounded run; a shutdown is not one
    // (reporting it would fire and purge every open window).
    if ctx.bounded {
        let _ = ctx.output.partition_done(0).await;
    }
    Ok(())
}

/// Reads until shutdown, the end of a bounded run (`Ok`), or an error
/// (after emitting what was read).
async fn read<S: ChangeEvents>(
    config: &MongoSourceConfig,
    reader: &mut Reader,
    stream: &mut S,
    ctx: &mut SourceContext,
) -> Result<(), MongoError> {
    let mut pending = Pending::default();
    let max = ctx.output.max_event_bytes();
    loop {
        // Nothing to release upstream: the position in the checkpoint is
        // the consumer's position.
        while ctx.commits.try_recv().is_ok() {}
        if *ctx.shutdown.borrow() {
            emit(reader, &mut pending, ctx).await;
            return Ok(());
        }
        let next = match stream.next().await {
            Ok(n) => n,
            Err(e) => {
                emit(reader, &mut pending, ctx).await;
                return Err(e);
            }
        };
        let Some(event) = next else {
            if !emit(reader, &mut pending, ctx).await {
                return Ok(());
            }
            reader.lag.set(0.0);
            if ctx.bounded {
                return Ok(());
            }
            continue;
        };
        let change = decode_change(&event).map_err(|e| {
            MongoError::new(
                ErrorClass::Fatal,
                None,
                format!("undecodable change event: {e}"),
            )
        })?;
        if change.invalidate {
            emit(reader, &mut pending, ctx).await;
            return Err(MongoError::new(
                ErrorClass::Fatal,
                None,
                "the change stream was invalidated (the watched collection was dropped or renamed, or the database dropped); recreate it and clear this source's state to start again",
            ));
        }
        if let Some(secs) = change.cluster_secs {
            reader
                .lag
                .set((now_ms() as f64 / 1000.0 - f64::from(secs)).max(0.0));
        }
        reader.seq += 1;
        reader.token = Some(token_bytes(&change.token));
        reader.position = Some(encode_position(reader.seq, &change.token));
        if let Some(json) = change.json {
            let start = pending.buf.len() as u32;
            let (len, oversized) = if json.len() > max {
                let keep = OVERSIZED_KEEP.min(json.len());
                pending.buf.extend_from_slice(&json[..keep]);
                (keep, Some(json.len() as u64))
            } else {
                pending.buf.extend_from_slice(&json);
                (json.len(), None)
            };
            pending.bytes += json.len() as u64;
            pending.events.push(RawEvent {
                start,
                len: len as u32,
                offset: reader.seq,
                oversized,
            });
        }
        let full = pending.events.len() >= config.batch_size as usize
            || pending.buf.len() >= MAX_BATCH_BYTES - max.min(MAX_BATCH_BYTES / 2);
        if full && !emit(reader, &mut pending, ctx).await {
            return Ok(());
        }
    }
}

/// Emits the pending events with the position of the last event read
/// (also when no event is pending but the position moved, e.g. past DDL
/// events). Returns false when the pipeline is shutting down.
async fn emit(reader: &mut Reader, pending: &mut Pending, ctx: &SourceContext) -> bool {
    let Some(position) = reader.position.take() else {
        return true;
    };
    let p = std::mem::take(pending);
    let batch = RawBatch {
        partition: 0,
        buf: Arc::new(p.buf),
        events: p.events,
        position,
        bytes: p.bytes,
    };
    if ctx.output.emit(batch).await.is_err() {
        tracing::debug!(component = %reader.name, "pipeline closed while emitting");
        return false;
    }
    true
}
