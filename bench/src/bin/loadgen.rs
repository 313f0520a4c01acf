//! HTTP load generator for sluice's HTTP source, on loopback, bounded in
//! requests and time.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080/ingest --connections 64 --requests 200000 [--batch 1000] [--seconds 30]
//! loadgen --url URL1 --url URL2 --input w1.jsonl --batch 1000 --retry --connections 16
//! ```
//!
//! Every connection keeps one HTTP/1.1 keep-alive socket per URL and sends
//! POSTs back to back: single weather events, or NDJSON bodies of `--batch`
//! events. Request number `k` goes to the `k mod U`-th of the `U` URLs
//! given (round-robin, as a load balancer would spread them over workers).
//! The events are generated, or with `--input` taken from an NDJSON file in
//! its order (request `k` carries lines `k*batch..(k+1)*batch`; at most as
//! many requests as the file fills). With `--retry`, a request answered
//! `503` is sent again (after its `Retry-After`, at most 1 s) until it is
//! accepted or the time is up; its latency then runs from the first try.
//! It prints requests/s, events/s, latency percentiles and the number of
//! accepted (202) events as JSON on the last line, so scripts can check
//! that sluice counted exactly what it accepted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const COUNTRIES: [&str; 8] = ["GT", "MX", "US", "BR", "FR", "DE", "JP", "IN"];
const WEATHER: [&str; 4] = ["Sunny", "Cloudy", "Rainy", "Windy"];

struct Args {
    /// `(host, path)` of every URL, in the order given.
    urls: Vec<(String, String)>,
    connections: usize,
    requests: u64,
    batch: usize,
    seconds: u64,
    token: Option<String>,
    /// The `--input` file and the byte offset where each line starts (plus
    /// its end).
    input: Option<(Vec<u8>, Vec<usize>)>,
    retry: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        urls: Vec::new(),
        connections: 64,
        requests: 100_000,
        batch: 1,
        seconds: 60,
        token: std::env::var("SLUICE_TOKEN").ok(),
        input: None,
        retry: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => {
                let url = value()?;
                let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                a.urls.push((host.to_string(), format!("/{path}")));
            }
            "--input" => {
                let path = value()?;
                let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
                let mut starts = vec![0];
                starts.extend(
                    bytes
                        .iter()
                        .enumerate()
                        .filter(|(i, b)| **b == b'\n' && i + 1 < bytes.len())
                        .map(|(i, _)| i + 1),
                );
                starts.push(bytes.len());
                a.input = Some((bytes, starts));
            }
            "--retry" => a.retry = true,
            "--connections" => a.connections = value()?.parse().map_err(|e| format!("{e}"))?,
            "--requests" => a.requests = value()?.parse().map_err(|e| format!("{e}"))?,
            "--batch" => a.batch = value()?.parse().map_err(|e| format!("{e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.urls.is_empty() {
        a.urls.push(("127.0.0.1:8080".into(), "/ingest".into()));
    }
    if !a.urls.iter().all(|(host, _)| {
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
    }) {
        return Err("loadgen only targets loopback addresses".into());
    }
    if let Some((_, starts)) = &a.input {
        let lines = (starts.len() - 1) as u64;
        a.requests = a.requests.min(lines.div_ceil(a.batch as u64));
    }
    if a.requests > 10_000_000 || a.seconds > 600 || a.batch == 0 || a.batch > 100_000 {
        return Err("bounded: --requests <= 10M, --seconds <= 600, 1 <= --batch <= 100000".into());
    }
    Ok(a)
}

/// Request `seq`'s body: generated, or its lines of the `--input` file.
fn request_body(args: &Args, seq: u64) -> Vec<u8> {
    match &args.input {
        None => body(seq, args.batch),
        Some((bytes, starts)) => {
            let lines = starts.len() - 1;
            let first = (seq as usize * args.batch).min(lines);
            let last = (first + args.batch).min(lines);
            bytes[starts[first]..starts[last]].to_vec()
        }
    }
}

fn body(seq: u64, batch: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch * 90);
    for i in 0..batch as u64 {
        let n = seq * batch as u64 + i;
        let line = format!(
            "{{\"id\":{n},\"ts\":{},\"country\":\"{}\",\"weather\":\"{}\",\"description\":\"Test\"}}\n",
            1_732_147_200_000 + n,
            COUNTRIES[(n % 8) as usize],
            WEATHER[(n / 8 % 4) as usize]
        );
        out.extend_from_slice(line.as_bytes());
    }
    if batch == 1 {
        out.pop(); // a single JSON object
    }
    out
}

/// Reads one HTTP/1.1 response; returns its status and `Retry-After`
/// (seconds) when it has one.
async fn read_response(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, Option<u64>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let retry_after = head
                .lines()
                .find_map(|l| l.strip_prefix("retry-after:"))
                .and_then(|v| v.trim().parse().ok());
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Ok((status, retry_after));
            }
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Totals {
    next: AtomicU64,
    accepted_events: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
}

/// One keep-alive socket per URL, connected on first use.
struct Sockets(Vec<Option<TcpStream>>);

impl Sockets {
    async fn get(&mut self, args: &Args, url: usize) -> std::io::Result<&mut TcpStream> {
        if self.0[url].is_none() {
            let sock = TcpStream::connect(&args.urls[url].0).await?;
            let _ = sock.set_nodelay(true);
            self.0[url] = Some(sock);
        }
        Ok(self.0[url].as_mut().expect("connected above"))
    }
}

async fn connection(args: Arc<Args>, totals: Arc<Totals>, deadline: Instant) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut sockets = Sockets((0..args.urls.len()).map(|_| None).collect());
    let mut buf = Vec::new();
    let content_type = if args.batch == 1 && args.input.is_none() {
        "application/json"
    } else {
        "application/x-ndjson"
    };
    let auth = args
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    'requests: loop {
        let seq = totals.next.fetch_add(1, Ordering::Relaxed);
        if seq >= args.requests || Instant::now() >= deadline {
            break;
        }
        let url = (seq % args.urls.len() as u64) as usize;
        let (host, path) = &args.urls[url];
        let payload = request_body(&args, seq);
        let events = if args.input.is_some() {
            payload.iter().filter(|b| **b == b'\n').count() as u64
                + u64::from(payload.last().is_some_and(|b| *b != b'\n'))
        } else {
            args.batch as u64
        };
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{auth}Content-Length: {}\r\n\r\n",
            payload.len()
        )
        .into_bytes();
        req.extend_from_slice(&payload);
        let started = Instant::now();
        loop {
            let status = match sockets.get(&args, url).await {
                Ok(sock) => match sock.write_all(&req).await {
                    Ok(()) => read_response(sock, &mut buf).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match status {
                Ok((202, _)) => {
                    totals.accepted_events.fetch_add(events, Ordering::Relaxed);
                }
                Ok((503, retry_after)) if args.retry && Instant::now() < deadline => {
                    totals.retries.fetch_add(1, Ordering::Relaxed);
                    let wait = retry_after.map_or(Duration::from_millis(50), |s| {
                        Duration::from_secs(s).min(Duration::from_secs(1))
                    });
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Ok(_) => {
                    totals.rejected.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                    break 'requests;
                }
            }
            break;
        }
        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    latencies
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let totals = Arc::new(Totals {
        next: AtomicU64::new(0),
        accepted_events: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut latencies: Vec<u32> = rt.block_on(async {
        let tasks: Vec<_> = (0..args.connections)
            .map(|_| tokio::spawn(connection(args.clone(), totals.clone(), deadline)))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    });
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let requests = latencies.len() as f64;
    let accepted = totals.accepted_events.load(Ordering::Relaxed);
    println!(
        "{{\"requests\":{},\"seconds\":{secs:.3},\"requests_per_s\":{:.0},\"events_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"accepted_events\":{accepted},\"rejected_requests\":{},\"retries\":{},\"errors\":{}}}",
        latencies.len(),
        requests / secs,
        accepted as f64 / secs,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        totals.rejected.load(Ordering::Relaxed),
        totals.retries.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed),
    );
}
