//! The Kafka sink against a real Kafka-protocol broker (tansu, started by
//! tests/kafka.sh): per-country counts written to a topic while sluice is
//! killed with SIGKILL, read back (last value per key = the result, since
//! values are absolute upserts); and a Kafka -> Kafka pipeline whose dead
//! letters go to a Kafka topic (`[dead_letter] type = "kafka"`).
#![cfg(feature = "kafka")]

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::kafka::{
    broker, create_topic, delete_topics, produce_lines, read_until, unique_topic,
};
use support::*;

/// Last value per key (the topic read as a table), and the message count.
/// Reads until `done` holds for the table (at most 60 s), not until the
/// broker looks quiet: tansu reports too small end offsets for
/// multi-record batches, so a quiet period on a loaded machine could cut
/// the reading short.
fn table(
    brokers: &str,
    topic: &str,
    partitions: i32,
    done: impl Fn(&BTreeMap<String, serde_json::Value>) -> bool,
) -> (BTreeMap<String, serde_json::Value>, usize) {
    let messages = read_until(brokers, topic, partitions, Duration::from_secs(60), |m| {
        done(&as_table(m))
    });
    (as_table(&messages), messages.len())
}

fn as_table(messages: &[(i32, String, Option<String>)]) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let mut partition_of = BTreeMap::new();
    for (p, key, value) in messages {
        // one key, one partition: the order per key is the write order
        assert_eq!(
            *partition_of.entry(key.clone()).or_insert(*p),
            *p,
            "key {key} in two partitions"
        );
        match value {
            Some(v) => {
                out.insert(key.clone(), serde_json::from_str(v).unwrap());
            }
            None => {
                out.remove(key);
            }
        }
    }
    out
}

fn counts(table: &BTreeMap<String, serde_json::Value>) -> BTreeMap<String, i64> {
    table
        .iter()
        .map(|(k, v)| (k.clone(), v["count"].as_i64().unwrap_or(-1)))
        .collect()
}

const SINK_PIPELINE: &str = r#"
[pipeline]
name = "kafka_sink_w1"

[state]
dir = "${STATE_DIR}"

[checkpoint]
interval = "100ms"

[sources.weather]
type = "file"
path = "${INPUT}"
max_events_per_second = 20000

[transforms.by_country]
type = "aggregate"
inputs = ["weather"]
group_by = ["country"]
aggregates = { count = "count" }

[sinks.counts]
type = "kafka"
inputs = ["by_country"]
brokers = ["${KAFKA_BROKERS}"]
topic = "${TOPIC}"
linger_ms = 2
compression = "lz4"
"#;

#[test]
fn kafka_sink_w1_counts_are_exact_after_random_sigkills() {
    let test = "kafka_sink_w1";
    let Some(brokers) = broker() else { return };
    let w1 = w1::generate(60_000, 23);
    let topic = unique_topic(test);
    create_topic(&brokers, &topic, 3);
    let work = tempfile::tempdir().unwrap();
    let pipeline = work.path().join("pipeline.toml");
    std::fs::write(&pipeline, SINK_PIPELINE).unwrap();
    let p = |name: &str| work.path().join(name).display().to_string();
    let env = vec![
        ("KAFKA_BROKERS", brokers.clone()),
        ("TOPIC", topic.clone()),
        ("INPUT", w1.input.display().to_string()),
        ("STATE_DIR", p("state")),
    ];
    let log = work.path().join("sluice.log");
    let mut rng = rng(test);
    let started = Instant::now();
    let hit = run_with_kills(
        &pipeline,
        &env,
        &log,
        &mut rng,
        6,
        Duration::from_millis(1500),
    );
    eprintln!("{test}: {hit} kills hit; runs took {:?}", started.elapsed());
    assert!(hit > 0, "no kill hit a running process");

    let (table, messages) = table(&brokers, &topic, 3, |t| counts(t) == w1.by_country);
    for (k, v) in &table {
        assert_eq!(v["country"].as_str(), Some(k.as_str()), "key = group key");
    }
    eprintln!(
        "{test}: {messages} messages for {} keys (re-written epochs included)",
        table.len()
    );
    assert_eq!(counts(&table), w1.by_country);
    delete_topics(&brokers, &[&topic]);
}

const DLQ_PIPELINE: &str = r#"
[pipeline]
name = "kafka_to_kafka"

[state]
dir = "${STATE_DIR}"

[checkpoint]
interval = "100ms"

[sources.weather]
type = "kafka"
brokers = ["${KAFKA_BROKERS}"]
topics = ["${INPUT_TOPIC}"]
group_id = "${INPUT_TOPIC}-group"
group_instance_id = ""
poll_timeout = "20ms"
max_event_bytes = 1024

[transforms.by_country]
type = "aggregate"
inputs = ["weather"]
group_by = ["country"]
aggregates = { count = "count" }

[sinks.counts]
type = "kafka"
inputs = ["by_country"]
brokers = ["${KAFKA_BROKERS}"]
topic = "${OUTPUT_TOPIC}"

[dead_letter]
type = "kafka"
brokers = ["${KAFKA_BROKERS}"]
topic = "${DLQ_TOPIC}"
"#;

#[test]
fn kafka_to_kafka_with_dead_letters_to_kafka() {
    let test = "kafka_dlq";
    let Some(brokers) = broker() else { return };
    let w1 = w1::generate(2_000, 5);
    let [input, output, dlq] = ["in", "out", "dlq"].map(|t| unique_topic(&format!("{test}_{t}")));
    create_topic(&brokers, &input, 2);
    create_topic(&brokers, &output, 1);
    create_topic(&brokers, &dlq, 1);
    let text = std::fs::read_to_string(&w1.input).unwrap();
    let oversized = format!("{{\"country\":\"GT\",\"pad\":\"{}\"}}", "x".repeat(2000));
    let poison = [
        "not json at all",
        "{\"country\": \"GT\"",
        "[1, 2, 3]",
        "",
        oversized.as_str(),
    ];
    let lines: Vec<&str> = text.lines().chain(poison).collect();
    produce_lines(&brokers, &input, 2, lines.into_iter());

    let work = tempfile::tempdir().unwrap();
    let pipeline: PathBuf = work.path().join("pipeline.toml");
    std::fs::write(&pipeline, DLQ_PIPELINE).unwrap();
    let env = vec![
        ("KAFKA_BROKERS", brokers.clone()),
        ("INPUT_TOPIC", input.clone()),
        ("OUTPUT_TOPIC", output.clone()),
        ("DLQ_TOPIC", dlq.clone()),
        ("STATE_DIR", work.path().join("state").display().to_string()),
    ];
    let log = work.path().join("sluice.log");
    let started = Instant::now();
    let status = spawn_run(&pipeline, &env, &log).wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    eprintln!("{test}: bounded run took {:?}", started.elapsed());

    let (out, _) = table(&brokers, &output, 1, |t| counts(t) == w1.by_country);
    assert_eq!(counts(&out), w1.by_country);

    let (dead, _) = table(&brokers, &dlq, 1, |t| t.len() >= 5);
    let mut types: Vec<String> = dead
        .values()
        .map(|d| d["error_type"].as_str().unwrap().to_string())
        .collect();
    types.sort();
    assert_eq!(
        types,
        vec![
            "malformed_json",
            "malformed_json",
            "malformed_json",
            "malformed_json",
            "oversized"
        ],
        "dead letters: {dead:?}"
    );
    for key in dead.keys() {
        assert!(key.starts_with("weather:"), "dead-letter key {key}");
    }
    delete_topics(&brokers, &[&input, &output, &dlq]);
}
