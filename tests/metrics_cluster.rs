//! The metrics and readiness of a run of several workers, read from two
//! real `sluice run` processes on loopback: each worker's `/metrics` says
//! which worker it is, how many key groups it owns (together: all of them),
//! that records went through the exchange both ways with their delivery
//! latency, and that its peer is up; `/ready` lists the exchange as up.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::worker::{Ready, Worker};
use support::*;

const WORKERS: usize = 2;
const KEY_GROUPS: u64 = 64;
const KEYS: usize = 40;
const EVENTS_PER_WORKER: usize = 400;

/// One series of a Prometheus exposition.
#[derive(Debug)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The series of a `/metrics` text (comments skipped). Label values here
/// hold no quotes or commas.
fn parse(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (head, value) = line.rsplit_once(' ').expect("`name value`");
            let (name, labels) = match head.split_once('{') {
                None => (head, BTreeMap::new()),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("labels end with }");
                    let labels = inner
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label k=\"v\"");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name, labels)
                }
            };
            Series {
                name: name.to_string(),
                labels,
                value: value.parse().unwrap_or(f64::NAN),
            }
        })
        .collect()
}

fn scrape(admin: u16) -> Vec<Series> {
    match http_request(admin, "GET", "/metrics", &[], b"") {
        Ok((200, body)) => parse(&body),
        _ => Vec::new(),
    }
}

/// The value of the one series `name` whose labels include `labels`.
fn value(series: &[Series], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Series> = series
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?}: several series: {found:?}"
    );
    found.first().map(|s| s.value)
}

struct Cluster {
    workers: Vec<Worker>,
    admin: Vec<u16>,
    ingest: Vec<u16>,
    dir: tempfile::TempDir,
}

/// Two workers of `http -> count per key -> file`, both listening.
fn start() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let admin: Vec<u16> = (0..WORKERS).map(|_| pick_port()).collect();
    let ingest: Vec<u16> = (0..WORKERS).map(|_| pick_port()).collect();
    let exchange: Vec<u16> = (0..WORKERS).map(|_| pick_port()).collect();
    let peers: Vec<String> = exchange
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    let d = dir.path().display();
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[pipeline]
name = "metrics_cluster"
[state]
dir = "{d}/state-${{SLUICE_WORKER_ID}}"
key_groups = {KEY_GROUPS}
[checkpoint]
interval = "200ms"
[admin]
address = "127.0.0.1:${{TEST_ADMIN_PORT}}"
[cluster]
listen = "127.0.0.1:${{TEST_EXCHANGE_PORT}}"
peers = [{peers}]
[sources.events]
type = "http"
address = "127.0.0.1:${{TEST_INGEST_PORT}}"
[transforms.counts]
type = "aggregate"
inputs = ["events"]
group_by = ["k"]
aggregates = {{ n = "count" }}
[sinks.out]
type = "file"
inputs = ["counts"]
path = "{d}/out-${{SLUICE_WORKER_ID}}.ndjson"
format = "changes"
"#,
            peers = peers.join(", ")
        ),
    )
    .unwrap();
    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|i| {
            Worker::new(&pipeline, &dir.path().join(format!("log-{i}")))
                .arg("--workers")
                .arg(&WORKERS.to_string())
                .arg("--worker")
                .arg(&i.to_string())
                .env_remove("SLUICE_WORKERS")
                .env_remove("SLUICE_WORKER_ID")
                .env("TEST_ADMIN_PORT", admin[i].to_string())
                .env("TEST_EXCHANGE_PORT", exchange[i].to_string())
                .env("TEST_INGEST_PORT", ingest[i].to_string())
        })
        .collect();
    for w in &mut workers {
        w.start();
    }
    // Listening, not `/ready`: an idle worker's exchange is not up until it
    // has sent its peer something (see `idle_workers_become_ready`).
    for (i, w) in workers.iter_mut().enumerate() {
        w.wait_ready(&Ready::Port(admin[i]))
            .wait_ready(&Ready::Port(ingest[i]));
    }
    Cluster {
        workers,
        admin,
        ingest,
        dir,
    }
}

/// Posts `body` (NDJSON) to every worker's HTTP source.
fn post_to_each(c: &Cluster, body: &str) {
    for port in &c.ingest {
        let (status, answer) = http_request(
            *port,
            "POST",
            "/ingest",
            &[("Content-Type", "application/x-ndjson")],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 202, "{answer}");
    }
}

/// Worker `me`'s rows folded for the other worker and records sent to it.
fn folded_and_sent(s: &[Series], me: usize) -> (f64, f64) {
    let peer = (1 - me).to_string();
    let labels = [("peer", peer.as_str())];
    (
        value(s, "sluice_exchange_folded_rows_total", &labels).unwrap_or(0.0),
        value(s, "sluice_exchange_sent_records_total", &labels).unwrap_or(0.0),
    )
}

#[test]
fn each_worker_exports_its_identity_key_groups_and_exchange_traffic() {
    let mut c = start();
    // Every worker gets events of every key: each sends the keys it does
    // not own to the other.
    let body: String = (0..EVENTS_PER_WORKER)
        .map(|i| format!("{{\"k\":\"key-{}\"}}\n", i % KEYS))
        .collect();
    post_to_each(&c, &body);

    // The counts, together, are exact: every record reached its owner.
    let expected = (EVENTS_PER_WORKER * WORKERS / KEYS) as u64;
    let outs: Vec<_> = (0..WORKERS)
        .map(|i| c.dir.path().join(format!("out-{i}.ndjson")))
        .collect();
    c.workers[0].wait_until(
        "every key counted once, at one worker",
        Duration::from_secs(30),
        || {
            let tables: Vec<_> = outs.iter().map(|o| materialize_so_far(o)).collect();
            let held: usize = tables.iter().map(BTreeMap::len).sum();
            let mut n = BTreeMap::new();
            for t in &tables {
                for r in t.values() {
                    n.insert(r["k"].as_str().unwrap().to_string(), r["n"].as_u64());
                }
            }
            held == KEYS && n.len() == KEYS && n.values().all(|v| *v == Some(expected))
        },
    );
    let per_worker: Vec<usize> = outs.iter().map(|o| materialize_so_far(o).len()).collect();
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "each worker owns some of the {KEYS} keys: {per_worker:?}"
    );

    let mut owned_total = 0.0;
    for me in 0..WORKERS {
        let peer = (1 - me).to_string();
        let admin = c.admin[me];
        let (me_s, n_s) = (me.to_string(), WORKERS.to_string());
        // The exchange counters and the delivery histogram move with the
        // traffic: wait for them, then read everything from one scrape.
        let sent = |s: &[Series]| {
            value(s, "sluice_exchange_sent_records_total", &[("peer", &peer)]).unwrap_or(0.0)
        };
        let received =
            |s: &[Series]| value(s, "sluice_exchange_received_records_total", &[]).unwrap_or(0.0);
        c.workers[me].wait_until(
            &format!("worker {me}: exchange records sent to {peer} and received, in /metrics"),
            Duration::from_secs(20),
            || {
                let s = scrape(admin);
                sent(&s) > 0.0 && received(&s) > 0.0
            },
        );
        let s = scrape(admin);
        assert_eq!(
            value(
                &s,
                "sluice_worker_info",
                &[
                    ("pipeline", "metrics_cluster"),
                    ("worker", &me_s),
                    ("workers", &n_s)
                ]
            ),
            Some(1.0),
            "worker {me}: sluice_worker_info{{worker=\"{me}\",workers=\"{WORKERS}\"}}"
        );
        let info: Vec<_> = s
            .iter()
            .filter(|x| x.name == "sluice_worker_info")
            .collect();
        assert_eq!(info.len(), 1, "worker {me}: one worker_info: {info:?}");
        let owned = value(&s, "sluice_key_groups_owned", &[])
            .unwrap_or_else(|| panic!("worker {me}: no sluice_key_groups_owned"));
        assert_eq!(
            owned,
            (KEY_GROUPS / WORKERS as u64) as f64,
            "worker {me}: key groups owned"
        );
        owned_total += owned;
        assert!(sent(&s) > 0.0, "worker {me}: records sent to {peer}");
        assert!(received(&s) > 0.0, "worker {me}: records received");
        // No series for a peer that is this worker itself.
        assert_eq!(
            value(&s, "sluice_exchange_sent_records_total", &[("peer", &me_s)]),
            None,
            "worker {me}: sent records to itself"
        );
        let count = value(
            &s,
            "sluice_exchange_delivery_seconds_count",
            &[("peer", &peer)],
        );
        assert!(
            count.is_some_and(|n| n > 0.0),
            "worker {me}: sluice_exchange_delivery_seconds_count{{peer=\"{peer}\"}} = {count:?}"
        );
        assert!(
            value(
                &s,
                "sluice_exchange_delivery_seconds_sum",
                &[("peer", &peer)]
            )
            .is_some(),
            "worker {me}: sluice_exchange_delivery_seconds_sum"
        );
        let buckets = s
            .iter()
            .filter(|x| {
                x.name == "sluice_exchange_delivery_seconds_bucket"
                    && x.labels.get("peer") == Some(&peer)
            })
            .count();
        assert!(
            buckets > 1,
            "worker {me}: delivery latency is a histogram with buckets ({buckets})"
        );
        assert_eq!(
            value(&s, "sluice_exchange_peer_up", &[("peer", &peer)]),
            Some(1.0),
            "worker {me}: sluice_exchange_peer_up{{peer=\"{peer}\"}} while both run"
        );

        let (status, ready) = http_request(admin, "GET", "/ready", &[], b"").unwrap();
        assert_eq!(status, 200, "worker {me}: /ready {ready}");
        let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
        let exchange: Vec<_> = ready["sources"]
            .as_array()
            .unwrap_or_else(|| panic!("worker {me}: /ready has no sources: {ready}"))
            .iter()
            .filter(|e| e["name"] == "exchange")
            .collect();
        assert_eq!(
            exchange.len(),
            1,
            "worker {me}: one exchange entry in /ready: {ready}"
        );
        assert_eq!(
            exchange[0]["state"], "up",
            "worker {me}: exchange in /ready: {ready}"
        );
    }
    assert_eq!(
        owned_total, KEY_GROUPS as f64,
        "the workers own every key group once"
    );

    // A second round, long after every link's first acknowledgement: the
    // rows bound for the other worker are folded into one partial count
    // per key before they cross, so fewer records than rows cross.
    let before: Vec<(f64, f64)> = (0..WORKERS)
        .map(|me| folded_and_sent(&scrape(c.admin[me]), me))
        .collect();
    post_to_each(&c, &body);
    c.workers[0].wait_until(
        "every key counted twice over, at one worker",
        Duration::from_secs(30),
        || {
            let mut n = BTreeMap::new();
            for o in &outs {
                for r in materialize_so_far(o).values() {
                    n.insert(r["k"].as_str().unwrap().to_string(), r["n"].as_u64());
                }
            }
            n.len() == KEYS && n.values().all(|v| *v == Some(2 * expected))
        },
    );
    for (me, (folded_before, sent_before)) in before.into_iter().enumerate() {
        let (folded, sent) = folded_and_sent(&scrape(c.admin[me]), me);
        let (folded, sent) = (folded - folded_before, sent - sent_before);
        assert!(
            folded > 0.0 && sent < folded,
            "worker {me}: {folded} rows folded into {sent} records sent in the second round"
        );
    }
    for w in &mut c.workers {
        assert!(
            w.terminate().success(),
            "clean stop; log {}",
            w.log().display()
        );
    }
}

/// Two workers with no input must become ready (a StatefulSet behind a
/// Service only sends requests to ready pods): an idle worker still sends
/// its peers heartbeats (this failed while `ClusterRun::flush` restarted
/// the heartbeat clock on every 20 ms exchange tick).
#[test]
fn idle_workers_become_ready() {
    let mut c = start();
    for me in 0..WORKERS {
        let admin = c.admin[me];
        c.workers[me].wait_until(
            &format!("worker {me}: GET /ready = 200 with no input"),
            Duration::from_secs(10),
            || http_request(admin, "GET", "/ready", &[], b"").is_ok_and(|(s, _)| s == 200),
        );
    }
}
