//! Golden pipelines (tests/pipelines/<name>): each runs straight through
//! (`sluice test`) and again with the process killed by SIGKILL at random
//! points and restarted; the final materialised results and dead letters
//! must equal the expected ones exactly.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

fn golden_dirs() -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(repo().join("tests/pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("pipeline.toml").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 6, "golden pipelines missing");
    dirs
}

#[test]
fn golden_pipelines_straight_through() {
    let out = sluice().arg("test").args(golden_dirs()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{} passed, 0 failed", golden_dirs().len())),
        "{stdout}"
    );
}

fn crash_one(dir: &Path, rng: &mut impl rand::Rng) -> usize {
    let work = tempfile::tempdir().unwrap();
    let env = vec![
        ("INPUT", dir.join("input.ndjson").display().to_string()),
        (
            "OUTPUT",
            work.path().join("output.ndjson").display().to_string(),
        ),
        ("STATE_DIR", work.path().join("state").display().to_string()),
        (
            "DEAD_LETTERS",
            work.path().join("dead.ndjson").display().to_string(),
        ),
        // ~0.3-0.8 s per run, so that kills land between checkpoints, sink
        // writes and acknowledgements
        ("PACE", "8000".to_string()),
    ];
    let log = work.path().join("sluice.log");
    // How long a clean run takes here, to aim the kills inside it.
    let probe = tempfile::tempdir().unwrap();
    let mut probe_env = env.clone();
    probe_env[1].1 = probe.path().join("o").display().to_string();
    probe_env[2].1 = probe.path().join("s").display().to_string();
    probe_env[3].1 = probe.path().join("d").display().to_string();
    let started = Instant::now();
    assert!(spawn_run(
        &dir.join("pipeline.toml"),
        &probe_env,
        &probe.path().join("log")
    )
    .wait()
    .unwrap()
    .success());
    let clean = started.elapsed().max(Duration::from_millis(20));

    let kills = run_with_kills(&dir.join("pipeline.toml"), &env, &log, rng, 6, clean / 3);
    let got = canonical_values(materialize(&work.path().join("output.ndjson")).values());
    let want = canonical_file(&dir.join("expected.ndjson"));
    assert_eq!(
        got,
        want,
        "{}: results differ after {kills} kills (log {})",
        dir.display(),
        log.display()
    );
    let expected_dl = dir.join("expected_dead_letters.ndjson");
    let dead_path = work.path().join("dead.ndjson");
    assert!(
        duplicate_lines(&dead_path).is_empty(),
        "{}: a dead letter was written twice",
        dir.display()
    );
    if expected_dl.exists() {
        let got: Vec<String> = {
            let mut v: Vec<String> = materialize(&dead_path)
                .values()
                .map(|r| {
                    serde_json::json!({"error_type": r["error_type"], "offset": r["offset"]})
                        .to_string()
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            got,
            canonical_file(&expected_dl),
            "{}: dead letters differ",
            dir.display()
        );
    }
    if dir.ends_with("filter_map_events") {
        // appends (inserts) must not be written twice either
        assert!(
            duplicate_lines(&work.path().join("output.ndjson")).is_empty(),
            "{}: an event was written twice",
            dir.display()
        );
    }
    kills
}

#[test]
fn golden_pipelines_survive_sigkill() {
    let mut rng = rng("golden_pipelines_survive_sigkill");
    let mut total_kills = 0;
    for dir in golden_dirs() {
        for _round in 0..2 {
            total_kills += crash_one(&dir, &mut rng);
        }
    }
    // The kills must really have interrupted running processes.
    assert!(
        total_kills >= 12,
        "only {total_kills} kills hit a running sluice"
    );
}
