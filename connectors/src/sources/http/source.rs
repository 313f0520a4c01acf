//! The HTTP server accepting events, and the task that reads the journal
//! back into the pipeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use metrics::Label;
use sluice_engine::journal::{AppendBatch, Journal, JournalError, JournalOptions, ReadBatch};
use sluice_engine::metrics as m;
use sluice_engine::source::{
    wait_shutdown, BoxFuture, RawBatch, Source, SourceContext, SourceError, SourceOutput,
};
use sluice_engine::time::HumanDuration;

use super::body::{Framing, Location, Rejection, Validator};
use super::budget::{Budget, Reservation};
use super::config::HttpSourceConfig;
use super::server::{Limits, Server};
use crate::lines::OVERSIZED_KEEP;
use sluice_engine::tls::TlsAcceptor;

/// Events per batch read back from the journal.
const BATCH_EVENTS: usize = 4096;
/// Payload bytes per batch read back from the journal.
const BATCH_BYTES: usize = 1 << 20;

/// A configured HTTP source.
pub struct HttpSource {
    config: HttpSourceConfig,
}

impl HttpSource {
    pub fn new(config: HttpSourceConfig) -> Self {
        HttpSource { config }
    }
}

/// The position stored in checkpoints: the next sequence number to read.
pub fn encode_position(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

pub fn decode_position(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

impl Source for HttpSource {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(run(self.config, ctx))
    }
}

fn journal_error(name: &str, e: JournalError) -> SourceError {
    match e {
        JournalError::Io { context, source } => SourceError::Io {
            context: format!("source `{name}`: {context}"),
            source,
        },
        JournalError::Locked(_) => SourceError::Config(format!("source `{name}`: {e}")),
        other => SourceError::ExternalCause {
            context: format!("source `{name}`"),
            source: Box::new(other),
        },
    }
}

async fn run(config: HttpSourceConfig, mut ctx: SourceContext) -> Result<(), SourceError> {
    let name = ctx.name.clone();
    let health = ctx.output.health().clone();
    health.down(format!(
        "the HTTP listener on {} is not bound yet (recovering the journal)",
        config.address
    ));
    let labels = m::component_labels(&ctx.pipeline, &name, "source");
    let dir = config
        .journal_dir
        .clone()
        .unwrap_or_else(|| ctx.state_dir.join("journal").join(&*name));
    let opts = JournalOptions {
        segment_bytes: config.segment_bytes,
        fsync: config.fsync,
        max_backlog_events: Some(config.max_backlog_events),
        metric_labels: labels.clone(),
        retain_segments: config.retain_segments,
    };
    // The state came from the remote copy after the state directory was
    // lost: so was the journal in it. A new one continues the numbering
    // at the restored position (records and the ids derived from them
    // never repeat); what it held after that checkpoint is gone with it.
    let lost_journal_from = if ctx.restored_remotely && !dir.join("LOCK").exists() {
        ctx.restored.get(&0).and_then(|raw| decode_position(raw))
    } else {
        None
    };
    if let Some(pos) = lost_journal_from {
        tracing::warn!(source = %name, journal = %dir.display(), position = pos,
            "the journal was lost with the state directory; a new one continues at the restored position (records acknowledged after the last checkpoint in the remote copy were in the lost journal)");
    }
    let open_dir = dir.clone();
    let journal = tokio::task::spawn_blocking(move || {
        Journal::open_from(&open_dir, opts, lost_journal_from.unwrap_or(0))
    })
        .await
        .map_err(|e| {
            SourceError::Internal(format!("source `{name}`: journal recovery panicked: {e}"))
        })?
        .map_err(|e| journal_error(&name, e))?;
    let start = start_position(&ctx, &journal)?;
    if let Err(e) = journal.truncate_before(start) {
        tracing::warn!(source = %name, error = %e, "cannot delete committed journal segments");
    }
    if ctx.output.partitions(vec![0]).await.is_err() {
        return Ok(());
    }
    let mut reader = journal.reader(start);
    if ctx.bounded {
        ctx.output.progress().add_total(journal.stats().bytes);
        let end = journal.next_seq();
        if end == start && ctx.restored.is_empty() {
            tracing::warn!(source = %name, journal = %dir.display(),
                "the journal is empty: nothing to read from this source (it keeps only records \
                 not yet checkpointed; set `journal_dir` to read the journal of another state dir)");
        }
        drain(&name, &mut reader, end, &ctx.output).await?;
        let _ = ctx.output.partition_done(0).await;
        return Ok(());
    }

    // Readiness counts the journal records after the last one emitted.
    let emitted = Arc::new(AtomicU64::new(start));
    let probe = (journal.clone(), emitted.clone());
    health.set_backlog_probe(move || {
        probe
            .0
            .next_seq()
            .saturating_sub(probe.1.load(Ordering::Relaxed))
    });
    let server = start_server(&config, &name, journal.clone(), &ctx.output, labels).await?;
    health.up();
    tracing::info!(source = %name, address = %config.address, paths = ?config.paths,
        journal = %dir.display(), from_seq = start, "HTTP source listening");
    loop {
        tokio::select! {
            biased;
            _ = wait_shutdown(&mut ctx.shutdown) => break,
            Some(commit) = ctx.commits.recv() => {
                if let Some(seq) = commit.positions.get(&0).and_then(|p| decode_position(p)) {
                    if let Err(e) = journal.truncate_before(seq) {
                        tracing::warn!(source = %name, error = %e, "cannot delete committed journal segments");
                    }
                }
            }
            batch = reader.next_batch(BATCH_EVENTS, BATCH_BYTES) => {
                let batch = batch.map_err(|e| journal_error(&name, e))?;
                emitted.store(batch.next_seq, Ordering::Relaxed);
                if ctx.output.emit(raw_batch(batch, ctx.output.max_event_bytes())).await.is_err() {
                    return Ok(()); // the pipeline is gone; what is journaled stays there
                }
            }
        }
    }
    // Stop accepting, let in-flight requests finish, then emit everything
    // they made durable so that the final checkpoint covers it.
    health.down("the HTTP listener is shutting down");
    server.shutdown(&name).await;
    let end = journal.next_seq();
    drain(&name, &mut reader, end, &ctx.output).await
}

/// Where to start reading: the checkpointed position, or the oldest
/// retained record on a fresh start.
fn start_position(ctx: &SourceContext, journal: &Journal) -> Result<u64, SourceError> {
    let (first, next) = (journal.first_seq(), journal.next_seq());
    let dir = journal.dir().display();
    let Some(raw) = ctx.restored.get(&0) else {
        if first > 0 {
            // Records are deleted only once a checkpoint covers them: an
            // earlier run checkpointed this journal, and its state is gone.
            if !ctx.accept_empty_state {
                return Err(SourceError::Config(format!(
                    "source `{}`: refusing to start: the state has no position for this source, but the journal in {dir} \
                     starts at record {first}: an earlier run checkpointed and deleted records before it, and that state is \
                     missing. Restore the state directory, rebuild it with `sluice replay`, or start anyway with \
                     `sluice run --accept-empty-state` (reads records {first}..{next} only)",
                    ctx.name
                )));
            }
            tracing::warn!(source = %ctx.name, journal = %dir, first_seq = first,
                "starting without a checkpoint: journal records before the first retained one were deleted earlier");
        }
        return Ok(first);
    };
    let pos = decode_position(raw).ok_or_else(|| {
        SourceError::Config(format!(
            "source `{}`: the checkpointed position is not an HTTP journal position ({} bytes)",
            ctx.name,
            raw.len()
        ))
    })?;
    if pos < first || pos > next {
        return Err(SourceError::Config(format!(
            "source `{}`: the checkpoint resumes at journal record {pos}, but the journal in {dir} holds records {first}..{next}: \
             it was deleted or replaced. Restore it, or start from fresh state (`sluice replay` or a new [state] dir)",
            ctx.name
        )));
    }
    Ok(pos)
}

/// Emits every record before `end`.
async fn drain(
    name: &str,
    reader: &mut sluice_engine::journal::JournalReader,
    end: u64,
    output: &SourceOutput,
) -> Result<(), SourceError> {
    while reader.position() < end {
        let batch = reader
            .try_next_batch(BATCH_EVENTS, BATCH_BYTES)
            .map_err(|e| journal_error(name, e))?;
        if batch.events.is_empty() {
            break;
        }
        if output
            .emit(raw_batch(batch, output.max_event_bytes()))
            .await
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// A journal batch as source output. Records over the event size limit
/// (journaled under an earlier, larger limit) become dead letters.
fn raw_batch(batch: ReadBatch, max_event_bytes: usize) -> RawBatch {
    let mut events = batch.events;
    for e in &mut events {
        if e.len as usize > max_event_bytes {
            e.oversized = Some(u64::from(e.len));
            e.len = e.len.min(OVERSIZED_KEEP as u32);
        }
    }
    RawBatch {
        partition: 0,
        buf: Arc::new(batch.buf),
        events,
        position: encode_position(batch.next_seq),
        bytes: batch.bytes,
    }
}

/// Builds the request handlers and starts serving them.
async fn start_server(
    config: &HttpSourceConfig,
    name: &str,
    journal: Journal,
    output: &SourceOutput,
    labels: Vec<Label>,
) -> Result<Server, SourceError> {
    config
        .check_limits()
        .map_err(|e| SourceError::Config(format!("source `{name}`: {e}")))?;
    let token = match &config.auth_token_env {
        None => None,
        Some(var) => Some(
            sluice_engine::bearer::token_from_env(var)
                .map_err(|e| SourceError::Config(format!("source `{name}`: {e}")))?,
        ),
    };
    let budget = Budget::new(
        config.max_buffered_bytes,
        metrics::gauge!(m::HTTP_BUFFERED_BYTES, labels.clone()),
    );
    let limits = Limits {
        header_read_timeout: config.header_read_timeout.0,
        max_connections: config.max_connections,
    };
    let state = Arc::new(Ingest {
        journal,
        token,
        max_body_bytes: config.max_body_bytes,
        body_read_timeout: config.body_read_timeout.0,
        budget,
        validator: Validator::new(output.max_event_bytes()),
        labels: labels.clone(),
    });
    let mut router = Router::new();
    for path in &config.paths {
        router = router.route(path, post(ingest));
    }
    let tls = match &config.tls {
        None => None,
        Some(files) => Some(
            TlsAcceptor::new(files, name)
                .map_err(|e| SourceError::Config(format!("source `{name}`: {e}")))?,
        ),
    };
    Server::start(
        &config.address,
        name,
        limits,
        tls,
        router.with_state(state),
        &labels,
    )
    .await
}

/// What request handlers share.
struct Ingest {
    journal: Journal,
    token: Option<String>,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    /// Bytes of bodies held by all requests in flight.
    budget: Arc<Budget>,
    validator: Validator,
    labels: Vec<Label>,
}

impl Ingest {
    fn count_error(&self, error_type: &'static str) {
        metrics::counter!(m::ERRORS, m::with_error(&self.labels, error_type)).increment(1);
    }
}

/// `POST <path>`: validate, journal durably, then answer.
async fn ingest(State(s): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    if let Some(token) = &s.token {
        if !authorized(&headers, token) {
            s.count_error("unauthorized");
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token",
                None,
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    // Held until the request is answered: the body stays in memory
    // until then (the journal append copies it).
    let mut reservation = s.budget.reservation();
    let read = read_body(&headers, body, s.max_body_bytes, &mut reservation);
    let body = match tokio::time::timeout(s.body_read_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(refusal)) => {
            s.count_error(refusal.error_type());
            return refusal.response(s.max_body_bytes);
        }
        Err(_) => {
            s.count_error("body_timeout");
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} (body_read_timeout)",
                    HumanDuration(s.body_read_timeout)
                ),
                None,
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    let framing = if is_ndjson(&headers) {
        Framing::Ndjson
    } else {
        Framing::Detect
    };
    let spans = match s.validator.split(&body, framing) {
        Ok(spans) => spans,
        Err(rejection) => {
            s.count_error(if rejection.status == 413 {
                "event_too_large"
            } else {
                "bad_request"
            });
            return rejected(rejection);
        }
    };
    let n = spans.len();
    if n == 0 {
        return accepted(0);
    }
    let batch = match AppendBatch::from_spans(body, spans) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string(), None),
    };
    match s.journal.append_batch(batch).await {
        Ok(_) => accepted(n),
        Err(e @ JournalError::Backlog { .. }) => {
            s.count_error("backlog_full");
            unavailable(&e.to_string())
        }
        Err(e) => {
            s.count_error("journal_failed");
            tracing::error!(error = %e, "cannot journal a request; answering 503");
            unavailable(&format!("events cannot be stored right now: {e}"))
        }
    }
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    sluice_engine::bearer::authorized(given, token)
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or("").trim();
    [
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
    ]
    .iter()
    .any(|t| mime.eq_ignore_ascii_case(t))
}

/// Why a body was not read.
enum BodyRefusal {
    /// Over `max_body_bytes`.
    TooLarge,
    /// Over what `max_buffered_bytes` leaves for it now.
    NoRoom,
    /// The connection failed while reading.
    Broken(String),
}

impl BodyRefusal {
    fn error_type(&self) -> &'static str {
        match self {
            BodyRefusal::TooLarge => "payload_too_large",
            BodyRefusal::NoRoom => "buffer_full",
            BodyRefusal::Broken(_) => "bad_request",
        }
    }

    fn response(self, max: usize) -> Response {
        match self {
            BodyRefusal::TooLarge => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body exceeds the limit of {max} bytes (max_body_bytes)"),
                None,
            ),
            BodyRefusal::NoRoom => unavailable(
                "too many request bodies are in flight (max_buffered_bytes); retry later",
            ),
            BodyRefusal::Broken(e) => error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
                None,
            ),
        }
    }
}

/// Reads the whole body, refusing more than `max` bytes. Every byte of
/// buffer is reserved in `reservation` before it is allocated: the
/// declared `Content-Length` up front, chunked bodies as they grow.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    reservation: &mut Reservation,
) -> Result<Vec<u8>, BodyRefusal> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyRefusal::TooLarge);
    }
    let declared = declared.map_or(0, |n| n as usize);
    if !reservation.grow_to(declared) {
        return Err(BodyRefusal::NoRoom);
    }
    let mut buf = Vec::with_capacity(declared);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyRefusal::Broken(e.to_string()))?;
        let need = buf.len() + chunk.len();
        if need > max {
            return Err(BodyRefusal::TooLarge);
        }
        if need > buf.capacity() {
            let capacity = need.max(buf.capacity() * 2).min(max);
            if !reservation.grow_to(capacity) {
                return Err(BodyRefusal::NoRoom);
            }
            buf.reserve_exact(capacity - buf.len());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    // A newline ends the reply, so that `curl` in a terminal prints the
    // prompt on the next line.
    json_text(status, format!("{body}\n"))
}

/// A reply whose body is the JSON text `body`.
fn json_text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `202 {"accepted": n}`, written directly (no JSON value built): the one
/// reply of the hot path.
fn accepted(n: usize) -> Response {
    json_text(StatusCode::ACCEPTED, format!("{{\"accepted\":{n}}}\n"))
}

fn error(status: StatusCode, message: &str, at: Option<Location>) -> Response {
    let mut body = serde_json::json!({ "error": message });
    match at {
        Some(Location::Line(n)) => body["line"] = n.into(),
        Some(Location::Index(i)) => body["index"] = i.into(),
        None => {}
    }
    json_response(status, body)
}

fn rejected(r: Rejection) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, &r.message, r.at)
}

fn unavailable(message: &str) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message, None);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}
