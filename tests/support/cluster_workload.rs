//! The workload of the cluster tests (issue 12): one pipeline computing
//! all-time statistics per station and 1-minute tumbling windows per
//! country (count, sum, avg, min, max, count_distinct), the generated
//! events, the oracle computed from them, readers that rebuild the same
//! results from each sink (files, Redis, PostgreSQL), and an HTTP client
//! that honours 503 + Retry-After.
//!
//! ## Why the window results are deterministic
//! Event times grow by `span / n` per event with a jitter of at most
//! [`JITTER_MS`] either way, so an event is never more than `2 *
//! JITTER_MS` (2 s) older than any event before it in the whole input, and
//! therefore in any subsequence of it: a part file, an HTTP journal, an
//! AMQP consumer's share, a Kafka partition, each read in input order. The
//! sources' `max_disorder` is [`MAX_DISORDER`] (5 s): the watermark in
//! force when an event is read is at most the largest earlier time of its
//! partition minus 5 s, below the event's own time, and a minimum over
//! partitions or workers can only be lower. So no event is ever late,
//! whatever the interleaving of partitions, workers and batches, and each
//! window's final result is a function of the set of events in it
//! (docs/transforms.md, "What is deterministic"). The values are integers,
//! so `sum` and `avg` (a float sum of integers, divided once) do not depend
//! on the order of additions either.
//!
//! The end of the input: every partition (part file, HTTP worker, Kafka
//! partition, AMQP consumer) ends with a *flush* event, far later in event
//! time, that the pipeline filters out before the aggregates; its time
//! moves the partition's watermark past the last window, which then
//! closes. The sources are unbounded (followed files, HTTP, queues), so the
//! workers run until the test stops them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};

/// The first event time: a whole minute (2024-11-21T00:00:00Z).
pub const T0: i64 = 1_732_147_200_000;
/// The input spans ten 1-minute windows.
pub const SPAN_MS: i64 = 600_000;
/// Largest shift of an event time from its place in the input.
pub const JITTER_MS: i64 = 1_000;
/// The sources' `max_disorder`, more than `2 * JITTER_MS`.
pub const MAX_DISORDER: &str = "5s";
/// The flush events' time: 5 minutes after the last window.
pub const FLUSH_TS: i64 = T0 + SPAN_MS + 300_000;

const COUNTRIES: &[&str] = &["GT", "BR", "DE", "JP", "KE", "MX", "FR", "IN"];
const STATIONS: usize = 40;

/// One generated event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub ts: i64,
    pub country: &'static str,
    pub station: String,
    pub temp: i64,
}

impl Event {
    /// The event as one line of JSON.
    pub fn line(&self) -> String {
        json!({
            "id": self.id,
            "ts": self.ts,
            "country": self.country,
            "station": self.station,
            "temp": self.temp,
        })
        .to_string()
    }
}

/// The event that ends a partition (filtered out before the aggregates).
pub fn flush_line() -> String {
    json!({ "flush": true, "ts": FLUSH_TS }).to_string()
}

/// `n` events in input order (see the module's note on event times).
pub fn generate(rng: &mut impl Rng, n: u64) -> Vec<Event> {
    let step = SPAN_MS / n as i64;
    (0..n)
        .map(|i| Event {
            id: i,
            ts: (T0 + JITTER_MS + i as i64 * step + rng.random_range(-JITTER_MS..=JITTER_MS))
                .min(T0 + SPAN_MS - 1),
            country: COUNTRIES[rng.random_range(0..COUNTRIES.len())],
            station: format!("st-{:02}", rng.random_range(0..STATIONS)),
            temp: rng.random_range(-20..45),
        })
        .collect()
}

/// Item `k` goes to part `k % parts`, in order.
pub fn round_robin<T: Clone>(items: &[T], parts: usize) -> Vec<Vec<T>> {
    let mut out = vec![Vec::new(); parts];
    for (k, item) in items.iter().enumerate() {
        out[k % parts].push(item.clone());
    }
    out
}

/// The lines of `events`, in order.
pub fn lines(events: &[Event]) -> Vec<String> {
    events.iter().map(Event::line).collect()
}

/// What the two aggregates leave in a sink, each record under its key:
/// the station for all-time results, `window_start|country` for windows.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Results {
    pub all: BTreeMap<String, Value>,
    pub windows: BTreeMap<String, Value>,
}

impl Results {
    /// Adds one result record, placed by its fields. Fails when the key is
    /// there already from another worker's output (`from`): a key's state
    /// must live at one owner.
    pub fn add(&mut self, record: Value, from: &str) {
        let (table, key) = if record.get("window_start").is_some() {
            let key = format!(
                "{}|{}",
                record["window_start"],
                record["country"].as_str().unwrap_or("?")
            );
            (&mut self.windows, key)
        } else {
            let key = record["station"].as_str().unwrap_or("?").to_string();
            (&mut self.all, key)
        };
        if let Some(before) = table.insert(key.clone(), record.clone()) {
            panic!("`{key}` appears twice ({from}): {before} and {record}");
        }
    }

    /// Every number as a float and without the sinks' own columns, so that
    /// results read back from different sinks compare by value.
    pub fn normalized(&self) -> Results {
        fn norm(v: &Value) -> Value {
            match v {
                Value::Number(n) => json!(n.as_f64().unwrap()),
                Value::Object(m) => Value::Object(
                    m.iter()
                        .filter(|(k, _)| k.as_str() != "sluice_epoch")
                        .map(|(k, v)| (k.clone(), norm(v)))
                        .collect(),
                ),
                other => other.clone(),
            }
        }
        Results {
            all: self.all.iter().map(|(k, v)| (k.clone(), norm(v))).collect(),
            windows: self
                .windows
                .iter()
                .map(|(k, v)| (k.clone(), norm(v)))
                .collect(),
        }
    }

    /// A short description of how `self` differs from `want`.
    pub fn diff(&self, want: &Results) -> String {
        let mut out = Vec::new();
        for (name, got, want) in [
            ("all-time", &self.all, &want.all),
            ("windows", &self.windows, &want.windows),
        ] {
            let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
            let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
            let wrong: Vec<String> = got
                .iter()
                .filter(|(k, v)| want.get(*k).is_some_and(|w| w != *v))
                .take(5)
                .map(|(k, v)| format!("{k}: got {v}, want {}", want[k]))
                .collect();
            out.push(format!(
                "{name}: {} rows (want {}), missing {missing:?}, extra {extra:?}, differing (first 5) {wrong:#?}",
                got.len(),
                want.len()
            ));
        }
        out.join("\n")
    }
}

#[derive(Default)]
struct Stats {
    n: i64,
    sum: i64,
    min: i64,
    max: i64,
    distinct: std::collections::BTreeSet<String>,
}

impl Stats {
    fn add(&mut self, temp: i64, other: &str) {
        if self.n == 0 {
            (self.min, self.max) = (temp, temp);
        }
        self.n += 1;
        self.sum += temp;
        self.min = self.min.min(temp);
        self.max = self.max.max(temp);
        self.distinct.insert(other.to_string());
    }

    fn fields(&self, distinct: &str) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("n".into(), json!(self.n));
        m.insert("sum_temp".into(), json!(self.sum));
        m.insert("avg_temp".into(), json!(self.sum as f64 / self.n as f64));
        m.insert("min_temp".into(), json!(self.min));
        m.insert("max_temp".into(), json!(self.max));
        m.insert(distinct.into(), json!(self.distinct.len()));
        m
    }
}

/// The results the pipeline must leave, computed from the events.
pub fn oracle(events: &[Event]) -> Results {
    let mut all: BTreeMap<&str, Stats> = BTreeMap::new();
    let mut windows: BTreeMap<(i64, &str), Stats> = BTreeMap::new();
    for e in events {
        all.entry(e.station.as_str())
            .or_default()
            .add(e.temp, e.country);
        let start = e.ts - e.ts.rem_euclid(60_000);
        windows
            .entry((start, e.country))
            .or_default()
            .add(e.temp, &e.station);
    }
    let mut out = Results::default();
    for (station, s) in all {
        let mut r = s.fields("countries");
        r.insert("station".into(), json!(station));
        out.add(Value::Object(r), "oracle");
    }
    for ((start, country), s) in windows {
        let mut r = s.fields("stations");
        r.insert("country".into(), json!(country));
        r.insert("window_start".into(), json!(start));
        r.insert("window_end".into(), json!(start + 60_000));
        out.add(Value::Object(r), "oracle");
    }
    out
}

/// The pipeline: `source` (a `[sources.events]` table), the filter and
/// the two aggregates, then `sinks` (reading `per_station` and
/// `per_minute`). Each worker's state and dead letters (late events would
/// be there) are in its `WORKER_DIR`.
pub fn pipeline(name: &str, source: &str, sinks: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"

[state]
dir = "${{WORKER_DIR}}/state"

[checkpoint]
interval = "100ms"

[admin]
address = "127.0.0.1:${{ADMIN_PORT}}"

[dead_letter]
type = "file"
path = "${{WORKER_DIR}}/dead_letters.ndjson"
{source}
[transforms.real]
type = "filter"
inputs = ["events"]
condition = "not flush"

[transforms.per_station]
type = "aggregate"
inputs = ["real"]
group_by = ["station"]
aggregates = {{ n = "count", sum_temp = {{ fn = "sum", field = "temp" }}, avg_temp = {{ fn = "avg", field = "temp" }}, min_temp = {{ fn = "min", field = "temp" }}, max_temp = {{ fn = "max", field = "temp" }}, countries = {{ fn = "count_distinct", field = "country" }} }}

[transforms.per_minute]
type = "aggregate"
inputs = ["real"]
group_by = ["country"]
window = {{ type = "tumbling", size = "1m" }}
emit = "on_close"
aggregates = {{ n = "count", sum_temp = {{ fn = "sum", field = "temp" }}, avg_temp = {{ fn = "avg", field = "temp" }}, min_temp = {{ fn = "min", field = "temp" }}, max_temp = {{ fn = "max", field = "temp" }}, stations = {{ fn = "count_distinct", field = "station" }} }}
{sinks}"#
    )
}

/// The event-time option every source of the workload carries.
pub fn event_time() -> String {
    format!("event_time = {{ field = \"ts\", format = \"epoch_ms\", max_disorder = \"{MAX_DISORDER}\" }}")
}

/// A followed file source reading `path` (may use `${...}`), paced at
/// `${PACE}` events per second (0: as fast as it can).
pub fn file_source(path: &str) -> String {
    format!(
        r#"
[sources.events]
type = "file"
path = "{path}"
follow = true
poll_interval = "50ms"
read_bytes = 16384
max_events_per_second = ${{PACE:-0}}
{}
"#,
        event_time()
    )
}

/// An HTTP source on `${HTTP_PORT}`, 503 beyond `${MAX_BACKLOG}` events
/// not yet checkpointed.
pub fn http_source() -> String {
    format!(
        r#"
[sources.events]
type = "http"
address = "127.0.0.1:${{HTTP_PORT}}"
max_backlog_events = ${{MAX_BACKLOG:-1000000}}
{}
"#,
        event_time()
    )
}

/// Results in two file sinks per worker (`all.ndjson`, `windows.ndjson`).
pub const FILE_SINKS: &str = r#"
[sinks.out_all]
type = "file"
inputs = ["per_station"]
path = "${WORKER_DIR}/all.ndjson"
format = "changes"

[sinks.out_windows]
type = "file"
inputs = ["per_minute"]
path = "${WORKER_DIR}/windows.ndjson"
format = "changes"
"#;

/// Results as whole records in Redis string keys under `${PREFIX}`.
pub const REDIS_SINKS: &str = r#"
[sinks.redis_all]
type = "redis"
inputs = ["per_station"]
url = "${REDIS_URL}"
mode = "string"
key = "${PREFIX}all:{station}"

[sinks.redis_windows]
type = "redis"
inputs = ["per_minute"]
url = "${REDIS_URL}"
mode = "string"
key = "${PREFIX}win:{window_start}:{country}"
"#;

/// Results upserted into `${TABLE}_all` and `${TABLE}_win`.
pub const POSTGRES_SINKS: &str = r#"
[sinks.pg_all]
type = "postgres"
inputs = ["per_station"]
url = "${POSTGRES_URL}"
table = "${TABLE}_all"
key = ["station"]
create_table = true
column_types = { avg_temp = "double precision" }

[sinks.pg_windows]
type = "postgres"
inputs = ["per_minute"]
url = "${POSTGRES_URL}"
table = "${TABLE}_win"
key = ["country", "window_start"]
create_table = true
column_types = { avg_temp = "double precision" }
"#;

/// JSON text as a serde_json value with every number read exactly: the
/// engine's parser (correctly rounded), because serde_json's own, without
/// its `float_roundtrip` feature, may read a float one ULP off (seen:
/// `9.664285714285715` read as `9.664285714285716`), which would make an
/// exact `avg` look wrong.
pub fn parse_exact(text: &str) -> Value {
    fn convert(v: &sluice_engine::Value) -> Value {
        use sluice_engine::Value as V;
        match v {
            V::Missing | V::Null => Value::Null,
            V::Bool(b) => json!(b),
            V::Int(i) => json!(i),
            V::Float(f) => json!(f),
            V::Str(s) => json!(s.as_str()),
            V::Array(a) => Value::Array(a.iter().map(convert).collect()),
            V::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.to_string(), convert(v))).collect())
            }
        }
    }
    let v = sluice_engine::json::parse_value(text.as_bytes())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    convert(&v)
}

/// The final table of a file written with `format = "changes"` (complete
/// lines only, so that it can be read while a worker writes), numbers
/// read exactly.
fn read_changes(path: &std::path::Path) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    let mut table = BTreeMap::new();
    for line in complete.lines() {
        let change = parse_exact(line);
        let id = change["id"].to_string();
        if change["op"] == "delete" {
            table.remove(&id);
        } else {
            table.insert(id, change["record"].clone());
        }
    }
    table
}

/// What the file sinks in the workers' directories hold (complete lines
/// only, so that it can be read while the workers write).
pub fn read_files(worker_dirs: &[std::path::PathBuf]) -> Results {
    let mut out = Results::default();
    for (i, dir) in worker_dirs.iter().enumerate() {
        for file in ["all.ndjson", "windows.ndjson"] {
            for record in read_changes(&dir.join(file)).into_values() {
                out.add(record, &format!("worker {i}"));
            }
        }
    }
    out
}

/// The dead letters of every worker (late events, bad records...): there
/// must be none, with one worker as with several.
pub fn dead_letters(worker_dirs: &[std::path::PathBuf]) -> Vec<String> {
    worker_dirs
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("dead_letters.ndjson"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What the Redis sinks left under `prefix`.
pub fn read_redis(url: &str, prefix: &str) -> Results {
    use super::services::redis_cli;
    let keys = redis_cli(url, &["KEYS", &format!("{prefix}*")]);
    let keys: Vec<&str> = keys
        .lines()
        .filter(|k| !k.is_empty() && !k.ends_with(":__epoch"))
        .collect();
    let mut out = Results::default();
    for chunk in keys.chunks(200) {
        let mut args = vec!["MGET"];
        args.extend(chunk);
        let values = redis_cli(url, &args);
        for (key, value) in chunk.iter().zip(values.lines()) {
            let record = parse_exact(value);
            out.add(record, key);
        }
    }
    out
}

/// Deletes what [`read_redis`] reads (and the fence keys).
pub fn clean_redis(url: &str, prefix: &str) {
    use super::services::redis_cli;
    let keys = redis_cli(url, &["KEYS", &format!("{prefix}*")]);
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    for chunk in keys.chunks(200) {
        let mut args = vec!["DEL"];
        args.extend(chunk);
        redis_cli(url, &args);
    }
}

/// What the PostgreSQL sinks left in `${table}_all` and `${table}_win`
/// (without their `sluice_epoch` column).
pub fn read_postgres(url: &str, table: &str) -> Results {
    use super::services::psql;
    let mut out = Results::default();
    for t in [format!("{table}_all"), format!("{table}_win")] {
        let exists = psql(url, &format!("SELECT to_regclass('{t}') IS NOT NULL"));
        if exists[0][0] != "t" {
            continue; // created with the first write
        }
        for row in psql(url, &format!("SELECT row_to_json(t)::text FROM {t} t")) {
            let text = row.join("|");
            let mut record = parse_exact(&text);
            record.as_object_mut().unwrap().remove("sluice_epoch");
            out.add(record, &t);
        }
    }
    out
}

/// Drops the tables of [`read_postgres`].
pub fn clean_postgres(url: &str, table: &str) {
    super::services::psql(
        url,
        &format!("DROP TABLE IF EXISTS {table}_all, {table}_win"),
    );
}

/// POSTs `lines` as one NDJSON request to 127.0.0.1:`port`/ingest until it
/// is accepted (202): a 503 must carry `Retry-After`, and is retried after
/// that many seconds (at most 2). Fails on any other answer, on a broken
/// connection, or when not accepted within `patience`. Returns how many
/// 503s it got.
pub fn post_ndjson(port: u16, lines: &[String], patience: Duration) -> u32 {
    let refused = std::sync::atomic::AtomicU32::new(0);
    post_ndjson_counting(port, lines, patience, &refused);
    refused.into_inner()
}

/// [`post_ndjson`] that adds each 503 to `refused` as it comes, so that
/// another thread sees the refusals while this one still retries.
pub fn post_ndjson_counting(
    port: u16,
    lines: &[String],
    patience: Duration,
    refused: &std::sync::atomic::AtomicU32,
) {
    let body = lines.join("\n");
    let deadline = Instant::now() + patience;
    loop {
        let (status, headers, reply) = super::http_request_with_headers(
            port,
            "POST",
            "/ingest",
            &[("Content-Type", "application/x-ndjson")],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("POST to {port} failed: {e}"));
        match status {
            202 => {
                let reply: Value = serde_json::from_str(&reply).unwrap();
                assert_eq!(reply["accepted"], lines.len() as u64, "{reply}");
                return;
            }
            503 => {
                let after = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                    .unwrap_or_else(|| panic!("503 without Retry-After from {port}: {reply}"));
                let secs: u64 = after.1.trim().parse().unwrap_or_else(|_| {
                    panic!("Retry-After `{}` is not a number of seconds", after.1)
                });
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                assert!(
                    Instant::now() < deadline,
                    "POST to {port} still refused (503) after {patience:?}: {reply}"
                );
                std::thread::sleep(Duration::from_secs(secs).min(Duration::from_secs(2)));
            }
            other => panic!("POST to {port}: unexpected {other}: {reply}"),
        }
    }
}
