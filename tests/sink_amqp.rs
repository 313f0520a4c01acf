//! The AMQP sink against a real RabbitMQ (tests/rabbitmq.sh): per-country
//! counts of W1 published to a topic exchange with publisher confirms; a
//! consumer in the test sees every record, with `message_id`, the
//! `sluice-epoch` header and persistent delivery. Dead letters go to a
//! queue through `[dead_letter] type = "amqp"`. With SIGKILLs, epochs are
//! republished with the same ids, and keeping the newest epoch per
//! `message_id` gives exactly the oracle's counts.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use support::amqp::{rt, shared_broker, Cleanup, Client};
use support::*;

const PIPELINE: &str = r#"
[pipeline]
name = "amqp_sink"

[state]
dir = "${STATE_DIR}"

[checkpoint]
interval = "100ms"

[dead_letter]
type = "amqp"
url = "${AMQP_URL}"
routing_key = "${DLQ}"

[sources.weather]
type = "file"
path = "${INPUT}"
read_bytes = 16384
max_events_per_second = ${PACE:-0}

[transforms.by_country]
type = "aggregate"
inputs = ["weather"]
group_by = ["country"]
aggregates = { count = "count" }

[sinks.bus]
type = "amqp"
inputs = ["by_country"]
url = "${AMQP_URL}"
exchange = "${EXCHANGE}"
exchange_type = "topic"
routing_key = "counts.{country}"

[sinks.file]
type = "file"
inputs = ["by_country"]
path = "${OUTPUT}"
format = "changes"
"#;

struct Setup {
    url: String,
    w1: w1::W1,
    input: std::path::PathBuf,
    exchange: String,
    queue: String,
    dlq: String,
    work: tempfile::TempDir,
    pipeline: std::path::PathBuf,
    _cleanup: Cleanup,
}

/// W1 input plus `bad` malformed lines, an exchange with a bound queue,
/// and a dead-letter queue.
fn setup(test: &str, events: u64, bad: usize) -> Setup {
    let url = shared_broker();
    let w1 = w1::generate(events, 9);
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("input.ndjson");
    let mut f = std::fs::File::create(&input).unwrap();
    f.write_all(&std::fs::read(&w1.input).unwrap()).unwrap();
    for i in 0..bad {
        writeln!(f, "this is not json {i}").unwrap();
    }
    let pipeline = work.path().join("pipeline.toml");
    std::fs::write(&pipeline, PIPELINE).unwrap();
    let (exchange, queue, dlq) = (
        services::unique(&format!("{test}_ex")),
        services::unique(&format!("{test}_out")),
        services::unique(&format!("{test}_dlq")),
    );
    let s = Setup {
        _cleanup: Cleanup {
            url: url.clone(),
            queues: vec![queue.clone(), dlq.clone()],
            exchanges: vec![exchange.clone()],
        },
        exchange,
        queue,
        dlq,
        url,
        w1,
        input,
        work,
        pipeline,
    };
    let rt = rt();
    rt.block_on(async {
        let c = Client::connect(&s.url).await;
        let options = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        c.channel
            .exchange_declare(
                s.exchange.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
            .unwrap();
        c.durable_queue(&s.queue, Some((&s.exchange, "counts.#")))
            .await;
        c.durable_queue(&s.dlq, None).await;
    });
    s
}

impl Setup {
    fn env(&self, pace: u64) -> Vec<(&'static str, String)> {
        let p = |name: &str| self.work.path().join(name).display().to_string();
        vec![
            ("AMQP_URL", self.url.clone()),
            ("EXCHANGE", self.exchange.clone()),
            ("DLQ", self.dlq.clone()),
            ("INPUT", self.input.display().to_string()),
            ("STATE_DIR", p("state")),
            ("OUTPUT", p("out.ndjson")),
            ("PACE", pace.to_string()),
        ]
    }

    fn drain(&self, queue: &str) -> Vec<Delivery> {
        let rt = rt();
        rt.block_on(async {
            let c = Client::connect(&self.url).await;
            c.drain(queue, Duration::from_millis(500)).await
        })
    }
}

fn epoch_of(d: &Delivery) -> i64 {
    let headers = d.properties.headers().as_ref().expect("headers");
    match headers.inner().get("sluice-epoch") {
        Some(AMQPValue::LongLongInt(e)) => *e,
        other => panic!("no sluice-epoch header: {other:?}"),
    }
}

/// message_id -> (epoch, body), keeping the newest epoch.
fn newest_by_id(messages: &[Delivery]) -> BTreeMap<String, (i64, serde_json::Value)> {
    let mut out: BTreeMap<String, (i64, serde_json::Value)> = BTreeMap::new();
    for d in messages {
        let id = d
            .properties
            .message_id()
            .as_ref()
            .expect("message_id")
            .to_string();
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        let epoch = epoch_of(d);
        let newer = out.get(&id).is_none_or(|(e, _)| *e <= epoch);
        if newer {
            out.insert(id, (epoch, body));
        }
    }
    out
}

fn counts(newest: &BTreeMap<String, (i64, serde_json::Value)>) -> BTreeMap<String, i64> {
    newest
        .values()
        .map(|(_, r)| {
            (
                r["country"].as_str().unwrap().to_string(),
                r["count"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn amqp_sink_publishes_every_record_with_confirms() {
    let s = setup("sluice_amqp_sink", 20_000, 3);
    let log = s.work.path().join("sluice.log");
    let started = Instant::now();
    let status = spawn_run(&s.pipeline, &s.env(0), &log).wait().unwrap();
    assert!(status.success(), "see {}", log.display());
    eprintln!("pipeline ran in {:?}", started.elapsed());

    let messages = s.drain(&s.queue);
    // Straight through: exactly the records the file sink got, in order.
    let file: Vec<serde_json::Value> = std::fs::read_to_string(s.work.path().join("out.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), file.len(), "one message per record");
    for (d, change) in messages.iter().zip(&file) {
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(&body, &change["record"]);
        assert_eq!(
            d.properties.message_id().as_ref().map(|s| s.to_string()),
            change["id"].as_str().map(String::from)
        );
        assert_eq!(*d.properties.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            d.routing_key.as_str(),
            format!("counts.{}", body["country"].as_str().unwrap())
        );
        assert!(epoch_of(d) > 0);
    }
    assert_eq!(counts(&newest_by_id(&messages)), s.w1.by_country);

    // [dead_letter] type = "amqp": the malformed lines arrive on the DLQ.
    let dead = s.drain(&s.dlq);
    assert_eq!(dead.len(), 3, "dead letters on the AMQP dead-letter queue");
    for d in &dead {
        let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(v["error_type"], "malformed_json", "{v}");
    }
}

#[test]
fn amqp_sink_republishes_epochs_with_the_same_ids_after_sigkill() {
    let s = setup("sluice_amqp_sink_kill", 30_000, 0);
    let log = s.work.path().join("sluice.log");
    let mut rng = rng("amqp_sink_republishes_epochs_with_the_same_ids_after_sigkill");
    // ~3 s of input at this pace, kills within 600 ms of each start: they
    // land between publishes, confirms and checkpoints.
    let kills = run_with_kills(
        &s.pipeline,
        &s.env(10_000),
        &log,
        &mut rng,
        6,
        Duration::from_millis(600),
    );
    assert!(kills >= 3, "only {kills} kills hit a running sluice");
    let messages = s.drain(&s.queue);
    let newest = newest_by_id(&messages);
    eprintln!(
        "{kills} kills: {} messages for {} ids",
        messages.len(),
        newest.len()
    );
    assert_eq!(
        counts(&newest),
        s.w1.by_country,
        "newest epoch per message_id must give the exact counts (log {})",
        log.display()
    );
}
