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

/// Loads `text` (source `events`, sink `out`), feeds it `input` and runs
/// it on `state_dir` until `stop` says so (or, bounded, until the input
/// ends).
async fn run_pipeline(
    text: &str,
    state_dir: PathBuf,
    input: Vec<String>,
    out: Arc<Mutex<Collected>>,
    dead: Arc<Mutex<Collected>>,
    bounded: bool,
    stop: watch::Receiver<bool>,
) -> RunReport {
    let pipeline = sluice::load_str(Path::new("in_process.toml"), text, |_| None)
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
    let report = run_pipeline(
        PIPELINE,
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
    let (first, out, dead) = stopped_after_the_first_window(dir.path(), &events).await;
    assert!(!first.input_exhausted);
    let partial = windows(&out.lock().unwrap());
    assert!(
        partial.len() < expected.len(),
        "the stop came after the end"
    );

    let (_keep, never) = watch::channel(false);
    let second = run_pipeline(
        PIPELINE,
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

/// A clean stop leaves the operators' state in a restart snapshot for the
/// next start; a restart from it gives the same results as a restart that
/// reads the state store, and a snapshot of another checkpoint than the
/// store's last one is not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_the_restart_snapshot_equals_one_from_the_store() {
    use sluice_engine::state::restart;

    let events = events();
    let expected = fold(&events);
    let dir = tempfile::tempdir().unwrap();
    let (first, first_out, _) = stopped_after_the_first_window(dir.path(), &events).await;
    assert!(first.epoch > 0);
    let snapshot_file = dir.path().join(restart::FILE);
    assert!(
        snapshot_file.exists(),
        "a clean stop writes the restart snapshot"
    );
    let bytes = std::fs::read(&snapshot_file).unwrap();
    let snap = restart::decode(&bytes).unwrap();
    assert_eq!(snap.epoch, first.epoch);
    assert!(
        snap.nodes.iter().any(|n| !n.entries.is_empty()),
        "the snapshot holds the aggregate's state"
    );

    // Three copies of the stopped directory: as left (restored from the
    // snapshot), without the snapshot (restored from the store), and with
    // a snapshot of an older checkpoint that holds nothing (must not be
    // used: the store's newer state is the truth).
    let copy = |name: &str| {
        let to = dir.path().parent().unwrap().join(format!(
            "{}-{name}",
            dir.path().file_name().unwrap().to_str().unwrap()
        ));
        let _ = std::fs::remove_dir_all(&to);
        copy_dir(dir.path(), &to);
        to
    };
    let from_store = copy("store");
    std::fs::remove_file(from_store.join(restart::FILE)).unwrap();
    let stale = copy("stale");
    let mut old = snap.clone();
    old.epoch -= 1;
    for n in &mut old.nodes {
        n.entries.clear();
    }
    restart::write(&stale, &old).unwrap();

    for (case, state_dir) in [
        ("restart snapshot", dir.path().to_path_buf()),
        ("state store", from_store.clone()),
        ("stale snapshot", stale.clone()),
    ] {
        let out = Arc::new(Mutex::new(first_out.lock().unwrap().clone()));
        let dead = Arc::new(Mutex::new(Collected::default()));
        let (_keep, never) = watch::channel(false);
        let report = run_pipeline(
            PIPELINE,
            state_dir.clone(),
            lines(&events),
            out.clone(),
            dead.clone(),
            true,
            never,
        )
        .await;
        assert!(report.epoch > first.epoch, "{case}");
        assert_eq!(
            windows(&out.lock().unwrap()),
            expected,
            "restarted from the {case}"
        );
        assert!(
            dead.lock().unwrap().epochs.values().all(Vec::is_empty),
            "{case}"
        );
    }
    for d in [from_store, stale] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Runs the first half of `events` on `dir` and stops it (as at SIGTERM)
/// once some windows are out: the report, the output and dead letters.
async fn stopped_after_the_first_window(
    dir: &Path,
    events: &[(i64, &str, i64)],
) -> (RunReport, Arc<Mutex<Collected>>, Arc<Mutex<Collected>>) {
    let out = Arc::new(Mutex::new(Collected::default()));
    let dead = Arc::new(Mutex::new(Collected::default()));
    let (stop_tx, stop) = watch::channel(false);
    let first = tokio::spawn(run_pipeline(
        PIPELINE,
        dir.into(),
        lines(&events[..events.len() / 2]),
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
    (first.await.unwrap(), out, dead)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A directory whose start took key groups from the remote copy and ended
/// before writing them all is incomplete: a run without `[state] remote`
/// (which could not finish the write) refuses it instead of starting on
/// part of the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_with_an_unfinished_import_needs_the_remote_copy() {
    use sluice_engine::state::{key, Key, SledBackend, StateBackend, WriteSet};
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledBackend::open(dir.path()).unwrap();
        let mut w = WriteSet::default();
        w.put(Key::Epoch, 3u64.to_be_bytes().to_vec());
        w.put(Key::Raw(key::IMPORT.to_vec()), vec![0]);
        store.apply(w).unwrap();
    }
    let pipeline = sluice::load_str(Path::new("in_process.toml"), PIPELINE, |_| None).unwrap();
    let attempt = || {
        let mut spec = sluice::plan::to_spec(
            &pipeline,
            Some(dir.path().to_path_buf()),
            false,
            sluice_engine::cluster::WorkerId::SINGLE,
        )
        .unwrap();
        feed(&mut spec, "events", MemorySource::new(lines(&events()), 50));
        collect(&mut spec, "out", Arc::new(Mutex::new(Collected::default())));
        collect(
            &mut spec,
            "dead_letter",
            Arc::new(Mutex::new(Collected::default())),
        );
        let (_keep, never) = watch::channel(false);
        let opts = RunOptions {
            bounded: true,
            shutdown: never,
            ready: Arc::new(Readiness::default()),
            progress: Vec::new(),
            accept_empty_state: false,
        };
        run(spec, opts)
    };
    // sled lets go of the directory shortly after its handle is dropped.
    let mut last = String::new();
    for _ in 0..100 {
        match attempt().await {
            Ok(report) => panic!("started on an incomplete directory: {report:?}"),
            Err(e) => last = e.to_string(),
        }
        if last.contains("ended before it wrote them") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last.contains("ended before it wrote them"), "{last}");
}

/// An aggregate without float sums that is its source's only reader
/// gets partial results folded where the rows are decoded; with a second
/// reader of the source it takes the rows themselves. Both give the same
/// results and the same dead letters (missing keys; late events, whose
/// batches a windowed aggregate takes as rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_folded_where_they_are_decoded_give_the_results_of_rows() {
    let functions = "aggregates = { n = \"count\", low = { fn = \"min\", field = \"amount\" }, high = { fn = \"max\", field = \"amount\" }, kinds = { fn = \"count_distinct\", field = \"kind\" }, earliest = { fn = \"first\", field = \"amount\" }, latest = { fn = \"last\", field = \"amount\" } }";
    let windows = "window = { type = \"tumbling\", size = \"1m\" }\naggregates = { count = \"count\", total = { fn = \"sum\", field = \"amount\" } }";
    // PIPELINE with all-time aggregates instead of 1-minute windows
    let all_time = PIPELINE.replace(windows, functions);
    assert!(!all_time.contains("window"), "{all_time}");
    // and with 2-minute windows sliding by 1 minute
    let hopping = PIPELINE.replace(
        windows,
        &format!("window = {{ type = \"hopping\", size = \"2m\", slide = \"1m\" }}\n{functions}"),
    );
    assert!(hopping.contains("hopping"), "{hopping}");
    let mut input = lines(&events());
    for (i, line) in input.iter_mut().enumerate() {
        if i % 101 == 7 {
            *line = line.replace("\"country\"", "\"nation\"");
        } else if i % 3 == 0 {
            *line = line.replace('}', ",\"kind\":\"k\"}");
        }
    }
    // a few events 3 minutes late: closed windows for `hopping`
    for i in (500..input.len()).step_by(173) {
        let e = events()[i];
        input[i] = lines(&[(e.0 - 180_000, e.1, e.2)]).remove(0);
    }
    for text in [all_time, hopping] {
        rows_and_partial_results_agree(&text, &input).await;
    }
}

async fn rows_and_partial_results_agree(text: &str, input: &[String]) {
    let run = |text: String| {
        let input = input.to_vec();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let (out, dead) = (Arc::default(), Arc::default());
            let (_stop, shutdown) = watch::channel(false);
            run_pipeline(
                &text,
                dir.path().to_path_buf(),
                input,
                Arc::clone(&out),
                Arc::clone(&dead),
                true,
                shutdown,
            )
            .await;
            let table = |c: &Arc<Mutex<Collected>>| {
                c.lock()
                    .unwrap()
                    .table()
                    .into_iter()
                    .map(|(id, v)| {
                        let mut buf = Vec::new();
                        write_value(&mut buf, &v);
                        (id, String::from_utf8(buf).unwrap())
                    })
                    .collect::<BTreeMap<String, String>>()
            };
            let dead_ids: Vec<String> = dead
                .lock()
                .unwrap()
                .epochs
                .values()
                .flatten()
                .map(|r| r.id.to_string())
                .collect();
            (table(&out), dead_ids)
        }
    };
    let (folded, folded_dead) = run(text.to_string()).await;
    let second_reader = format!("{text}\n[sinks.raw]\ntype = \"null\"\ninputs = [\"events\"]\n");
    let (rows, rows_dead) = run(second_reader).await;
    assert!(folded.len() >= COUNTRIES.len(), "{folded:?}");
    assert_eq!(folded, rows);
    assert!(
        folded_dead.iter().any(|id| id.ends_with(":missing_field")),
        "{folded_dead:?}"
    );
    let mut sorted = (folded_dead.clone(), rows_dead.clone());
    sorted.0.sort();
    sorted.1.sort();
    assert_eq!(sorted.0, sorted.1);
    // every event is counted once in each window it falls in, or dead
    let windowed = text.contains("hopping");
    let n: i64 = folded
        .values()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(r).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .sum();
    let late = folded_dead
        .iter()
        .filter(|id| id.ends_with(":late"))
        .count();
    assert_eq!(late > 0, windowed, "{folded_dead:?}");
    let per_event = if windowed { 2 } else { 1 };
    // (three minutes late is past both windows of a late event: it is dead)
    assert_eq!(n as usize, per_event * (input.len() - folded_dead.len()));
}
