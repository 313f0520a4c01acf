//! Log output as collectors see it: no colour codes when stderr is not a
//! terminal, and one JSON object per line with `--log-format json` or
//! `SLUICE_LOG_FORMAT=json`.

mod support;

use std::path::{Path, PathBuf};

use support::*;

/// A small file pipeline in `dir`; returns its path.
fn file_pipeline(dir: &Path) -> PathBuf {
    let input = dir.join("in.ndjson");
    std::fs::write(&input, "{\"k\":\"a\"}\n{\"k\":\"b\"}\nnot json\n").unwrap();
    let pipeline = dir.join("logs.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[pipeline]
name = "logs_demo"
[state]
dir = "{state}"
[sources.input]
type = "file"
path = "{input}"
[sinks.out]
type = "file"
inputs = ["input"]
path = "{out}"
"#,
            state = dir.join("state").display(),
            input = input.display(),
            out = dir.join("out.ndjson").display(),
        ),
    )
    .unwrap();
    pipeline
}

/// Runs `sluice <args> run --once <pipeline>` with `env`; returns stderr.
fn run_once(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = file_pipeline(dir.path());
    let mut cmd = sluice();
    cmd.args(args).args(["run", "--once"]).arg(&pipeline);
    cmd.env_remove("NO_COLOR")
        .env_remove("SLUICE_LOG_FORMAT")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// Every line is a JSON object with a level, a timestamp and a message;
/// the lines of the run name the pipeline.
fn assert_json_lines(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "too few log lines: {stderr}");
    let mut with_pipeline = 0;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.len() >= 20),
            "{line}"
        );
        assert!(v["fields"]["message"].is_string(), "{line}");
        let in_span = v["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["pipeline"] == "logs_demo"));
        if in_span || v["fields"]["pipeline"] == "logs_demo" {
            with_pipeline += 1;
        }
    }
    assert_eq!(
        with_pipeline,
        lines.len(),
        "lines without the pipeline: {stderr}"
    );
    // A source's lines carry its name.
    assert!(
        lines.iter().any(|l| l.contains("\"source\":\"input\"")),
        "{stderr}"
    );
}

#[test]
fn text_logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let stderr = run_once(&[], &[]);
    assert!(
        stderr.contains("stopped at the end of its input"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("\x1b["),
        "ANSI codes in a pipe: {stderr:?}"
    );
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    assert_json_lines(&run_once(&["--log-format", "json"], &[]));
    // Global: also accepted after the subcommand.
    let dir = tempfile::tempdir().unwrap();
    let pipeline = file_pipeline(dir.path());
    let out = sluice()
        .args(["run", "--once", "--log-format", "json"])
        .arg(&pipeline)
        .env_remove("SLUICE_LOG_FORMAT")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_json_lines(&String::from_utf8(out.stderr).unwrap());
}

#[test]
fn sluice_log_format_env_selects_json() {
    assert_json_lines(&run_once(&[], &[("SLUICE_LOG_FORMAT", "json")]));
    // The flag wins over the variable.
    let text = run_once(&["--log-format", "text"], &[("SLUICE_LOG_FORMAT", "json")]);
    assert!(serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).is_err());
}

#[test]
fn unknown_log_format_is_refused() {
    let out = sluice()
        .args(["--log-format", "yaml", "validate", "x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("possible values: text, json"), "{err}");
}
