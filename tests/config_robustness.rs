//! No pipeline file and no event makes `sluice` panic: out-of-range
//! durations, sizes and event times are clear errors or dead letters.

mod support;

use std::path::Path;

use support::*;

fn pipeline(dir: &Path, checkpoint: &str, window: &str) -> std::path::PathBuf {
    let text = format!(
        r#"[state]
dir = "{state}"

[checkpoint]
{checkpoint}

[sources.events]
type = "file"
path = "{input}"
event_time = {{ field = "ts" }}

[transforms.per_window]
type = "aggregate"
inputs = ["events"]
window = {window}
aggregates = {{ n = "count" }}

[sinks.out]
type = "file"
inputs = ["per_window"]
path = "{output}"
format = "changes"
"#,
        state = dir.join("state").display(),
        input = dir.join("in.ndjson").display(),
        output = dir.join("out.ndjson").display(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn assert_clean_error(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "{err}");
}

/// Regression: `interval = "600000000000000000m"` made `validate` and `run`
/// panic in `Duration::from_secs_f64`.
#[test]
fn huge_durations_are_errors_in_validate_and_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), "").unwrap();
    let p = pipeline(
        dir.path(),
        "interval = \"600000000000000000m\"",
        "{ type = \"tumbling\", size = \"1m\" }",
    );
    let validate = sluice().arg("validate").arg(&p).output().unwrap();
    assert_clean_error(
        &validate,
        "pipeline.toml:5:12: in `checkpoint.interval`: duration `600000000000000000m` is too long: the maximum is 36500d (100 years)",
    );
    let run = sluice().args(["run", "--once"]).arg(&p).output().unwrap();
    assert_clean_error(&run, "the maximum is 36500d");
    // A sum of durations each below the maximum.
    let p = pipeline(
        dir.path(),
        "interval = \"1s\"",
        "{ type = \"hopping\", size = \"30000d30000d\", slide = \"1d\" }",
    );
    let validate = sluice().arg("validate").arg(&p).output().unwrap();
    assert_clean_error(&validate, "duration `30000d30000d` is too long");
}

/// Regression: an event time near `i64::MIN` overflowed the window
/// alignment in the processor thread (a panic in debug builds, a wrapped
/// window start in release ones).
#[test]
fn an_event_time_out_of_range_is_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.ndjson"),
        "{\"ts\":-9223372036854775807}\n{\"ts\":1000}\n{\"ts\":9223372036854775807}\n",
    )
    .unwrap();
    let p = pipeline(
        dir.path(),
        "interval = \"1s\"",
        "{ type = \"hopping\", size = \"21s\", slide = \"7s\" }",
    );
    let run = sluice().args(["run", "--once"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    let dead: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("state/dead_letters.ndjson"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert_eq!(d["error_type"], "bad_event_time", "{d}");
        assert!(
            d["reason"].as_str().unwrap().contains("out of range"),
            "{d}"
        );
    }
    let out = materialize(&dir.path().join("out.ndjson"));
    assert_eq!(
        out.len(),
        3,
        "the good event is in 3 hopping windows: {out:?}"
    );
}
