//! `sluice test`: golden pipelines.
//!
//! A golden pipeline is a directory with `pipeline.toml`, `input.ndjson`
//! and `expected.ndjson`. The pipeline reads `${INPUT}`, writes its results
//! with a file sink to `${OUTPUT}` in `format = "changes"`, and may send
//! dead letters to `${DEAD_LETTERS}` (also `format = "changes"`); its state
//! goes to `${STATE_DIR}`. The results are materialised (last change per
//! id wins, deletes remove) and compared, as a set of JSON records, with
//! `expected.ndjson`; `expected_dead_letters.ndjson`, when present, lists
//! the expected dead letters as `{"error_type":..,"offset":..}` records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use sluice_engine::json::{parse_value, write_value};
use sluice_engine::value::{Map, Value};
use tokio::sync::watch;

#[derive(Args)]
pub(crate) struct TestArgs {
    /// Golden pipeline directories.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Keep the work directories (state, outputs) for inspection.
    #[arg(long)]
    pub keep: bool,
}

/// Reads a `changes` file and returns the final records, keyed by id.
pub(crate) fn materialize(path: &Path) -> anyhow::Result<BTreeMap<String, Value>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut table = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let change = parse_value(line.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        let id = change
            .get_path(&["id".into()])
            .as_str()
            .unwrap_or_default()
            .to_string();
        match change.get_path(&["op".into()]).as_str() {
            Some("delete") => {
                table.remove(&id);
            }
            _ => {
                table.insert(id, change.get_path(&["record".into()]).clone());
            }
        }
    }
    Ok(table)
}

/// Canonical JSON lines of a file of records, sorted.
fn canonical_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v = parse_value(line.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        out.push(canonical(&v));
    }
    out.sort();
    Ok(out)
}

/// JSON with object keys sorted, for order-insensitive comparison.
pub(crate) fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<_> = m.iter().map(|(k, v)| (k.clone(), sort(v))).collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(Map(entries))
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    let mut out = Vec::new();
    write_value(&mut out, &sort(v));
    String::from_utf8_lossy(&out).into_owned()
}

fn diff(name: &str, got: &[String], want: &[String]) -> Option<String> {
    if got == want {
        return None;
    }
    let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).take(5).collect();
    let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).take(5).collect();
    Some(format!(
        "{name}: got {} records, expected {}\n  missing (first 5): {missing:#?}\n  unexpected (first 5): {extra:#?}",
        got.len(),
        want.len()
    ))
}

fn run_one(dir: &Path, keep: bool) -> anyhow::Result<Option<String>> {
    let work = tempfile::Builder::new().prefix("sluice-test-").tempdir()?;
    let vars = [
        ("INPUT", dir.join("input.ndjson")),
        ("OUTPUT", work.path().join("output.ndjson")),
        ("STATE_DIR", work.path().join("state")),
        ("DEAD_LETTERS", work.path().join("dead_letters.ndjson")),
    ];
    let lookup = |name: &str| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.display().to_string())
            .or_else(|| std::env::var(name).ok())
    };
    let pipeline = crate::config::load(&dir.join("pipeline.toml"), lookup).map_err(|errors| {
        anyhow::anyhow!(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"))
    })?;
    let rt = super::runtime()?;
    let (_tx, shutdown) = watch::channel(false);
    rt.block_on(super::execute(
        &pipeline,
        None,
        true,
        shutdown,
        Vec::new(),
        Default::default(),
        super::Start::single(super::Mode::Run),
    ))?;
    let got: Vec<String> = {
        let mut v: Vec<String> = materialize(&vars[1].1)?.values().map(canonical).collect();
        v.sort();
        v
    };
    let want = canonical_lines(&dir.join("expected.ndjson"))?;
    let mut problems = Vec::new();
    problems.extend(diff("results", &got, &want));
    let dl_expected = dir.join("expected_dead_letters.ndjson");
    if dl_expected.exists() {
        let mut got_dl: Vec<String> = materialize(&vars[3].1)?
            .values()
            .map(|r| {
                let mut m = Map::new();
                m.insert("error_type", r.get_path(&["error_type".into()]).clone());
                m.insert("offset", r.get_path(&["offset".into()]).clone());
                canonical(&Value::Object(m))
            })
            .collect();
        got_dl.sort();
        problems.extend(diff(
            "dead letters",
            &got_dl,
            &canonical_lines(&dl_expected)?,
        ));
    }
    if keep {
        let kept = work.keep();
        eprintln!("kept the work directory {}", kept.display());
    }
    Ok(if problems.is_empty() {
        None
    } else {
        Some(problems.join("\n"))
    })
}

pub(crate) fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let (mut passed, mut failed) = (0, 0);
    for dir in &args.dirs {
        // A shell glob such as `tests/pipelines/*` also matches files
        // beside the pipeline directories (the generator script).
        if !dir.join("pipeline.toml").is_file() {
            println!(
                "skip {}: not a golden pipeline (no pipeline.toml in it)",
                dir.display()
            );
            continue;
        }
        match run_one(dir, args.keep) {
            Ok(None) => {
                passed += 1;
                println!("PASS {}", dir.display());
            }
            Ok(Some(problem)) => {
                failed += 1;
                println!("FAIL {}\n{problem}", dir.display());
            }
            Err(e) => {
                failed += 1;
                println!(
                    "FAIL {}: {}",
                    dir.display(),
                    sluice_engine::error::Report(e.as_ref())
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if passed + failed == 0 {
        anyhow::bail!(
            "no golden pipeline directory among the arguments (each needs a pipeline.toml)"
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
