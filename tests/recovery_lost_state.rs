//! Lost or damaged state is never taken for a fresh start: with the real
//! binary, a state directory whose sled files were deleted, corrupted,
//! truncated or replaced by an older copy makes `sluice run` refuse with a
//! clear message (and leave every output alone), and `--accept-empty-state`
//! starts anyway. Also the commands of docs/operations.md, exactly as
//! written there.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::{materialize, sluice};

fn lines(n: usize, start: usize) -> String {
    (start..start + n)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"country\":\"{}\"}}\n",
                ["GT", "MX", "US"][i % 3]
            )
        })
        .collect()
}

/// A work directory with a counting pipeline: `in.ndjson` -> count by
/// country -> `out.ndjson` (changes), state in `state/`.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new(input_lines: usize) -> Work {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.ndjson"), lines(input_lines, 0)).unwrap();
        let text = format!(
            r#"
[pipeline]
name = "lost_state"
[state]
dir = "{state}"
[checkpoint]
interval = "50ms"
[sources.reports]
type = "file"
path = "{input}"
[transforms.by_country]
type = "aggregate"
inputs = ["reports"]
group_by = ["country"]
aggregates = {{ n = "count" }}
[sinks.out]
type = "file"
inputs = ["by_country"]
path = "{out}"
format = "changes"
"#,
            state = dir.path().join("state").display(),
            input = dir.path().join("in.ndjson").display(),
            out = dir.path().join("out.ndjson").display(),
        );
        std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
        Work { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, extra: &[&str]) -> Output {
        sluice()
            .args(["run", "--once"])
            .args(extra)
            .arg(self.path("pipeline.toml"))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    fn run_ok(&self, extra: &[&str]) {
        let out = self.run(extra);
        assert!(
            out.status.success(),
            "sluice run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn counts(&self) -> Vec<(String, i64)> {
        materialize(&self.path("out.ndjson"))
            .into_iter()
            .map(|(k, v)| (k, v["n"].as_i64().unwrap()))
            .collect()
    }

    fn epoch(&self) -> u64 {
        let text = std::fs::read_to_string(self.path("state/sluice-checkpoint")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("epoch "))
            .unwrap()
            .parse()
            .unwrap()
    }
}

fn counts(n: i64) -> Vec<(String, i64)> {
    ["GT", "MX", "US"]
        .iter()
        .map(|c| (c.to_string(), n))
        .collect()
}

/// Runs a damaged state directory: refused, outputs untouched; then
/// accepted with the flag.
fn assert_refused_then_accepted(work: &Work, what: &str, expect: &[&str]) {
    let out_before = std::fs::read(work.path("out.ndjson")).unwrap();
    let out = work.run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: started anyway: {stderr}");
    for e in expect {
        assert!(stderr.contains(e), "{what}: no {e:?} in: {stderr}");
    }
    assert!(
        stderr.contains("sluice replay") && stderr.contains("--accept-empty-state"),
        "{what}: the options are not named: {stderr}"
    );
    assert_eq!(
        std::fs::read(work.path("out.ndjson")).unwrap(),
        out_before,
        "{what}: the output was touched"
    );
    // the operator accepts: the file source is read again from its start
    work.run_ok(&["--accept-empty-state"]);
    assert_eq!(work.counts(), counts(300), "{what}");
    // and the state is consistent again: a plain run starts
    work.run_ok(&[]);
}

fn sled_db(work: &Work) -> PathBuf {
    let db = work.path("state/db");
    assert!(db.exists(), "sled keeps its data in {}", db.display());
    db
}

fn first_run() -> Work {
    let work = Work::new(900);
    work.run_ok(&[]);
    assert_eq!(work.counts(), counts(300));
    assert!(work.epoch() > 0);
    work
}

#[test]
fn a_removed_state_db_is_refused() {
    let work = first_run();
    std::fs::remove_file(sled_db(&work)).unwrap();
    assert_refused_then_accepted(
        &work,
        "db removed",
        &["refusing to start", "no checkpoint at all", "was committed"],
    );
}

#[test]
fn a_state_db_truncated_to_zero_is_refused() {
    let work = first_run();
    std::fs::OpenOptions::new()
        .write(true)
        .open(sled_db(&work))
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_refused_then_accepted(&work, "db truncated to 0", &["refusing to start"]);
}

#[test]
fn a_state_db_truncated_to_half_is_refused() {
    let work = first_run();
    let db = sled_db(&work);
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_refused_then_accepted(&work, "db truncated to half", &["refusing to start"]);
}

#[test]
fn a_state_db_with_flipped_bytes_is_refused() {
    let work = first_run();
    let db = sled_db(&work);
    let mut bytes = std::fs::read(&db).unwrap();
    let n = bytes.len();
    for at in [n / 3, n / 2, 2 * n / 3] {
        bytes[at] ^= 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    assert_refused_then_accepted(&work, "db with flipped bytes", &["refusing to start"]);
}

/// Copies every file of the state directory except the marker.
fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "sluice-checkpoint" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_store(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn an_older_copy_of_the_state_db_is_refused() {
    let work = Work::new(900);
    work.run_ok(&[]);
    let old_epoch = work.epoch();
    let backup = work.path("backup");
    copy_store(&work.path("state"), &backup);
    // more input, more checkpoints
    let mut more = std::fs::OpenOptions::new()
        .append(true)
        .open(work.path("in.ndjson"))
        .unwrap();
    std::io::Write::write_all(&mut more, lines(900, 900).as_bytes()).unwrap();
    work.run_ok(&[]);
    assert_eq!(work.counts(), counts(600));
    let new_epoch = work.epoch();
    assert!(new_epoch > old_epoch);
    // the older store comes back (the marker stays)
    for entry in std::fs::read_dir(work.path("state")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "sluice-checkpoint" {
            if entry.file_type().unwrap().is_dir() {
                std::fs::remove_dir_all(entry.path()).unwrap();
            } else {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
    copy_store(&backup, &work.path("state"));
    let out_before = std::fs::read(work.path("out.ndjson")).unwrap();
    let out = work.run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway: {stderr}");
    assert!(
        stderr.contains(&format!("checkpoint epoch {old_epoch}"))
            && stderr.contains(&format!("checkpoint epoch {new_epoch} was committed")),
        "{stderr}"
    );
    assert_eq!(std::fs::read(work.path("out.ndjson")).unwrap(), out_before);
    // accepted: the old state resumes where it was, reading the rest
    work.run_ok(&["--accept-empty-state"]);
    assert_eq!(work.counts(), counts(600));
}

#[test]
fn a_lost_state_directory_with_earlier_output_is_refused() {
    let work = first_run();
    std::fs::remove_dir_all(work.path("state")).unwrap();
    assert_refused_then_accepted(
        &work,
        "state dir removed",
        &["sink `out`", "out.ndjson holds", "no checkpoint at all"],
    );
}

#[test]
fn a_fresh_start_and_normal_restarts_are_not_refused() {
    let work = first_run();
    // a restart with nothing new
    work.run_ok(&[]);
    assert_eq!(work.counts(), counts(300));
    // a crash before the first checkpoint leaves the marker at 0 and no output
    let work = Work::new(3);
    std::fs::create_dir_all(work.path("state")).unwrap();
    std::fs::write(work.path("state/sluice-checkpoint"), "epoch 0\n").unwrap();
    work.run_ok(&[]);
    assert_eq!(work.counts(), counts(1));
}

/// The shell blocks of docs/operations.md, in order.
fn documented_commands() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(support::repo().join("docs/operations.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        let t = line.trim();
        match (&mut current, t) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), cmd) => b.push(cmd.to_string()),
            _ => {}
        }
    }
    blocks
}

/// Runs one documented command line with `sh`, `sluice` on the PATH.
fn sh(dir: &Path, line: &str) -> Output {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::process::Command::new("sh")
        .args(["-c", line])
        .current_dir(dir)
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn the_commands_of_docs_operations_work_as_written() {
    let blocks = documented_commands();
    assert_eq!(
        blocks,
        vec![
            vec![
                "sluice replay pipeline.toml --into state.rebuilt".to_string(),
                "mv state state.damaged".to_string(),
                "mv state.rebuilt state".to_string(),
            ],
            vec!["sluice run --accept-empty-state pipeline.toml".to_string()],
        ],
        "docs/operations.md changed: update this test to run its commands"
    );
    // the pipeline of the docs: relative paths, a file source read to its end
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), lines(900, 0)).unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        r#"
[pipeline]
name = "docs"
[state]
dir = "state"
[checkpoint]
interval = "50ms"
[sources.reports]
type = "file"
path = "in.ndjson"
[transforms.by_country]
type = "aggregate"
inputs = ["reports"]
group_by = ["country"]
aggregates = { n = "count" }
[sinks.out]
type = "file"
inputs = ["by_country"]
path = "out.ndjson"
format = "changes"
"#,
    )
    .unwrap();
    let ok = |out: Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let table = || -> Vec<(String, i64)> {
        materialize(&dir.path().join("out.ndjson"))
            .into_iter()
            .map(|(k, v)| (k, v["n"].as_i64().unwrap()))
            .collect()
    };
    let damage = || {
        ok(sh(dir.path(), "sluice run pipeline.toml"), "first run");
        assert_eq!(table(), counts(300));
        std::fs::remove_file(dir.path().join("state/db")).unwrap();
        let refused = sh(dir.path(), "sluice run pipeline.toml");
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("refusing to start"));
    };
    // option 2: rebuild with replay, move into place, run
    damage();
    for line in &blocks[0] {
        ok(sh(dir.path(), line), line);
    }
    assert_eq!(table(), counts(300));
    ok(
        sh(dir.path(), "sluice run pipeline.toml"),
        "run on the rebuilt state",
    );
    assert_eq!(table(), counts(300));
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    std::fs::remove_dir_all(dir.path().join("state.damaged")).unwrap();
    std::fs::remove_file(dir.path().join("out.ndjson")).unwrap();
    // option 3: accept the state as it is
    damage();
    ok(sh(dir.path(), &blocks[1][0]), &blocks[1][0]);
    assert_eq!(table(), counts(300));
    ok(
        sh(dir.path(), "sluice run pipeline.toml"),
        "a later plain run",
    );
}

/// The reported damage: Redis totals overwritten with the smaller numbers
/// recomputed after the state was lost (3000 became 126). Now refused.
#[test]
fn redis_totals_are_not_overwritten_after_the_state_db_is_lost() {
    use support::services::{redis_cli, redis_hash, redis_url, unique};
    let url = redis_url();
    let prefix = unique("lost_state");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines(900, 0)).unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[pipeline]
name = "lost_state_redis"
[state]
dir = "{state}"
[checkpoint]
interval = "50ms"
[sources.reports]
type = "file"
path = "{input}"
[transforms.by_country]
type = "aggregate"
inputs = ["reports"]
group_by = ["country"]
aggregates = {{ n = "count" }}
[sinks.counts]
type = "redis"
inputs = ["by_country"]
url = "{url}"
key = "{prefix}:counts"
field = "{{country}}"
value_field = "n"
totals = "{prefix}:total"
"#,
            state = dir.path().join("state").display(),
            input = input.display(),
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        sluice()
            .args(["run", "--once"])
            .args(extra)
            .arg(&pipeline)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let full: std::collections::BTreeMap<String, i64> = ["GT", "MX", "US"]
        .iter()
        .map(|c| (c.to_string(), 300))
        .collect();
    let total = || redis_cli(&url, &["GET", &format!("{prefix}:total")]);
    assert_eq!(redis_hash(&url, &format!("{prefix}:counts")), full);
    assert_eq!(total().trim(), "900");
    // the state is lost while the source only holds recent input
    std::fs::remove_file(dir.path().join("state/db")).unwrap();
    std::fs::write(&input, lines(30, 900)).unwrap();
    let refused = run(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started anyway: {stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert_eq!(redis_hash(&url, &format!("{prefix}:counts")), full);
    assert_eq!(total().trim(), "900");
    // accepting the loss is explicit, and does what it says
    let accepted = run(&["--accept-empty-state"]);
    assert!(accepted.status.success());
    assert_eq!(
        redis_hash(&url, &format!("{prefix}:counts"))["GT"],
        10,
        "a fresh start's new generation replaces the earlier values"
    );
    redis_cli(
        &url,
        &[
            "DEL",
            &format!("{prefix}:counts"),
            &format!("{prefix}:counts:__epoch"),
            &format!("{prefix}:total"),
        ],
    );
}

/// The whole state directory (marker included) is lost, or replaced by an
/// older copy: only the sink's destination remembers. Redis' fences show
/// the epochs it already saw (issue 10, item 5: "detect an older epoch
/// than the sinks already saw").
#[test]
fn a_lost_or_older_state_directory_is_seen_in_the_redis_fences() {
    use support::services::{redis_cli, redis_hash, redis_url, unique};
    let url = redis_url();
    let prefix = unique("older_state");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines(300, 0)).unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[pipeline]
name = "older_state_redis"
[state]
dir = "{state}"
[checkpoint]
interval = "50ms"
[sources.reports]
type = "file"
path = "{input}"
[transforms.by_country]
type = "aggregate"
inputs = ["reports"]
group_by = ["country"]
aggregates = {{ n = "count" }}
[sinks.counts]
type = "redis"
inputs = ["by_country"]
url = "{url}"
key = "{prefix}:counts:{{country}}"
field = "n"
value_field = "n"
"#,
            state = dir.path().join("state").display(),
            input = input.display(),
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        sluice()
            .args(["run", "--once"])
            .args(extra)
            .arg(&pipeline)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let ok = |o: Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(run(&[]));
    let state = dir.path().join("state");
    let backup = dir.path().join("backup");
    assert!(std::process::Command::new("cp")
        .args([
            "-a",
            &state.display().to_string(),
            &backup.display().to_string()
        ])
        .status()
        .unwrap()
        .success());
    // More input, more epochs: the fences move past the backup's epoch.
    let mut more = lines(300, 0);
    more.push_str(&lines(90, 300));
    std::fs::write(&input, more).unwrap();
    ok(run(&[]));
    let gt = || redis_hash(&url, &format!("{prefix}:counts:GT"))["n"];
    assert_eq!(gt(), 130);
    // The older copy of the whole directory (its marker agrees with it).
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::rename(&backup, &state).unwrap();
    let refused = run(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started anyway: {stderr}");
    assert!(
        stderr.contains("newer than the restored checkpoint epoch"),
        "{stderr}"
    );
    assert_eq!(gt(), 130, "the sink's values were left alone");
    // The whole directory lost: the fences show an earlier run.
    std::fs::remove_dir_all(&state).unwrap();
    let refused = run(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started anyway: {stderr}");
    assert!(
        stderr.contains("holds values an earlier run wrote"),
        "{stderr}"
    );
    assert_eq!(gt(), 130);
    ok(run(&["--accept-empty-state"]));
    assert_eq!(
        gt(),
        130,
        "recounted from the whole input by a new generation"
    );
    for c in ["GT", "MX", "US"] {
        redis_cli(
            &url,
            &[
                "DEL",
                &format!("{prefix}:counts:{c}"),
                &format!("{prefix}:counts:{c}:__epoch"),
            ],
        );
    }
}
