//! Config parsing, and the sink against librdkafka's in-process mock
//! cluster: keys, JSON values, tombstones, acknowledgement after delivery.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_engine::batch::RowKind;
use sluice_engine::sink::{Sink, SinkError, SinkRecord};
use sluice_engine::value::{Map, Str, Value};

use super::{Compression, KafkaSink, KafkaSinkConfig};

const EXAMPLE: &str = r#"
brokers = ["kafka-0.kafka:9092"]
topic = "country-counts"
linger_ms = 5
compression = "lz4"
options = { "acks" = "all", "queue.buffering.max.messages" = 200000 }
"#;

#[test]
fn example_config_parses() {
    let c: KafkaSinkConfig = toml::from_str(EXAMPLE).unwrap();
    assert_eq!(c.topic, "country-counts");
    assert_eq!(c.compression, Compression::Lz4);
    assert_eq!(c.batch_size, 1_000_000);
    assert_eq!(c.options["queue.buffering.max.messages"], "200000");
    let e = toml::from_str::<KafkaSinkConfig>(&format!("{EXAMPLE}\ntopics = [\"x\"]")).unwrap_err();
    assert!(e.to_string().contains("unknown field `topics`"), "{e}");
    let e = toml::from_str::<KafkaSinkConfig>(&EXAMPLE.replace("\"acks\"", "\"linger.ms\""))
        .unwrap_err();
    assert!(e.to_string().contains("use `linger_ms`"), "{e}");
    let e = toml::from_str::<KafkaSinkConfig>(&EXAMPLE.replace("lz4", "brotli")).unwrap_err();
    assert!(e.to_string().contains("zstd"), "{e}");
}

fn sink(brokers: &str, topic: &str) -> KafkaSink {
    let text = format!("brokers = [\"{brokers}\"]\ntopic = \"{topic}\"\nlinger_ms = 1");
    KafkaSink::new(toml::from_str(&text).unwrap())
}

fn record(kind: RowKind, id: &str, count: i64) -> SinkRecord {
    let mut m = Map::new();
    m.insert("country", Value::Str(Str::from(id)));
    if kind != RowKind::Delete {
        m.insert("count", Value::Int(count));
    }
    SinkRecord {
        kind,
        id: Str::from(id),
        value: Value::Object(m),
        time: 0,
    }
}

/// Reads every message of `topic` (one partition): (key, value).
fn read_all(brokers: &str, topic: &str, n: usize) -> Vec<(String, Option<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
            let value = m.payload().map(|p| String::from_utf8_lossy(p).to_string());
            out.push((key, value));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_keyed_json_and_tombstones() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("out", 1, 1).unwrap();
    let mut s = sink(&brokers, "out");
    s.restore(None).await.unwrap();
    let records = vec![
        record(RowKind::Upsert, "GT", 3),
        record(RowKind::Upsert, "FR", 1),
        record(RowKind::Delete, "FR", 0),
    ];
    let outcome = s.write(1, &records).await.unwrap();
    assert!(outcome.rejected.is_empty());
    // Acknowledged means delivered: everything is readable now.
    let b = brokers.clone();
    let got = tokio::task::spawn_blocking(move || read_all(&b, "out", 3))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            ("GT".into(), Some(r#"{"country":"GT","count":3}"#.into())),
            ("FR".into(), Some(r#"{"country":"FR","count":1}"#.into())),
            ("FR".into(), None),
        ]
    );
    // A second epoch on the same producer.
    s.write(2, &[record(RowKind::Upsert, "GT", 4)])
        .await
        .unwrap();
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_are_rejected_not_retried() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("out", 1, 1).unwrap();
    let text = format!(
        "brokers = [\"{brokers}\"]\ntopic = \"out\"\noptions = {{ \"message.max.bytes\" = 1000 }}"
    );
    let mut s = KafkaSink::new(toml::from_str(&text).unwrap());
    s.restore(None).await.unwrap();
    let mut big = record(RowKind::Upsert, "BIG", 1);
    if let Value::Object(m) = &mut big.value {
        m.insert("pad", Value::Str(Str::from("x".repeat(5000))));
    }
    let records = vec![record(RowKind::Upsert, "GT", 1), big];
    let outcome = s.write(1, &records).await.unwrap();
    assert_eq!(outcome.rejected.len(), 1);
    assert_eq!(outcome.rejected[0].0, 1);
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_fatal_with_a_clear_message() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let mut s = sink(&brokers, "missing");
    match s.restore(None).await {
        Err(SinkError::Fatal(m)) => assert!(m.contains("topic `missing` does not exist"), "{m}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
}
