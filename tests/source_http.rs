//! The HTTP source end to end, through the real binary: events POSTed as
//! single objects, arrays and NDJSON are counted by country into a file
//! sink. A 202 means durable: sluice is killed with SIGKILL right after
//! answering, restarted, and every accepted event is counted exactly once;
//! SIGTERM leaves a checkpoint and loses nothing.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use support::worker::{Ready, Worker};
use support::*;

const PIPELINE: &str = r#"
[pipeline]
name = "http_ingest"

[state]
dir = "${STATE}"

[checkpoint]
interval = "50ms"

[admin]
address = "127.0.0.1:${ADMIN_PORT}"

[sources.web]
type = "http"
address = "127.0.0.1:${PORT}"
max_connections = ${MAX_CONNECTIONS:-512}
header_read_timeout = "${HEADER_TIMEOUT:-10s}"
body_read_timeout = "${BODY_TIMEOUT:-60s}"
max_body_bytes = ${MAX_BODY:-10485760}
max_buffered_bytes = ${MAX_BUFFERED:-67108864}

[transforms.by_country]
type = "aggregate"
inputs = ["web"]
group_by = ["country"]
aggregates = { n = "count" }

[sinks.out]
type = "file"
inputs = ["by_country"]
path = "${OUTPUT}"
format = "changes"
"#;

const COUNTRIES: &[&str] = &["GT", "BR", "DE", "JP", "KE"];

/// A pipeline in a fresh directory, on a free port.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    admin_port: u16,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pipeline.toml"), PIPELINE).unwrap();
        Setup {
            dir,
            port: pick_port(),
            admin_port: pick_port(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> PathBuf {
        self.path("sluice.log")
    }

    fn start(&self) -> Worker {
        self.start_with(&[])
    }

    /// Starts sluice with extra variables for the pipeline file.
    fn start_with(&self, extra: &[(&str, &str)]) -> Worker {
        let mut env = vec![
            ("STATE", self.path("state").display().to_string()),
            ("OUTPUT", self.path("out.ndjson").display().to_string()),
            ("PORT", self.port.to_string()),
            ("ADMIN_PORT", self.admin_port.to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let mut worker = Worker::new(&self.path("pipeline.toml"), &self.log()).envs(&env);
        worker.start().wait_ready(&Ready::Port(self.port));
        worker
    }

    fn post(&self, content_type: &str, body: &str) -> (u16, String) {
        http_request(
            self.port,
            "POST",
            "/ingest",
            &[("Content-Type", content_type)],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("POST failed: {e}; see {}", self.log().display()))
    }

    /// Final counts per country from the sink's output.
    fn counts(&self) -> BTreeMap<String, u64> {
        Self::by_country(materialize(&self.path("out.ndjson")))
    }

    /// Counts right after a kill (a partial last line may be there; sluice
    /// cuts it back at its next start).
    fn counts_so_far(&self) -> BTreeMap<String, u64> {
        Self::by_country(materialize_so_far(&self.path("out.ndjson")))
    }

    fn by_country(table: BTreeMap<String, serde_json::Value>) -> BTreeMap<String, u64> {
        table
            .into_iter()
            .map(|(k, v)| (k, v["n"].as_u64().unwrap()))
            .collect()
    }
}

/// Posts one request of `n` events in a random shape (single object,
/// array, NDJSON with or without its content type), expecting 202, and
/// adds them to `want`.
fn post_events(s: &Setup, rng: &mut impl Rng, n: usize, want: &mut BTreeMap<String, u64>) {
    let events: Vec<String> = (0..n)
        .map(|_| {
            let c = COUNTRIES[rng.random_range(0..COUNTRIES.len())];
            *want.entry(c.to_string()).or_default() += 1;
            format!(
                "{{\"country\":\"{c}\",\"weather\":\"Sunny\",\"temp\":{}}}",
                rng.random_range(-10..40)
            )
        })
        .collect();
    let (content_type, body) = match (n, rng.random_range(0..3)) {
        (1, 0) => ("application/json", events[0].clone()),
        (_, 0 | 1) => ("application/json", format!("[{}]", events.join(","))),
        (_, _) if rng.random_bool(0.5) => ("application/x-ndjson", events.join("\n")),
        _ => ("text/plain", events.join("\r\n") + "\n"),
    };
    let (status, reply) = s.post(content_type, &body);
    assert_eq!(status, 202, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["accepted"], n as u64);
}

fn assert_counts(s: &Setup, want: &BTreeMap<String, u64>, when: &str) {
    assert_eq!(
        s.counts(),
        *want,
        "{when}: counts differ from what was accepted; see {}",
        s.log().display()
    );
}

fn journal_segments(state: &Path) -> usize {
    std::fs::read_dir(state.join("journal").join("web"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn every_accepted_event_is_counted_once_after_sigkill() {
    let mut rng = rng("every_accepted_event_is_counted_once_after_sigkill");
    let s = Setup::new();
    let mut want = BTreeMap::new();
    let mut kills_before_checkpoint = 0;
    for round in 0..4 {
        let mut worker = s.start();
        let requests = rng.random_range(5..40);
        for _ in 0..requests {
            let n = if rng.random_bool(0.3) {
                1
            } else {
                rng.random_range(1..50)
            };
            post_events(&s, &mut rng, n, &mut want);
        }
        // Right after the last 202: no checkpoint can have covered all of it.
        worker.kill();
        let behind = s.counts_so_far() != want;
        kills_before_checkpoint += usize::from(behind);
        eprintln!("round {round}: killed after {requests} requests; output behind: {behind}");
    }
    assert!(
        kills_before_checkpoint > 0,
        "every kill came after the checkpoint: the journal replay was not exercised"
    );
    let mut worker = s.start();
    post_events(&s, &mut rng, 3, &mut want);
    let status = worker.terminate();
    assert!(
        status.success(),
        "SIGTERM exit: {status}; see {}",
        s.log().display()
    );
    assert_counts(&s, &want, "after 4 SIGKILLs and a SIGTERM");
}

#[test]
fn sigterm_leaves_a_checkpoint_and_loses_nothing() {
    let mut rng = rng("sigterm_leaves_a_checkpoint_and_loses_nothing");
    let s = Setup::new();
    let mut want = BTreeMap::new();
    let mut worker = s.start();
    for _ in 0..20 {
        let n = rng.random_range(1..30);
        post_events(&s, &mut rng, n, &mut want);
    }
    // Refused requests journal nothing.
    let (status, body) = s.post(
        "application/x-ndjson",
        "{\"country\":\"GT\"}\n{\"country\":\n",
    );
    assert_eq!(status, 400, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["line"], 2, "{body}");
    let (status, _) = http_request(s.port, "POST", "/nowhere", &[], b"{}").unwrap();
    assert_eq!(status, 404);
    let (status, _) = http_request(s.port, "GET", "/ingest", &[], b"").unwrap();
    assert_eq!(status, 405);
    let (_, metrics) = http_request(s.admin_port, "GET", "/metrics", &[], b"").unwrap();
    for gauge in ["sluice_journal_bytes{", "sluice_journal_backlog_events{"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(gauge) && l.contains("component=\"web\""))
            .unwrap_or_else(|| panic!("{gauge} missing from /metrics:\n{metrics}"));
        assert!(line.contains("pipeline=\"http_ingest\""), "{line}");
    }
    let status = worker.terminate();
    assert!(
        status.success(),
        "SIGTERM exit: {status}; see {}",
        s.log().display()
    );
    assert_counts(&s, &want, "after SIGTERM");
    assert!(journal_segments(&s.path("state")) >= 1);

    // Restart: the checkpoint holds the journal position, so nothing is
    // replayed on top of the restored counts; new events add up.
    let mut worker = s.start();
    for _ in 0..5 {
        let n = rng.random_range(1..30);
        post_events(&s, &mut rng, n, &mut want);
    }
    let status = worker.terminate();
    assert!(status.success(), "second SIGTERM exit: {status}");
    assert_counts(&s, &want, "after a restart and a second SIGTERM");
}

/// Clients post concurrently while sluice is killed at a random moment.
/// Every event answered 202 must be counted; events of requests that got
/// no answer may or may not be (they were in flight), never more than once.
#[test]
fn concurrent_clients_lose_nothing_accepted_across_random_sigkills() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let mut rng = rng("concurrent_clients_lose_nothing_accepted_across_random_sigkills");
    let s = Setup::new();
    let accepted = Mutex::new(BTreeMap::<String, u64>::new());
    let unanswered = Mutex::new(BTreeMap::<String, u64>::new());
    for _round in 0..3 {
        let mut worker = s.start();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for client in 0..4u64 {
                let seed: u64 = rng.random();
                let (s, stop, accepted, unanswered) = (&s, &stop, &accepted, &unanswered);
                scope.spawn(move || {
                    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
                    while !stop.load(Ordering::Relaxed) {
                        let n = rng.random_range(1..20);
                        let c = COUNTRIES[(client as usize + n) % COUNTRIES.len()];
                        let body = vec![format!("{{\"country\":\"{c}\"}}"); n].join("\n");
                        let reply = http_request(s.port, "POST", "/ingest", &[], body.as_bytes());
                        let into = match reply {
                            Ok((202, _)) => accepted,
                            Ok((status, body)) => panic!("unexpected {status}: {body}"),
                            Err(_) => unanswered,
                        };
                        *into.lock().unwrap().entry(c.to_string()).or_default() += n as u64;
                    }
                });
            }
            // The random kill point (while clients post) is the subject.
            std::thread::sleep(std::time::Duration::from_millis(rng.random_range(50..300)));
            worker.kill();
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut worker = s.start();
    let status = worker.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
    let counts = s.counts();
    let accepted = accepted.into_inner().unwrap();
    let unanswered = unanswered.into_inner().unwrap();
    eprintln!("accepted {accepted:?}\nunanswered {unanswered:?}\ncounted {counts:?}");
    assert!(accepted.values().sum::<u64>() > 0);
    for c in COUNTRIES {
        let got = counts.get(*c).copied().unwrap_or(0);
        let low = accepted.get(*c).copied().unwrap_or(0);
        let high = low + unanswered.get(*c).copied().unwrap_or(0);
        assert!(
            (low..=high).contains(&got),
            "{c}: counted {got}, accepted {low}, at most {high}; see {}",
            s.log().display()
        );
    }
}

/// The value of the `web` source's `gauge` on /metrics.
fn gauge(s: &Setup, gauge: &str) -> f64 {
    let (_, metrics) = http_request(s.admin_port, "GET", "/metrics", &[], b"").unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("{gauge}{{")) && l.contains("component=\"web\""))
        .unwrap_or_else(|| panic!("{gauge} missing from /metrics:\n{metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Polls `gauge` until `done` holds for it (at most 20 s), checking
/// `bound` on every sample.
fn watch_gauge(s: &Setup, name: &str, bound: f64, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = gauge(s, name);
        assert!(v <= bound, "{name} = {v}, over its limit {bound}");
        if done(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} stuck at {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until the server closes the connection; false if it is still
/// open after 20 s. Returns what it sent too.
fn closed_by_server(stream: &mut std::net::TcpStream) -> (bool, String) {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut out = Vec::new();
    let closed = match stream.read_to_end(&mut out) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    (closed, String::from_utf8_lossy(&out).into_owned())
}

/// Regression: no header or body timeout, no connection limit, no bound on
/// buffered bodies (1000 connections with unfinished headers stayed open;
/// 100 half-sent 10 MiB bodies took RSS from 59 to 585 MB). The issue's
/// reproduction, scaled down, against the binary.
#[test]
fn slow_clients_hold_bounded_connections_and_memory() {
    use std::io::Write;
    let s = Setup::new();
    let mut worker = s.start_with(&[
        ("MAX_CONNECTIONS", "32"),
        ("HEADER_TIMEOUT", "1s"),
        ("BODY_TIMEOUT", "1s"),
        ("MAX_BODY", "1048576"),
        ("MAX_BUFFERED", "4194304"),
    ]);
    // 200 connections stop in the middle of their headers
    let mut slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            c.write_all(b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Ty")
                .unwrap();
            c
        })
        .collect();
    watch_gauge(&s, "sluice_http_connections", 32.0, |v| v == 32.0);
    for (i, c) in slow.iter_mut().enumerate() {
        assert!(closed_by_server(c).0, "connection {i} is still open");
    }
    drop(slow);
    watch_gauge(&s, "sluice_http_connections", 32.0, |v| v == 0.0);
    let (status, body) = s.post("application/json", "{\"country\":\"GT\"}");
    assert_eq!(status, 202, "{body}");

    // 40 clients announce a 1 MiB body and send half of it
    let head = "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n";
    let mut halves: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            c.write_all(head.as_bytes()).unwrap();
            c.write_all(&vec![b' '; 512 << 10]).unwrap();
            c
        })
        .collect();
    let buffered = "sluice_http_buffered_bytes";
    watch_gauge(&s, buffered, 4194304.0, |v| v >= 4194304.0);
    let mut statuses = BTreeMap::<String, usize>::new();
    for (i, c) in halves.iter_mut().enumerate() {
        let (closed, reply) = closed_by_server(c);
        assert!(closed, "half-sent request {i} is still open");
        *statuses
            .entry(reply.get(9..12).unwrap_or("none").to_string())
            .or_default() += 1;
    }
    eprintln!("answers to half-sent bodies: {statuses:?}");
    assert!(statuses.get("408").is_some_and(|&n| n >= 4), "{statuses:?}");
    assert_eq!(
        statuses.get("408").copied().unwrap_or(0) + statuses.get("503").copied().unwrap_or(0),
        40,
        "{statuses:?}"
    );
    drop(halves);
    watch_gauge(&s, buffered, 4194304.0, |v| v == 0.0);
    watch_gauge(&s, "sluice_http_connections", 32.0, |v| v == 0.0);
    let (status, body) = s.post("application/json", "{\"country\":\"BR\"}");
    assert_eq!(status, 202, "{body}");
    let status = worker.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
    assert_counts(
        &s,
        &BTreeMap::from([("GT".to_string(), 1), ("BR".to_string(), 1)]),
        "after slow clients",
    );
}
