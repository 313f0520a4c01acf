//! Config parsing, body splitting, and the source run in-process against a
//! real socket: every status code, auth, journaling, commits, shutdown,
//! restart and bounded (replay) mode. Connection limits are in `limits`.

mod limits;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_engine::decode::Decoder;
use sluice_engine::operator::FieldSet;
use sluice_engine::source::{Commit, Progress, Source, SourceContext, SourceEvent, SourceOutput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::body::{Framing, Location, Validator};
use super::{decode_position, encode_position, HttpSource, HttpSourceConfig};

#[test]
fn example_config_parses_and_defaults_apply() {
    let c: HttpSourceConfig = toml::from_str(
        "address = \"127.0.0.1:8080\"\npaths = [\"/ingest\"]\nauth_token_env = \"INGEST_TOKEN\"",
    )
    .unwrap();
    assert_eq!(c.max_body_bytes, 10 << 20);
    assert_eq!(c.max_backlog_events, 1_000_000);
    assert_eq!(c.segment_bytes, 64 << 20);
    assert!(c.fsync);
    assert_eq!(c.journal_dir, None);
    let d: HttpSourceConfig = toml::from_str("").unwrap();
    assert_eq!(
        (d.address.as_str(), d.paths.clone()),
        ("127.0.0.1:8080", vec!["/ingest".to_string()])
    );
}

#[test]
fn tls_option_parses_and_its_typos_are_refused() {
    let c: HttpSourceConfig =
        toml::from_str("tls = { cert = \"tls/tls.crt\", key = \"tls/tls.key\" }").unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(
        (tls.cert.to_str(), tls.key.to_str()),
        (Some("tls/tls.crt"), Some("tls/tls.key"))
    );
    assert_eq!(HttpSourceConfig::default().tls, None);
    let err = toml::from_str::<HttpSourceConfig>("tls = { cert = \"a\", kye = \"b\" }")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `kye`"), "{err}");
}

#[test]
fn bad_options_are_explained() {
    for (toml, want) in [
        ("adress = \"x:1\"", "unknown field `adress`"),
        ("address = \"8080\"", "expected `host:port`"),
        ("address = \"localhost:http\"", "expected `host:port`"),
        ("paths = [\"ingest\"]", "must start with `/`"),
        ("paths = [\"/in/{id}\"]", "only letters, digits"),
        ("paths = []", "at least one path"),
    ] {
        let e = toml::from_str::<HttpSourceConfig>(toml)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{toml}: {e}");
    }
}

#[test]
fn positions_round_trip() {
    assert_eq!(decode_position(&encode_position(42)), Some(42));
    assert_eq!(decode_position(b"short"), None);
}

/// The events of a body as strings, or (status, message, location).
fn split(body: &str, ndjson: bool) -> Result<Vec<String>, (u16, String, Option<Location>)> {
    let framing = if ndjson {
        Framing::Ndjson
    } else {
        Framing::Detect
    };
    Validator::new(64)
        .split(body.as_bytes(), framing)
        .map(|spans| spans.into_iter().map(|r| body[r].to_string()).collect())
        .map_err(|r| (r.status, r.message, r.at))
}

#[test]
fn bodies_split_into_validated_events() {
    let ok: &[(&str, bool, &[&str])] = &[
        ("{\"a\":1}", false, &["{\"a\":1}"]),
        (
            "  {\n \"a\": [1, {\"b\": \"]}\"}]\n}\n",
            false,
            &["{\n \"a\": [1, {\"b\": \"]}\"}]\n}"],
        ),
        (
            "[{\"a\":1}, {\"b\":\"x,]\\\"\"} ]",
            false,
            &["{\"a\":1}", "{\"b\":\"x,]\\\"\"}"],
        ),
        ("[]", false, &[]),
        ("[ ]\n", false, &[]),
        (
            "{\"a\":1}\n{\"a\":2}\r\n\n  {\"a\":3}",
            false,
            &["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"],
        ),
        (
            "{\"a\":1}\n\n{\"a\":2}\n",
            true,
            &["{\"a\":1}", "{\"a\":2}"],
        ),
    ];
    for (body, ndjson, want) in ok {
        assert_eq!(split(body, *ndjson).unwrap(), *want, "{body:?}");
    }
}

#[test]
fn bad_bodies_say_where() {
    let at = |r: Result<Vec<String>, (u16, String, Option<Location>)>| {
        let (status, message, at) = r.unwrap_err();
        (status, at, message)
    };
    for (body, ndjson) in [("", false), (" \r\n", false), ("\n\n", true)] {
        let (s, l, m) = at(split(body, ndjson));
        assert_eq!((s, l), (400, None));
        assert!(m.contains("empty"), "{m}");
    }
    let (s, l, m) = at(split("{\"a\":1}\n{\"a\":}\n{\"a\":3}", false));
    assert_eq!((s, l), (400, Some(Location::Line(2))));
    assert!(m.starts_with("line 2: invalid JSON"), "{m}");
    let (s, l, m) = at(split("{\"a\":1}\n\n[1]\n", true));
    assert_eq!((s, l), (400, Some(Location::Line(3))));
    assert!(m.contains("found an array"), "{m}");
    let (_, l, m) = at(split("[{\"a\":1}, 2, {}]", false));
    assert_eq!(l, Some(Location::Index(1)));
    assert!(
        m.starts_with("element 1:") && m.contains("found a number"),
        "{m}"
    );
    let (_, l, _) = at(split("[{\"a\":1},]", false));
    assert_eq!(l, Some(Location::Index(1)));
    let (_, l, m) = at(split("[{\"a\":\"unterminated}]", false));
    assert_eq!(l, Some(Location::Index(0)));
    assert!(m.contains("not closed"), "{m}");
    let (_, l, m) = at(split("[{}] x", false));
    assert_eq!(l, None);
    assert!(m.contains("trailing"), "{m}");
    let (_, l, _) = at(split("[{}}]", false));
    assert_eq!(l, Some(Location::Index(0)));
    let (_, l, _) = at(split("{\n\"a\": nope\n}", false));
    assert_eq!(l, Some(Location::Line(2)), "a single object's error line");
    let (s, l, m) = at(split(
        &format!("{{}}\n{{\"pad\":\"{}\"}}", "x".repeat(80)),
        true,
    ));
    assert_eq!((s, l), (413, Some(Location::Line(2))));
    assert!(m.contains("exceeds the limit of 64 bytes"), "{m}");
    let (s, l, _) = at(split(&format!("{{\"pad\":\"{}\"}}", "x".repeat(80)), false));
    assert_eq!(
        (s, l),
        (413, Some(Location::Line(1))),
        "a single large object"
    );
}

/// A running source under test.
struct Harness {
    port: u16,
    events: mpsc::Receiver<SourceEvent>,
    commits: mpsc::UnboundedSender<Commit>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), sluice_engine::source::SourceError>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(config: HttpSourceConfig, state: &Path, restored: Option<u64>, bounded: bool) -> Harness {
    start_with(config, state, restored, bounded, false)
}

fn start_with(
    mut config: HttpSourceConfig,
    state: &Path,
    restored: Option<u64>,
    bounded: bool,
    accept_empty_state: bool,
) -> Harness {
    let port = free_port();
    config.address = format!("127.0.0.1:{port}");
    let (tx, events) = mpsc::channel(64);
    let (commits, commit_rx) = mpsc::unbounded_channel();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let name: Arc<str> = Arc::from("web");
    let decoder = Arc::new(Decoder::new(name.clone(), &FieldSet::All, None, 256));
    let ctx = SourceContext {
        name,
        pipeline: Arc::from("test"),
        state_dir: state.to_path_buf(),
        restored: restored
            .map(|p| BTreeMap::from([(0, encode_position(p))]))
            .unwrap_or_default(),
        bounded,
        accept_empty_state,
        restored_remotely: false,
        shutdown: shutdown_rx,
        commits: commit_rx,
        output: SourceOutput::new(0, decoder, tx, Arc::new(Progress::default())),
    };
    let task = tokio::spawn(Box::new(HttpSource::new(config)).run(ctx));
    Harness {
        port,
        events,
        commits,
        shutdown,
        task,
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: serde_json::Value,
}

async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("cannot connect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let _ = stream.write_all(&bytes).await; // the server may answer (413) before reading it all
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}

async fn post(port: u16, body: &str) -> Reply {
    request(
        port,
        "POST",
        "/ingest",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// Collects emitted events until `n` arrived: (sequence numbers, last position).
async fn collect(h: &mut Harness, n: usize) -> (Vec<u64>, u64) {
    let mut seqs = Vec::new();
    let mut position = 0;
    while seqs.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(10), h.events.recv())
            .await
            .expect("events in time")
            .expect("channel open");
        if let SourceEvent::Data {
            batch,
            position: p,
            dead,
            ..
        } = ev
        {
            assert!(dead.is_empty(), "{dead:?}");
            seqs.extend(batch.meta.iter().map(|m| m.offset));
            position = decode_position(&p).unwrap();
        }
    }
    (seqs, position)
}

#[tokio::test]
async fn every_status_code() {
    let dir = tempfile::tempdir().unwrap();
    let config = HttpSourceConfig {
        max_body_bytes: 1024,
        max_backlog_events: 6,
        ..HttpSourceConfig::default()
    };
    let mut h = start(config, dir.path(), None, false);
    let r = post(h.port, "{\"country\":\"GT\"}").await;
    assert_eq!(
        (r.status, r.body.clone()),
        (202, serde_json::json!({"accepted": 1}))
    );
    let headers = r.headers.to_ascii_lowercase();
    assert!(
        headers.contains("content-type: application/json"),
        "{headers}"
    );
    let r = post(h.port, "[{\"country\":\"BR\"},{\"country\":\"GT\"}]").await;
    assert_eq!(r.body, serde_json::json!({"accepted": 2}));
    let r = request(
        h.port,
        "POST",
        "/ingest",
        &[("Content-Type", "application/x-ndjson")],
        b"{\"a\":1}\n{\"a\":2}\n",
    )
    .await;
    assert_eq!((r.status, r.body["accepted"].as_u64()), (202, Some(2)));
    let (seqs, position) = collect(&mut h, 5).await;
    assert_eq!((seqs, position), ((0..5).collect(), 5));

    let r = post(h.port, "{\"a\":1}\n{\"a\":\n").await;
    assert_eq!(
        (r.status, r.body["line"].as_u64()),
        (400, Some(2)),
        "{:?}",
        r.body
    );
    let r = post(h.port, "[{\"a\":1},\"no\"]").await;
    assert_eq!(
        (r.status, r.body["index"].as_u64()),
        (400, Some(1)),
        "{:?}",
        r.body
    );
    let r = post(h.port, &format!("{{\"pad\":\"{}\"}}", "x".repeat(2000))).await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("max_body_bytes"));
    let r = post(h.port, &format!("{{\"pad\":\"{}\"}}", "x".repeat(300))).await;
    assert_eq!(r.status, 413, "an event over max_event_bytes: {:?}", r.body);
    let r = request(h.port, "GET", "/ingest", &[], b"").await;
    assert_eq!(r.status, 405);
    let r = request(h.port, "POST", "/elsewhere", &[], b"{}").await;
    assert_eq!(r.status, 404);

    // backlog: 5 journaled, none committed, limit 6
    let r = post(h.port, "[{},{}]").await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.headers.contains("retry-after: 1"), "{}", r.headers);
    // a checkpoint commits them: room again
    h.commits
        .send(Commit {
            epoch: 1,
            positions: BTreeMap::from([(0, encode_position(5))]),
        })
        .unwrap();
    let mut status = 0;
    for _ in 0..100 {
        status = post(h.port, "[{},{}]").await.status;
        if status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 202);
    let (seqs, _) = collect(&mut h, 2).await;
    assert_eq!(seqs, vec![5, 6], "rejected requests journaled nothing");
    h.shutdown.send(true).unwrap();
    h.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bearer_token_is_required_when_configured() {
    let var = "SLUICE_HTTP_TEST_TOKEN_7f3a";
    std::env::set_var(var, "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let config = HttpSourceConfig {
        auth_token_env: Some(var.into()),
        ..HttpSourceConfig::default()
    };
    let mut h = start(config, dir.path(), None, false);
    for auth in [
        None,
        Some("Bearer wrong!"),
        Some("Basic s3cret"),
        Some("Bearer s3cre"),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        let r = request(h.port, "POST", "/ingest", &headers, b"{}").await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert!(r.headers.contains("www-authenticate: bearer"));
    }
    let r = request(
        h.port,
        "POST",
        "/ingest",
        &[("Authorization", "Bearer s3cret")],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(collect(&mut h, 1).await.0, vec![0]);
    h.shutdown.send(true).unwrap();
    h.task.await.unwrap().unwrap();

    // a missing variable stops the source instead of serving unauthenticated
    let config = HttpSourceConfig {
        auth_token_env: Some("SLUICE_HTTP_TEST_UNSET_VAR_91c2".into()),
        ..HttpSourceConfig::default()
    };
    let h = start(config, dir.path(), None, false);
    let err = h.task.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("SLUICE_HTTP_TEST_UNSET_VAR_91c2"), "{err}");
}

/// A source with 64-byte journal segments in `state` that accepted and
/// emitted ten events, `{"i":0}` to `{"i":9}`, and was told that a
/// checkpoint covers the first six.
async fn ten_events_committed_at_six(state: &Path) -> (HttpSourceConfig, Harness) {
    let config = HttpSourceConfig {
        segment_bytes: 64,
        ..HttpSourceConfig::default()
    };
    let mut h = start(config.clone(), state, None, false);
    for i in 0..10 {
        assert_eq!(post(h.port, &format!("{{\"i\":{i}}}")).await.status, 202);
    }
    collect(&mut h, 10).await;
    h.commits
        .send(Commit {
            epoch: 1,
            positions: BTreeMap::from([(0, encode_position(6))]),
        })
        .unwrap();
    (config, h)
}

#[tokio::test]
async fn restart_resumes_after_the_checkpoint_and_replay_reads_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (config, h) = ten_events_committed_at_six(dir.path()).await;
    h.shutdown.send(true).unwrap();
    h.task.await.unwrap().unwrap();
    let journal = dir.path().join("journal").join("web");
    let segments = std::fs::read_dir(&journal).unwrap().filter(|e| {
        e.as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".log")
    });
    assert!(segments.count() < 10, "committed segments were deleted");

    // restart from the checkpoint at 6: records 6..10 again, then new ones
    let mut h = start(config.clone(), dir.path(), Some(6), false);
    let (seqs, _) = collect(&mut h, 4).await;
    assert_eq!(seqs, vec![6, 7, 8, 9]);
    assert_eq!(post(h.port, "{\"i\":10}").await.status, 202);
    assert_eq!(collect(&mut h, 1).await.0, vec![10]);
    h.shutdown.send(true).unwrap();
    h.task.await.unwrap().unwrap();

    // bounded (replay): no server, reads to the end and finishes
    let mut h = start(config.clone(), dir.path(), Some(8), true);
    let mut seqs = Vec::new();
    while let Some(ev) = h.events.recv().await {
        match ev {
            SourceEvent::Data { batch, .. } => seqs.extend(batch.meta.iter().map(|m| m.offset)),
            SourceEvent::PartitionDone { partition: 0, .. } => break,
            _ => {}
        }
    }
    assert_eq!(seqs, vec![8, 9, 10]);
    h.task.await.unwrap().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", h.port)).is_err(),
        "no server in bounded mode"
    );

    // a checkpoint beyond the journal's end is refused, not waited for
    let h = start(config, dir.path(), Some(500), false);
    let err = h.task.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("deleted or replaced"), "{err}");
}

#[tokio::test]
async fn shutdown_emits_everything_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(HttpSourceConfig::default(), dir.path(), None, false);
    let port = h.port;
    let clients: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move {
                post(port, &format!("[{{\"i\":{i}}},{{\"i\":{i}}}]"))
                    .await
                    .status
            })
        })
        .collect();
    let mut accepted = 0;
    for c in clients {
        if c.await.unwrap() == 202 {
            accepted += 2;
        }
    }
    assert_eq!(accepted, 40);
    h.shutdown.send(true).unwrap();
    let mut seqs = Vec::new();
    while let Some(ev) = h.events.recv().await {
        if let SourceEvent::Data { batch, .. } = ev {
            seqs.extend(batch.meta.iter().map(|m| m.offset));
        }
        if seqs.len() == accepted {
            break;
        }
    }
    h.task.await.unwrap().unwrap();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..40).collect::<Vec<u64>>());
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let var = "SLUICE_HTTP_TEST_TOKEN_case_5b1e";
    std::env::set_var(var, "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let config = HttpSourceConfig {
        auth_token_env: Some(var.into()),
        ..HttpSourceConfig::default()
    };
    let mut h = start(config, dir.path(), None, false);
    for auth in [
        "Bearer s3cret",
        "bearer s3cret",
        "BEARER s3cret",
        "bEaReR  s3cret",
    ] {
        let r = request(h.port, "POST", "/ingest", &[("Authorization", auth)], b"{}").await;
        assert_eq!(r.status, 202, "{auth:?}: {:?}", r.body);
    }
    for auth in ["bearer", "bearer ", "bearers3cret", "Bearer S3CRET"] {
        let r = request(h.port, "POST", "/ingest", &[("Authorization", auth)], b"{}").await;
        assert_eq!(r.status, 401, "{auth:?}");
    }
    assert_eq!(collect(&mut h, 4).await.0, vec![0, 1, 2, 3]);
    h.shutdown.send(true).unwrap();
    h.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_checkpointed_journal_without_a_restored_position_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, h) = ten_events_committed_at_six(dir.path()).await;
    // wait (bounded) until the commit deleted the first segment
    let first = dir
        .path()
        .join("journal/web")
        .join(format!("{:020}.log", 0));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while first.exists() {
        assert!(std::time::Instant::now() < deadline, "segments not deleted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.shutdown.send(true).unwrap();
    h.task.await.unwrap().unwrap();
    // the state that held position 6 is lost: no restored position, and
    // the journal's early records are gone
    for bounded in [false, true] {
        let h = start(config.clone(), dir.path(), None, bounded);
        let err = tokio::time::timeout(Duration::from_secs(10), h.task)
            .await
            .expect("the source stops")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refusing to start") && err.contains("--accept-empty-state"),
            "{err}"
        );
    }
    // accepted (or `sluice replay`): reads what the journal still holds
    let mut h = start_with(config, dir.path(), None, true, true);
    let mut seqs = Vec::new();
    while let Some(ev) = h.events.recv().await {
        match ev {
            SourceEvent::Data { batch, .. } => seqs.extend(batch.meta.iter().map(|m| m.offset)),
            SourceEvent::PartitionDone { partition: 0, .. } => break,
            _ => {}
        }
    }
    h.task.await.unwrap().unwrap();
    assert!(
        !seqs.is_empty() && seqs[0] > 0 && *seqs.last().unwrap() == 9,
        "{seqs:?}"
    );
}
