//! Hot reload (`SIGHUP`, `sluice run --watch`): compatible changes apply
//! without a restart of the process and without losing or double-applying
//! anything; changes to the meaning of state and invalid files are refused
//! while the running pipeline goes on; a SIGKILL right after a reload
//! loses nothing.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use support::worker::{Ready, Worker};
use support::*;

/// How long the sink may take to show every posted event.
const COUNTS_TIMEOUT: Duration = Duration::from_secs(30);

const BASE: &str = r#"
[pipeline]
name = "reload"

[state]
dir = "${STATE}"

[checkpoint]
interval = "100ms"

[sources.web]
type = "http"
address = "127.0.0.1:${PORT}"

[transforms.by_country]
type = "aggregate"
inputs = ["web"]
group_by = ["country"]
aggregates = { n = "count" }

[sinks.out]
type = "file"
inputs = ["by_country"]
path = "${OUTPUT}"
format = "changes"
"#;

/// BASE plus a new filter (upstream of nothing stateful) and a new sink.
fn with_errors_sink(interval: &str) -> String {
    format!(
        "{}\n[transforms.errors]\ntype = \"filter\"\ninputs = [\"web\"]\ncondition = \"level == 'error'\"\n\n\
         [sinks.errors_out]\ntype = \"file\"\ninputs = [\"errors\"]\npath = \"${{ERRORS}}\"\n",
        BASE.replace("interval = \"100ms\"", &format!("interval = \"{interval}\""))
    )
}

struct Run {
    dir: tempfile::TempDir,
    port: u16,
    worker: Option<Worker>,
    want: BTreeMap<String, u64>,
    want_errors: Vec<String>,
    errors_sink_on: bool,
    next_id: u64,
}

impl Run {
    /// A run in a fresh directory, on a free port, not started yet.
    fn new() -> Run {
        Run {
            dir: tempfile::tempdir().unwrap(),
            port: pick_port(),
            worker: None,
            want: BTreeMap::new(),
            want_errors: Vec::new(),
            errors_sink_on: false,
            next_id: 0,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, text: &str) {
        std::fs::write(self.path("pipeline.toml"), text).unwrap();
    }

    fn start(&mut self, watch: bool) {
        let env = [
            ("STATE", self.path("state").display().to_string()),
            ("OUTPUT", self.path("out.ndjson").display().to_string()),
            ("ERRORS", self.path("errors.ndjson").display().to_string()),
            ("PORT", self.port.to_string()),
            ("SLUICE_WATCH", watch.to_string()),
        ];
        let worker = Worker::new(&self.path("pipeline.toml"), &self.path("sluice.log")).envs(&env);
        self.worker
            .insert(worker)
            .start()
            .wait_ready(&Ready::Port(self.port));
    }

    fn worker(&mut self) -> &mut Worker {
        self.worker.as_mut().expect("the pipeline was started")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("sluice.log")).unwrap_or_default()
    }

    /// Posts `n` events, expecting 202, waiting for the listener first
    /// (it is closed for a moment while a reload swaps the pipeline).
    fn post(&mut self, n: usize, rng: &mut impl Rng) {
        let port = self.port;
        self.worker().wait_ready(&Ready::Port(port));
        let mut lines = Vec::new();
        for _ in 0..n {
            let country = ["GT", "MX", "BR"][rng.random_range(0..3)];
            let level = ["info", "error"][rng.random_range(0..2)];
            let line = format!(
                r#"{{"id":{},"country":"{country}","level":"{level}"}}"#,
                self.next_id
            );
            self.next_id += 1;
            *self.want.entry(country.to_string()).or_default() += 1;
            if self.errors_sink_on && level == "error" {
                self.want_errors.push(line.clone());
            }
            lines.push(line);
        }
        let (status, body) = http_request(
            self.port,
            "POST",
            "/ingest",
            &[("Content-Type", "application/x-ndjson")],
            lines.join("\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 202, "{body}");
    }

    /// Waits until the sink's output holds the counts posted so far.
    fn wait_counts(&mut self) {
        let out = self.path("out.ndjson");
        let want = self.want.clone();
        self.worker()
            .wait_until("the counts to match", COUNTS_TIMEOUT, || {
                materialize_so_far(&out)
                    .into_iter()
                    .map(|(k, v)| (k, v["n"].as_u64().unwrap()))
                    .collect::<BTreeMap<_, _>>()
                    == want
            });
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        materialize(&self.path("out.ndjson"))
            .into_iter()
            .map(|(k, v)| (k, v["n"].as_u64().unwrap()))
            .collect()
    }
}

#[test]
fn reloads_apply_or_are_refused_and_nothing_is_lost() {
    let mut rng = rng("hot_reload");
    let mut run = Run::new();
    run.write(BASE);
    run.start(false);
    run.post(60, &mut rng);

    // A compatible change: a new filter and a new sink, a new interval.
    run.write(&with_errors_sink("200ms"));
    run.worker().signal("HUP");
    run.worker().wait_log("reloaded `", 1);
    run.errors_sink_on = true;
    run.post(60, &mut rng);

    // A change to the meaning of the aggregate's state: refused, and the
    // running pipeline goes on as it was.
    run.write(
        &with_errors_sink("200ms").replace("group_by = [\"country\"]", "group_by = [\"level\"]"),
    );
    run.worker().signal("HUP");
    let log = run.worker().wait_log("reload refused", 1);
    assert!(
        log.contains("`by_country` or what feeds it changed") && log.contains("sluice replay"),
        "{log}"
    );
    run.post(60, &mut rng);

    // An invalid file: refused the same way.
    run.write("[pipeline\nname = ");
    run.worker().signal("HUP");
    let log = run.worker().wait_log("reload refused", 2);
    assert!(log.contains("error(s)"), "{log}");
    run.post(60, &mut rng);
    assert_eq!(run.log().matches("reloaded `").count(), 1);

    // Back to a compatible file; SIGKILL right after the reload.
    run.write(&with_errors_sink("300ms"));
    run.worker().signal("HUP");
    run.worker().wait_log("reloaded `", 2);
    run.worker().kill();
    run.start(false);
    run.post(60, &mut rng);

    run.wait_counts();
    assert!(run.worker().terminate().success());
    assert_eq!(run.counts(), run.want);
    let mut errors: Vec<String> = std::fs::read_to_string(run.path("errors.ndjson"))
        .unwrap()
        .lines()
        .map(|l| canonical(&serde_json::from_str(l).unwrap()))
        .collect();
    let mut want_errors: Vec<String> = run
        .want_errors
        .iter()
        .map(|l| canonical(&serde_json::from_str(l).unwrap()))
        .collect();
    errors.sort();
    want_errors.sort();
    assert_eq!(
        errors, want_errors,
        "the new sink got each error event once"
    );
}

#[test]
fn watch_reloads_when_the_file_changes() {
    let mut rng = rng("hot_reload_watch");
    let mut run = Run::new();
    run.write(BASE);
    run.start(true);
    run.post(30, &mut rng);
    run.write(&with_errors_sink("100ms"));
    let log = run.worker().wait_log("reloaded `", 1);
    assert!(log.contains("the file changed"), "{log}");
    run.errors_sink_on = true;
    run.post(30, &mut rng);
    run.wait_counts();
    assert!(run.worker().terminate().success());
    let errors = std::fs::read_to_string(run.path("errors.ndjson")).unwrap();
    assert_eq!(errors.lines().count(), run.want_errors.len());
}

/// `[log] level` changes without a restart: the new level applies from the
/// reload on (RUST_LOG unset; when set, it wins).
#[test]
fn a_reload_changes_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let port = pick_port();
    let text = |level: &str| format!("{BASE}\n[log]\nlevel = \"{level}\"\n");
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(&pipeline, text("warn")).unwrap();
    let log_path = dir.path().join("sluice.log");
    let mut worker = Worker::new(&pipeline, &log_path)
        .env_remove("RUST_LOG")
        .env("STATE", dir.path().join("state").display().to_string())
        .env(
            "OUTPUT",
            dir.path().join("out.ndjson").display().to_string(),
        )
        .env("PORT", port.to_string());
    worker.start().wait_ready(&Ready::Port(port));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!log().contains("HTTP source listening"), "{}", log());
    std::fs::write(&pipeline, text("info")).unwrap();
    worker.signal("HUP");
    worker.wait_log("HTTP source listening", 1);
    assert!(worker.terminate().success());
}
