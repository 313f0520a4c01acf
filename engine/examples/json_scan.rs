//! Throughput of `json::Projection::decode` on W1-like event lines, with
//! `serde_json` struct deserialization (borrowed `&str` fields) for comparison.
//!
//! Run with `cargo run --release -p sluice-engine --example json_scan`; an
//! optional argument runs only the cases whose name contains it (the
//! serde_json baseline always runs). Rounds of all cases are interleaved and
//! the best round of each is reported, which keeps the ratios meaningful on
//! a busy machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_engine::json::Projection;
use sluice_engine::{Str, Value};

const LINES: usize = 1_000_000;
const ROUNDS: usize = 5;

const COUNTRIES: &[&str] = &[
    "GT", "US", "DE", "FR", "BR", "JP", "IN", "MX", "ZA", "AU", "CA", "NL",
];
const WEATHER: &[&str] = &[
    "Sunny",
    "Cloudy",
    "Rain",
    "Snow",
    "Fog",
    "Thunderstorm",
    "Windy",
];
const DESCRIPTIONS: &[&str] = &[
    "light breeze",
    "heavy rain expected in the afternoon",
    "clear sky",
    "scattered clouds",
    "fog patches near the coast",
];

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Generates the lines into one buffer; returns the buffer and line ranges.
fn generate() -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = Vec::with_capacity(LINES * 120);
    let mut lines = Vec::with_capacity(LINES);
    let mut ts = 1_732_147_200_123u64;
    for id in 0..LINES {
        ts += rng.next() % 1000;
        let temp = (rng.next() % 600) as f64 / 10.0 - 15.0;
        let start = buf.len();
        let line = format!(
            r#"{{"id":{id},"ts":{ts},"country":"{}","weather":"{}","description":"{}","temp_c":{temp}}}"#,
            rng.pick(COUNTRIES),
            rng.pick(WEATHER),
            rng.pick(DESCRIPTIONS),
        );
        buf.extend_from_slice(line.as_bytes());
        lines.push((start, buf.len()));
        buf.push(b'\n');
    }
    (buf, lines)
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    country: &'a str,
    #[serde(borrow)]
    weather: &'a str,
    ts: i64,
}

/// One timed pass of `f` over all lines.
fn time(buf: &[u8], lines: &[(usize, usize)], mut f: impl FnMut(&[u8]) -> usize) -> Duration {
    let t = Instant::now();
    let mut acc = 0usize;
    for &(s, e) in lines {
        acc = acc.wrapping_add(f(&buf[s..e]));
    }
    black_box(acc);
    t.elapsed()
}

/// What a case measures.
enum Kind {
    SerdeStruct,
    Decode(Projection),
    ParseValue,
    SerdeValue,
}

/// One timed pass of case `kind`.
fn run(kind: &Kind, buf: &[u8], lines: &[(usize, usize)]) -> Duration {
    match kind {
        Kind::SerdeStruct => time(buf, lines, |line| {
            match serde_json::from_slice::<Event<'_>>(line) {
                Ok(ev) => ev.country.len() + ev.weather.len() + ev.ts as usize,
                Err(_) => 0,
            }
        }),
        Kind::Decode(p) => {
            let mut out = vec![Value::Missing; p.len()];
            time(buf, lines, |line| match p.decode(line, &mut out) {
                Ok(()) => out.iter().filter(|v| v.exists()).count(),
                Err(_) => 0,
            })
        }
        Kind::ParseValue => time(buf, lines, |line| {
            match sluice_engine::json::parse_value(line) {
                Ok(v) => v.exists() as usize,
                Err(_) => 0,
            }
        }),
        Kind::SerdeValue => time(buf, lines, |line| {
            match serde_json::from_slice::<serde_json::Value>(line) {
                Ok(v) => v.is_object() as usize,
                Err(_) => 0,
            }
        }),
    }
}

/// True if the case named `name` was selected on the command line.
fn selected(name: &str) -> bool {
    match std::env::args().nth(1) {
        Some(filter) => name.contains(&filter),
        None => true,
    }
}

fn projection(paths: &[&[&str]]) -> Projection {
    let paths: Vec<Vec<Str>> = paths
        .iter()
        .map(|p| p.iter().map(|k| Str::from(*k)).collect())
        .collect();
    Projection::new(&paths)
}

fn main() {
    let (buf, lines) = generate();
    let bytes = buf.len() - lines.len();
    println!(
        "{} lines, {:.1} MB, best of {ROUNDS} interleaved rounds",
        LINES,
        bytes as f64 / 1e6
    );

    let mut cases = vec![
        (
            "serde_json struct {country, weather, ts}",
            Kind::SerdeStruct,
        ),
        (
            "Projection [country], [ts]",
            Kind::Decode(projection(&[&["country"], &["ts"]])),
        ),
        (
            "Projection [country]",
            Kind::Decode(projection(&[&["country"]])),
        ),
        (
            "Projection [country], [weather], [ts]",
            Kind::Decode(projection(&[&["country"], &["weather"], &["ts"]])),
        ),
        ("parse_value (full Value tree)", Kind::ParseValue),
        ("serde_json::Value (full tree)", Kind::SerdeValue),
    ];
    cases.retain(|(name, kind)| matches!(kind, Kind::SerdeStruct) || selected(name));

    let mut best = vec![Duration::MAX; cases.len()];
    for _ in 0..ROUNDS {
        for ((_, kind), best) in cases.iter().zip(&mut best) {
            *best = (*best).min(run(kind, &buf, &lines));
        }
    }

    let baseline = best[0].as_secs_f64();
    for ((name, _), d) in cases.iter().zip(&best) {
        let secs = d.as_secs_f64();
        println!(
            "{name:<42} {:>6.2} M lines/s {:>6.0} MB/s {:>6.2}x serde_json struct",
            LINES as f64 / secs / 1e6,
            bytes as f64 / secs / 1e6,
            baseline / secs
        );
    }
}
