//! Which worker a `sluice` process is (`--workers`/`--worker`,
//! `SLUICE_WORKERS`/`SLUICE_WORKER_ID`, the host name's ordinal) and the
//! `[cluster]` section, checked against the binary: every way to get it
//! wrong is refused at start with a clear message, and `${SLUICE_WORKER_ID}`
//! in the file is the id in effect however it was given. No exchange runs.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::sluice;

const CLUSTER: &str = r#"
[cluster]
listen = "127.0.0.1:1770${SLUICE_WORKER_ID}"
peers = "127.0.0.1:1770{worker}"
"#;

/// A file -> count -> file pipeline in `dir`, each worker with its own
/// state directory and input part, plus `extra` (e.g. a `[cluster]`).
fn pipeline(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "cluster_cli"
[state]
dir = "{dir}/state-${{SLUICE_WORKER_ID}}"
[sources.input]
type = "file"
path = "{dir}/part-${{SLUICE_WORKER_ID}}.ndjson"
[transforms.counts]
type = "aggregate"
inputs = ["input"]
group_by = ["k"]
aggregates = {{ n = "count" }}
[sinks.out]
type = "file"
inputs = ["counts"]
path = "{dir}/out-${{SLUICE_WORKER_ID}}.ndjson"
format = "changes"
{extra}"#,
        dir = dir.display()
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `sluice <args>` with none of the worker variables of the test's own
/// environment, and `env` set.
fn run(args: &[&str], file: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd: Command = sluice();
    cmd.args(args).arg(file);
    for var in ["SLUICE_WORKERS", "SLUICE_WORKER_ID", "HOSTNAME"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit code 2 and a stderr line starting with `error:` that holds every
/// one of `says`; nothing ran (no state directory was made).
fn assert_refused(out: &Output, dir: &Path, says: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("error:") && says.iter().all(|s| l.contains(s))),
        "expected an error saying {says:?}:\n{err}"
    );
    let made: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state-"))
        .collect();
    assert!(made.is_empty(), "a refused start made {made:?}");
}

#[test]
fn validate_accepts_a_cluster_file_as_the_given_worker() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), CLUSTER);
    let out = run(&["validate", "--workers", "3", "--worker", "1"], &file, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains(": ok"), "{said}");
    assert!(said.contains("worker 1 of 3"), "{said}");
    // `${SLUICE_WORKER_ID}` in the file is the id given by --worker.
    let state = format!("state in {}/state-1", dir.path().display());
    assert!(said.contains(&state), "{said}");
}

#[test]
fn the_worker_id_comes_from_the_host_name_ordinal() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), CLUSTER);
    let out = run(
        &["validate", "--workers", "3"],
        &file,
        &[("HOSTNAME", "sluice-2")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("worker 2 of 3"), "{said}");
    assert!(
        said.contains(&format!("state in {}/state-2", dir.path().display())),
        "{said}"
    );
    // The same through the environment alone.
    let out = run(
        &["validate"],
        &file,
        &[("HOSTNAME", "sluice-2"), ("SLUICE_WORKERS", "3")],
    );
    assert!(stdout(&out).contains("worker 2 of 3"), "{}", stderr(&out));
}

#[test]
fn flags_beat_the_environment_which_beats_the_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), CLUSTER);
    let env = [
        ("HOSTNAME", "sluice-2"),
        ("SLUICE_WORKERS", "4"),
        ("SLUICE_WORKER_ID", "3"),
    ];
    let out = run(&["validate"], &file, &env);
    assert!(stdout(&out).contains("worker 3 of 4"), "{}", stderr(&out));
    assert!(stdout(&out).contains("/state-3"), "{}", stdout(&out));
    let out = run(
        &["validate", "--workers", "5", "--worker", "4"],
        &file,
        &env,
    );
    assert!(stdout(&out).contains("worker 4 of 5"), "{}", stderr(&out));
    assert!(stdout(&out).contains("/state-4"), "{}", stdout(&out));
}

#[test]
fn impossible_workers_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), CLUSTER);
    for command in ["run", "validate"] {
        let refused = |args: &[&str], env: &[(&str, &str)], says: &[&str]| {
            let mut all = vec![command];
            all.extend_from_slice(args);
            let out = run(&all, &file, env);
            assert_refused(&out, dir.path(), says);
        };
        // The id is not a number: from the flag, from the environment.
        refused(
            &["--workers", "3", "--worker", "one"],
            &[],
            &["`one` is not a worker id"],
        );
        refused(
            &["--workers", "3"],
            &[("SLUICE_WORKER_ID", "x1")],
            &["`x1` is not a worker id"],
        );
        // The id is not below N.
        refused(
            &["--workers", "3", "--worker", "3"],
            &[],
            &["worker id 3", "the ids are 0 to 2"],
        );
        refused(
            &["--worker", "1"],
            &[],
            &["worker id 1", "the ids are 0 to 0"],
        );
        refused(
            &["--workers", "2"],
            &[("HOSTNAME", "sluice-2")],
            &["worker id 2", "from the host name `sluice-2`"],
        );
        // No workers at all.
        refused(
            &["--workers", "0"],
            &[],
            &["the number of workers must be at least 1"],
        );
        refused(
            &[],
            &[("SLUICE_WORKERS", "0"), ("SLUICE_WORKER_ID", "0")],
            &["the number of workers must be at least 1"],
        );
        // More than one worker, and the host name says nothing.
        refused(
            &["--workers", "3"],
            &[("HOSTNAME", "laptop")],
            &["host name `laptop` does not end in `-<number>`", "--worker"],
        );
    }
}

#[test]
fn several_workers_need_a_cluster_section() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), "");
    for command in ["run", "validate"] {
        let out = run(&[command, "--workers", "3", "--worker", "1"], &file, &[]);
        assert_refused(
            &out,
            dir.path(),
            &["3 workers need a `[cluster]` section", "pipeline.toml"],
        );
    }
    // A list of peers must name every worker.
    let list = "[cluster]\nlisten = \"127.0.0.1:17701\"\npeers = [\"127.0.0.1:17700\", \"127.0.0.1:17701\"]\n";
    let file = pipeline(dir.path(), list);
    let out = run(&["validate", "--workers", "2", "--worker", "1"], &file, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["run", "--workers", "3", "--worker", "1"], &file, &[]);
    assert_refused(&out, dir.path(), &["lists 2 address(es) for 3 workers"]);
}

#[test]
fn cluster_mistakes_point_at_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(
        dir.path(),
        "[cluster]\nlisten = \"127.0.0.1\"\npeer = \"127.0.0.1:1770{worker}\"\n",
    );
    let out = run(&["validate", "--workers", "3", "--worker", "0"], &file, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let at = |line: usize| format!("error: {}:{line}:", file.display());
    // The pipeline text above starts with a blank line: `[cluster]` is on
    // line 19, `listen` on 20, `peer` on 21.
    assert!(
        err.lines()
            .any(|l| l.starts_with(&at(21)) && l.contains("unknown field `peer`")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with(&at(20)) && l.contains("`127.0.0.1` is not `host:port`")),
        "{err}"
    );
    assert!(err.contains("did you mean `peers`?"), "{err}");
}

/// With `[cluster]` in the file and no worker count anywhere, sluice runs
/// alone, exactly as without the section (and a host name without an
/// ordinal does not matter).
#[test]
fn one_worker_with_a_cluster_section_runs_as_before() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("part-0.ndjson"),
        "{\"k\":\"a\"}\n{\"k\":\"b\"}\n{\"k\":\"a\"}\n",
    )
    .unwrap();
    let file = pipeline(dir.path(), CLUSTER);
    let out = run(&["run", "--once"], &file, &[("HOSTNAME", "laptop")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let counts: Vec<String> = support::materialize(&dir.path().join("out-0.ndjson"))
        .values()
        .map(support::canonical)
        .collect();
    assert_eq!(
        counts,
        [r#"{"k":"a","n":2}"#, r#"{"k":"b","n":1}"#],
        "{}",
        stderr(&out)
    );
    assert!(
        dir.path().join("state-0").is_dir(),
        "the state went elsewhere"
    );
}

/// With several workers, an aggregate over another aggregate's results
/// grouped by another key is refused at start (its rows would have to cross
/// the exchange twice); as one worker it runs.
#[test]
fn an_aggregate_regrouping_another_is_refused_with_several_workers() {
    let dir = tempfile::tempdir().unwrap();
    let regroup = |by: &str| {
        format!(
            "[transforms.again]\ntype = \"aggregate\"\ninputs = [\"counts\"]\ngroup_by = [\"{by}\"]\naggregates = {{ m = \"count\" }}\n[sinks.again_out]\ntype = \"null\"\ninputs = [\"again\"]\n{CLUSTER}"
        )
    };
    let file = pipeline(dir.path(), &regroup("n"));
    for part in ["part-0.ndjson", "part-1.ndjson"] {
        std::fs::write(dir.path().join(part), "{\"k\":\"a\"}\n").unwrap();
    }
    let out = run(&["run", "--workers", "2", "--worker", "1"], &file, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("transform `again` reads the results of another stateful transform and groups them by another key"),
        "{err}"
    );
    // The same pipeline as one worker is fine.
    let out = run(&["run", "--once"], &file, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}
