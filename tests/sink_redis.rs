//! The Redis sink end to end, against a real Redis (`REDIS_URL`, default
//! redis://127.0.0.1:6379; `tests/services.sh` starts one): W1 counts per
//! country (with a `messages:total` key) and per 1-minute window must equal
//! the oracle exactly after sluice is killed with SIGKILL at random points
//! and restarted, and after the Redis server is stopped mid-stream and
//! started again (sluice keeps running and retries).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use support::services::{redis_cli, redis_hash, redis_url, unique, PrivateRedis};
use support::*;

const EVENTS: u64 = 200_000;

const PIPELINE: &str = r#"
[pipeline]
name = "w1_redis"
[state]
dir = "${STATE_DIR}"
[checkpoint]
interval = "100ms"
[sources.weather]
type = "file"
path = "${INPUT}"
max_events_per_second = ${PACE:-0}
event_time = { field = "ts", max_disorder = "2s" }
[transforms.by_country]
type = "aggregate"
inputs = ["weather"]
group_by = ["country"]
aggregates = { count = "count" }
[transforms.per_minute]
type = "aggregate"
inputs = ["weather"]
group_by = ["country", "weather"]
window = { type = "tumbling", size = "1m" }
emit = "on_close"
aggregates = { count = "count" }
[sinks.counts]
type = "redis"
inputs = ["by_country"]
url = "${REDIS_URL}"
key = "${PREFIX}country:counts"
field = "{country}"
value_field = "count"
totals = "${PREFIX}messages:total"
[sinks.windows]
type = "redis"
inputs = ["per_minute"]
url = "${REDIS_URL}"
key = "${PREFIX}counts:{window_start}"
field = "{country}|{weather}"
value_field = "count"
ttl = "1h"
chunk_size = 200
"#;

struct Run {
    work: tempfile::TempDir,
    pipeline: std::path::PathBuf,
    prefix: String,
    url: String,
}

impl Run {
    fn new(test: &str, url: String) -> Run {
        let work = tempfile::tempdir().unwrap();
        let pipeline = work.path().join("pipeline.toml");
        std::fs::write(&pipeline, PIPELINE).unwrap();
        Run {
            work,
            pipeline,
            prefix: format!("sluice-it:{}:", unique(test)),
            url,
        }
    }

    fn env(&self, input: &Path, pace: u64) -> Vec<(&'static str, String)> {
        vec![
            ("INPUT", input.display().to_string()),
            (
                "STATE_DIR",
                self.work.path().join("state").display().to_string(),
            ),
            ("REDIS_URL", self.url.clone()),
            ("PREFIX", self.prefix.clone()),
            ("PACE", pace.to_string()),
        ]
    }

    fn log(&self) -> std::path::PathBuf {
        self.work.path().join("sluice.log")
    }

    /// Checks every result against the oracle.
    fn assert_exact(&self, w1: &w1::W1, what: &str) {
        let counts = redis_hash(&self.url, &format!("{}country:counts", self.prefix));
        assert_eq!(
            counts,
            w1.by_country,
            "{what}: per-country counts differ (log {})",
            self.log().display()
        );
        let total = redis_cli(
            &self.url,
            &["GET", &format!("{}messages:total", self.prefix)],
        );
        assert_eq!(
            total.trim(),
            w1.events.to_string(),
            "{what}: messages:total differs"
        );
        let mut windows = BTreeMap::new();
        let keys = redis_cli(&self.url, &["KEYS", &format!("{}counts:*", self.prefix)]);
        for key in keys.lines().filter(|k| !k.ends_with(":__epoch")) {
            let start = key.rsplit(':').next().unwrap();
            for (field, n) in redis_hash(&self.url, key) {
                let (country, weather) = field.split_once('|').unwrap();
                windows.insert(format!("{start},{country},{weather}"), n);
            }
        }
        assert_eq!(
            windows.len(),
            w1.by_window.len(),
            "{what}: window count differs"
        );
        assert_eq!(windows, w1.by_window, "{what}: per-window counts differ");
    }

    fn cleanup(&self) {
        let keys = redis_cli(&self.url, &["KEYS", &format!("{}*", self.prefix)]);
        let keys: Vec<&str> = keys.lines().collect();
        for chunk in keys.chunks(500) {
            let mut args = vec!["DEL"];
            args.extend(chunk);
            redis_cli(&self.url, &args);
        }
    }
}

#[test]
fn w1_counts_in_redis_are_exact_after_random_sigkills() {
    let mut rng = rng("w1_counts_in_redis_are_exact_after_random_sigkills");
    let w1 = w1::generate(EVENTS, 5);
    let pace = 100_000;

    let probe = Run::new("probe", redis_url());
    let started = Instant::now();
    assert!(
        spawn_run(&probe.pipeline, &probe.env(&w1.input, pace), &probe.log())
            .wait()
            .unwrap()
            .success()
    );
    let clean = started.elapsed();
    probe.assert_exact(&w1, "straight run");
    probe.cleanup();

    let run = Run::new("kills", redis_url());
    let started = Instant::now();
    let kills = run_with_kills(
        &run.pipeline,
        &run.env(&w1.input, pace),
        &run.log(),
        &mut rng,
        6,
        clean / 3,
    );
    eprintln!(
        "{EVENTS} events, {kills} SIGKILLs, {:.1} s (a clean run: {:.1} s)",
        started.elapsed().as_secs_f64(),
        clean.as_secs_f64()
    );
    assert!(kills >= 3, "only {kills} of 6 kills hit a running sluice");
    run.assert_exact(&w1, &format!("after {kills} kills"));
    run.cleanup();
}

#[test]
fn redis_outage_mid_stream_is_retried_until_it_returns() {
    let w1 = w1::generate(EVENTS, 6);
    let redis = PrivateRedis::start();
    let run = Run::new("outage", redis.url());
    // ~8 s of input, so that the outage lands mid-stream
    let mut child = spawn_run(&run.pipeline, &run.env(&w1.input, 25_000), &run.log());
    std::thread::sleep(Duration::from_secs(2));
    redis.stop();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "sluice exited while Redis was down (log {})",
        run.log().display()
    );
    redis.launch();
    let up = Instant::now();
    let deadline = up + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "sluice did not finish after Redis came back (log {})",
                run.log().display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "sluice failed (log {})",
        run.log().display()
    );
    eprintln!(
        "Redis down for {:.1} s; sluice finished {:.1} s after it came back",
        (up - down).as_secs_f64(),
        up.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(run.log()).unwrap();
    assert!(log.contains("retrying"), "no retry was logged");
    run.assert_exact(&w1, "after the outage");
}
