//! The admin HTTP server: `/metrics` (Prometheus), `/health` (alive),
//! `/ready` (200 when ready, else 503 with the reasons, see
//! `sluice_engine::health`), the status page (`/`, with its JSON at
//! `/status`, see `crate::status`), and read access to the
//! pipeline's `table` sinks:
//!
//! - `GET /tables` — the tables and their sizes;
//! - `GET /tables/{name}?limit=100&after=<id>&prefix=<id prefix>&window_start=<ms|latest>`
//!   — a page of rows in id order, with `next` (the cursor for the next
//!   page); `order=newest` sorts by window start, newest first, paged by
//!   `offset`;
//! - `GET /tables/{name}/{id}` — one row (404 if absent).
//!
//! Tables hold committed results: what the last checkpoint delivered.
//!
//! [`Access`] adds HTTPS (`[admin] tls`, see `tls.rs`) and a bearer token
//! (`[admin] auth_token_env`) required everywhere except `/health` and
//! `/ready`, which stay open for probes.

mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sluice_connectors::sinks::table::registry;
use sluice_engine::health::Readiness;
use sluice_engine::metrics as m;
use sluice_engine::tls::TlsAcceptor;
use sluice_engine::value::Value;
use tokio::sync::watch;

use crate::status::rates::RateWindow;
use crate::status::{self, Topology};

/// Installs the Prometheus recorder (once per process).
pub(crate) fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let seconds = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let sizes = [1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(m::BATCH_SIZE.into()), &sizes)?
        .install_recorder()?;
    for name in m::ALL {
        describe(name);
    }
    Ok(handle)
}

fn describe(name: &'static str) {
    let help = match name {
        m::EVENTS_IN => "Events read by sources",
        m::EVENTS_OUT => "Records written by sinks",
        m::DEAD_LETTERS => "Events sent to the dead-letter output, by error type",
        m::CHECKPOINT_DURATION => "Time to write and fsync a checkpoint",
        m::CHECKPOINT_LAST_SUCCESS => "Unix time of the last durable checkpoint",
        m::CHECKPOINT_LAST_DURATION => "Time the last durable checkpoint took to write and fsync",
        m::READY => "1 when the pipeline is ready (state restored, sources up and caught up)",
        m::SOURCE_BACKLOG => "Events in a source's own log not yet processed",
        m::RESTORE_SECONDS => "Seconds from start until ready (so far, while not ready)",
        _ => "",
    };
    if !help.is_empty() {
        metrics::describe_gauge!(name, help);
    }
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    ready: Arc<Readiness>,
    pipeline: Arc<str>,
    topology: Arc<RwLock<Topology>>,
    rates: Arc<Mutex<RateWindow>>,
}

/// Who may reach the admin server, and how.
#[derive(Clone, Default)]
pub(crate) struct Access {
    /// Serve HTTPS with this certificate.
    pub tls: Option<TlsAcceptor>,
    /// Required as `Authorization: Bearer <token>` except on the probes.
    pub token: Option<Arc<str>>,
}

impl Access {
    /// From `[admin]`: loads the certificate and reads the token variable,
    /// failing if either is unusable. Must run inside the tokio runtime.
    pub(crate) fn from_config(admin: &crate::config::AdminSection) -> anyhow::Result<Access> {
        let tls = match &admin.tls {
            Some(files) => Some(
                TlsAcceptor::new(files, "admin")
                    .map_err(|e| anyhow::anyhow!("[admin] tls: {e}"))?,
            ),
            None => None,
        };
        let token = match &admin.auth_token_env {
            Some(var) => Some(Arc::from(
                sluice_engine::bearer::token_from_env(var)
                    .map_err(|e| anyhow::anyhow!("[admin] {e}"))?,
            )),
            None => None,
        };
        Ok(Access { tls, token })
    }
}

/// Serves on `listener` until `stop` turns true.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    ready: Arc<Readiness>,
    pipeline: String,
    topology: Arc<RwLock<Topology>>,
    mut stop: watch::Receiver<bool>,
    access: Access,
) -> anyhow::Result<()> {
    metrics::gauge!(m::BUILD_INFO, "pipeline" => pipeline.clone(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let rates = Arc::new(Mutex::new(RateWindow::default()));
    let recorder = tokio::spawn(record_rates(
        metrics.clone(),
        pipeline.clone(),
        rates.clone(),
    ));
    let app = router(metrics, ready, Arc::from(pipeline), topology, rates)
        .layer(middleware::from_fn(json_ends_with_newline))
        .layer(middleware::from_fn_with_state(access.token, require_token));
    let addr = listener.local_addr()?;
    let scheme = if access.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, %scheme, "admin server listening (/, /status, /metrics, /health, /ready, /tables)");
    if let Some(tls) = access.tls {
        tls::serve(listener, app, tls, stop).await;
        recorder.abort();
        return Ok(());
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            sluice_engine::source::wait_shutdown(&mut stop).await;
        })
        .await?;
    recorder.abort();
    Ok(())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Records the event counters every second for the rates of `/status`.
async fn record_rates(metrics: PrometheusHandle, pipeline: String, rates: Arc<Mutex<RateWindow>>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let samples = status::prom::parse(&metrics.render());
        if let Ok(mut r) = rates.lock() {
            r.record(&pipeline, unix_now(), &samples);
        }
    }
}

fn router(
    metrics: PrometheusHandle,
    ready: Arc<Readiness>,
    pipeline: Arc<str>,
    topology: Arc<RwLock<Topology>>,
    rates: Arc<Mutex<RateWindow>>,
) -> Router {
    Router::new()
        .route(
            "/",
            get(|| asset("text/html; charset=utf-8", status::PAGE_HTML)),
        )
        .route(
            "/assets/status.css",
            get(|| asset("text/css; charset=utf-8", status::PAGE_CSS)),
        )
        .route(
            "/assets/status.js",
            get(|| asset("text/javascript; charset=utf-8", status::PAGE_JS)),
        )
        .route("/status", get(status_json))
        .route("/metrics", get(metrics_page))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready_page))
        .route("/tables", get(list_tables))
        .route("/tables/{name}", get(table_page))
        .route("/tables/{name}/{id}", get(table_row))
        .with_state(AppState {
            metrics,
            ready,
            pipeline,
            topology,
            rates,
        })
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn status_json(State(s): State<AppState>) -> Json<status::Status> {
    let now = unix_now();
    let samples = status::prom::parse(&s.metrics.render());
    let rates = s
        .rates
        .lock()
        .map(|r| r.rates(&s.pipeline, now, &samples))
        .unwrap_or_default();
    // A reload may have replaced the graph.
    let topology = s
        .topology
        .read()
        .map(|t| t.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    Json(status::status(
        &s.pipeline,
        &topology,
        &samples,
        &rates,
        s.ready.report().ready,
        now,
    ))
}

/// JSON replies end with a newline, so that `curl` in a terminal prints the
/// next prompt on a line of its own.
async fn json_ends_with_newline(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(mut bytes) = axum::body::to_bytes(body, usize::MAX)
        .await
        .map(|b| b.to_vec())
    else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "reply lost\n").into_response();
    };
    if bytes.last() != Some(&b'\n') {
        bytes.push(b'\n');
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// Paths answered without the token: the probes, and the status page's
/// static files (they hold no data; the page sends the token it is given
/// in its URL fragment, `/#token=...`, with its `/status` requests).
const OPEN_PATHS: &[&str] = &[
    "/health",
    "/ready",
    "/",
    "/assets/status.css",
    "/assets/status.js",
];

/// With a token configured, 401 for every request but the probes that does
/// not carry it.
async fn require_token(
    State(token): State<Option<Arc<str>>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !OPEN_PATHS.contains(&req.uri().path())
            && !sluice_engine::bearer::authorized(given, token)
        {
            let mut r = (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({"error": "missing or wrong bearer token"})),
            )
                .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

async fn metrics_page(State(s): State<AppState>) -> Response {
    // Readiness as of this scrape (the runtime also updates these twice a second).
    let report = s.ready.report();
    metrics::gauge!(m::READY, "pipeline" => s.pipeline.to_string()).set(if report.ready {
        1.0
    } else {
        0.0
    });
    for source in &report.sources {
        if let Some(backlog) = source.backlog_events {
            let labels = m::component_labels(&s.pipeline, &source.name, "source");
            metrics::gauge!(m::SOURCE_BACKLOG, labels).set(backlog as f64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// 200 when ready, 503 otherwise; the body (JSON) lists the reasons and
/// each source's state and backlog.
async fn ready_page(State(s): State<AppState>) -> Response {
    let report = s.ready.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::to_string(&report).unwrap_or_default();
    body.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn list_tables() -> Json<serde_json::Value> {
    let mut tables: Vec<_> = registry()
        .iter()
        .map(|e| serde_json::json!({"name": e.key(), "rows": e.value().len()}))
        .collect();
    tables.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(serde_json::json!({ "tables": tables }))
}

fn to_json(v: &Value) -> serde_json::Value {
    serde_json::from_str(&v.to_string()).unwrap_or(serde_json::Value::Null)
}

fn not_found(what: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": what })),
    )
        .into_response()
}

async fn table_page(
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(table) = registry().get(&name).map(|t| t.clone()) else {
        return not_found(format!("no table `{name}` (see GET /tables)"));
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=10_000).contains(&n) => n,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "`limit` must be a number from 1 to 10000"})),
            )
                .into_response()
        }
    };
    let bad = |message: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": message })),
        )
            .into_response()
    };
    let window: Option<i64> = match q.get("window_start").map(String::as_str) {
        None => None,
        // The latest window present (no rows: an empty page).
        Some("latest") => Some(table.latest("window_start").unwrap_or(i64::MIN)),
        Some(w) => match w.parse() {
            Ok(w) => Some(w),
            Err(_) => return bad("`window_start` must be epoch milliseconds or `latest`"),
        },
    };
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let keep = |id: &str, v: &Value| {
        id.starts_with(&prefix)
            && window.is_none_or(|w| v.get_path(&["window_start".into()]).as_i64() == Some(w))
    };
    let (rows, next) = match q.get("order").map(String::as_str) {
        None | Some("id") => {
            let (rows, more) = table.page(q.get("after").map(String::as_str), limit, keep);
            let next = more
                .then(|| rows.last().map(|(id, _)| id.clone()))
                .flatten();
            (rows, next)
        }
        Some("newest") => {
            let Ok(skip) = q.get("offset").map_or(Ok(0), |o| o.parse::<usize>()) else {
                return bad("`offset` must be a number");
            };
            let (rows, more) = table.newest_first("window_start", skip, limit, keep);
            let next = more.then(|| (skip + rows.len()).to_string());
            (rows, next)
        }
        Some(_) => return bad("`order` must be `id` (the default) or `newest`"),
    };
    let rows: Vec<_> = rows
        .iter()
        .map(|(id, v)| serde_json::json!({"id": id, "value": to_json(v)}))
        .collect();
    Json(serde_json::json!({"table": name, "rows": rows, "next": next})).into_response()
}

async fn table_row(Path((name, id)): Path<(String, String)>) -> Response {
    let Some(table) = registry().get(&name).map(|t| t.clone()) else {
        return not_found(format!("no table `{name}`"));
    };
    match table.get(&id) {
        Some(v) => Json(serde_json::json!({"id": id, "value": to_json(&v)})).into_response(),
        None => not_found(format!("no row `{id}` in table `{name}`")),
    }
}
