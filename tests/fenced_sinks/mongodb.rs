//! The MongoDB sink in the fenced-sink scenario, in process: no `mongod`
//! can run here, and the binary can only reach a real server, so the
//! connector's `MongoSink` runs over its in-memory fake server
//! (`sluice_connectors::mongo::fake`, which applies the same fenced-write
//! rules as the server commands), driven by the engine's own sink driver
//! (`drive_sink`: retries with backoff, acks).
//!
//! What stands in for the rest of sluice is [`Pipeline`], a small model of
//! the processor's side of the checkpoint protocol as `engine/src/sink.rs`
//! describes it: each paced batch of W1 events becomes an epoch whose
//! absolute per-country and per-window counts and raw events go to three
//! sinks; an epoch is written to the checkpoint ("the disk") before it is
//! sent; acks and sink progress become durable with the next checkpoint; a
//! kill drops everything that is not on the disk, and a restart restores
//! the sinks' progress and re-delivers the epochs not acknowledged in the
//! checkpoint. So this variant checks the sink's fencing, generations,
//! append dedup and retries under the scenario, not sluice's processor,
//! operators or the MongoDB driver and wire protocol.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sluice_connectors::mongo::fake::FakeMongo;
use sluice_connectors::sinks::mongodb::{MongoSink, MongoSinkConfig};
use sluice_engine::batch::RowKind;
use sluice_engine::sink::{drive_sink, RetryPolicy, SinkEpoch, SinkEvent, SinkRecord};
use sluice_engine::{Map, Str, Value};
use tokio::sync::{mpsc, oneshot};

use crate::fenced_sinks::{Appended, FencedTarget, Stored};
use crate::support::w1::W1;

const DATABASE: &str = "w1";
/// The sinks, in the order of [`Checkpoint::outbox`]: (collection, mode).
const SINKS: [(&str, &str); 3] = [
    ("country_counts", "upsert"),
    ("window_counts", "upsert"),
    ("events", "append"),
];
/// How often the model takes a batch and checkpoints.
const TICK: Duration = Duration::from_millis(20);

/// One W1 event, as the model needs it.
#[derive(Clone)]
struct Event {
    ts: i64,
    country: String,
    weather: String,
}

/// What a checkpoint holds: the model's state, the epochs not yet
/// acknowledged by each sink, and each sink's last acknowledged progress.
#[derive(Clone, Default)]
struct Checkpoint {
    position: usize,
    epoch: u64,
    by_country: BTreeMap<String, i64>,
    /// (window start, country, weather) -> count
    by_window: BTreeMap<(i64, String, String), i64>,
    outbox: [BTreeMap<u64, Arc<Vec<SinkRecord>>>; 3],
    progress: [Option<Vec<u8>>; 3],
}

/// A running pipeline: how to stop it, and its thread.
type Running = (oneshot::Sender<()>, JoinHandle<Result<(), String>>);

/// The in-process pipeline and its fake server.
pub(crate) struct Pipeline {
    server: FakeMongo,
    /// Events per second (0: a batch of 5,000 every tick).
    pace: u64,
    events: Arc<Vec<Event>>,
    disk: Arc<Mutex<Checkpoint>>,
    running: Option<Running>,
    ended: bool,
    /// Refused requests of the server when the current run started.
    refused_at_start: usize,
}

impl Pipeline {
    /// The pipeline over `w1`'s input at `pace` events/s (0: unpaced).
    pub(crate) fn new(w1: &W1, pace: u64) -> Pipeline {
        let text = std::fs::read_to_string(&w1.input).unwrap();
        let events = text
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                Event {
                    ts: v["ts"].as_i64().unwrap(),
                    country: v["country"].as_str().unwrap().to_string(),
                    weather: v["weather"].as_str().unwrap().to_string(),
                }
            })
            .collect();
        Pipeline {
            server: FakeMongo::default(),
            pace,
            events: Arc::new(events),
            disk: Arc::default(),
            running: None,
            ended: false,
            refused_at_start: 0,
        }
    }
}

impl FencedTarget for Pipeline {
    fn name(&self) -> String {
        "mongodb (in process, fake server)".into()
    }

    fn start(&mut self) {
        assert!(self.running.is_none(), "start: already running");
        self.refused_at_start = self.server.state().refused_while_unavailable;
        let (stop, stopped) = oneshot::channel();
        let (server, events, disk) = (self.server.clone(), self.events.clone(), self.disk.clone());
        let batch = match self.pace {
            0 => 5_000,
            pace => (pace as u128 * TICK.as_millis() / 1000) as usize,
        };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            // Dropping the runtime at the end cancels the sink drivers: a kill.
            rt.block_on(async move {
                tokio::select! {
                    result = run(server, events, batch, disk) => result,
                    _ = stopped => Ok(()),
                }
            })
        });
        self.running = Some((stop, thread));
    }

    fn written(&mut self) -> i64 {
        self.server
            .docs(DATABASE, SINKS[0].0)
            .values()
            .map(|d| d.get_i64("count").unwrap())
            .sum()
    }

    fn finished(&mut self) -> bool {
        if !self.ended
            && self
                .running
                .as_ref()
                .is_some_and(|(_, thread)| thread.is_finished())
        {
            let (_, thread) = self.running.take().unwrap();
            let result = thread.join().expect("the pipeline thread panicked");
            if let Err(error) = result {
                panic!("the in-process pipeline failed: {error}");
            }
            self.ended = true;
        }
        self.ended
    }

    fn kill(&mut self) -> bool {
        if self.finished() {
            return false;
        }
        let (stop, thread) = self.running.take().expect("kill: not running");
        let _ = stop.send(());
        let result = thread.join().expect("the pipeline thread panicked");
        if let Err(error) = result {
            panic!("the in-process pipeline failed: {error}");
        }
        true
    }

    fn destination_down(&mut self) {
        self.server.state().unavailable = true;
    }

    fn retries(&mut self) -> usize {
        self.server.state().refused_while_unavailable - self.refused_at_start
    }

    fn destination_up(&mut self) {
        self.server.state().unavailable = false;
    }

    fn stored(&mut self) -> Stored {
        let by_country = self
            .server
            .docs(DATABASE, SINKS[0].0)
            .into_iter()
            .map(|(id, d)| (id, d.get_i64("count").unwrap()))
            .collect();
        let by_window = self
            .server
            .docs(DATABASE, SINKS[1].0)
            .values()
            .map(|d| {
                let key = format!(
                    "{},{},{}",
                    d.get_i64("window_start").unwrap(),
                    d.get_str("country").unwrap(),
                    d.get_str("weather").unwrap()
                );
                (key, d.get_i64("count").unwrap())
            })
            .collect();
        let events = self.server.docs(DATABASE, SINKS[2].0);
        let mut appended = Appended {
            rows: events.len() as i64,
            // Documents are keyed by `_id`: at most one per event id.
            distinct_ids: events.len() as i64,
            by_country: BTreeMap::new(),
        };
        for d in events.values() {
            *appended
                .by_country
                .entry(d.get_str("country").unwrap().to_string())
                .or_default() += 1;
        }
        Stored {
            by_country,
            by_window,
            total: None,
            appended: Some(appended),
        }
    }

    fn context(&self) -> String {
        let st = self.server.state();
        format!(
            "fake server: {} bulk calls, {} refused while unavailable",
            st.bulk_calls, st.refused_while_unavailable
        )
    }
}

fn sink(server: &FakeMongo, index: usize) -> MongoSink<FakeMongo> {
    let (collection, mode) = SINKS[index];
    let config: MongoSinkConfig = toml::from_str(&format!(
        "uri = \"mongodb://fake\"\ndatabase = \"{DATABASE}\"\ncollection = \"{collection}\"\nmode = \"{mode}\"\nbatch_size = 500"
    ))
    .unwrap();
    MongoSink::with_client(collection, config, server.clone())
}

/// One run, from the checkpoint on `disk` until the input is processed and
/// every epoch acknowledged (or until it is dropped: a kill), taking
/// `batch` events per tick.
async fn run(
    server: FakeMongo,
    input: Arc<Vec<Event>>,
    batch: usize,
    disk: Arc<Mutex<Checkpoint>>,
) -> Result<(), String> {
    let mut state = disk.lock().unwrap().clone();
    let (acks, mut sink_events) = mpsc::unbounded_channel();
    let policy = RetryPolicy {
        base: Duration::from_millis(10),
        max: Duration::from_millis(200),
    };
    let mut outputs = Vec::new();
    for (index, (collection, _)) in SINKS.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        for (&epoch, records) in &state.outbox[index] {
            let redelivery = SinkEpoch {
                epoch,
                records: records.clone(),
            };
            tx.send(redelivery).unwrap();
        }
        tokio::spawn(drive_sink(
            index,
            (*collection).into(),
            "w1_fenced".into(),
            Box::new(sink(&server, index)),
            state.progress[index].clone(),
            rx,
            acks.clone(),
            policy.clone(),
        ));
        outputs.push(tx);
    }
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            event = sink_events.recv() => match event {
                Some(SinkEvent::Acked { sink, epoch, progress, .. }) => {
                    state.outbox[sink].remove(&epoch);
                    if progress.is_some() {
                        state.progress[sink] = progress;
                    }
                }
                Some(SinkEvent::Failed { sink, error }) => {
                    return Err(format!("sink {}: {error}", SINKS[sink].0));
                }
                None => return Err("every sink driver stopped".into()),
            },
            _ = tick.tick() => {
                let (start, end) = (state.position, (state.position + batch).min(input.len()));
                let epoch = (end > start).then(|| next_epoch(&mut state, &input[start..end]));
                state.position = end;
                // The checkpoint is on disk before its epoch goes out.
                *disk.lock().unwrap() = state.clone();
                if let Some(epoch) = epoch {
                    for (index, tx) in outputs.iter().enumerate() {
                        let records = state.outbox[index][&epoch].clone();
                        tx.send(SinkEpoch { epoch, records }).unwrap();
                    }
                }
                if state.position == input.len() && state.outbox.iter().all(BTreeMap::is_empty) {
                    return Ok(());
                }
            }
        }
    }
}

/// Applies a batch to the state and puts its records into a new epoch of
/// every outbox; returns the epoch.
fn next_epoch(state: &mut Checkpoint, batch: &[Event]) -> u64 {
    state.epoch += 1;
    let epoch = state.epoch;
    let first_offset = state.position;
    let mut countries = BTreeMap::new();
    let mut windows = BTreeMap::new();
    let mut appended = Vec::with_capacity(batch.len());
    for (i, e) in batch.iter().enumerate() {
        let n = state.by_country.entry(e.country.clone()).or_default();
        *n += 1;
        countries.insert(e.country.clone(), *n);
        let window = (
            e.ts - e.ts.rem_euclid(60_000),
            e.country.clone(),
            e.weather.clone(),
        );
        let n = state.by_window.entry(window.clone()).or_default();
        *n += 1;
        windows.insert(window, *n);
        appended.push(record(
            RowKind::Insert,
            format!("weather:0:{}", first_offset + i),
            &[
                ("country", Value::from(e.country.as_str())),
                ("weather", Value::from(e.weather.as_str())),
                ("ts", Value::Int(e.ts)),
            ],
        ));
    }
    let countries = countries
        .into_iter()
        .map(|(country, n)| {
            record(
                RowKind::Upsert,
                country.clone(),
                &[
                    ("country", Value::from(country.as_str())),
                    ("count", Value::Int(n)),
                ],
            )
        })
        .collect();
    let windows = windows
        .into_iter()
        .map(|((start, country, weather), n)| {
            record(
                RowKind::Upsert,
                format!("{start}|{country}|{weather}"),
                &[
                    ("window_start", Value::Int(start)),
                    ("country", Value::from(country.as_str())),
                    ("weather", Value::from(weather.as_str())),
                    ("count", Value::Int(n)),
                ],
            )
        })
        .collect();
    for (outbox, records) in state.outbox.iter_mut().zip([countries, windows, appended]) {
        outbox.insert(epoch, Arc::new(records));
    }
    epoch
}

fn record(kind: RowKind, id: String, fields: &[(&str, Value)]) -> SinkRecord {
    let mut value = Map(Vec::with_capacity(fields.len()));
    for (k, v) in fields {
        value.insert(*k, v.clone());
    }
    SinkRecord {
        kind,
        id: Str::from(id),
        value: Value::Object(value),
        time: 0,
    }
}
