//! Every ```toml block of the README and of `docs/` goes through the real
//! config parser: each must be TOML; a whole pipeline must pass `sluice
//! validate`; a fragment (a few `[sources]`, `[transforms]`, `[sinks]`,
//! `[admin]` or `[dead_letter]` tables) must pass `sluice validate` once
//! completed into a minimal pipeline: stub file sources for the inputs it
//! reads but does not define, and a file sink for the outputs nobody reads.
//! `${VAR}`s and `*_env` variables get placeholder values.
//!
//! `toml,error` blocks are expected to fail; docs/transforms.md, whose
//! error blocks list their exact messages, is also checked in detail by
//! tests/docs_transforms.rs.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::markdown::blocks;
use support::repo;

/// The Markdown pages whose snippets are checked.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut dirs = vec![repo().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    pages.sort();
    pages
}

/// The names a table list (`sources`, `transforms`, `sinks`) defines.
fn names(doc: &toml::Table, kind: &str) -> Vec<String> {
    doc.get(kind)
        .and_then(|t| t.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every `inputs` entry of the transforms and sinks.
fn inputs(doc: &toml::Table) -> BTreeSet<String> {
    ["transforms", "sinks"]
        .iter()
        .filter_map(|kind| doc.get(*kind).and_then(|t| t.as_table()))
        .flat_map(|t| t.values())
        .filter_map(|c| c.get("inputs").and_then(|i| i.as_array()))
        .flatten()
        .filter_map(|i| i.as_str().map(str::to_string))
        .collect()
}

/// A fragment completed into a pipeline: the fragment's text first (so
/// that its lines keep their numbers), then what it lacks.
fn complete(snippet: &str) -> String {
    let doc: toml::Table = toml::from_str(snippet).unwrap();
    let sources = names(&doc, "sources");
    let transforms = names(&doc, "transforms");
    let sinks = names(&doc, "sinks");
    let read = inputs(&doc);
    let mut text = format!("{snippet}\n");
    if !doc.contains_key("pipeline") {
        text.push_str("\n[pipeline]\nname = \"docs_snippet\"\n");
    }
    let mut stubs: Vec<&String> = read
        .iter()
        .filter(|i| !sources.contains(i) && !transforms.contains(i))
        .collect();
    let default_source = "events".to_string();
    if sources.is_empty() && stubs.is_empty() {
        stubs.push(&default_source);
    }
    for name in stubs {
        text.push_str(&format!(
            "\n[sources.{name}]\ntype = \"file\"\npath = \"events.ndjson\"\n\
             event_time = {{ field = \"ts\" }}\n"
        ));
    }
    if sinks.is_empty() {
        let mut outputs: Vec<String> = sources
            .iter()
            .chain(&transforms)
            .filter(|n| !read.contains(*n))
            .map(|n| format!("\"{n}\""))
            .collect();
        if outputs.is_empty() {
            outputs.push("\"events\"".into());
        }
        text.push_str(&format!(
            "\n[sinks.docs_out]\ntype = \"file\"\ninputs = [{}]\npath = \"out.ndjson\"\n",
            outputs.join(", ")
        ));
    }
    text
}

/// A placeholder for an environment variable the snippet names.
fn placeholder(var: &str) -> String {
    let v = var.to_ascii_uppercase();
    if v.contains("AMQP") {
        "amqp://guest:guest@127.0.0.1:5672/%2f".into()
    } else if v.contains("MONGO") {
        "mongodb://127.0.0.1:27017/?replicaSet=rs0".into()
    } else if v.contains("POSTGRES") {
        "postgres://postgres@127.0.0.1:5432/test".into()
    } else if v.contains("REDIS") {
        "redis://127.0.0.1:6379".into()
    } else if v.contains("KAFKA") || v.contains("BROKER") {
        "127.0.0.1:9092".into()
    } else {
        "docs-snippet-placeholder".into()
    }
}

/// The variables a snippet reads: `${NAME}` / `${NAME:-default}` and the
/// values of `*_env` keys.
fn variables(snippet: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    let mut rest = snippet;
    while let Some(at) = rest.find("${") {
        rest = &rest[at + 2..];
        let end = rest.find(['}', ':']).unwrap_or(rest.len());
        vars.insert(rest[..end].to_string());
    }
    for line in snippet.lines() {
        if let Some((key, value)) = line.split_once('=') {
            if key.trim().ends_with("_env") {
                let value = value.split('#').next().unwrap().trim().trim_matches('"');
                vars.insert(value.to_string());
            }
        }
    }
    vars
}

fn validate(dir: &Path, text: &str, vars: &BTreeSet<String>) -> Output {
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["validate", "pipeline.toml"]).current_dir(dir);
    // `${SLUICE_WORKER_ID}` and `${SLUICE_WORKERS}` are the worker in
    // effect, which sluice decides itself (worker 0 of 1 here).
    let from_sluice = ["SLUICE_WORKER_ID", "SLUICE_WORKERS"];
    for var in from_sluice {
        cmd.env_remove(var);
    }
    for var in vars.iter().filter(|v| !from_sluice.contains(&v.as_str())) {
        cmd.env(var, placeholder(var));
    }
    cmd.output().unwrap()
}

#[test]
fn every_toml_snippet_of_the_docs_validates() {
    let work = tempfile::tempdir().unwrap();
    let (mut whole, mut fragments, mut errors) = (0, 0, 0);
    let mut failures = Vec::new();
    for page in pages() {
        let markdown = std::fs::read_to_string(&page).unwrap();
        let name = page.strip_prefix(repo()).unwrap().display().to_string();
        for block in blocks(&markdown) {
            let mut info = block.info.split(',');
            if info.next() != Some("toml") {
                continue;
            }
            let at = format!("{name}:{}", block.line);
            let expect_error = info.any(|flag| flag == "error");
            let parsed: Result<toml::Table, _> = toml::from_str(&block.text);
            let doc = match parsed {
                Ok(doc) => doc,
                Err(e) => {
                    failures.push(format!("{at}: not TOML: {e}"));
                    continue;
                }
            };
            let is_whole = doc.contains_key("sources") && doc.contains_key("sinks");
            let text = if is_whole {
                block.text.clone()
            } else {
                complete(&block.text)
            };
            let out = validate(work.path(), &text, &variables(&block.text));
            let stderr = String::from_utf8_lossy(&out.stderr);
            match (expect_error, out.status.success()) {
                (false, true) if is_whole => whole += 1,
                (false, true) => fragments += 1,
                (true, false) => errors += 1,
                (false, false) => failures.push(format!(
                    "{at}: does not validate{}:\n{stderr}\n--- as validated:\n{text}",
                    if is_whole { "" } else { " (completed)" }
                )),
                (true, true) => failures.push(format!("{at}: a ```toml,error block validates")),
            }
        }
    }
    eprintln!("{whole} whole pipelines, {fragments} fragments, {errors} error blocks");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The pages hold this many today; fewer means the reader missed some.
    assert!(whole >= 4, "only {whole} whole pipelines");
    assert!(fragments >= 25, "only {fragments} fragments");
    assert!(errors >= 4, "only {errors} error blocks");
}
