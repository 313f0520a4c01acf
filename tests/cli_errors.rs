//! How `sluice run` reports an error that stops a pipeline: which
//! component failed, then each cause once, down to the operating system's
//! words (`error: sink `out` failed: cannot stat ...: Not a directory`).

mod support;

use std::path::Path;

use support::sluice;

/// A pipeline copying `in.ndjson` to `out_path` with its state in `state`.
fn pipeline(dir: &Path, state: &Path, out_path: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("in.ndjson"), "{\"id\":1}\n").unwrap();
    let text = format!(
        r#"
[pipeline]
name = "errors"
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
        state = state.display(),
        input = dir.join("in.ndjson").display(),
        out = out_path.display(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `sluice run --once pipeline` exits with 1, and its last error line
/// starts with `expected` and ends with the I/O error "Not a directory",
/// shown once.
fn assert_fails_with(pipeline: &Path, expected: &str) {
    let out = sluice()
        .args(["run", "--once"])
        .arg(pipeline)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"));
    assert!(line.starts_with(expected), "{line}");
    assert_eq!(line.matches("Not a directory").count(), 1, "{line}");
}

/// A regular file where a directory is expected below `dir`.
fn blocker(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("blocker");
    std::fs::write(&path, "not a directory").unwrap();
    path
}

#[test]
fn a_sink_failing_on_io_names_the_sink_and_the_io_error_once() {
    let dir = tempfile::tempdir().unwrap();
    // The sink's first look at its output (before restoring) fails.
    let out = blocker(dir.path()).join("out.ndjson");
    let p = pipeline(dir.path(), &dir.path().join("state"), &out);
    assert_fails_with(
        &p,
        &format!("error: sink `out` failed: cannot stat {}: ", out.display()),
    );
}

#[test]
fn a_state_directory_that_cannot_be_created_shows_the_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = blocker(dir.path()).join("state");
    let p = pipeline(dir.path(), &state, &dir.path().join("out.ndjson"));
    assert_fails_with(
        &p,
        &format!(
            "error: cannot create the state directory {}: ",
            state.display()
        ),
    );
}
