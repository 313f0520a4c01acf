//! Lateness is decided per event, in the order of the source's log, never
//! by how the input happened to be batched (issue 10, item 1). Dirty weather
//! data with events around the lateness boundary and malformed lines goes
//! through the file source with different read sizes and with SIGKILLs, and
//! through the HTTP source with single-event and NDJSON requests and with
//! SIGKILLs between requests: every run's window results and late dead
//! letters equal a per-event reference computed here, independently of
//! sluice.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;
use support::*;

const BASE_TS: i64 = 1_732_147_200_000;
const SIZE: i64 = 5_000;
const LATENESS: i64 = 1_000;
const DISORDER: i64 = 1_000;
const COUNTRIES: &[&str] = &["GT", "MX", "US", "BR"];

const PIPELINE: &str = r#"
[pipeline]
name = "late_events"

[state]
dir = "${STATE}"

[checkpoint]
interval = "40ms"

[dead_letter]
type = "file"
path = "${DEAD}"
format = "changes"

[sources.reports]
SOURCE
event_time = { field = "ts", format = "epoch_ms", max_disorder = "1s" }

[transforms.per_5s]
type = "aggregate"
inputs = ["reports"]
group_by = ["country"]
window = { type = "tumbling", size = "5s" }
allowed_lateness = "1s"
aggregates = { n = "count", ids = { fn = "sum", field = "id" } }

[sinks.out]
type = "file"
inputs = ["per_5s"]
path = "${OUTPUT}"
format = "changes"
"#;

/// (window start, country) -> (count, sum of ids).
type Windows = BTreeMap<(i64, String), (i64, i64)>;

#[derive(Clone)]
struct Event {
    id: i64,
    ts: i64,
    country: &'static str,
}

impl Event {
    fn line(&self) -> String {
        format!(
            r#"{{"id":{},"ts":{},"country":"{}","weather":"Sunny","temp_c":21}}"#,
            self.id, self.ts, self.country
        )
    }
}

/// Events 40 ms apart whose delays straddle the boundary (1 s disorder +
/// 1 s lateness), a few far behind; then one far-future event that closes
/// every window but its own.
fn events(n: usize) -> Vec<Event> {
    let mut rng = rng("late_events");
    let mut out: Vec<Event> = (0..n)
        .map(|i| {
            let r: f64 = rng.random();
            let delay = if r < 0.6 {
                rng.random_range(0..100)
            } else if r < 0.97 {
                rng.random_range(0..4_000)
            } else {
                rng.random_range(10_000..30_000)
            };
            Event {
                id: i as i64,
                ts: BASE_TS + i as i64 * 40 - delay,
                country: COUNTRIES[rng.random_range(0..COUNTRIES.len())],
            }
        })
        .collect();
    out.push(Event {
        id: n as i64,
        ts: BASE_TS + n as i64 * 40 + 3_600_000,
        country: "ZZ",
    });
    out
}

/// The per-event reference: (window start, country) -> (count, sum of ids)
/// of the closed windows, and the ids of the late events.
fn reference(events: &[Event]) -> (Windows, BTreeSet<i64>) {
    let (mut windows, mut late) = (BTreeMap::new(), BTreeSet::new());
    let mut top: Option<i64> = None;
    for e in events {
        let start = e.ts.div_euclid(SIZE) * SIZE;
        let late_now = top.is_some_and(|top| start + SIZE + LATENESS <= top - DISORDER);
        if late_now {
            late.insert(e.id);
        } else if e.country != "ZZ" {
            let w = windows
                .entry((start, e.country.to_string()))
                .or_insert((0, 0));
            w.0 += 1;
            w.1 += e.id;
        }
        top = Some(top.map_or(e.ts, |t| t.max(e.ts)));
    }
    (windows, late)
}

/// What a run produced: the same shapes as [`reference`].
fn results(dir: &Path) -> (Windows, BTreeSet<i64>) {
    let windows = materialize(&dir.join("out.ndjson"))
        .into_values()
        .filter(|r| r["country"] != "ZZ")
        .map(|r| {
            (
                (
                    r["window_start"].as_i64().unwrap(),
                    r["country"].as_str().unwrap().to_string(),
                ),
                (r["n"].as_i64().unwrap(), r["ids"].as_i64().unwrap()),
            )
        })
        .collect();
    let late = materialize(&dir.join("dead.ndjson"))
        .into_values()
        .filter(|d| d["error_type"] == "late")
        .map(|d| {
            let raw: serde_json::Value = serde_json::from_str(d["raw"].as_str().unwrap()).unwrap();
            raw["id"].as_i64().unwrap()
        })
        .collect();
    (windows, late)
}

fn env(dir: &Path, source: &str) -> Vec<(&'static str, String)> {
    std::fs::write(
        dir.join("pipeline.toml"),
        PIPELINE.replace("SOURCE", source),
    )
    .unwrap();
    vec![
        ("STATE", dir.join("state").display().to_string()),
        ("OUTPUT", dir.join("out.ndjson").display().to_string()),
        ("DEAD", dir.join("dead.ndjson").display().to_string()),
    ]
}

/// The input file: every event, and a malformed line every 97 events
/// (a dead letter that must not move the watermark).
fn write_input(path: &Path, events: &[Event]) {
    let mut text = String::new();
    for (i, e) in events.iter().enumerate() {
        if i % 97 == 50 {
            text.push_str("{\"id\": \"broken\n");
        }
        text.push_str(&e.line());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn file_source_lateness_ignores_read_sizes_and_kills() {
    let events = events(3000);
    let (want, want_late) = reference(&events);
    assert!(want_late.len() > 100, "the data must have late events");
    let input = tempfile::tempdir().unwrap();
    let path = input.path().join("in.ndjson");
    write_input(&path, &events);
    let mut rng = rng("file_source_lateness");
    for (read_bytes, kills) in [(97, 0), (1_000, 0), (1 << 20, 0), (300, 4)] {
        let dir = tempfile::tempdir().unwrap();
        let source = format!(
            "type = \"file\"\npath = \"{}\"\nread_bytes = {read_bytes}\nmax_events_per_second = {}",
            path.display(),
            if kills > 0 { 6000 } else { 0 }
        );
        let env = env(dir.path(), &source);
        let pipeline = dir.path().join("pipeline.toml");
        let log = dir.path().join("sluice.log");
        run_with_kills(
            &pipeline,
            &env,
            &log,
            &mut rng,
            kills,
            Duration::from_millis(500),
        );
        let (got, got_late) = results(dir.path());
        assert_eq!(
            got_late, want_late,
            "late events, read_bytes = {read_bytes}, {kills} kills"
        );
        assert_eq!(
            got, want,
            "windows, read_bytes = {read_bytes}, {kills} kills"
        );
        let malformed = materialize(&dir.path().join("dead.ndjson"))
            .into_values()
            .filter(|d| d["error_type"] == "malformed_json")
            .count();
        assert_eq!(
            malformed,
            (0..events.len()).filter(|i| i % 97 == 50).count()
        );
    }
}

/// Posts `events` in requests of `per_request` (single JSON objects or
/// NDJSON), killing sluice with SIGKILL after the requests in `kill_after`
/// and starting it again. Returns what the run produced.
fn http_run(
    events: &[Event],
    per_request: usize,
    kill_after: &[usize],
) -> (Windows, BTreeSet<i64>) {
    let dir = tempfile::tempdir().unwrap();
    let port = pick_port();
    let env = env(
        dir.path(),
        &format!("type = \"http\"\naddress = \"127.0.0.1:{port}\""),
    );
    let pipeline = dir.path().join("pipeline.toml");
    let log = dir.path().join("sluice.log");
    let start = || {
        let mut child = spawn_serve(&pipeline, &env, &log);
        wait_for_port(port, &mut child, &log);
        child
    };
    let mut child = start();
    for (k, chunk) in events.chunks(per_request).enumerate() {
        let body: Vec<String> = chunk.iter().map(Event::line).collect();
        let content_type = if per_request == 1 {
            "application/json"
        } else {
            "application/x-ndjson"
        };
        let (status, reply) = http_request(
            port,
            "POST",
            "/ingest",
            &[("Content-Type", content_type)],
            body.join("\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 202, "{reply}");
        if kill_after.contains(&k) {
            child.kill().unwrap(); // SIGKILL: the journal holds every 202
            child.wait().unwrap();
            child = start();
        }
    }
    // Every window but the far-future one closes; wait until they are out.
    let (want, _) = reference(events);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let so_far = materialize_so_far(&dir.path().join("out.ndjson"));
        if so_far.values().filter(|r| r["country"] != "ZZ").count() >= want.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "windows missing; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(terminate(&mut child).success());
    results(dir.path())
}

#[test]
fn http_source_lateness_ignores_request_sizes_and_kills() {
    let events = events(1500);
    let (want, want_late) = reference(&events);
    assert!(want_late.len() > 50, "the data must have late events");
    let mut rng = rng("http_source_lateness");
    let requests = events.len().div_ceil(40);
    let kills: Vec<usize> = (0..3).map(|_| rng.random_range(0..requests - 1)).collect();
    for (per_request, kill_after) in [(1, vec![]), (40, vec![]), (40, kills)] {
        let (got, got_late) = http_run(&events, per_request, &kill_after);
        assert_eq!(
            got_late, want_late,
            "late events, {per_request} per request, kills after {kill_after:?}"
        );
        assert_eq!(
            got, want,
            "windows, {per_request} per request, kills after {kill_after:?}"
        );
    }
}
