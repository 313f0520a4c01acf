//! Shared helpers of the integration tests: the sluice binary, running it,
//! killing it, and materialising its outputs.
#![allow(dead_code)]
// Included by many test crates, each using a part of it: `pub` is the
// visibility that fits, though no crate reaches all of it.
#![allow(unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod azure;
pub mod cluster;
pub mod cluster_workload;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod markdown;
pub mod remote;
pub mod s3;
pub mod services;
pub mod w1;
pub mod worker;

pub fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A seeded RNG; the seed comes from SLUICE_TEST_SEED or the clock, and is
/// printed so that a failure can be replayed.
pub fn rng(test: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: SLUICE_TEST_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Starts `sluice run --once <pipeline>` with `env`.
pub fn spawn_run(pipeline: &Path, env: &[(&str, String)], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = sluice();
    cmd.args(["run", "--once"])
        .arg(pipeline)
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("RUST_LOG", "info");
    cmd.spawn().expect("start sluice")
}

/// Runs the pipeline to completion, killing it with SIGKILL at random
/// moments first. Returns the number of kills that hit a running process.
pub fn run_with_kills(
    pipeline: &Path,
    env: &[(&str, String)],
    log: &Path,
    rng: &mut impl Rng,
    kills: usize,
    max_delay: Duration,
) -> usize {
    let mut sluice = worker::Worker::new(pipeline, log).once().envs(env);
    let mut hit = 0;
    for _ in 0..kills {
        sluice.start();
        // The random kill point is the subject of the crash tests.
        let delay =
            Duration::from_micros(rng.random_range(1_000..max_delay.as_micros().max(2_000) as u64));
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline && sluice.is_running() {
            std::thread::sleep(Duration::from_millis(1));
        }
        if sluice.kill() {
            hit += 1;
        }
    }
    sluice.run_to_end(Duration::from_secs(600));
    hit
}

/// The last 15 lines of a log, for failure messages (the temporary
/// directory holding it is gone once the test has failed).
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Reads a file written with `format = "changes"`: id -> final record.
pub fn materialize(path: &Path) -> BTreeMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut table = BTreeMap::new();
    for line in text.lines() {
        let change: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", path.display()));
        let id = change["id"].as_str().unwrap().to_string();
        if change["op"] == "delete" {
            table.remove(&id);
        } else {
            table.insert(id, change["record"].clone());
        }
    }
    table
}

/// [`materialize`] for progress probes while sluice runs: only complete
/// lines count. A killed or still-writing sluice can leave a partial last
/// line, which sluice itself cuts back at its next start.
pub fn materialize_so_far(path: &Path) -> BTreeMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("complete.ndjson");
    std::fs::write(&copy, complete).unwrap();
    materialize(&copy)
}

/// Lines of a file that appear more than once (exactly-once check for appends).
pub fn duplicate_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut seen = std::collections::HashMap::new();
    for line in text.lines() {
        *seen.entry(line.to_string()).or_insert(0) += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(l, _)| l)
        .collect()
}

/// JSON text with object keys sorted at every level, whatever order
/// serde_json keeps (its `preserve_order` feature may be switched on by
/// other crates of the workspace).
pub fn canonical(v: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<_> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                serde_json::Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sort(v)))
                        .collect(),
                )
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

/// The records of an NDJSON file, canonical (sorted keys) and sorted.
pub fn canonical_file(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| canonical(&serde_json::from_str::<serde_json::Value>(l).unwrap()))
        .collect();
    v.sort();
    v
}

pub fn canonical_values<'a>(values: impl Iterator<Item = &'a serde_json::Value>) -> Vec<String> {
    let mut v: Vec<String> = values.map(canonical).collect();
    v.sort();
    v
}

/// A port free on 127.0.0.1 now, for a process the test starts next.
///
/// Not from the kernel's ephemeral range (32768-60999 on Linux): binding
/// port 0 hands out a port from that range, and between the release and
/// the child's bind any outgoing connection of a running test (to Redis,
/// a broker, a worker) may take it as its local port. These come from
/// 20000-31999 instead, starting at a point that differs between test
/// processes and times, never twice from one process, each checked free
/// by binding it.
pub fn pick_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        rand::rng().random_range(0..SPAN),
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::AcqRel) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Starts `sluice run <pipeline>` (unbounded: it runs until signalled).
pub fn spawn_serve(pipeline: &Path, env: &[(&str, String)], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = sluice();
    cmd.arg("run")
        .arg(pipeline)
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("RUST_LOG", "info");
    cmd.spawn().expect("start sluice")
}

/// Sends SIGTERM (graceful shutdown) and waits for the exit status.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
    child.wait().unwrap()
}

/// Waits until something listens on 127.0.0.1:`port`, failing if `child`
/// exits first or it takes more than 20 s.
pub fn wait_for_port(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "sluice exited ({status}) before listening on {port}; see {}",
                log.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sum of every series of metric `name` on the admin `/metrics`, or
/// None when the endpoint does not answer or has no such series.
pub fn metric_total(port: u16, name: &str) -> Option<f64> {
    let (status, body) = http_request(port, "GET", "/metrics", &[], b"").ok()?;
    if status != 200 {
        return None;
    }
    let values: Vec<f64> = body
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The value of the series of metric `name` whose labels include these,
/// on the admin `/metrics` at `port` (None: no answer, or no such series).
pub fn metric_series(port: u16, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (status, body) = http_request(port, "GET", "/metrics", &[], b"").ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A minimal HTTP/1.1 request over a plain socket: (status, body). Errors
/// when the connection fails or breaks before a complete status line.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    http_request_with_headers(port, method, path, headers, body).map(|(s, _, b)| (s, b))
}

/// An HTTP response: status, headers (name, value), body.
pub type Response = (u16, Vec<(String, String)>, String);

/// [`http_request`] that also returns the response's headers.
pub fn http_request_with_headers(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let broken = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "incomplete response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(broken)?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(broken)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}
