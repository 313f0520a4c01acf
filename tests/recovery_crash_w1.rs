//! W1 (the standard weather workload) through sluice while it is killed
//! with SIGKILL at random points and restarted: the final per-country and
//! per-window counts must equal the oracle (bench/w1/ref_counts.py)
//! exactly — nothing lost, nothing counted twice.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const EVENTS: &str = "300000";

fn shared_bench() -> std::path::PathBuf {
    repo().join("bench/w1")
}

/// Last line per key wins (results are absolute upserts).
fn materialize_records(path: &Path, key: &[&str]) -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let k: Vec<String> = key
            .iter()
            .map(|f| v[*f].to_string().trim_matches('"').to_string())
            .collect();
        out.insert(k.join(","), v["count"].as_i64().unwrap());
    }
    out
}

fn oracle(csv: &Path) -> BTreeMap<String, i64> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, n) = l.rsplit_once(',').unwrap();
            (k.to_string(), n.parse().unwrap())
        })
        .collect()
}

#[test]
fn w1_counts_are_exact_after_random_sigkills() {
    if !shared_bench().join("gen_weather.py").exists() {
        panic!("bench/w1/gen_weather.py is missing");
    }
    let mut rng = rng("w1_counts_are_exact_after_random_sigkills");
    let data = tempfile::tempdir().unwrap();
    let input = data.path().join("w1.jsonl");
    let ok = Command::new("python3")
        .arg(shared_bench().join("gen_weather.py"))
        .args([EVENTS, "11"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(Command::new("python3")
        .arg(shared_bench().join("ref_counts.py"))
        .arg(&input)
        .arg(data.path().join("ref"))
        .status()
        .unwrap()
        .success());
    for (workload, key, csv) in [
        ("w1a", vec!["country"], "w1a.csv"),
        ("w1b", vec!["window_start", "country", "weather"], "w1b.csv"),
    ] {
        let pipeline = repo().join(format!("bench/pipelines/{workload}.toml"));
        let work = tempfile::tempdir().unwrap();
        let env = |dir: &Path| {
            vec![
                ("BENCH_INPUT", input.display().to_string()),
                ("BENCH_STATE", dir.join("state").display().to_string()),
                ("BENCH_OUTPUT", dir.join("out.ndjson").display().to_string()),
            ]
        };
        let probe = tempfile::tempdir().unwrap();
        let started = Instant::now();
        assert!(
            spawn_run(&pipeline, &env(probe.path()), &probe.path().join("log"))
                .wait()
                .unwrap()
                .success()
        );
        let clean = started.elapsed().max(Duration::from_millis(50));
        let want = oracle(&data.path().join("ref").join(csv));
        assert_eq!(
            materialize_records(&probe.path().join("out.ndjson"), &key),
            want,
            "{workload}: straight run differs"
        );

        let log = work.path().join("log");
        let kills = run_with_kills(&pipeline, &env(work.path()), &log, &mut rng, 8, clean / 4);
        assert!(
            kills >= 4,
            "{workload}: only {kills} of 8 kills hit a running process"
        );
        let got = materialize_records(&work.path().join("out.ndjson"), &key);
        assert_eq!(
            got.len(),
            want.len(),
            "{workload}: key count differs (log {})",
            log.display()
        );
        assert_eq!(
            got,
            want,
            "{workload}: counts differ after {kills} kills (log {})",
            log.display()
        );
    }
}
