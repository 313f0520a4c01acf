//! The Kafka side of the Kafka -> Redis benchmark (`bench/kafka.sh`): a
//! producer that loads a topic, the hand-written consumer sluice is compared
//! with, and two small admin helpers.
//!
//! - `produce BROKERS TOPIC PARTITIONS INPUT.jsonl`: creates the topic if it
//!   does not exist, then produces every line round-robin over the
//!   partitions (one producer thread per partition), idempotent, ONE RECORD
//!   PER BATCH (`batch.num.messages=1`, `linger.ms=0`): tansu, the test
//!   broker, loses data when a consumer resumes inside a multi-record batch
//!   and reports end offsets that are too small for them (see
//!   docs/connectors/kafka.md, *Tested brokers*). Prints the time it took.
//! - `consume-redis BROKERS TOPIC GROUP REDIS_URL KEY_PREFIX N`: the
//!   consumer as the use-case teams wrote theirs (like their Go consumers):
//!   a consumer group with `enable.auto.commit=false` and
//!   `auto.offset.reset=earliest`; per message: parse the JSON,
//!   `HINCRBY <prefix>country:counts <country> 1`, `INCR
//!   <prefix>messages:total` (one Redis round trip per command, no
//!   pipelining), then commit that message's offset (asynchronously). A
//!   message that is not valid JSON is logged and committed. Stops after N
//!   messages (or at SIGINT/SIGTERM). A crash between the Redis writes and
//!   the commit makes the group resume before messages whose increments are
//!   already in Redis: they are counted twice.
//! - `remaining BROKERS TOPIC GROUP`: prints how many messages of the topic
//!   the group has not committed (sum over partitions of high watermark -
//!   committed offset, the low watermark where nothing is committed).
//! - `delete BROKERS TOPIC`: deletes the topic.
//!
//! `session.timeout.ms` of the consumer is `BASELINE_SESSION_TIMEOUT_MS`
//! (default 10000). `BASELINE_GROUP_INSTANCE_ID`, if set, makes it a static
//! member (`group.instance.id`): on tansu, a dynamic member restarted after
//! a SIGKILL was given no partitions at all (the dead member kept them), a
//! static one takes its partitions back.

use std::error::Error;
use std::io::BufRead;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    country: &'a str,
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?)
}

/// High watermark of every partition of `topic`, None while the topic (or
/// one of its partitions) is not visible yet.
fn watermarks(brokers: &str, topic: &str) -> Result<Option<Vec<(i32, i64, i64)>>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for p in t.partitions() {
        match consumer.fetch_watermarks(topic, p.id(), TIMEOUT) {
            Ok((low, high)) => out.push((p.id(), low, high)),
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(out))
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin = admin(brokers)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in block_on(admin.create_topics(&[new], &AdminOptions::new()))?? {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("creating topic {t}: {e}").into()),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(w) = watermarks(brokers, topic)? {
            if w.len() == partitions as usize {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("topic {topic} not visible 30 s after creating it").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn produce_partition(brokers: &str, topic: &str, partition: i32, lines: &[String]) -> Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()?;
    for line in lines {
        let mut record = BaseRecord::<(), str>::to(topic)
            .partition(partition)
            .payload(line.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    if e.rdkafka_error_code() != Some(RDKafkaErrorCode::QueueFull) {
                        return Err(format!("producing to {topic}/{partition}: {e}").into());
                    }
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO); // serve delivery reports
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(())
}

fn produce(brokers: &str, topic: &str, partitions: i32, input: &str) -> Result<()> {
    if partitions < 1 {
        return Err("PARTITIONS must be at least 1".into());
    }
    create_topic(brokers, topic, partitions)?;
    let reader = std::io::BufReader::new(std::fs::File::open(input)?);
    let mut per_partition: Vec<Vec<String>> = vec![Vec::new(); partitions as usize];
    let mut n = 0u64;
    for line in reader.lines() {
        per_partition[(n % partitions as u64) as usize].push(line?);
        n += 1;
    }
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = per_partition
            .iter()
            .enumerate()
            .map(|(p, lines)| {
                scope.spawn(move || {
                    produce_partition(brokers, topic, p as i32, lines).map_err(|e| e.to_string())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a producer thread panicked")??;
        }
        Ok::<(), Box<dyn Error>>(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    // Every record must be in the log: the end offsets must add up to N.
    let ends: i64 = watermarks(brokers, topic)?
        .ok_or("topic vanished")?
        .iter()
        .map(|(_, low, high)| high - low)
        .sum();
    if ends != n as i64 {
        return Err(format!("produced {n} records but the end offsets add up to {ends}").into());
    }
    eprintln!(
        "produced {n} records to {topic} ({partitions} partitions, one record per batch) in {secs:.2} s ({:.0}/s)",
        n as f64 / secs
    );
    Ok(())
}

fn consume_redis(
    brokers: &str,
    topic: &str,
    group: &str,
    redis_url: &str,
    prefix: &str,
    n: u64,
) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(&stop)?;
    let session_timeout =
        std::env::var("BASELINE_SESSION_TIMEOUT_MS").unwrap_or_else(|_| "10000".to_string());
    let client = redis::Client::open(redis_url)?;
    let mut con = client.get_connection()?;
    let hash = format!("{prefix}country:counts");
    let total = format!("{prefix}messages:total");
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", &session_timeout);
    match std::env::var("BASELINE_GROUP_INSTANCE_ID") {
        Ok(id) if !id.is_empty() => {
            config.set("group.instance.id", id);
        }
        _ => {}
    }
    let consumer: BaseConsumer = config.create()?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    let mut first: Option<f64> = None;
    let mut seen = 0u64;
    let mut bad = 0u64;
    while seen < n && !stop.load(Ordering::Relaxed) {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        first.get_or_insert_with(|| started.elapsed().as_secs_f64());
        match serde_json::from_slice::<Event>(m.payload().unwrap_or_default()) {
            Ok(e) => {
                redis::cmd("HINCRBY")
                    .arg(&hash)
                    .arg(e.country)
                    .arg(1)
                    .query::<i64>(&mut con)?;
                redis::cmd("INCR").arg(&total).query::<i64>(&mut con)?;
            }
            Err(e) => {
                bad += 1;
                eprintln!(
                    "bad message at {}/{}@{}: {e}",
                    m.topic(),
                    m.partition(),
                    m.offset()
                );
            }
        }
        consumer.commit_message(&m, CommitMode::Async)?;
        seen += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    // Let the last asynchronous commits go out before closing.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        eprintln!("final commit: {e}");
    }
    eprintln!(
        "counted {seen} messages ({bad} bad) into Redis in {secs:.2} s ({:.0}/s); first message after {:.2} s",
        seen as f64 / secs,
        first.unwrap_or(secs)
    );
    println!("counted={seen} elapsed={secs:.3}");
    Ok(())
}

/// SIGINT and SIGTERM set `flag` (the consumer then stops after the message
/// in hand), handled by tokio on a background thread.
fn stop_on_signals(flag: &Arc<AtomicBool>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut int = rt.block_on(async { signal(SignalKind::interrupt()) })?;
    let mut term = rt.block_on(async { signal(SignalKind::terminate()) })?;
    let flag = flag.clone();
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        flag.store(true, Ordering::Relaxed);
    });
    Ok(())
}

fn remaining(brokers: &str, topic: &str, group: &str) -> Result<()> {
    let marks = watermarks(brokers, topic)?.ok_or_else(|| format!("no topic {topic}"))?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for (p, _, _) in &marks {
        tpl.add_partition(topic, *p);
    }
    let got = consumer.committed_offsets(tpl, TIMEOUT)?;
    let mut left = 0i64;
    for (p, low, high) in marks {
        let from = match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        eprintln!("{topic}/{p}: low {low}, high {high}, group {group} at {from}");
        left += (high - from).max(0);
    }
    println!("{left}");
    Ok(())
}

fn delete(brokers: &str, topic: &str) -> Result<()> {
    let admin = admin(brokers)?;
    for r in block_on(admin.delete_topics(&[topic], &AdminOptions::new()))?? {
        r.map_err(|(t, e)| format!("deleting topic {t}: {e}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let a = |i: usize| args[i].as_str();
    let result = match args.get(1).map(String::as_str) {
        Some("produce") if args.len() == 6 => match a(4).parse() {
            Ok(p) => produce(a(2), a(3), p, a(5)),
            Err(e) => Err(format!("PARTITIONS: {e}").into()),
        },
        Some("consume-redis") if args.len() == 8 => match a(7).parse() {
            Ok(n) => consume_redis(a(2), a(3), a(4), a(5), a(6), n),
            Err(e) => Err(format!("N: {e}").into()),
        },
        Some("remaining") if args.len() == 5 => remaining(a(2), a(3), a(4)),
        Some("delete") if args.len() == 4 => delete(a(2), a(3)),
        _ => Err(
            "usage: kafka_baseline produce BROKERS TOPIC PARTITIONS INPUT.jsonl \
                  | consume-redis BROKERS TOPIC GROUP REDIS_URL KEY_PREFIX N \
                  | remaining BROKERS TOPIC GROUP | delete BROKERS TOPIC"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kafka_baseline: {e}");
            ExitCode::FAILURE
        }
    }
}
