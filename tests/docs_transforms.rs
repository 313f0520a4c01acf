//! Every snippet of docs/transforms.md is checked:
//! - each ```toml block is validated by `sluice validate` (a fragment of
//!   `[transforms...]` tables is completed into a pipeline first, with the
//!   source and sink appended after it so that its line numbers stay);
//! - each ```toml,error block must fail, and the ```text block after it
//!   lists the expected error lines;
//! - each command of a ```sh block is run exactly as written from the
//!   repository root (```sh,fails: it must fail), and when a ```text block
//!   follows, its output must be exactly that text.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::repo;

use support::markdown::blocks;

/// A fragment of transforms completed into a pipeline: a file source
/// `events` with event time and a file sink reading every transform no
/// other one reads, appended after the fragment.
fn complete(snippet: &str) -> String {
    if snippet.contains("[sources.") {
        return snippet.to_string();
    }
    let table: toml::Table = toml::from_str(snippet).expect("snippet is TOML");
    let transforms = table["transforms"].as_table().expect("[transforms.*]");
    let read: Vec<&str> = transforms
        .values()
        .filter_map(|t| t.get("inputs").and_then(|i| i.as_array()))
        .flatten()
        .filter_map(|i| i.as_str())
        .collect();
    let leaves: Vec<String> = transforms
        .keys()
        .filter(|k| !read.contains(&k.as_str()))
        .map(|k| format!("\"{k}\""))
        .collect();
    format!(
        "{snippet}\n[sources.events]\ntype = \"file\"\npath = \"events.ndjson\"\n\
         event_time = {{ field = \"ts\" }}\n\n[sinks.out]\ntype = \"file\"\n\
         inputs = [{}]\npath = \"out.ndjson\"\n",
        leaves.join(", ")
    )
}

fn validate(dir: &Path, text: &str) -> Output {
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["validate", "pipeline.toml"])
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Runs `command` with `sh` from the repository root, the `sluice` under
/// test first on the PATH.
fn shell(command: &str) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_sluice")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .args(["-c", command])
        .current_dir(repo())
        .env("PATH", path)
        .output()
        .unwrap()
}

fn text_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn every_snippet_of_the_transforms_reference_holds() {
    let doc = std::fs::read_to_string(repo().join("docs/transforms.md")).unwrap();
    let blocks = blocks(&doc);
    let work = tempfile::tempdir().unwrap();
    let (mut toml_ok, mut toml_err, mut commands) = (0, 0, 0);
    for (i, b) in blocks.iter().enumerate() {
        let expected_output = blocks
            .get(i + 1)
            .filter(|n| n.info == "text")
            .map(|n| n.text.as_str());
        let at = format!("docs/transforms.md:{}", b.line);
        match b.info.as_str() {
            "toml" => {
                let out = validate(work.path(), &complete(&b.text));
                assert!(
                    out.status.success(),
                    "{at}: the snippet does not validate:\n{}",
                    text_of(&out)
                );
                toml_ok += 1;
            }
            "toml,error" => {
                let out = validate(work.path(), &complete(&b.text));
                assert_eq!(out.status.code(), Some(2), "{at}: expected errors");
                let stderr = String::from_utf8_lossy(&out.stderr);
                let expected = expected_output.unwrap_or_else(|| panic!("{at}: no ```text"));
                for line in expected.lines() {
                    assert!(
                        stderr.lines().any(|l| l == line),
                        "{at}: expected the line\n{line}\nin\n{stderr}"
                    );
                }
                toml_err += 1;
            }
            "sh" | "sh,fails" => {
                for command in b.text.lines().filter(|l| !l.trim().is_empty()) {
                    let out = shell(command);
                    assert_eq!(
                        out.status.success(),
                        b.info == "sh",
                        "{at}: `{command}` exited with {}:\n{}",
                        out.status,
                        text_of(&out)
                    );
                    if let Some(expected) = expected_output {
                        assert_eq!(text_of(&out), expected, "{at}: output of `{command}`");
                    }
                    commands += 1;
                }
            }
            "text" => {}
            other => panic!("{at}: unchecked code block ```{other}"),
        }
    }
    assert!(toml_ok >= 10, "only {toml_ok} snippets");
    assert!(toml_err >= 4, "only {toml_err} error snippets");
    assert!(commands >= 3, "only {commands} commands");
}
