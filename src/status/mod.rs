//! The status page (`GET /`) and the JSON it polls (`GET /status`): the
//! pipeline's graph with each component's numbers, the last checkpoint and
//! the dead letters. The numbers are read back from the Prometheus
//! recorder's own rendering, so the page and `/metrics` always agree; event
//! rates come from the counters recorded every second (`rates`).
//!
//! `sluice graph` prints the same graph as Mermaid or DOT.

pub(crate) mod graph;
pub(crate) mod prom;
pub(crate) mod rates;

use std::collections::BTreeMap;

use serde::Serialize;
use sluice_engine::metrics as m;

pub(crate) use graph::Topology;
use prom::Sample;

/// The page and its assets, embedded in the binary.
pub(crate) const PAGE_HTML: &str = include_str!("page/index.html");
pub(crate) const PAGE_CSS: &str = include_str!("page/status.css");
pub(crate) const PAGE_JS: &str = include_str!("page/status.js");

/// What `/metrics` says about one component. `None` (JSON `null`): the
/// metric does not apply to this component or has no value yet.
#[derive(Debug, Default, Serialize, PartialEq)]
pub(crate) struct ComponentStatus {
    /// Events read (sources) or records written (sinks).
    pub events_total: Option<f64>,
    /// `events_total` per second over the last few seconds.
    pub events_per_second: Option<f64>,
    /// Bytes read (sources) or written (sinks).
    pub bytes_total: Option<f64>,
    /// `sluice_errors_total` by `error_type`.
    pub errors: BTreeMap<String, f64>,
    /// `sluice_dead_letters_total` by `error_type` (the reason).
    pub dead_letters: BTreeMap<String, f64>,
    /// Events waiting upstream: journal backlog, queue depth, consumer lag.
    pub lag_events: Option<f64>,
    /// Change-stream sources: seconds behind the server.
    pub lag_seconds: Option<f64>,
    /// Event-time operators: now minus their watermark.
    pub watermark_delay_seconds: Option<f64>,
    pub state_keys: Option<f64>,
    pub state_bytes: Option<f64>,
    /// Sinks: checkpointed epochs not yet acknowledged.
    pub pending_epochs: Option<f64>,
    /// Sinks: write attempts retried.
    pub retries_total: Option<f64>,
    /// `dedupe` transforms: repeats dropped.
    pub dedupe_dropped_total: Option<f64>,
}

impl ComponentStatus {
    fn apply(&mut self, s: &Sample) {
        let error_type = || s.label("error_type").unwrap_or("unknown").to_string();
        let v = Some(s.value);
        match s.name.as_str() {
            m::EVENTS_IN | m::EVENTS_OUT => self.events_total = v,
            m::BYTES_IN | m::BYTES_OUT => self.bytes_total = v,
            m::ERRORS => {
                self.errors.insert(error_type(), s.value);
            }
            m::DEAD_LETTERS => {
                self.dead_letters.insert(error_type(), s.value);
            }
            m::SOURCE_LAG => self.lag_events = v,
            m::SOURCE_LAG_SECONDS => self.lag_seconds = v,
            m::WATERMARK_DELAY => self.watermark_delay_seconds = v,
            m::STATE_KEYS => self.state_keys = v,
            m::STATE_BYTES => self.state_bytes = v,
            m::SINK_PENDING_EPOCHS => self.pending_epochs = v,
            m::SINK_RETRIES => self.retries_total = v,
            m::DEDUPE_DROPPED => self.dedupe_dropped_total = v,
            _ => {}
        }
    }
}

/// A component of the graph with its numbers.
#[derive(Debug, Serialize)]
pub(crate) struct NodeStatus {
    #[serde(flatten)]
    pub node: graph::Node,
    pub metrics: ComponentStatus,
}

/// The last durable checkpoint.
#[derive(Debug, Default, Serialize)]
pub(crate) struct CheckpointStatus {
    pub epoch: Option<f64>,
    /// Checkpoints written since start.
    pub total: Option<f64>,
    pub failures: Option<f64>,
    /// Unix time (seconds) the last checkpoint became durable.
    pub last_success_unix: Option<f64>,
    /// Seconds since then, at `time`.
    pub age_seconds: Option<f64>,
    /// How long the last checkpoint took to write and fsync.
    pub last_duration_seconds: Option<f64>,
    /// Bytes written by the last checkpoint.
    pub size_bytes: Option<f64>,
    pub interval_seconds: Option<f64>,
}

/// The dead-letter output.
#[derive(Debug, Serialize)]
pub(crate) struct DeadLetterStatus {
    /// Dead letters counted by every component.
    pub total: f64,
    /// The dead-letter sink's own numbers (records written, retries...).
    pub sink: ComponentStatus,
}

/// The body of `GET /status`.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub pipeline: String,
    pub version: &'static str,
    /// Server time (Unix seconds) when the numbers were read.
    pub time: f64,
    pub ready: bool,
    pub nodes: Vec<NodeStatus>,
    pub checkpoint: CheckpointStatus,
    pub dead_letter: DeadLetterStatus,
}

/// The name the engine gives the dead-letter sink in its metrics.
const DEAD_LETTER_SINK: &str = "dead_letter";

/// Assembles the status of `pipeline` from the samples of `/metrics`.
pub(crate) fn status(
    pipeline: &str,
    topology: &Topology,
    samples: &[Sample],
    rates: &BTreeMap<String, f64>,
    ready: bool,
    now_unix: f64,
) -> Status {
    let mut by_component: BTreeMap<&str, ComponentStatus> = BTreeMap::new();
    let mut dead_letter_sink = ComponentStatus::default();
    let mut checkpoint = CheckpointStatus::default();
    let mut dead_total = 0.0;
    for s in samples {
        if s.label("pipeline") != Some(pipeline) {
            continue;
        }
        if s.name == m::DEAD_LETTERS {
            dead_total += s.value;
        }
        let v = Some(s.value);
        match s.name.as_str() {
            m::CHECKPOINT_EPOCH => checkpoint.epoch = v,
            m::CHECKPOINTS => checkpoint.total = v,
            m::CHECKPOINT_FAILURES => checkpoint.failures = v,
            m::CHECKPOINT_LAST_SUCCESS => checkpoint.last_success_unix = v,
            m::CHECKPOINT_LAST_DURATION => checkpoint.last_duration_seconds = v,
            m::CHECKPOINT_SIZE => checkpoint.size_bytes = v,
            m::CHECKPOINT_INTERVAL => checkpoint.interval_seconds = v,
            _ => {}
        }
        let Some(component) = s.label("component") else {
            continue;
        };
        if component == DEAD_LETTER_SINK && s.label("component_kind") == Some("sink") {
            dead_letter_sink.apply(s);
        } else {
            by_component.entry(component).or_default().apply(s);
        }
    }
    for (component, rate) in rates {
        match by_component.get_mut(component.as_str()) {
            Some(c) => c.events_per_second = Some(*rate),
            None if component == DEAD_LETTER_SINK => {
                dead_letter_sink.events_per_second = Some(*rate)
            }
            None => {}
        }
    }
    checkpoint.age_seconds = checkpoint
        .last_success_unix
        .map(|t| (now_unix - t).max(0.0));
    let nodes = topology
        .nodes
        .iter()
        .map(|n| NodeStatus {
            node: n.clone(),
            metrics: by_component.remove(n.name.as_str()).unwrap_or_default(),
        })
        .collect();
    Status {
        pipeline: pipeline.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        time: now_unix,
        ready,
        nodes,
        checkpoint,
        dead_letter: DeadLetterStatus {
            total: dead_total,
            sink: dead_letter_sink,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::graph::Kind;
    use super::*;

    #[test]
    fn numbers_land_on_their_component_and_the_checkpoint() {
        let topology = Topology::layout(vec![
            ("in".into(), Kind::Source, "http".into(), vec![]),
            (
                "agg".into(),
                Kind::Transform,
                "aggregate".into(),
                vec!["in".into()],
            ),
            ("out".into(), Kind::Sink, "table".into(), vec!["agg".into()]),
        ]);
        let text = r#"
sluice_events_in_total{pipeline="p",component="in",component_kind="source"} 12
sluice_events_in_total{pipeline="other",component="in",component_kind="source"} 99
sluice_errors_total{pipeline="p",component="in",component_kind="source",error_type="bad_request"} 2
sluice_source_lag_events{pipeline="p",component="in",component_kind="source"} 5
sluice_dead_letters_total{pipeline="p",component="agg",component_kind="pipeline",error_type="late"} 3
sluice_dead_letters_total{pipeline="p",component="in",component_kind="pipeline",error_type="malformed_json"} 1
sluice_watermark_delay_seconds{pipeline="p",component="agg",component_kind="transform"} 1.5
sluice_events_out_total{pipeline="p",component="out",component_kind="sink"} 7
sluice_sink_pending_epochs{pipeline="p",component="out",component_kind="sink"} 2
sluice_events_out_total{pipeline="p",component="dead_letter",component_kind="sink"} 4
sluice_checkpoint_epoch{pipeline="p"} 9
sluice_checkpoint_last_success_timestamp_seconds{pipeline="p"} 1000.5
sluice_checkpoint_last_duration_seconds{pipeline="p"} 0.004
sluice_checkpoint_size_bytes{pipeline="p"} 173
"#;
        let rates = BTreeMap::from([("in".to_string(), 2.5), ("dead_letter".to_string(), 0.5)]);
        let s = status("p", &topology, &prom::parse(text), &rates, true, 1003.0);
        let by = |name: &str| {
            &s.nodes
                .iter()
                .find(|n| n.node.name == name)
                .unwrap()
                .metrics
        };
        assert_eq!(by("in").events_total, Some(12.0));
        assert_eq!(by("in").errors["bad_request"], 2.0);
        assert_eq!(by("in").events_per_second, Some(2.5));
        assert_eq!(by("out").events_per_second, None);
        assert_eq!(s.dead_letter.sink.events_per_second, Some(0.5));
        assert_eq!(by("in").lag_events, Some(5.0));
        assert_eq!(by("in").dead_letters["malformed_json"], 1.0);
        assert_eq!(by("agg").dead_letters["late"], 3.0);
        assert_eq!(by("agg").watermark_delay_seconds, Some(1.5));
        assert_eq!(by("agg").events_total, None);
        assert_eq!(by("out").events_total, Some(7.0));
        assert_eq!(by("out").pending_epochs, Some(2.0));
        assert_eq!(s.dead_letter.total, 4.0);
        assert_eq!(s.dead_letter.sink.events_total, Some(4.0));
        assert_eq!(s.checkpoint.epoch, Some(9.0));
        assert_eq!(s.checkpoint.age_seconds, Some(2.5));
        assert_eq!(s.checkpoint.last_duration_seconds, Some(0.004));
        assert_eq!(s.checkpoint.size_bytes, Some(173.0));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["nodes"][1]["type"], "aggregate");
        assert_eq!(json["nodes"][1]["kind"], "transform");
        assert_eq!(json["nodes"][1]["column"], 1);
        assert_eq!(json["nodes"][2]["metrics"]["pending_epochs"], 2.0);
    }
}
