//! `/ready` tells the truth: not ready while a journal backlog is replayed
//! (also after a restart), while a file source reads its files, while an
//! AMQP broker cannot be reached; ready again once these recover. A taken
//! HTTP port fails the start instead.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::services::{free_port, PrivateRedis};
use support::worker::{Ready, Worker};
use support::*;

/// `GET /ready`: (status, JSON body).
fn ready(admin: u16) -> Option<(u16, serde_json::Value)> {
    let (status, body) = http_request(admin, "GET", "/ready", &[], b"").ok()?;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    Some((status, json))
}

/// Polls `/ready` until `want` accepts an answer (bounded); returns it.
/// Each new answer on the way is printed, for the failure message.
fn wait_ready(
    worker: &mut Worker,
    admin: u16,
    what: &str,
    timeout: Duration,
    want: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last: Option<(u16, serde_json::Value)> = None;
    let mut accepted = None;
    worker.wait_until(what, timeout, || {
        let Some((status, body)) = ready(admin) else {
            return false;
        };
        if want(status, &body) {
            accepted = Some(body);
            return true;
        }
        if last.as_ref() != Some(&(status, body.clone())) {
            eprintln!("waiting for {what}; /ready: {status} {body}");
            last = Some((status, body));
        }
        false
    });
    accepted.expect("wait_until returns once `want` accepted an answer")
}

fn has_reason(body: &serde_json::Value, text: &str) -> bool {
    body["reasons"].as_array().is_some_and(|r| {
        r.iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains(text)))
    })
}

/// The value of the first `/metrics` sample whose line starts with `prefix`
/// and contains `label`.
fn metric(admin: u16, prefix: &str, label: &str) -> Option<f64> {
    let (_, text) = http_request(admin, "GET", "/metrics", &[], b"").ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

const JOURNAL_PIPELINE: &str = r#"
[pipeline]
name = "ready_journal"
[state]
dir = "${STATE}"
[checkpoint]
interval = "50ms"
max_pending_epochs = 2
[admin]
address = "127.0.0.1:${ADMIN_PORT}"
ready_max_backlog = 500
[sources.web]
type = "http"
address = "127.0.0.1:${PORT}"
[transforms.by_country]
type = "aggregate"
inputs = ["web"]
group_by = ["country"]
aggregates = { n = "count" }
[sinks.counts]
type = "redis"
inputs = ["by_country"]
url = "${REDIS_URL}"
key = "ready:counts"
field = "{country}"
value_field = "n"
"#;

#[test]
fn journal_backlog_is_not_ready_until_caught_up_also_after_a_restart() {
    let redis = PrivateRedis::start();
    redis.stop(); // the sink cannot write: the processor stalls
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(&pipeline, JOURNAL_PIPELINE).unwrap();
    let (port, admin) = (free_port(), free_port());
    let env = vec![
        ("STATE", dir.path().join("state").display().to_string()),
        ("PORT", port.to_string()),
        ("ADMIN_PORT", admin.to_string()),
        ("REDIS_URL", redis.url()),
    ];
    let mut sluice = Worker::new(&pipeline, &dir.path().join("sluice.log")).envs(&env);
    sluice.start().wait_ready(&Ready::Port(port));
    let body = wait_ready(
        &mut sluice,
        admin,
        "ready at start",
        Duration::from_secs(20),
        |s, _| s == 200,
    );
    assert_eq!(body["sources"][0]["state"], "up", "{body}");
    assert_eq!(body["sources"][0]["backlog_events"], 0, "{body}");

    // Single events in separate epochs fill the sink's pending epochs:
    // reading stops.
    let post = |n: usize| {
        let body: String = (0..n)
            .map(|i| format!("{{\"country\":\"C{}\"}}\n", i % 7))
            .collect();
        let (status, text) = http_request(
            port,
            "POST",
            "/ingest",
            &[("Content-Type", "application/x-ndjson")],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 202, "{text}");
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(admin, "sluice_sink_pending_epochs{", "component=\"counts\"").unwrap_or(0.0) < 2.0
    {
        assert!(Instant::now() < deadline, "the sink never fell behind");
        post(1);
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..5 {
        post(1000);
    }
    let body = wait_ready(
        &mut sluice,
        admin,
        "not ready: catching up",
        Duration::from_secs(20),
        |s, b| s == 503 && has_reason(b, "source `web` is catching up"),
    );
    assert!(
        body["sources"][0]["backlog_events"].as_u64().unwrap() > 500,
        "{body}"
    );
    assert_eq!(body["ready"], false);
    assert!(metric(admin, "sluice_source_backlog_events{", "component=\"web\"").unwrap() > 500.0);
    assert_eq!(metric(admin, "sluice_ready{", ""), Some(0.0));
    sluice.wait_log("catching up: source web, ", 1);

    // A restart replays the journal from the checkpoint: not ready either.
    sluice.kill();
    sluice.start().wait_ready(&Ready::Port(port));
    let body = wait_ready(
        &mut sluice,
        admin,
        "not ready after restart",
        Duration::from_secs(20),
        |s, b| s == 503 && has_reason(b, "source `web` is catching up"),
    );
    assert!(
        body["sources"][0]["backlog_events"].as_u64().unwrap() > 500,
        "{body}"
    );
    assert!(metric(admin, "sluice_restore_seconds{", "").is_some());

    // The sink recovers: the backlog drains and the pipeline is ready.
    redis.launch();
    let body = wait_ready(
        &mut sluice,
        admin,
        "ready after catching up",
        Duration::from_secs(90),
        |s, _| s == 200,
    );
    assert_eq!(body["reasons"], serde_json::json!([]));
    assert!(body["sources"][0]["backlog_events"].as_u64().unwrap() <= 500);
    assert_eq!(metric(admin, "sluice_ready{", ""), Some(1.0));
    sluice.wait_log("ready: state restored and sources caught up", 1);
    eprintln!("{}", sluice.log_since_start());
    assert!(sluice.terminate().success());
}

#[test]
fn http_port_taken_fails_the_start_and_is_never_ready() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(&pipeline, JOURNAL_PIPELINE).unwrap();
    let admin = free_port();
    let env = vec![
        ("STATE", dir.path().join("state").display().to_string()),
        ("PORT", port.to_string()),
        ("ADMIN_PORT", admin.to_string()),
        ("REDIS_URL", "redis://127.0.0.1:1".to_string()),
    ];
    let mut sluice = Worker::new(&pipeline, &dir.path().join("sluice.log")).envs(&env);
    sluice.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = sluice.exit_status() {
            break status;
        }
        if let Some((code, body)) = ready(admin) {
            assert_eq!(code, 503, "ready without its HTTP listener: {body}");
        }
        assert!(Instant::now() < deadline, "sluice did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(1));
    let text = sluice.log_since_start();
    assert!(
        text.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{text}"
    );
    drop(taken);
}

#[test]
fn file_source_is_not_ready_while_reading_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    let lines: String = (0..600).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    let admin = free_port();
    std::fs::write(
        &pipeline,
        format!(
            r#"
[state]
dir = "{state}"
[admin]
address = "127.0.0.1:{admin}"
[sources.input]
type = "file"
path = "{input}"
follow = true
max_events_per_second = 300
[sinks.out]
type = "file"
inputs = ["input"]
path = "{out}"
"#,
            state = dir.path().join("state").display(),
            input = input.display(),
            out = dir.path().join("out.ndjson").display()
        ),
    )
    .unwrap();
    let mut sluice = Worker::new(&pipeline, &dir.path().join("sluice.log"));
    sluice.start().wait_ready(&Ready::Port(admin));
    wait_ready(
        &mut sluice,
        admin,
        "not ready while reading",
        Duration::from_secs(20),
        |s, b| s == 503 && has_reason(b, "bytes of its files left to read"),
    );
    wait_ready(
        &mut sluice,
        admin,
        "ready after reading",
        Duration::from_secs(30),
        |s, _| s == 200,
    );
    assert!(sluice
        .log_since_start()
        .contains("bytes of its files left to read"));
    assert!(sluice.terminate().success());
}

/// A TCP proxy on a fixed port to RabbitMQ, started and stopped at will
/// (stopping closes every connection through it).
struct Proxy {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(port: u16, upstream: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (s, c) = (stop.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut list = c.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            stop,
            conns,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(feature = "amqp")]
#[test]
fn amqp_broker_unreachable_is_not_ready_until_it_is_reachable() {
    let url = support::amqp::shared_broker();
    let upstream: u16 = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .unwrap_or(5672);
    let port = free_port();
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let queue = support::services::unique("sluice_ready");
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[state]
dir = "{state}"
[admin]
address = "127.0.0.1:{admin}"
[sources.queue]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:{port}/%2f"
queue = "{queue}"
declare = true
connect_timeout = "1s"
reconnect_delay = "100ms"
reconnect_max_delay = "500ms"
[sinks.out]
type = "file"
inputs = ["queue"]
path = "{out}"
"#,
            state = dir.path().join("state").display(),
            out = dir.path().join("out.ndjson").display()
        ),
    )
    .unwrap();
    let mut sluice = Worker::new(&pipeline, &dir.path().join("sluice.log"));
    sluice.start().wait_ready(&Ready::Port(admin));
    let body = wait_ready(
        &mut sluice,
        admin,
        "not ready: broker unreachable",
        Duration::from_secs(20),
        |s, b| s == 503 && has_reason(b, "cannot reach the AMQP broker"),
    );
    assert_eq!(body["sources"][0]["state"], "down", "{body}");

    let proxy = Proxy::start(port, upstream);
    wait_ready(
        &mut sluice,
        admin,
        "ready once reachable",
        Duration::from_secs(20),
        |s, _| s == 200,
    );

    drop(proxy); // the connection breaks
    wait_ready(
        &mut sluice,
        admin,
        "not ready after losing the broker",
        Duration::from_secs(20),
        |s, b| s == 503 && has_reason(b, "cannot reach the AMQP broker"),
    );
    let _proxy = Proxy::start(port, upstream);
    wait_ready(
        &mut sluice,
        admin,
        "ready again",
        Duration::from_secs(20),
        |s, _| s == 200,
    );
    assert!(sluice.terminate().success());
}
