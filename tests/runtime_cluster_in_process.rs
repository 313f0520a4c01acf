//! Three workers of one pipeline inside this process, each with a third of
//! the input (in-memory sources, the engine's `testing` feature), joined by
//! the exchange over HTTP/2 on loopback: their results together equal a
//! plain fold of the whole input, for all-time and windowed aggregates.
//! The multi-process tests (`cluster_*.rs`) run the binary.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_engine::cluster::{ClusterSpec, WorkerId};
use sluice_engine::exchange::PeerAddresses;
use sluice_engine::health::Readiness;
use sluice_engine::json::write_value;
use sluice_engine::runtime::{run, RunOptions, RunReport};
use sluice_engine::testing::{collect, feed, Collected, MemorySource};
use tokio::sync::watch;

const PIPELINE: &str = r#"
[pipeline]
name = "cluster_in_process"

[checkpoint]
interval = "50ms"

[sources.events]
type = "stdin"
event_time = { field = "ts", format = "epoch_ms", max_disorder = "1s" }

[transforms.per_minute]
type = "aggregate"
inputs = ["events"]
group_by = ["country"]
window = { type = "tumbling", size = "1m" }
aggregates = { count = "count", total = { fn = "sum", field = "amount" } }

[transforms.all_time]
type = "aggregate"
inputs = ["events"]
group_by = ["country"]
aggregates = { count = "count", total = { fn = "sum", field = "amount" } }

[sinks.windows]
type = "null"
inputs = ["per_minute"]

[sinks.totals]
type = "null"
inputs = ["all_time"]
"#;

const START: i64 = 1_732_147_200_000;
const COUNTRIES: [&str; 7] = ["FR", "BR", "JP", "DE", "US", "IN", "NG"];

fn events() -> Vec<(i64, &'static str, i64)> {
    (0..3000i64)
        .map(|i| (START + i * 200, COUNTRIES[(i * 5 % 7) as usize], i % 13))
        .collect()
}

fn line((ts, country, amount): &(i64, &str, i64)) -> String {
    format!(r#"{{"ts":{ts},"country":"{country}","amount":{amount}}}"#)
}

type Table = BTreeMap<String, (i64, i64)>;

fn rows(out: &Collected, windowed: bool) -> Table {
    out.table()
        .into_values()
        .map(|v| {
            let mut buf = Vec::new();
            write_value(&mut buf, &v);
            let row: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            let mut key = row["country"].as_str().unwrap().to_string();
            if windowed {
                key.push_str(&format!("@{}", row["window_start"].as_i64().unwrap()));
            }
            (
                key,
                (
                    row["count"].as_i64().unwrap(),
                    row["total"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

fn fold(events: &[(i64, &str, i64)], windowed: bool) -> Table {
    let mut out = Table::new();
    for &(ts, country, amount) in events {
        let mut key = country.to_string();
        if windowed {
            key.push_str(&format!("@{}", ts - ts.rem_euclid(60_000)));
        }
        let e = out.entry(key).or_default();
        e.0 += 1;
        e.1 += amount;
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Outputs {
    windows: Arc<Mutex<Collected>>,
    totals: Arc<Mutex<Collected>>,
    dead: Arc<Mutex<Collected>>,
}

async fn worker(
    me: WorkerId,
    peers: Vec<String>,
    state_dir: &Path,
    input: Vec<String>,
    out: &Outputs,
) -> RunReport {
    let pipeline = sluice::load_str(Path::new("cluster.toml"), PIPELINE, |_| None)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut spec =
        sluice::plan::to_spec(&pipeline, Some(state_dir.into()), false, WorkerId::SINGLE).unwrap();
    spec.worker = me;
    spec.cluster = Some(ClusterSpec {
        listen: peers[me.worker as usize].clone(),
        peers: PeerAddresses::List(peers),
    });
    feed(&mut spec, "events", MemorySource::new(input, 64));
    collect(&mut spec, "windows", out.windows.clone());
    collect(&mut spec, "totals", out.totals.clone());
    collect(&mut spec, "dead_letter", out.dead.clone());
    let (_keep, never) = watch::channel(false);
    let opts = RunOptions {
        bounded: true,
        shutdown: never,
        ready: Arc::new(Readiness::default()),
        progress: Vec::new(),
        accept_empty_state: false,
    };
    run(spec, opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_give_the_results_of_one() {
    let events = events();
    let n = 3u32;
    let peers: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let outputs: Vec<Outputs> = (0..n)
        .map(|_| Outputs {
            windows: Arc::default(),
            totals: Arc::default(),
            dead: Arc::default(),
        })
        .collect();
    // round-robin: every worker sees every key
    let inputs: Vec<Vec<String>> = (0..n as usize)
        .map(|w| {
            events
                .iter()
                .skip(w)
                .step_by(n as usize)
                .map(line)
                .collect()
        })
        .collect();
    let runs = (0..n).map(|w| {
        worker(
            WorkerId::new(w, n).unwrap(),
            peers.clone(),
            dirs[w as usize].path(),
            inputs[w as usize].clone(),
            &outputs[w as usize],
        )
    });
    let reports = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(runs))
        .await
        .expect("the three workers did not finish within 60 s");
    let total_in: u64 = reports.iter().map(|r| r.events_in).sum();
    assert_eq!(total_in, events.len() as u64);

    let mut windows = Table::new();
    let mut totals = Table::new();
    for (w, o) in outputs.iter().enumerate() {
        assert!(
            o.dead.lock().unwrap().epochs.values().all(Vec::is_empty),
            "worker {w} wrote dead letters"
        );
        for (k, v) in rows(&o.windows.lock().unwrap(), true) {
            assert!(
                windows.insert(k.clone(), v).is_none(),
                "window {k} written by two workers"
            );
        }
        for (k, v) in rows(&o.totals.lock().unwrap(), false) {
            assert!(
                totals.insert(k.clone(), v).is_none(),
                "total {k} written by two workers"
            );
        }
    }
    assert_eq!(totals, fold(&events, false));
    assert_eq!(windows, fold(&events, true));
    // each worker owns some of the keys
    for (w, o) in outputs.iter().enumerate() {
        assert!(
            !rows(&o.totals.lock().unwrap(), false).is_empty(),
            "worker {w} owns no country"
        );
    }
}
