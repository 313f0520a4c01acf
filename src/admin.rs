//! The admin HTTP server: `/metrics` (Prometheus), `/health` (alive),
//! `/ready` (200 when ready, else 503 with the reasons, see
//! `sluice_engine::health`), and read access to the
//! pipeline's `table` sinks:
//!
//! - `GET /tables` — the tables and their sizes;
//! - `GET /tables/{name}?limit=100&after=<id>&prefix=<id prefix>&window_start=<ms>`
//!   — a page of rows in id order, with `next` (the cursor for the next page);
//! - `GET /tables/{name}/{id}` — one row (404 if absent).
//!
//! Tables hold committed results: what the last checkpoint delivered.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sluice_connectors::sinks::table::registry;
use sluice_engine::health::Readiness;
use sluice_engine::metrics as m;
use sluice_engine::value::Value;
use tokio::sync::watch;

/// Installs the Prometheus recorder (once per process).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
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
}

/// Serves on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    ready: Arc<Readiness>,
    pipeline: String,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    metrics::gauge!(m::BUILD_INFO, "pipeline" => pipeline.clone(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let app = router(metrics, ready, Arc::from(pipeline));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "admin server listening (/metrics, /health, /ready, /tables)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            sluice_engine::source::wait_shutdown(&mut stop).await;
        })
        .await?;
    Ok(())
}

fn router(metrics: PrometheusHandle, ready: Arc<Readiness>, pipeline: Arc<str>) -> Router {
    Router::new()
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
        })
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
    let window: Option<i64> = match q.get("window_start").map(|w| w.parse()) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "`window_start` must be epoch milliseconds"})),
            )
                .into_response()
        }
    };
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let (rows, more) = table.page(q.get("after").map(String::as_str), limit, |id, v| {
        id.starts_with(&prefix)
            && window.is_none_or(|w| v.get_path(&["window_start".into()]).as_i64() == Some(w))
    });
    let next = if more {
        rows.last().map(|(id, _)| id.clone())
    } else {
        None
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
