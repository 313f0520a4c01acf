//! The commands of docs/scaling.md and of the scaling section of
//! docs/deploy.md, run exactly as written: every `sluice validate` line of
//! their `sh` blocks and inline code, and the three `sluice run` lines of
//! the local example.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::markdown::blocks;
use support::repo;

/// `line` run by `sh` in `dir`, with the sluice under test first on the
/// PATH, none of the test's own worker variables, and `env`.
fn shell(dir: &Path, line: &str, env: &[(&str, &str)]) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_sluice"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", line]).current_dir(dir).env("PATH", path);
    for var in ["SLUICE_WORKERS", "SLUICE_WORKER_ID"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn page(name: &str) -> String {
    std::fs::read_to_string(repo().join("docs").join(name)).unwrap()
}

/// The lines of the `sh` blocks of `markdown` that start with `prefix`.
fn sh_lines(markdown: &str, prefix: &str) -> Vec<String> {
    blocks(markdown)
        .into_iter()
        .filter(|b| b.info == "sh")
        .flat_map(|b| b.text.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// The inline code spans of `markdown` that start with `prefix`.
fn inline_commands(markdown: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut outside_blocks = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            outside_blocks.push_str(line);
            outside_blocks.push('\n');
        }
    }
    // Inline code may wrap over a line break, which Markdown reads as a space.
    let text = outside_blocks.replace('\n', " ");
    for (i, span) in text.split('`').enumerate() {
        if i % 2 == 1 && span.starts_with(prefix) {
            out.push(span.to_string());
        }
    }
    out
}

fn assert_ok(line: &str, out: &Output) {
    assert!(
        out.status.success(),
        "`{line}` failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_validate_command_of_the_scaling_docs_succeeds() {
    let scaling = page("scaling.md");
    let deploy = page("deploy.md");
    let mut lines = sh_lines(&scaling, "sluice validate");
    lines.extend(inline_commands(&scaling, "sluice validate --"));
    lines.extend(inline_commands(&deploy, "sluice validate --workers"));
    // The local example validates each of its three workers, and deploy.md
    // the shipped pipeline as a worker of several.
    for worker in 0..3 {
        let line =
            format!("sluice validate --workers 3 --worker {worker} examples/weather-cluster.toml");
        assert!(
            lines.contains(&line),
            "docs/scaling.md no longer shows `{line}`"
        );
    }
    let shipped = "sluice validate --workers 3 --worker 1 deploy/k8s/base/pipeline.toml";
    assert!(
        lines.iter().any(|l| l == shipped),
        "docs/deploy.md no longer shows `{shipped}`: {lines:?}"
    );
    for line in &lines {
        // deploy.md says to set REDIS_URL for the shipped pipeline.
        let out = shell(&repo(), line, &[("REDIS_URL", "redis://127.0.0.1:1/0")])
            .output()
            .unwrap();
        assert_ok(line, &out);
        let worker = line
            .split("--worker ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!("worker {worker} of 3")),
            "{line}: {said}"
        );
    }
}

/// A scratch copy of examples/, so that the runs write no state into the
/// repository.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("cp")
        .arg("-r")
        .arg(repo().join("examples"))
        .arg(dir.path().join("examples"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let _ = std::fs::remove_dir_all(dir.path().join("examples/sluice-state"));
    dir
}

/// Runs `lines` at once in `dir`, each as `sh -c`, and waits until every
/// one exits successfully.
fn run_together(dir: &Path, lines: &[String]) {
    let mut children: Vec<_> = lines
        .iter()
        .map(|line| (line, shell(dir, line, &[]).spawn().unwrap()))
        .collect();
    for (line, child) in &mut children {
        let status = child.wait().unwrap();
        assert!(status.success(), "`{line}`: {status}");
    }
}

/// The example's three workers, started as the page shows, together count
/// every report of examples/data/weather.ndjson once per country, each
/// country at exactly one worker: what one worker counts alone.
#[test]
fn the_three_local_workers_count_like_one() {
    let runs = sh_lines(&page("scaling.md"), "sluice run --workers 3");
    assert_eq!(runs.len(), 3, "{runs:?}");
    let dir = scratch();
    run_together(dir.path(), &runs);
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    let input = std::fs::read_to_string(repo().join("examples/data/weather.ndjson")).unwrap();
    for line in input.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *expected
            .entry(v["country"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let mut counted = std::collections::BTreeMap::<String, u64>::new();
    for worker in 0..3 {
        let out: PathBuf = dir.path().join(format!(
            "sluice-state/weather-cluster-{worker}/counts.ndjson"
        ));
        for (_, record) in support::materialize(&out) {
            let country = record["country"].as_str().unwrap().to_string();
            let n = record["reports"].as_u64().unwrap();
            assert!(
                counted.insert(country.clone(), n).is_none(),
                "{country} counted by two workers"
            );
        }
    }
    assert_eq!(counted, expected);
}

/// Counts per country in `text` (weather reports, one JSON per line).
fn country_counts(text: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *out.entry(v["country"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

/// The page's rescale: after the three local workers ended, the two
/// `sluice run --workers 2` lines, as written, take over every key group
/// from the remote copy. New reports given to the two then count on top of
/// what the three counted: every country's final count is its count over
/// all reports, although most countries changed owner.
#[test]
fn the_local_workers_rescale_from_three_to_two_and_count_on() {
    let page = page("scaling.md");
    let three = sh_lines(&page, "sluice run --workers 3");
    let two = sh_lines(&page, "sluice run --workers 2");
    assert_eq!((three.len(), two.len()), (3, 2), "{three:?} {two:?}");
    let dir = scratch();
    run_together(dir.path(), &three);
    // The page's `sluice release` line, as written: the three stopped
    // cleanly, so worker 2 of 3 has released its key groups already.
    let release = sh_lines(&page, "sluice release");
    assert_eq!(release.len(), 1, "{release:?}");
    let out = shell(dir.path(), &release[0], &[]).output().unwrap();
    assert_ok(&release[0], &out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("worker 2 of 3 already released its key groups"),
        "{said}"
    );
    // More reports for the two remaining workers' files: every line of the
    // whole input once more, split between them.
    let data = dir.path().join("examples/data");
    let all = std::fs::read_to_string(data.join("weather.ndjson")).unwrap();
    let lines: Vec<&str> = all.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    for (worker, part) in [(0, first), (1, second)] {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join(format!("weather-part-{worker}.ndjson")))
            .unwrap();
        for l in part {
            writeln!(f, "{l}").unwrap();
        }
    }
    let sizes: Vec<u64> = (0..2)
        .map(|w| {
            std::fs::metadata(
                dir.path()
                    .join(format!("sluice-state/weather-cluster-{w}/counts.ndjson")),
            )
            .map_or(0, |m| m.len())
        })
        .collect();
    run_together(dir.path(), &two);
    // What the two wrote: the changes after the three runs' output.
    let mut counted = std::collections::BTreeMap::<String, u64>::new();
    for (w, size) in sizes.iter().enumerate() {
        let path = dir
            .path()
            .join(format!("sluice-state/weather-cluster-{w}/counts.ndjson"));
        let text = std::fs::read(&path).unwrap();
        let tail = dir.path().join(format!("tail-{w}.ndjson"));
        std::fs::write(&tail, &text[*size as usize..]).unwrap();
        for (_, record) in support::materialize(&tail) {
            let country = record["country"].as_str().unwrap().to_string();
            let n = record["reports"].as_u64().unwrap();
            assert!(
                counted.insert(country.clone(), n).is_none(),
                "{country} counted by both workers"
            );
        }
    }
    let expected: std::collections::BTreeMap<String, u64> = country_counts(&all)
        .into_iter()
        .map(|(c, n)| (c, 2 * n))
        .collect();
    assert_eq!(counted, expected);
}
