//! HTTP load generator for sluice's HTTP source, on loopback, bounded in
//! requests and time.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080/ingest --connections 64 --requests 200000 [--batch 1000] [--seconds 30]
//! ```
//!
//! Every connection keeps one HTTP/1.1 keep-alive socket and sends POSTs
//! back to back: single weather events, or NDJSON bodies of `--batch`
//! events. It prints requests/s, events/s, latency percentiles and the
//! number of accepted (202) events as JSON on the last line, so scripts can
//! check that sluice counted exactly what it accepted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const COUNTRIES: [&str; 8] = ["GT", "MX", "US", "BR", "FR", "DE", "JP", "IN"];
const WEATHER: [&str; 4] = ["Sunny", "Cloudy", "Rainy", "Windy"];

struct Args {
    host: String,
    path: String,
    connections: usize,
    requests: u64,
    batch: usize,
    seconds: u64,
    token: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        host: "127.0.0.1:8080".into(),
        path: "/ingest".into(),
        connections: 64,
        requests: 100_000,
        batch: 1,
        seconds: 60,
        token: std::env::var("SLUICE_TOKEN").ok(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => {
                let url = value()?;
                let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                a.host = host.to_string();
                a.path = format!("/{path}");
            }
            "--connections" => a.connections = value()?.parse().map_err(|e| format!("{e}"))?,
            "--requests" => a.requests = value()?.parse().map_err(|e| format!("{e}"))?,
            "--batch" => a.batch = value()?.parse().map_err(|e| format!("{e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !(a.host.starts_with("127.")
        || a.host.starts_with("localhost")
        || a.host.starts_with("[::1]"))
    {
        return Err("loadgen only targets loopback addresses".into());
    }
    if a.requests > 10_000_000 || a.seconds > 600 || a.batch == 0 || a.batch > 100_000 {
        return Err("bounded: --requests <= 10M, --seconds <= 600, 1 <= --batch <= 100000".into());
    }
    Ok(a)
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

/// Reads one HTTP/1.1 response; returns its status.
async fn read_response(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
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
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Ok(status);
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
    errors: AtomicU64,
}

async fn connection(args: Arc<Args>, totals: Arc<Totals>, deadline: Instant) -> Vec<u32> {
    let mut latencies = Vec::new();
    let Ok(mut sock) = TcpStream::connect(&args.host).await else {
        totals.errors.fetch_add(1, Ordering::Relaxed);
        return latencies;
    };
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::new();
    let content_type = if args.batch == 1 {
        "application/json"
    } else {
        "application/x-ndjson"
    };
    let auth = args
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    loop {
        let seq = totals.next.fetch_add(1, Ordering::Relaxed);
        if seq >= args.requests || Instant::now() >= deadline {
            break;
        }
        let payload = body(seq, args.batch);
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\n{auth}Content-Length: {}\r\n\r\n",
            args.path,
            args.host,
            payload.len()
        )
        .into_bytes();
        req.extend_from_slice(&payload);
        let started = Instant::now();
        let status = match sock.write_all(&req).await {
            Ok(()) => read_response(&mut sock, &mut buf).await,
            Err(e) => Err(e),
        };
        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        match status {
            Ok(202) => {
                totals
                    .accepted_events
                    .fetch_add(args.batch as u64, Ordering::Relaxed);
            }
            Ok(_) => {
                totals.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                totals.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
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
        "{{\"requests\":{},\"seconds\":{secs:.3},\"requests_per_s\":{:.0},\"events_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"accepted_events\":{accepted},\"rejected_requests\":{},\"errors\":{}}}",
        latencies.len(),
        requests / secs,
        accepted as f64 / secs,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        totals.rejected.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed),
    );
}
