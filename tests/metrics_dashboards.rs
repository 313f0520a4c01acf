//! Dashboards and alerts against the real thing: sluice's live `/metrics`
//! must export every metric name the dashboards and alert rules use, and a
//! real Prometheus server scraping a running sluice must return data for
//! the dashboards' main queries.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::worker::{Ready, Worker};
use support::*;

/// A running sluice (killed on drop, before its directory goes).
struct Running {
    worker: Worker,
    admin: u16,
    ingest: u16,
    _dir: tempfile::TempDir,
}

/// sluice with an HTTP source (journal metrics), an aggregate, a table and
/// a file sink, its state copied to a `file://` remote copy (the
/// `sluice_remote_*` metrics), with a few events posted and one malformed.
fn start_sluice() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (pick_port(), pick_port());
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[pipeline]
name = "observed"
[state]
dir = "{state}"
remote = "file://{remote}"
[checkpoint]
interval = "200ms"
[admin]
address = "127.0.0.1:{admin}"
[sources.reports]
type = "http"
address = "127.0.0.1:{ingest}"
event_time = {{ field = "ts", max_disorder = "1s" }}
[transforms.per_second]
type = "aggregate"
inputs = ["reports"]
group_by = ["country"]
window = {{ type = "tumbling", size = "1s" }}
aggregates = {{ n = "count" }}
[sinks.counts]
type = "table"
inputs = ["per_second"]
[sinks.out]
type = "file"
inputs = ["per_second"]
path = "{out}"
"#,
            state = dir.path().join("state").display(),
            remote = dir.path().join("remote").display(),
            out = dir.path().join("out.ndjson").display()
        ),
    )
    .unwrap();
    let mut worker = Worker::new(&pipeline, &dir.path().join("log"));
    worker
        .start()
        .wait_ready(&Ready::Port(admin))
        .wait_ready(&Ready::Port(ingest));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let body: String = (0..200)
        .map(|i| {
            format!(
                "{{\"ts\":{},\"country\":\"{}\"}}\n",
                now - 5_000 + i * 10,
                ["GT", "MX"][i as usize % 2]
            )
        })
        .collect();
    let (status, _) = http_request(
        ingest,
        "POST",
        "/ingest",
        &[("Content-Type", "application/x-ndjson")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 202);
    // a late event -> a dead letter (so dead-letter series have data)
    let late = format!("{{\"ts\":{},\"country\":\"GT\"}}", now - 3_600_000);
    worker.wait_until(
        "the first 200 events to be read",
        Duration::from_secs(20),
        || metric_total(admin, "sluice_events_in_total").unwrap_or(0.0) >= 200.0,
    );
    assert_eq!(
        http_request(ingest, "POST", "/ingest", &[], late.as_bytes())
            .unwrap()
            .0,
        202
    );
    Running {
        worker,
        admin,
        ingest,
        _dir: dir,
    }
}

fn scrape(port: u16) -> String {
    let (status, body) = http_request(port, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(status, 200);
    body
}

#[test]
fn every_dashboard_and_alert_metric_is_exported() {
    let mut s = start_sluice();
    // wait for a checkpoint so that checkpoint series exist
    let admin = s.admin;
    s.worker
        .wait_until("a checkpoint in /metrics", Duration::from_secs(15), || {
            scrape(admin).contains("sluice_checkpoint_duration_seconds_count")
        });
    let work = tempfile::tempdir().unwrap();
    let exposition = work.path().join("metrics.prom");
    std::fs::write(&exposition, scrape(s.admin)).unwrap();
    let cluster = work.path().join("cluster.prom");
    std::fs::write(&cluster, cluster_exposition()).unwrap();
    let out = Command::new("python3")
        .arg(repo().join("dashboards/check_metrics.py"))
        .arg("--exposition")
        .arg(&exposition)
        .arg("--exposition")
        .arg(&cluster)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dashboards/alerts use metrics sluice does not export:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = s.ingest;
}

/// The metrics of a run of several workers (the exchange, key-group
/// ownership, fenced sink writes, key groups moved by a rescale), which one
/// worker alone does not export:
/// their names and types as the engine declares them
/// (`sluice_engine::metrics`), so that the workers dashboard, the exchange
/// alerts and the remote copy's panels cannot use a name the engine does
/// not have.
fn cluster_exposition() -> String {
    use sluice_engine::metrics as m;
    [
        (m::WORKER_INFO, "gauge"),
        (m::KEY_GROUPS_OWNED, "gauge"),
        (m::EXCHANGE_SENT_RECORDS, "counter"),
        (m::EXCHANGE_FOLDED_ROWS, "counter"),
        (m::EXCHANGE_SENT_BYTES, "counter"),
        (m::EXCHANGE_ACKED_BATCHES, "counter"),
        (m::EXCHANGE_DELIVERY_LATENCY, "histogram"),
        (m::EXCHANGE_IN_FLIGHT, "gauge"),
        (m::EXCHANGE_PEER_UP, "gauge"),
        (m::EXCHANGE_RECEIVED_RECORDS, "counter"),
        (m::EXCHANGE_REPLAYED_RECORDS, "counter"),
        (m::EXCHANGE_INBOUND_BACKLOG, "gauge"),
        (m::SINK_FENCED_WRITES, "counter"),
        (m::REMOTE_KEY_GROUPS_MOVED, "gauge"),
    ]
    .iter()
    .map(|(name, kind)| format!("# TYPE {name} {kind}\n"))
    .collect()
}

fn prometheus_binary() -> Option<String> {
    ["prometheus", "/usr/bin/prometheus"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_string)
}

fn query(prom: u16, expr: &str) -> serde_json::Value {
    let url = format!("/api/v1/query?query={}", urlencode(expr));
    let (status, body) = http_request(prom, "GET", &url, &[], b"").unwrap();
    assert_eq!(status, 200, "{expr}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A query while Prometheus may still be starting (it answers 503 until
/// its storage is ready): None until it answers 200.
fn try_query(prom: u16, expr: &str) -> Option<serde_json::Value> {
    let url = format!("/api/v1/query?query={}", urlencode(expr));
    match http_request(prom, "GET", &url, &[], b"") {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of the dashboards, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in [
        "overview.json",
        "state-checkpoints.json",
        "connectors.json",
        "cluster.json",
    ] {
        let d: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("dashboards").join(name)).unwrap(),
        )
        .unwrap();
        for panel in d["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    let expr = expr
                        .replace("$__rate_interval", "30s")
                        .replace("$__range", "5m")
                        .replace("$__interval", "5s")
                        .replace("$pipeline", "observed")
                        .replace("$instance", ".*");
                    out.push((format!("{name}: {}", panel["title"]), expr));
                }
            }
        }
    }
    out
}

#[test]
fn prometheus_scrapes_sluice_and_answers_the_dashboard_queries() {
    let Some(prometheus) = prometheus_binary() else {
        panic!(
            "the prometheus server is not installed (tests/run.sh installs Debian's `prometheus`)"
        );
    };
    let mut s = start_sluice();
    let work = tempfile::tempdir().unwrap();
    let prom_port = pick_port();
    let config = work.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            s.admin
        ),
    )
    .unwrap();
    let prom_log = work.path().join("prometheus.log");
    let log = std::fs::File::create(&prom_log).unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prom = Kill(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Up and scraped a few times (rate() needs two samples).
    s.worker.wait_until(
        &format!(
            "prometheus to scrape sluice (its log: {})",
            prom_log.display()
        ),
        Duration::from_secs(40),
        || {
            try_query(prom_port, "count_over_time(up{job=\"sluice\"}[1m])").is_some_and(|r| {
                r["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|n| n >= 4.0)
            })
        },
    );
    assert_eq!(
        query(prom_port, "up{job=\"sluice\"}")["data"]["result"][0]["value"][1],
        "1"
    );
    let mut empty = Vec::new();
    // Every query must run; the workers dashboard (cluster.json) shows the
    // exchange, which a single worker does not have, so only its per-worker
    // lag must have data here.
    let (queries, cluster): (Vec<_>, Vec<_>) = dashboard_queries()
        .into_iter()
        .partition(|(panel, _)| !panel.starts_with("cluster.json"));
    for (panel, expr) in &cluster {
        let r = query(prom_port, expr);
        assert_eq!(r["status"], "success", "{panel}: {expr}: {r}");
        let has_data = r["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if panel.contains("\"Source lag per worker\"") {
            assert!(has_data, "{panel}: {expr}: no data");
        }
    }
    for (panel, expr) in &queries {
        let r = query(prom_port, expr);
        assert_eq!(r["status"], "success", "{panel}: {expr}: {r}");
        if r["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    // The main queries must have data; the rest only where this pipeline
    // has the metric (it has no retries or errors to show).
    for main in [
        "Events in /s",
        "Events out /s",
        "Ready workers",
        "Checkpoint age",
        "Checkpoint duration p50 / p99",
        "Journal backlog",
        "Dead letters /s",
        "Watermark delay",
        "Sink write latency p50 / p99",
    ] {
        assert!(
            !empty.iter().any(|e| e.contains(&format!("\"{main}\""))),
            "dashboard query `{main}` returned no data; all empty: {empty:#?}"
        );
    }
    assert!(
        empty.len() * 4 < queries.len(),
        "too many dashboard queries without data: {empty:#?}"
    );
}
