//! A pipeline loaded from TOML by the same library as `sluice run`
//! (`sluice::load_str`, `sluice::plan::to_spec`) and run whole inside this
//! process with in-memory input and output (the engine's `testing`
//! feature): a windowed aggregate, straight through and stopped then
//! restarted from its checkpoint, against a plain fold of the input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_engine::health::Readiness;
use sluice_engine::json::write_value;
use sluice_engine::runtime::{run, RunOptions, RunReport};
use sluice_engine::testing::{collect, feed, Collected, MemorySource};
use tokio::sync::watch;

/// The configured source and sink are replaced by in-memory ones.
const PIPELINE: &str = r#"
[pipeline]
name = "in_process"

[checkpoint]
interval = "20ms"

[sources.events]
type = "stdin"
event_time = { field = "ts", format = "epoch_ms", max_disorder = "1s" }

[transforms.per_minute]
type = "aggregate"
inputs = ["events"]
group_by = ["country"]
window = { type = "tumbling", size = "1m" }
aggregates = { count = "count", total = { fn = "sum", field = "amount" } }

[sinks.out]
type = "null"
inputs = ["per_minute"]
"#;

const START: i64 = 1_732_147_200_000;
const COUNTRIES: [&str; 3] = ["FR", "BR", "JP"];

/// Ten minutes of events, two a second, a little out of order.
fn events() -> Vec<(i64, &'static str, i64)> {
    (0..1200i64)
        .map(|i| {
            let jitter = if i % 5 == 0 { -400 } else { 0 };
            (
                START + i * 500 + jitter,
                COUNTRIES[(i * 7 % 3) as usize],
                i % 11,
            )
        })
        .collect()
}

fn lines(events: &[(i64, &str, i64)]) -> Vec<String> {
    events
        .iter()
        .map(|(ts, country, amount)| {
            format!(r#"{{"ts":{ts},"country":"{country}","amount":{amount}}}"#)
        })
        .collect()
}

/// `(country, window_start) -> (count, total)`, by a plain fold.
type Windows = BTreeMap<(String, i64), (i64, i64)>;

fn fold(events: &[(i64, &str, i64)]) -> Windows {
    let mut out = Windows::new();
    for &(ts, country, amount) in events {
        let start = ts - ts.rem_euclid(60_000);
        let w = out.entry((country.to_string(), start)).or_default();
        w.0 += 1;
        w.1 += amount;
    }
    out
}

fn windows(out: &Collected) -> Windows {
    out.table()
        .into_values()
        .map(|v| {
            let mut buf = Vec::new();
            write_value(&mut buf, &v);
            let row: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            (
                (
                    row["country"].as_str().unwrap().to_string(),
                    row["window_start"].as_i64().unwrap(),
                ),
                (
                    row["count"].as_i64().unwrap(),
                    row["total"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Loads the pipeline, feeds it `input` and runs it on `state_dir` until
/// `stop` says so (or, bounded, until the input ends).
async fn run_once(
    state_dir: PathBuf,
    input: Vec<String>,
    out: Arc<Mutex<Collected>>,
    dead: Arc<Mutex<Collected>>,
    bounded: bool,
    stop: watch::Receiver<bool>,
) -> RunReport {
    let pipeline = sluice::load_str(Path::new("in_process.toml"), PIPELINE, |_| None)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut spec = sluice::plan::to_spec(
        &pipeline,
        Some(state_dir),
        false,
        sluice_engine::cluster::WorkerId::SINGLE,
    )
    .unwrap();
    feed(&mut spec, "events", MemorySource::new(input, 50));
    collect(&mut spec, "out", out);
    collect(&mut spec, "dead_letter", dead);
    let opts = RunOptions {
        bounded,
        shutdown: stop,
        ready: Arc::new(Readiness::default()),
        progress: Vec::new(),
        accept_empty_state: false,
    };
    run(spec, opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_and_restart_from_the_checkpoint_gives_the_results_of_a_straight_run() {
    let events = events();
    let expected = fold(&events);

    // Straight through.
    let dir = tempfile::tempdir().unwrap();
    let straight = Arc::new(Mutex::new(Collected::default()));
    let dead = Arc::new(Mutex::new(Collected::default()));
    let (_keep, never) = watch::channel(false);
    let report = run_once(
        dir.path().into(),
        lines(&events),
        straight.clone(),
        dead.clone(),
        true,
        never,
    )
    .await;
    assert!(report.input_exhausted);
    assert_eq!(report.events_in, events.len() as u64);
    assert_eq!(windows(&straight.lock().unwrap()), expected);
    assert!(dead.lock().unwrap().epochs.values().all(Vec::is_empty));

    // Stopped (as at SIGTERM) once some windows are out, while the first
    // half of the input is all there is; then restarted with all of it.
    let dir = tempfile::tempdir().unwrap();
    let out = Arc::new(Mutex::new(Collected::default()));
    let dead = Arc::new(Mutex::new(Collected::default()));
    let (stop_tx, stop) = watch::channel(false);
    let first_half = lines(&events[..events.len() / 2]);
    let first = tokio::spawn(run_once(
        dir.path().into(),
        first_half,
        out.clone(),
        dead.clone(),
        false,
        stop,
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.lock().unwrap().table().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no window came out of the first run"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(true).unwrap();
    let first = first.await.unwrap();
    assert!(!first.input_exhausted);
    let partial = windows(&out.lock().unwrap());
    assert!(
        partial.len() < expected.len(),
        "the stop came after the end"
    );

    let (_keep, never) = watch::channel(false);
    let second = run_once(
        dir.path().into(),
        lines(&events),
        out.clone(),
        dead.clone(),
        true,
        never,
    )
    .await;
    assert!(second.epoch > first.epoch);
    assert_eq!(windows(&out.lock().unwrap()), expected);
    assert!(dead.lock().unwrap().epochs.values().all(Vec::is_empty));
}
