//! The Kafka source against a real Kafka-protocol broker (tansu, started
//! by tests/kafka.sh): W1 events in a fresh 3-partition topic are counted
//! per country while sluice is killed with SIGKILL at random points and
//! restarted; the counts must equal the oracle (bench/w1/
//! ref_counts.py) exactly, and the group's committed offsets must end at
//! the topics' end offsets. Events are produced one record per batch: tansu
//! loses data when a consumer resumes inside a multi-record batch.
#![cfg(feature = "kafka")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::kafka::{
    broker, committed, create_topic, delete_topics, end_offsets, produce_lines, unique_topic,
};
use support::*;

const EVENTS: u64 = 100_000;
const PARTITIONS: i32 = 3;

const PIPELINE: &str = r#"
[pipeline]
name = "kafka_w1"

[state]
dir = "${STATE_DIR}"

[checkpoint]
interval = "100ms"

[sources.weather]
type = "kafka"
brokers = ["${KAFKA_BROKERS}"]
topics = ["${TOPIC}"]
group_id = "${GROUP}"
group_instance_id = "${INSTANCE}"
poll_timeout = "20ms"
close_timeout = "5s"

[transforms.by_country]
type = "aggregate"
inputs = ["weather"]
group_by = ["country"]
aggregates = { count = "count" }

[sinks.out]
type = "file"
inputs = ["by_country"]
path = "${OUTPUT}"
format = "changes"
"#;

struct Setup {
    work: tempfile::TempDir,
    pipeline: PathBuf,
    env: Vec<(&'static str, String)>,
    brokers: String,
    topic: String,
    group: String,
    w1: w1::W1,
}

/// A fresh topic holding `events` W1 events, and a pipeline reading it.
fn setup(test: &str, events: u64) -> Option<Setup> {
    let brokers = broker()?;
    let w1 = w1::generate(events, 17);
    let topic = unique_topic(test);
    create_topic(&brokers, &topic, PARTITIONS);
    let started = Instant::now();
    let text = std::fs::read_to_string(&w1.input).unwrap();
    let n = produce_lines(&brokers, &topic, PARTITIONS, text.lines());
    assert_eq!(n, events);
    eprintln!("{test}: produced {n} events in {:?}", started.elapsed());
    let work = tempfile::tempdir().unwrap();
    let pipeline = work.path().join("pipeline.toml");
    std::fs::write(&pipeline, PIPELINE).unwrap();
    let p = |name: &str| work.path().join(name).display().to_string();
    let group = format!("{topic}-group");
    let env = vec![
        ("KAFKA_BROKERS", brokers.clone()),
        ("TOPIC", topic.clone()),
        ("GROUP", group.clone()),
        ("INSTANCE", format!("{topic}-worker-0")),
        ("STATE_DIR", p("state")),
        ("OUTPUT", p("out.ndjson")),
    ];
    Some(Setup {
        work,
        pipeline,
        env,
        brokers,
        topic,
        group,
        w1,
    })
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn counts(&self) -> std::collections::BTreeMap<String, i64> {
        Self::by_country(materialize(&self.path("out.ndjson")))
    }

    /// Progress while sluice may be running or just killed.
    fn counts_so_far(&self) -> std::collections::BTreeMap<String, i64> {
        Self::by_country(materialize_so_far(&self.path("out.ndjson")))
    }

    fn by_country(
        table: std::collections::BTreeMap<String, serde_json::Value>,
    ) -> std::collections::BTreeMap<String, i64> {
        table
            .into_values()
            .map(|r| {
                (
                    r["country"].as_str().unwrap().to_string(),
                    r["count"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    fn assert_offsets_committed_to_the_end(&self) {
        let ends = end_offsets(&self.brokers, &self.topic, PARTITIONS).unwrap();
        let got = committed(&self.brokers, &self.group, &self.topic, PARTITIONS);
        let want: Vec<Option<i64>> = ends.iter().map(|&e| Some(e)).collect();
        assert_eq!(got, want, "committed offsets vs end offsets");
        assert_eq!(ends.iter().sum::<i64>(), self.w1.events as i64);
    }

    fn log(&self) -> PathBuf {
        self.path("sluice.log")
    }
}

fn show_log(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Like `run_with_kills`, but aimed so that kills land mid-stream on a
/// machine of any speed (a run reads the whole topic in well under a
/// second once it has joined the group): the first run is killed a random
/// 0-4 s after it starts (usually while joining), each later one a random
/// 0-300 ms after its first new output. Returns the events counted after
/// each kill.
fn run_with_kills_mid_stream(s: &Setup, rng: &mut impl rand::Rng, kills: usize) -> Vec<i64> {
    let mut progress = Vec::new();
    for k in 0..kills {
        let done: i64 = s.counts_so_far().values().sum();
        let mut child = spawn_run(&s.pipeline, &s.env, &s.log());
        let started = Instant::now();
        let first_delay = Duration::from_millis(rng.random_range(0..4_000));
        let deadline = started + Duration::from_secs(90);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if k == 0 && started.elapsed() >= first_delay {
                break;
            }
            if k > 0 && s.counts_so_far().values().sum::<i64>() > done {
                // After progress, the random kill point is the subject.
                std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no progress within 90 s:\n{}",
                show_log(&s.log())
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "sluice failed:\n{}", show_log(&s.log()));
        } else {
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();
        progress.push(s.counts_so_far().values().sum());
    }
    let status = spawn_run(&s.pipeline, &s.env, &s.log()).wait().unwrap();
    assert!(
        status.success(),
        "the final run failed:\n{}",
        show_log(&s.log())
    );
    progress
}

#[test]
fn kafka_w1_counts_are_exact_after_random_sigkills() {
    let test = "kafka_w1_sigkill";
    let Some(s) = setup(test, EVENTS) else { return };
    let mut rng = rng(test);
    let started = Instant::now();
    let progress = run_with_kills_mid_stream(&s, &mut rng, 5);
    eprintln!(
        "{test}: events counted after each SIGKILL: {progress:?}; all runs took {:?}",
        started.elapsed()
    );
    let counts = s.counts();
    if counts != s.w1.by_country {
        panic!(
            "counts differ from the oracle ({} vs {} countries, {} vs {EVENTS} events); log tail:\n{}",
            counts.len(),
            s.w1.by_country.len(),
            counts.values().sum::<i64>(),
            show_log(&s.log())
        );
    }
    s.assert_offsets_committed_to_the_end();
    // The runs resumed from checkpoints: progress survived the kills.
    assert!(
        progress.iter().any(|&n| n > 0 && n < EVENTS as i64),
        "no kill landed mid-stream: {progress:?}"
    );
    delete_topics(&s.brokers, &[&s.topic]);
}

/// `sluice run` (unbounded) until every event is counted, then SIGTERM:
/// the source waits for the checkpoint covering what it read and commits
/// its offsets before exiting.
#[test]
fn kafka_graceful_stop_commits_the_end_offsets() {
    let test = "kafka_graceful_stop";
    let Some(s) = setup(test, 20_000) else { return };
    let log = std::fs::File::create(s.log()).unwrap();
    let mut cmd = sluice();
    cmd.arg("run")
        .arg(&s.pipeline)
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in &s.env {
        cmd.env(k, v);
    }
    cmd.env("RUST_LOG", "info");
    let mut child: Child = cmd.spawn().expect("start sluice");
    let deadline = Instant::now() + Duration::from_secs(90);
    while s.counts_so_far() != s.w1.by_country {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "sluice exited early ({status}); log:\n{}",
                show_log(&s.log())
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("counts incomplete after 90 s; log:\n{}", show_log(&s.log()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stop = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", show_log(&s.log()));
    eprintln!("{test}: stopped {:?} after SIGTERM", stop.elapsed());
    s.assert_offsets_committed_to_the_end();
    delete_topics(&s.brokers, &[&s.topic]);
}
