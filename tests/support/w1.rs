//! The W1 weather workload for sink tests: generated input
//! (bench/w1/gen_weather.py) and the oracle's exact counts
//! (bench/w1/ref_counts.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct W1 {
    pub dir: tempfile::TempDir,
    pub input: PathBuf,
    pub events: u64,
    /// country -> count
    pub by_country: BTreeMap<String, i64>,
    /// "window_start_ms,country,weather" -> count
    pub by_window: BTreeMap<String, i64>,
}

fn bench() -> PathBuf {
    super::repo().join("bench/w1")
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

/// Generates `events` W1 events with `seed` and computes the oracle.
pub fn generate(events: u64, seed: u64) -> W1 {
    assert!(
        bench().join("gen_weather.py").exists(),
        "bench/w1/gen_weather.py is missing"
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("w1.jsonl");
    let ok = Command::new("python3")
        .arg(bench().join("gen_weather.py"))
        .args([events.to_string(), seed.to_string()])
        .arg(&input)
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = Command::new("python3")
        .arg(bench().join("ref_counts.py"))
        .arg(&input)
        .arg(dir.path().join("ref"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    W1 {
        by_country: oracle(&dir.path().join("ref/w1a.csv")),
        by_window: oracle(&dir.path().join("ref/w1b.csv")),
        input,
        events,
        dir,
    }
}
