//! The PostgreSQL sink end to end, against a real PostgreSQL
//! (`POSTGRES_URL`, default postgres://postgres@127.0.0.1:5432/test;
//! `tests/services.sh` starts one): W1 counts upserted per country and per
//! 1-minute window, and the raw events appended by id, must equal the
//! oracle exactly (no event stored twice) after sluice is killed with
//! SIGKILL at random points and restarted, and after the database is shut
//! down mid-stream and started again (sluice keeps running and retries).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use support::services::{postgres_url, psql, unique, PrivatePostgres};
use support::*;

const EVENTS: u64 = 200_000;

const PIPELINE: &str = r#"
[pipeline]
name = "w1_postgres"
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
type = "postgres"
inputs = ["by_country"]
url = "${POSTGRES_URL}"
table = "${TABLE}_country"
key = ["country"]
create_table = true
[sinks.windows]
type = "postgres"
inputs = ["per_minute"]
url = "${POSTGRES_URL}"
table = "${TABLE}_windows"
key = ["window_start", "country", "weather"]
create_table = true
batch_size = 300
[sinks.events]
type = "postgres"
inputs = ["weather"]
url = "${POSTGRES_URL}"
table = "${TABLE}_events"
mode = "append"
columns = { country = "country", weather = "weather", ts = "ts" }
create_table = true
"#;

struct Run {
    work: tempfile::TempDir,
    pipeline: std::path::PathBuf,
    table: String,
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
            table: format!("sluice_it_{}", unique(test)),
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
            ("POSTGRES_URL", self.url.clone()),
            ("TABLE", self.table.clone()),
            ("PACE", pace.to_string()),
        ]
    }

    fn log(&self) -> std::path::PathBuf {
        self.work.path().join("sluice.log")
    }

    fn map(&self, sql: &str) -> BTreeMap<String, i64> {
        psql(&self.url, sql)
            .into_iter()
            .map(|mut row| {
                let n = row.pop().unwrap().parse().unwrap();
                (row.join(","), n)
            })
            .collect()
    }

    /// Checks every table against the oracle.
    fn assert_exact(&self, w1: &w1::W1, what: &str) {
        let t = &self.table;
        let log = self.log();
        let counts = self.map(&format!("SELECT country, count FROM {t}_country"));
        assert_eq!(
            counts,
            w1.by_country,
            "{what}: upserted per-country counts differ (log {})",
            log.display()
        );
        let windows = self.map(&format!(
            "SELECT window_start, country, weather, count FROM {t}_windows"
        ));
        assert_eq!(
            windows.len(),
            w1.by_window.len(),
            "{what}: window count differs"
        );
        assert_eq!(
            windows, w1.by_window,
            "{what}: upserted per-window counts differ"
        );
        let rows = psql(
            &self.url,
            &format!("SELECT count(*), count(DISTINCT event_id) FROM {t}_events"),
        );
        assert_eq!(
            rows[0],
            [w1.events.to_string(), w1.events.to_string()],
            "{what}: appended events"
        );
        let appended = self.map(&format!(
            "SELECT country, count(*) FROM {t}_events GROUP BY country"
        ));
        assert_eq!(
            appended, w1.by_country,
            "{what}: appended events per country differ"
        );
    }

    fn cleanup(&self) {
        let t = &self.table;
        psql(
            &self.url,
            &format!("DROP TABLE IF EXISTS {t}_country, {t}_windows, {t}_events"),
        );
    }
}

#[test]
fn w1_in_postgres_is_exact_after_random_sigkills() {
    let mut rng = rng("w1_in_postgres_is_exact_after_random_sigkills");
    let w1 = w1::generate(EVENTS, 7);
    let pace = 100_000;

    let probe = Run::new("probe", postgres_url());
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

    let run = Run::new("kills", postgres_url());
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
fn postgres_outage_mid_stream_is_retried_until_it_returns() {
    let w1 = w1::generate(EVENTS, 8);
    let pg = PrivatePostgres::start();
    let run = Run::new("outage", pg.url());
    // ~8 s of input, so that the outage lands mid-stream
    let mut child = spawn_run(&run.pipeline, &run.env(&w1.input, 25_000), &run.log());
    std::thread::sleep(Duration::from_secs(2));
    pg.stop();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "sluice exited while PostgreSQL was down (log {})",
        run.log().display()
    );
    pg.launch();
    let up = Instant::now();
    let deadline = up + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "sluice did not finish after PostgreSQL came back (log {})",
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
        "PostgreSQL down for {:.1} s; sluice finished {:.1} s after it came back",
        (up - down).as_secs_f64(),
        up.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(run.log()).unwrap();
    assert!(log.contains("retrying"), "no retry was logged");
    run.assert_exact(&w1, "after the outage");
}
