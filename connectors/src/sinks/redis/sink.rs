//! Writing epochs to Redis/Valkey: render each record's key, field and
//! value, send the epoch's chunks through the fencing script in one
//! pipelined round trip, and sort the outcome into written, stale,
//! rejected (dead letters) and retryable.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError};
use sluice_engine::batch::RowKind;
use sluice_engine::json::write_value;
use sluice_engine::sink::{Sink, SinkError, SinkRecord, WriteOutcome};
use sluice_engine::source::BoxFuture;
use sluice_engine::value::{Str, Value};

use std::collections::BTreeSet;

use crate::sinks::fence::{generation_of, restored, Progress, Restored, Writer};

use super::config::{RedisMode, RedisSinkConfig};
use super::fence::{self, ChunkArgs, Status, Write};
use super::template::push_scalar;

/// A configured Redis/Valkey sink.
pub struct RedisSink {
    name: String,
    config: RedisSinkConfig,
    value_path: Option<Vec<Str>>,
    client: Result<Client, String>,
    conn: Option<MultiplexedConnection>,
    sha: String,
    generation: Option<u64>,
    writer: Writer,
}

impl RedisSink {
    /// `name` is the component name (for logs). The URL is checked when
    /// the pipeline file is loaded; an invalid one here fails the sink at
    /// start.
    pub fn new(name: &str, config: RedisSinkConfig) -> Self {
        let client = Client::open(config.url.as_str()).map_err(|e| e.to_string());
        RedisSink {
            name: name.to_string(),
            value_path: config.value_path(),
            config,
            client,
            conn: None,
            sha: redis::Script::new(fence::SCRIPT).get_hash().to_string(),
            generation: None,
            writer: Writer::single(name),
        }
    }

    /// The writer this sink is (pipeline, sink, worker): with several
    /// workers, every generation it draws is recorded in
    /// [`fence::OWNERS_KEY`] and its start check only considers its own.
    pub fn with_writer(mut self, writer: Writer) -> Self {
        self.writer = writer;
        self
    }

    /// The generations recorded for this worker of this pipeline and sink.
    async fn own_generations(&mut self) -> Result<BTreeSet<u64>, SinkError> {
        let mut conn = self.connection().await?;
        let owners: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(fence::OWNERS_KEY)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.classify(e, "cannot read the generation owners from"))?;
        Ok(owners
            .into_iter()
            .filter(|(_, w)| Writer::from_json(w).is_some_and(|w| self.writer.same_worker(&w)))
            .filter_map(|(g, _)| g.parse().ok())
            .collect())
    }

    /// A new generation: `INCR` of the shared counter; with several
    /// workers, recorded with this writer in the same script.
    async fn draw_generation(&mut self) -> Result<u64, SinkError> {
        let mut conn = self.connection().await?;
        let drawn = if self.writer.shared() {
            redis::Script::new(fence::DRAW_SCRIPT)
                .key(fence::GENERATION_KEY)
                .key(fence::OWNERS_KEY)
                .arg(self.writer.to_json())
                .invoke_async(&mut conn)
                .await
        } else {
            redis::cmd("INCR")
                .arg(fence::GENERATION_KEY)
                .query_async(&mut conn)
                .await
        };
        drawn.map_err(|e| self.classify(e, "cannot draw a generation from"))
    }

    /// The open connection, or a new one (the host name is resolved again).
    async fn connection(&mut self) -> Result<MultiplexedConnection, SinkError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let client = self.client.as_ref().map_err(|e| {
            SinkError::Fatal(format!("redis sink `{}`: invalid url: {e}", self.name))
        })?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout.0))
            .set_response_timeout(Some(self.config.request_timeout.0));
        let conn = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| self.classify(e, "cannot connect to"))?;
        tracing::info!(component = %self.name, "connected to redis");
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Sorts a command-level error into retryable or fatal; connection
    /// problems also drop the connection so that the next try reconnects.
    fn classify(&mut self, e: RedisError, what: &str) -> SinkError {
        let msg = format!("redis sink `{}`: {what} redis: {e}", self.name);
        let transient_code = e.code().is_some_and(fence::transient_code);
        let connection = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(e.kind(), ErrorKind::Parse | ErrorKind::Client);
        if connection {
            self.conn = None;
        }
        if connection || transient_code {
            SinkError::Retryable(msg)
        } else {
            SinkError::Fatal(msg)
        }
    }

    /// Turns the records into writes; records that cannot be rendered are
    /// rejected with the reason.
    fn render(&self, records: &[SinkRecord]) -> (Vec<Write>, Vec<(usize, String)>) {
        let mut writes = Vec::with_capacity(records.len());
        let mut rejected = Vec::new();
        let hash = self.config.mode == RedisMode::Hash;
        for (index, r) in records.iter().enumerate() {
            match self.render_one(index, r, hash) {
                Ok(w) => writes.push(w),
                Err(reason) => rejected.push((index, reason)),
            }
        }
        (writes, rejected)
    }

    fn render_one(&self, index: usize, r: &SinkRecord, hash: bool) -> Result<Write, String> {
        let key = self
            .config
            .key
            .render(&r.value)
            .map_err(|e| e.to_string())?;
        let field = match (&self.config.field, hash) {
            (Some(t), true) => t.render(&r.value).map_err(|e| e.to_string())?,
            _ => String::new(),
        };
        let delete = r.kind == RowKind::Delete;
        let mut value = String::new();
        if !delete {
            match &self.value_path {
                Some(path) => {
                    let v = r.value.get_path(path);
                    if self.config.totals.is_some() && !matches!(v, Value::Int(_) | Value::Float(_))
                    {
                        return Err(format!(
                            "`{}` is {} ({v}); `totals` needs a number",
                            path.join("."),
                            v.type_name()
                        ));
                    }
                    if !push_scalar(v, &mut value) {
                        return Err(format!(
                            "value field `{}` is missing or null in the record",
                            path.join(".")
                        ));
                    }
                }
                None => {
                    let mut buf = Vec::with_capacity(64);
                    write_value(&mut buf, &r.value);
                    value = String::from_utf8_lossy(&buf).into_owned();
                }
            }
        }
        Ok(Write {
            index,
            key,
            field,
            value,
            delete,
        })
    }

    async fn write_epoch(
        &mut self,
        epoch: u64,
        records: &[SinkRecord],
    ) -> Result<WriteOutcome, SinkError> {
        let generation = self
            .generation
            .ok_or_else(|| SinkError::Internal("redis sink used before restore".into()))?;
        let progress = Some(
            Progress {
                generation,
                worker: self.writer.worker_id(),
            }
            .encode(),
        );
        let fence = fence::fence(generation, epoch).ok_or_else(|| {
            SinkError::Fatal(format!(
                "redis sink `{}`: epoch {epoch} / generation {generation} out of range",
                self.name
            ))
        })?;
        let (writes, mut rejected) = self.render(records);
        if writes.is_empty() {
            return Ok(WriteOutcome {
                progress,
                rejected,
                fenced: 0,
            });
        }
        let args = ChunkArgs {
            hash: self.config.mode == RedisMode::Hash,
            fence,
            ttl_ms: self.config.ttl.map_or(0, |t| t.0.as_millis() as u64),
            totals: self.config.totals.as_deref(),
        };
        let chunks: Vec<&[Write]> = writes.chunks(self.config.chunk_size).collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for chunk in &chunks {
            pipe.add_command(fence::chunk_command(&self.sha, args, chunk));
        }
        let mut loaded = false;
        let replies = loop {
            let mut conn = self.connection().await?;
            let replies: Vec<redis::RedisResult<redis::Value>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.classify(e, "cannot write to"))?;
            let noscript = replies
                .iter()
                .any(|r| matches!(r, Err(e) if e.code() == Some("NOSCRIPT")));
            if !noscript {
                break replies;
            }
            if loaded {
                return Err(SinkError::Retryable(format!(
                    "redis sink `{}`: the server forgot the fencing script right after loading it",
                    self.name
                )));
            }
            // The script cache is empty (new or restarted server): load it
            // and send the epoch again (fenced writes are idempotent).
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(fence::SCRIPT)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.classify(e, "cannot load the fencing script into"))?;
            loaded = true;
        };
        let (mut written, mut stale, mut transient) = (0usize, 0usize, None);
        for (chunk, reply) in chunks.iter().zip(replies) {
            let reply = match reply {
                Ok(v) => v,
                Err(e) => return Err(self.classify(e, "the fencing script failed in")),
            };
            let statuses = fence::parse_reply(&reply, chunk.len())
                .map_err(|e| SinkError::Fatal(format!("redis sink `{}`: {e}", self.name)))?;
            for (w, status) in chunk.iter().zip(statuses) {
                match status {
                    Status::Written => written += 1,
                    Status::Stale => stale += 1,
                    Status::Failed(text) if fence::transient_code(fence::error_code(&text)) => {
                        transient = Some(text);
                    }
                    Status::Failed(text) => {
                        let at = if w.field.is_empty() {
                            w.key.clone()
                        } else {
                            format!("{} field {}", w.key, w.field)
                        };
                        rejected.push((w.index, format!("redis refused {at}: {text}")));
                    }
                }
            }
        }
        if let Some(text) = transient {
            return Err(SinkError::Retryable(format!(
                "redis sink `{}`: {text}",
                self.name
            )));
        }
        tracing::debug!(component = %self.name, epoch, written, stale, rejected = rejected.len(), "epoch written");
        Ok(WriteOutcome {
            progress,
            rejected,
            fenced: stale as u64,
        })
    }
}

impl Sink for RedisSink {
    fn restore_former<'a>(
        &'a mut self,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<bool, SinkError>> {
        Box::pin(async move {
            // Every write is fenced (and keyed by the record's id): the
            // former owner's epochs, under its generation, only fill keys
            // no newer owner wrote since.
            let generation = crate::sinks::fence::former_generation(progress).ok_or_else(|| {
                SinkError::Fatal(format!("redis sink `{}`: corrupt progress", self.name))
            })?;
            self.generation = Some(generation);
            Ok(true)
        })
    }

    fn restore<'a>(
        &'a mut self,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let worker = self.writer.worker_id();
            let previous = match restored(progress, worker) {
                Some(Restored::Keep(generation)) => {
                    self.generation = Some(generation);
                    return Ok(());
                }
                Some(Restored::Draw { previous }) => previous,
                None => {
                    return Err(SinkError::Fatal(format!(
                        "redis sink `{}`: corrupt progress",
                        self.name
                    )))
                }
            };
            // Fresh state: a new generation, so that our epochs (which
            // restart at 1) supersede whatever an earlier run wrote. Key
            // groups moved (another worker or worker count): a new
            // generation, above every earlier owner's.
            let generation = self.draw_generation().await?;
            match previous {
                None => {
                    tracing::info!(component = %self.name, generation, "fresh start: new write generation")
                }
                Some(p) => {
                    tracing::info!(component = %self.name, generation, previous = p.generation, was = %p.worker, now = %worker,
                        "key group ownership changed: new write generation")
                }
            }
            self.generation = Some(generation);
            Ok(())
        })
    }

    fn earlier_output<'a>(
        &'a mut self,
        restored_epoch: u64,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Option<String>, SinkError>> {
        Box::pin(async move {
            // The newest fence among this sink's fence keys (with several
            // workers: among the generations this worker drew).
            let own = if self.writer.shared() {
                Some(self.own_generations().await?)
            } else {
                None
            };
            let glob = fence::fence_glob(self.config.key.as_str());
            let mut conn = self.connection().await?;
            let mut newest: Option<u64> = None;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&glob)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.classify(e, "cannot scan the fence keys of"))?;
                for key in keys {
                    let kind: String = redis::cmd("TYPE")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| self.classify(e, "cannot read the fence keys of"))?;
                    let values: Vec<String> = match kind.as_str() {
                        "hash" => redis::cmd("HVALS").arg(&key).query_async(&mut conn).await,
                        "string" => redis::cmd("GET")
                            .arg(&key)
                            .query_async::<Option<String>>(&mut conn)
                            .await
                            .map(|v| v.into_iter().collect()),
                        _ => Ok(Vec::new()),
                    }
                    .map_err(|e| self.classify(e, "cannot read the fence keys of"))?;
                    for v in values {
                        if let Ok(f) = v.parse::<u64>() {
                            if own.as_ref().is_none_or(|o| o.contains(&generation_of(f))) {
                                newest = newest.max(Some(f));
                            }
                        }
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            Ok(crate::sinks::fence::unexplained_for(
                &format!("Redis keys `{}`", self.config.key.as_str()),
                newest,
                restored_epoch,
                progress,
                self.writer.worker_id(),
            ))
        })
    }

    fn write<'a>(
        &'a mut self,
        epoch: u64,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<WriteOutcome, SinkError>> {
        Box::pin(self.write_epoch(epoch, records))
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.conn = None;
        Box::pin(async { Ok(()) })
    }
}
