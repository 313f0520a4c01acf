//! A Kafka-protocol broker for the Kafka tests: tansu on 127.0.0.1:19092
//! (started by `tests/kafka.sh`; `KAFKA_BROKERS` points the tests at
//! another broker instead), and a small blocking rdkafka client to create
//! topics, produce, consume and read group offsets.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The brokers to test against, after making sure tansu runs; None (with a
/// loud message) when no broker can be started, so the caller skips.
pub fn broker() -> Option<String> {
    static BROKERS: OnceLock<Option<String>> = OnceLock::new();
    BROKERS
        .get_or_init(|| {
            if let Ok(b) = std::env::var("KAFKA_BROKERS") {
                return Some(b);
            }
            let status = Command::new("bash")
                .arg(super::repo().join("tests/kafka.sh"))
                .stdout(Stdio::inherit())
                .status();
            match status {
                Ok(s) if s.success() => Some("127.0.0.1:19092".to_string()),
                other => {
                    eprintln!(
                        "\n*** SKIPPED: no Kafka-protocol broker: tests/kafka.sh could not start tansu ({other:?}).\n\
                         *** Run `bash tests/kafka.sh` to see why, or set KAFKA_BROKERS.\n"
                    );
                    None
                }
            }
        })
        .clone()
}

/// A topic name no other test (or run) uses.
pub fn unique_topic(test: &str) -> String {
    super::services::unique(test).replace('_', "-")
}

pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let result = rt
        .block_on(admin.create_topics(&[new], &AdminOptions::new()))
        .expect("CreateTopics");
    for r in result {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e:?}"));
    }
    // Wait until the topic's metadata is visible.
    let deadline = Instant::now() + TIMEOUT;
    while end_offsets(brokers, topic, partitions).is_none() {
        assert!(Instant::now() < deadline, "topic {topic} not visible");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deletes topics (tansu keeps them in memory until it stops).
pub fn delete_topics(brokers: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(e) = rt.block_on(admin.delete_topics(topics, &AdminOptions::new())) {
        eprintln!("deleting topics {topics:?}: {e}");
    }
}

/// Produces `lines` round-robin over `partitions` (one producer thread per
/// partition), ONE RECORD PER BATCH (`batch.num.messages=1`): tansu loses
/// data when a consumer resumes at an offset inside a multi-record batch
/// (see docs/connectors/kafka.md).
pub fn produce_lines<'a>(
    brokers: &str,
    topic: &str,
    partitions: i32,
    lines: impl Iterator<Item = &'a str>,
) -> u64 {
    let mut per_partition: Vec<Vec<&str>> = vec![Vec::new(); partitions as usize];
    let mut n = 0u64;
    for line in lines {
        per_partition[(n % partitions as u64) as usize].push(line);
        n += 1;
    }
    std::thread::scope(|scope| {
        for (partition, lines) in per_partition.iter().enumerate() {
            scope.spawn(move || produce_partition(brokers, topic, partition as i32, lines));
        }
    });
    n
}

fn produce_partition(brokers: &str, topic: &str, partition: i32, lines: &[&str]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for line in lines {
        let mut record = BaseRecord::<(), str>::to(topic)
            .partition(partition)
            .payload(*line);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO); // serve delivery reports
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// High watermark of every partition (None if the topic is not there).
pub fn end_offsets(brokers: &str, topic: &str, partitions: i32) -> Option<Vec<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, TIMEOUT)
                .ok()
                .map(|(_, high)| high)
        })
        .collect()
}

/// Offsets committed by `group` per partition (None: nothing committed).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_range(topic, 0, partitions - 1);
    let got = consumer
        .committed_offsets(tpl, TIMEOUT)
        .expect("OffsetFetch");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

/// Every message of `topic` from the beginning, read until `enough` holds
/// for what was read so far, or for at most `limit` (the caller's assertion
/// then shows what is missing). It relies neither on the broker's end
/// offsets (tansu reports them too small for multi-record batches) nor on
/// a quiet period, so a slow broker on a loaded machine cannot cut the
/// reading short.
pub fn read_until(
    brokers: &str,
    topic: &str,
    partitions: i32,
    limit: Duration,
    mut enough: impl FnMut(&[(i32, String, Option<String>)]) -> bool,
) -> Vec<(i32, String, Option<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let value = m.payload().map(|v| String::from_utf8_lossy(v).into_owned());
            out.push((m.partition(), key, value));
            continue;
        }
        if enough(&out) {
            break;
        }
    }
    out
}
