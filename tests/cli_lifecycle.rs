//! The `sluice` command line as a user meets it: `validate` messages and
//! exit codes, `replay`, the admin endpoints, and graceful shutdown on
//! SIGTERM (final checkpoint, exit 0, nothing lost on restart).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn free_port() -> u16 {
    support::pick_port()
}

#[test]
fn validate_reports_location_field_and_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[sources.orders]\ntype = \"file\"\npth = \"x.ndjson\"\n\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"ordrs\"]\n",
    )
    .unwrap();
    let out = sluice().arg("validate").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "bad.toml:3:1: in `sources.orders`: unknown field `pth` (did you mean `path`?)"
        ),
        "{err}"
    );
    let good = sluice()
        .arg("validate")
        .arg(repo().join("examples/weather-file.toml"))
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("ok"));
}

#[test]
fn validate_reports_graph_errors_with_suggestions() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("graph.toml");
    std::fs::write(
        &bad,
        "[sources.orders]\ntype = \"file\"\npath = \"x\"\n\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"ordrs\"]\n",
    )
    .unwrap();
    let out = sluice().arg("validate").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("graph.toml:7:11"), "{err}");
    assert!(err.contains("did you mean `orders`?"), "{err}");
}

fn follow_pipeline(dir: &Path, input: &Path, admin: u16) -> std::path::PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "lifecycle"
[state]
dir = "{state}"
[checkpoint]
interval = "100ms"
[admin]
address = "127.0.0.1:{admin}"
[sources.reports]
type = "file"
path = "{input}"
follow = true
poll_interval = "20ms"
[transforms.by_country]
type = "aggregate"
inputs = ["reports"]
group_by = ["country"]
aggregates = {{ n = "count" }}
[sinks.counts]
type = "table"
inputs = ["by_country"]
[sinks.out]
type = "file"
inputs = ["by_country"]
path = "{out}"
format = "changes"
"#,
        state = dir.join("state").display(),
        input = input.display(),
        out = dir.join("out.ndjson").display(),
    );
    let p = dir.join("pipeline.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

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

#[test]
fn admin_endpoints_and_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines(300, 0)).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let pipeline = follow_pipeline(dir.path(), &input, port);
    let mut child = sluice()
        .arg("run")
        .arg(&pipeline)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        || http_get(&addr, "/ready").is_some_and(|(s, _)| s == 200),
        "/ready",
    );
    assert_eq!(http_get(&addr, "/health").unwrap().0, 200);
    wait_for(
        || {
            http_get(&addr, "/tables/counts/GT")
                .is_some_and(|(s, b)| s == 200 && b.contains("\"n\":100"))
        },
        "the table to show 100 GT events",
    );
    let (status, page) = http_get(&addr, "/tables/counts?limit=2").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("\"next\":\"MX\""), "{page}");
    assert_eq!(http_get(&addr, "/tables/counts/XX").unwrap().0, 404);
    assert_eq!(http_get(&addr, "/tables/nope").unwrap().0, 404);
    assert_eq!(http_get(&addr, "/tables/counts?limit=0").unwrap().0, 400);
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    for name in [
        "sluice_events_in_total",
        "sluice_checkpoints_total",
        "sluice_checkpoint_last_success_timestamp_seconds",
        "sluice_state_keys",
        "sluice_ready 1",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }

    // More input, then SIGTERM: drain, final checkpoint, exit 0.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap()
        .write_all(lines(300, 300).as_bytes())
        .unwrap();
    // SIGTERM once the new lines are being counted.
    wait_for(
        || {
            http_get(&addr, "/tables/counts/GT").is_some_and(|(_, b)| {
                b.split("\"n\":")
                    .nth(1)
                    .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n > 100)
            })
        },
        "GT above 100 after more input",
    );
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");

    // Restart and add the rest: every event counted exactly once.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap()
        .write_all(lines(300, 600).as_bytes())
        .unwrap();
    let mut child = sluice()
        .arg("run")
        .arg(&pipeline)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        || http_get(&addr, "/tables/counts/GT").is_some_and(|(_, b)| b.contains("\"n\":300")),
        "GT = 300 after the restart",
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let table = materialize(&dir.path().join("out.ndjson"));
    for c in ["GT", "MX", "US"] {
        assert_eq!(table[c]["n"], 300, "{c}: {:?}", table[c]);
    }
}

#[test]
fn replay_rebuilds_state_into_a_fresh_directory() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines(900, 0)).unwrap();
    let pipeline = follow_pipeline(dir.path(), &input, free_port());
    let into = dir.path().join("rebuilt");
    let out = sluice()
        .arg("replay")
        .arg(&pipeline)
        .arg("--into")
        .arg(&into)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("900 events"), "{stdout}");
    assert!(into.join("db").exists());
    // refuses to overwrite
    let again = sluice()
        .arg("replay")
        .arg(&pipeline)
        .arg("--into")
        .arg(&into)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    let table = materialize(&dir.path().join("out.ndjson"));
    assert_eq!(table["US"]["n"], 300);
}

/// CPU seconds (user + system) a process has used so far, from
/// /proc/<pid>/stat (assumes 100 clock ticks per second, as on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 12 and 13 after the state.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// After SIGTERM, while the run drains (here: waiting for a sink whose
/// Redis is unreachable to acknowledge, up to its 10 s grace), sluice
/// waits idle. It used to spin: once the signal handler had sent its
/// request and ended, the command's loop kept receiving "the sender is
/// gone" at once, using a whole core for the whole drain.
#[test]
fn a_draining_run_does_not_spin_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let http = free_port();
    let addr = format!("127.0.0.1:{admin}");
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[pipeline]
name = "drain"
[state]
dir = "{state}"
[checkpoint]
interval = "200ms"
[admin]
address = "{addr}"
[sources.in]
type = "http"
address = "127.0.0.1:{http}"
[transforms.counts]
type = "aggregate"
inputs = ["in"]
group_by = ["k"]
aggregates = {{ n = "count" }}
[sinks.out]
type = "redis"
inputs = ["counts"]
url = "redis://127.0.0.1:1"
mode = "hash"
key = "drain"
field = "{{k}}"
value_field = "n"
"#,
            state = dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = sluice()
        .arg("run")
        .arg(&pipeline)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        || TcpStream::connect(("127.0.0.1", http)).is_ok(),
        "the HTTP source",
    );
    let (status, _) =
        http_request(http, "POST", "/ingest", &[], br#"{"k":"a"}"#).expect("post an event");
    assert_eq!(status, 202);
    // A committed epoch the sink cannot acknowledge: the drain waits for it.
    wait_for(
        || metric_total(admin, "sluice_checkpoint_epoch").is_some_and(|e| e >= 1.0),
        "a checkpoint",
    );
    let pid = child.id();
    send_sigterm(pid);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        child.try_wait().unwrap().is_none(),
        "sluice did not wait for the sink"
    );
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    assert!(
        child.try_wait().unwrap().is_none(),
        "sluice did not wait for the sink"
    );
    assert!(
        used < 1.0,
        "sluice used {used:.2} CPU seconds in 3 s of waiting for a sink after SIGTERM"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// SIGTERM through the `kill` command.
fn send_sigterm(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// `--threads N` (or `SLUICE_THREADS`) sizes the runtime, and the start
/// says how many threads it got; 0 is refused.
#[test]
fn threads_sets_the_runtime_size() {
    for (flag, env, expected) in [("--threads 1", None, 1), ("", Some("3"), 3)] {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.ndjson");
        std::fs::write(&input, lines(30, 0)).unwrap();
        let admin = free_port();
        let pipeline = follow_pipeline(dir.path(), &input, admin);
        let log = dir.path().join("log");
        let mut cmd = support::sluice();
        cmd.arg("run").args(flag.split_whitespace()).arg(&pipeline);
        if let Some(n) = env {
            cmd.env("SLUICE_THREADS", n);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{admin}");
        wait_for(
            || {
                http_get(&addr, "/tables/counts")
                    .is_some_and(|(s, body)| s == 200 && body.contains("\"n\":10"))
            },
            "the counts",
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(&format!(
                "runtime threads for sources, sinks and the exchange: {expected}"
            )),
            "{flag} {env:?}: {text}"
        );
    }
    let out = support::sluice()
        .args(["run", "--threads", "0", "pipeline.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--threads"), "{err}");
}
