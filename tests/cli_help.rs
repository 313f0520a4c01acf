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

/// A scratch copy of what the documented commands read (examples/ and the
/// golden pipelines), so that they run exactly as written without writing
/// state into the repository.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &str| {
        let ok = Command::new("cp")
            .args(["-r", &repo().join(from).display().to_string()])
            .arg(dir.path().join(from))
            .status()
            .unwrap()
            .success();
        assert!(ok, "cp {from}");
    };
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    copy("examples");
    copy("tests/pipelines");
    std::fs::copy(
        repo().join("examples/weather-file.toml"),
        dir.path().join("pipeline.toml"),
    )
    .unwrap();
    dir
}

fn shell_in(dir: &std::path::Path, line: &str) -> std::process::Output {
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
        .current_dir(dir)
        .env("PATH", path)
        .output()
        .unwrap()
}

/// The commands use examples/weather-file.toml, whose admin server listens
/// on 127.0.0.1:9898: one test runs them one after the other.
#[test]
fn the_weather_file_example_works_as_documented() {
    help_examples_run_as_written();
    a_second_run_over_the_same_input_says_why_nothing_happened();
    a_relative_path_error_names_the_working_directory();
}

/// Every example command of `sluice --help` runs, as printed, and succeeds.
fn help_examples_run_as_written() {
    let help = sluice().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let commands: Vec<&str> = help
        .lines()
        .filter_map(|l| l.strip_prefix("  sluice "))
        .map(|l| l.split("  ").next().unwrap().trim())
        .collect();
    assert!(commands.len() >= 5, "{help}");
    let dir = scratch();
    for command in &commands {
        let line = format!("sluice {command}");
        let out = shell_in(dir.path(), &line);
        assert!(
            out.status.success(),
            "`{line}` failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A second run of the bounded example says why it counted nothing.
fn a_second_run_over_the_same_input_says_why_nothing_happened() {
    let dir = scratch();
    let first = shell_in(dir.path(), "sluice run examples/weather-file.toml");
    assert!(first.status.success());
    assert!(!String::from_utf8_lossy(&first.stderr).contains("nothing new to read"));
    let second = shell_in(dir.path(), "sluice run examples/weather-file.toml");
    assert!(second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("nothing new to read")
            && err.contains("sluice replay examples/weather-file.toml"),
        "{err}"
    );
}

/// Run from the wrong directory, the error says where a relative path was
/// looked for.
fn a_relative_path_error_names_the_working_directory() {
    let dir = scratch();
    let out = shell_in(&dir.path().join("examples"), "sluice run weather-file.toml");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relative path is resolved against the working directory"),
        "{err}"
    );
}

/// `sluice graph`, as `--help` and docs/operations/status-page.md show it:
/// every `sluice graph` command in a `sh` block of that page is run as
/// written, and its output must equal the code block that follows.
#[test]
fn sluice_graph_commands_print_what_the_docs_show() {
    let help = sluice().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let line = "sluice graph examples/weather-file.toml";
    assert!(help.contains(line), "--help no longer shows `{line}`");
    let doc = std::fs::read_to_string(repo().join("docs/operations/status-page.md")).unwrap();
    // the fenced blocks, in order: (info string, body)
    let mut blocks = Vec::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let (info, body) = after.split_once('\n').unwrap();
        let end = body.find("```").unwrap();
        blocks.push((info.trim(), &body[..end]));
        rest = &body[end + 3..];
    }
    let mut ran = Vec::new();
    for (i, (info, body)) in blocks.iter().enumerate() {
        if *info != "sh" || !body.starts_with("sluice graph") {
            continue;
        }
        let command = body.trim_end();
        let out = shell(command);
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = blocks
            .get(i + 1)
            .unwrap_or_else(|| panic!("no output shown after `{command}`"))
            .1;
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{command}");
        ran.push(command.to_string());
    }
    assert!(ran.iter().any(|c| c == line), "{ran:?}");
    assert!(ran.iter().any(|c| c.contains("--format dot")), "{ran:?}");
}

#[test]
fn sluice_graph_reports_a_broken_pipeline_instead_of_a_graph() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[sources.a]\ntype = \"stdin\"\n[sinks.b]\ntype = \"stdout\"\ninputs = [\"nope\"]\n",
    )
    .unwrap();
    let out = sluice().arg("graph").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`nope`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's `sluice validate` example shows lines that the command
/// really prints for the bundled broken file.
#[test]
fn the_readme_validate_example_matches_what_validate_prints() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let shown: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("error: docs/examples/broken.toml:"))
        .collect();
    assert!(shown.len() >= 2, "the README shows no validate output");
    let out = shell("sluice validate docs/examples/broken.toml");
    assert_eq!(out.status.code(), Some(2));
    let printed = String::from_utf8_lossy(&out.stderr);
    for line in shown {
        assert!(
            printed.lines().any(|l| l == line),
            "the README shows `{line}`, validate printed:\n{printed}"
        );
    }
}
