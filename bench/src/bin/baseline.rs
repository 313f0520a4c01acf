//! Hand-written single-thread baseline for workload W1 ("weather count").
//!
//! This is the loop sluice is compared with: read the NDJSON input line by line
//! through a large buffered reader, parse each line with `serde_json` into a
//! struct that borrows its string fields from the line buffer, count into a hash
//! map, and write the result as CSV in the oracle's exact format (see
//! `bench/w1/ref_counts.py`): no header, rows sorted by key.
//!
//! - `w1a`: `country,count`, one row per country.
//! - `w1b`: `window_start_ms,country,weather,count`, one row per 1-minute
//!   epoch-aligned tumbling window and (country, weather).
//!
//! It keeps no durable state and has no watermark: it is the floor a streaming
//! engine is measured against, not a streaming engine.
//!
//! Usage: `baseline w1a|w1b INPUT.jsonl OUT.csv`

use std::error::Error;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::ExitCode;

use rustc_hash::FxHashMap;
use serde::Deserialize;

const WINDOW_MS: i64 = 60_000;
const READ_BUFFER: usize = 1 << 20;

/// One W1 event; fields the workload does not need are skipped by serde.
#[derive(Deserialize)]
struct Event<'a> {
    ts: i64,
    #[serde(borrow)]
    country: &'a str,
    #[serde(borrow)]
    weather: &'a str,
}

#[derive(Clone, Copy)]
enum Workload {
    W1a,
    W1b,
}

type BoxError = Box<dyn Error>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: baseline w1a|w1b INPUT.jsonl OUT.csv";
    let [_, workload, input, output] = args.as_slice() else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let workload = match workload.as_str() {
        "w1a" => Workload::W1a,
        "w1b" => Workload::W1b,
        other => {
            eprintln!("unknown workload `{other}`; {usage}");
            return ExitCode::from(2);
        }
    };
    match run(workload, input, output) {
        Ok(events) => {
            eprintln!("baseline: {events} events");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("baseline: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(workload: Workload, input: &str, output: &str) -> Result<u64, BoxError> {
    let file = File::open(input).map_err(|e| format!("cannot open {input}: {e}"))?;
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let out = File::create(output).map_err(|e| format!("cannot create {output}: {e}"))?;
    let mut out = BufWriter::new(out);
    let events = match workload {
        Workload::W1a => w1a(&mut reader, &mut out)?,
        Workload::W1b => w1b(&mut reader, &mut out)?,
    };
    out.flush()?;
    Ok(events)
}

/// Calls `f` with every non-empty line of `reader`, parsed as an [`Event`].
/// Returns the number of events; an unparsable line is an error naming it.
fn for_each_event(
    reader: &mut impl BufRead,
    mut f: impl FnMut(Event<'_>),
) -> Result<u64, BoxError> {
    let mut line = Vec::with_capacity(256);
    let mut events = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(events);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let event: Event<'_> =
            serde_json::from_slice(&line).map_err(|e| format!("line {}: {e}", events + 1))?;
        f(event);
        events += 1;
    }
}

/// W1a: count per country.
fn w1a(reader: &mut impl BufRead, out: &mut impl Write) -> Result<u64, BoxError> {
    let mut counts: FxHashMap<String, u64> = FxHashMap::default();
    let events = for_each_event(reader, |e| match counts.get_mut(e.country) {
        Some(n) => *n += 1,
        None => {
            counts.insert(e.country.to_owned(), 1);
        }
    })?;
    let mut rows: Vec<_> = counts.into_iter().collect();
    rows.sort_unstable();
    for (country, count) in rows {
        writeln!(out, "{country},{count}")?;
    }
    Ok(events)
}

/// Maps strings to dense ids so the W1b key is `Copy` and needs no allocation
/// per event.
#[derive(Default)]
struct Interner {
    ids: FxHashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 distinct strings");
        self.ids.insert(s.to_owned(), id);
        self.names.push(s.to_owned());
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// W1b: count per (1-minute tumbling window, country, weather).
fn w1b(reader: &mut impl BufRead, out: &mut impl Write) -> Result<u64, BoxError> {
    let mut countries = Interner::default();
    let mut weathers = Interner::default();
    let mut counts: FxHashMap<(i64, u32, u32), u64> = FxHashMap::default();
    let events = for_each_event(reader, |e| {
        let window_start = e.ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        let key = (
            window_start,
            countries.id(e.country),
            weathers.id(e.weather),
        );
        *counts.entry(key).or_insert(0) += 1;
    })?;
    let mut rows: Vec<_> = counts
        .into_iter()
        .map(|((w, c, wx), n)| (w, countries.name(c), weathers.name(wx), n))
        .collect();
    rows.sort_unstable();
    for (window_start, country, weather, count) in rows {
        writeln!(out, "{window_start},{country},{weather},{count}")?;
    }
    Ok(events)
}
