//! Commands printed by `sluice --help` and the README, run exactly as
//! written.

mod support;

use std::process::Command;

use support::*;

/// Runs `line` with `sh` in the repository, with the `sluice` under test
/// first on the PATH.
fn shell(line: &str) -> std::process::Output {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_sluice"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .args(["-c", line])
        .current_dir(repo())
        .env("PATH", path)
        .output()
        .unwrap()
}

/// The README and `--help` print `sluice test tests/pipelines/*`; the glob
/// also matches `tests/pipelines/generate.py`, which once failed the run.
#[test]
fn sluice_test_with_the_documented_glob_passes() {
    let help = sluice().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let line = "sluice test tests/pipelines/*";
    assert!(help.contains(line), "--help no longer shows `{line}`");
    assert!(readme.contains(line), "the README no longer shows `{line}`");
    let out = shell(line);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("skip tests/pipelines/generate.py"),
        "{stdout}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn sluice_test_without_any_pipeline_fails() {
    let out = shell("sluice test tests/pipelines/generate.py");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no golden pipeline"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
