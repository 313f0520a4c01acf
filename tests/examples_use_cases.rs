//! The use-case pipelines of `examples/` (described in the README), run
//! as they are shipped, end to end against the real services of this
//! machine: Redis, PostgreSQL, RabbitMQ and a Kafka-protocol broker
//! (tansu). Only the environment variables the files document are set (the
//! services' addresses and fresh queue, topic, table and state names, so
//! runs never share anything). Expected values come from the examples'
//! input data, computed here with serde_json, independently of sluice.
//!
//! The MongoDB examples (`use-case-3-mongodb.toml`,
//! `use-case-4-mongo-kafka.toml`) need a MongoDB replica set, which cannot
//! be installed here: they are only validated (src/config/tests.rs).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn example(name: &str) -> PathBuf {
    repo().join("examples").join(name)
}

fn data(name: &str) -> PathBuf {
    repo().join("examples/data").join(name)
}

/// The lines of an example's data file, parsed.
fn records(name: &str) -> Vec<Value> {
    std::fs::read_to_string(data(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `sluice run --once` to completion (at most two minutes).
fn run_once(pipeline: &Path, env: &[(&str, String)], log: &Path) {
    let mut child = spawn_run(pipeline, env, log);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{} failed ({status}); see {}",
                pipeline.display(),
                log.display()
            );
            return;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!(
                "{} did not finish in 120 s; see {}",
                pipeline.display(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `probe` until it returns Some, failing after `secs` or when
/// `child` exits.
fn wait_for<T>(
    what: &str,
    secs: u64,
    child: &mut Child,
    log: &Path,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "sluice exited ({status}) while waiting for {what}; see {}",
                log.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every row of a queryable table: id -> value.
fn query_table(admin: u16, name: &str) -> Option<BTreeMap<String, Value>> {
    let mut rows = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/tables/{name}?limit=10000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", urlencode(a)));
        }
        let (status, body) = http_request(admin, "GET", &path, &[], b"").ok()?;
        if status != 200 {
            return None;
        }
        let page: Value = serde_json::from_str(&body).unwrap();
        for row in page["rows"].as_array().unwrap() {
            rows.insert(
                row["id"].as_str().unwrap().to_string(),
                row["value"].clone(),
            );
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return Some(rows),
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The dead letters of a pipeline whose dead-letter output is the default
/// file in its state directory.
fn dead_letters(state: &Path) -> Vec<Value> {
    std::fs::read_to_string(state.join("dead_letters.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn minute(ts: i64) -> i64 {
    ts - ts.rem_euclid(60_000)
}

/// Weather reports per country, all-time and per (1-minute window, country).
#[allow(clippy::type_complexity)]
fn weather_oracle() -> (BTreeMap<String, i64>, BTreeMap<i64, BTreeMap<String, i64>>) {
    let mut total = BTreeMap::new();
    let mut windows: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    for r in records("weather.ndjson") {
        let country = r["country"].as_str().unwrap().to_string();
        *total.entry(country.clone()).or_default() += 1;
        *windows
            .entry(minute(r["ts"].as_i64().unwrap()))
            .or_default()
            .entry(country)
            .or_default() += 1;
    }
    (total, windows)
}

/// Use case 1: weather reports -> count per country, all-time and per
/// minute -> Redis hashes `country:counts`, `country:counts:1m:<minute>` and
/// `messages:total`. Bad lines become dead letters; running the pipeline
/// again (same state, or a fresh state that recounts everything) leaves
/// exactly the same values.
#[cfg(feature = "redis")]
#[test]
fn use_case_1_weather_counts_into_redis() {
    use support::services::{redis_cli, redis_hash, PrivateRedis};

    let redis = PrivateRedis::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("weather.ndjson");
    let mut text = std::fs::read_to_string(data("weather.ndjson")).unwrap();
    text.push_str("this is not json\n");
    text.push_str("{\"id\":5001,\"ts\":1732147230000,\"weather\":\"Sunny\"}\n");
    std::fs::write(&input, text).unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("sluice.log");
    let env = |state: &Path| {
        vec![
            ("STATE_DIR", state.display().to_string()),
            ("WEATHER_INPUT", input.display().to_string()),
            ("REDIS_URL", url.clone()),
        ]
    };
    let pipeline = example("use-case-1-redis.toml");
    let (total, windows) = weather_oracle();
    let check = |run: &str| {
        assert_eq!(
            redis_hash(&url, "country:counts"),
            total,
            "{run}: country:counts"
        );
        assert_eq!(
            redis_cli(&url, &["GET", "messages:total"]).trim(),
            "5000",
            "{run}: messages:total"
        );
        let keys: BTreeSet<String> = redis_cli(&url, &["KEYS", "country:counts:1m:*"])
            .lines()
            .map(str::to_string)
            .collect();
        // Each hash has its epoch fence beside it (`<key>:__epoch`); both
        // expire, so old windows leave nothing behind.
        let expected: BTreeSet<String> = windows
            .keys()
            .flat_map(|w| {
                let key = format!("country:counts:1m:{w}");
                [format!("{key}:__epoch"), key]
            })
            .collect();
        assert_eq!(keys, expected, "{run}: the per-minute hashes");
        for key in &keys {
            let ttl: i64 = redis_cli(&url, &["TTL", key]).trim().parse().unwrap();
            assert!((1..=7200).contains(&ttl), "{run}: TTL of {key} is {ttl}");
        }
        for (w, counts) in &windows {
            let key = format!("country:counts:1m:{w}");
            assert_eq!(&redis_hash(&url, &key), counts, "{run}: {key}");
        }
    };

    run_once(&pipeline, &env(&state), &log);
    check("first run");
    // The line that is not JSON is refused by the source; the report
    // without a country by each aggregate that groups by country.
    let mut dead: Vec<(String, String, String)> = dead_letters(&state)
        .iter()
        .map(|d| {
            let s = |f: &str| d[f].as_str().unwrap_or_default().to_string();
            (s("component"), s("error_type"), s("raw"))
        })
        .collect();
    dead.sort();
    let no_country = "{\"id\":5001,\"ts\":1732147230000,\"weather\":\"Sunny\"}";
    assert_eq!(
        dead,
        [
            (
                "by_country".into(),
                "missing_field".into(),
                no_country.into()
            ),
            (
                "per_minute".into(),
                "missing_field".into(),
                no_country.into()
            ),
            (
                "reports".into(),
                "malformed_json".into(),
                "this is not json".into()
            ),
        ]
    );

    // The same state again: nothing new, nothing counted twice.
    run_once(&pipeline, &env(&state), &log);
    check("second run");
    // A fresh state (state wiped) while Redis holds what an earlier run
    // wrote: refused, the values left alone...
    let fresh = env(&dir.path().join("state2"));
    let refused = sluice()
        .args(["run", "--once"])
        .arg(&pipeline)
        .envs(fresh.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started anyway: {stderr}");
    assert!(
        stderr.contains("holds values an earlier run wrote"),
        "{stderr}"
    );
    check("refused run on a fresh state");
    // ...unless accepted: everything is counted again from the file and
    // written as absolute values, not added.
    let accepted = sluice()
        .args(["run", "--once", "--accept-empty-state"])
        .arg(&pipeline)
        .envs(fresh.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    check("run on a fresh state, accepted");
}

/// A message of use case 2, as its load generator would post it.
fn message(i: usize) -> Value {
    serde_json::json!({
        "ts": format!("1994{:04}", 1100 + i % 30),
        "sender": format!("sender-{i}"),
        "messageAttributes": {"lang": if i.is_multiple_of(2) { "en" } else { "fr" }, "n": i},
        "sent_from_ip": format!("10.0.{}.{}", i / 256, i % 256),
        "priority": (i % 5) as i64,
    })
}

/// Posts messages `range` to /message/publish, one per request or, for
/// every third, three in one NDJSON body; all must be accepted (202).
fn post_messages(port: u16, range: std::ops::Range<usize>) {
    let mut i = range.start;
    while i < range.end {
        let n = if i.is_multiple_of(3) {
            3.min(range.end - i)
        } else {
            1
        };
        let body: String = (i..i + n).map(|j| format!("{}\n", message(j))).collect();
        let (status, answer) = http_request(port, "POST", "/message/publish", &[], body.as_bytes())
            .unwrap_or_else(|e| panic!("POST message {i}: {e}"));
        assert_eq!(status, 202, "POST message {i}: {answer}");
        i += n;
    }
}

/// The stored rows of a use case 2 table, as the messages they came from
/// (sender -> message), checking each row against what was posted.
#[cfg(feature = "postgres")]
fn stored_messages(url: &str, table: &str) -> BTreeMap<String, Value> {
    use support::services::psql;
    let rows = psql(
        url,
        &format!(
            "SELECT event_id, ts, sender, message_attributes, sent_from_ip, priority FROM \"{table}\""
        ),
    );
    let mut out = BTreeMap::new();
    for row in rows {
        let [_, ts, sender, attrs, ip, priority] = &row[..] else {
            panic!("unexpected row {row:?}");
        };
        let got = serde_json::json!({
            "ts": ts,
            "sender": sender,
            "messageAttributes": serde_json::from_str::<Value>(attrs).unwrap(),
            "sent_from_ip": ip,
            "priority": priority.parse::<i64>().unwrap(),
        });
        assert!(
            out.insert(sender.clone(), got).is_none(),
            "message of {sender} stored twice"
        );
    }
    out
}

#[cfg(feature = "postgres")]
fn expected_messages(range: std::ops::Range<usize>) -> BTreeMap<String, Value> {
    range.map(|i| (format!("sender-{i}"), message(i))).collect()
}

#[cfg(feature = "postgres")]
fn row_count(url: &str, table: &str) -> Option<usize> {
    let out = std::process::Command::new("psql")
        .args([
            url,
            "-At",
            "-c",
            &format!("SELECT count(*) FROM \"{table}\""),
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Use case 2, direct: HTTP -> PostgreSQL, one row per accepted message.
/// A malformed body gets 400 and stores nothing; after a graceful restart
/// the table holds every message once.
#[cfg(all(feature = "postgres", feature = "http"))]
#[test]
fn use_case_2_http_into_postgres() {
    use support::services::{postgres_url, psql, unique};

    let url = postgres_url();
    let table = unique("uc2_messages").to_lowercase();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sluice.log");
    let port = pick_port();
    let env = vec![
        ("STATE_DIR", dir.path().join("state").display().to_string()),
        ("LISTEN", format!("127.0.0.1:{port}")),
        ("POSTGRES_URL", url.clone()),
        ("TABLE", table.clone()),
    ];
    let pipeline = example("use-case-2-postgres.toml");

    let mut child = spawn_serve(&pipeline, &env, &log);
    wait_for_port(port, &mut child, &log);
    post_messages(port, 0..120);
    let (status, answer) =
        http_request(port, "POST", "/message/publish", &[], b"{\"sender\": oops}").unwrap();
    assert_eq!(status, 400, "a malformed message is refused: {answer}");
    wait_for("120 rows", 60, &mut child, &log, || {
        (row_count(&url, &table) == Some(120)).then_some(())
    });
    assert!(terminate(&mut child).success(), "see {}", log.display());
    assert_eq!(stored_messages(&url, &table), expected_messages(0..120));

    let mut child = spawn_serve(&pipeline, &env, &log);
    wait_for_port(port, &mut child, &log);
    post_messages(port, 120..150);
    wait_for("150 rows", 60, &mut child, &log, || {
        (row_count(&url, &table) >= Some(150)).then_some(())
    });
    assert!(terminate(&mut child).success(), "see {}", log.display());
    assert_eq!(stored_messages(&url, &table), expected_messages(0..150));
    psql(&url, &format!("DROP TABLE \"{table}\""));
}

/// Use case 2 with the queue in the middle: HTTP -> RabbitMQ -> PostgreSQL
/// and a queryable table, in one pipeline. sluice is killed with SIGKILL
/// right after messages were accepted and restarted: every accepted message
/// is stored exactly once, and the queue ends empty.
#[cfg(all(feature = "postgres", feature = "http", feature = "amqp"))]
#[test]
fn use_case_2_http_through_rabbitmq_into_postgres() {
    use support::amqp::{rt, shared_broker, Cleanup, Client};
    use support::services::{postgres_url, psql, unique};

    let amqp = shared_broker();
    let url = postgres_url();
    let table = unique("uc2q_messages").to_lowercase();
    let queue = unique("uc2q_message");
    let _cleanup = Cleanup {
        url: amqp.clone(),
        queues: vec![queue.clone()],
        exchanges: vec![],
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sluice.log");
    let (port, admin) = (pick_port(), pick_port());
    let env = vec![
        ("STATE_DIR", dir.path().join("state").display().to_string()),
        ("LISTEN", format!("127.0.0.1:{port}")),
        ("ADMIN", format!("127.0.0.1:{admin}")),
        ("AMQP_URL", amqp.clone()),
        ("QUEUE", queue.clone()),
        ("POSTGRES_URL", url.clone()),
        ("TABLE", table.clone()),
    ];
    let pipeline = example("use-case-2-queue.toml");
    let rt = rt();
    let client = rt.block_on(Client::connect(&amqp));
    // The queue exists before anything is published to it (as the
    // example's comment asks when the publisher may start first).
    rt.block_on(client.durable_queue(&queue, None));

    let mut child = spawn_serve(&pipeline, &env, &log);
    wait_for_port(port, &mut child, &log);
    post_messages(port, 0..200);
    // Killed as soon as the last 202 arrived: the messages are only
    // promised by the journal; some are not yet published, queued, stored.
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = spawn_serve(&pipeline, &env, &log);
    wait_for_port(port, &mut child, &log);
    post_messages(port, 200..260);
    wait_for("260 rows", 90, &mut child, &log, || {
        (row_count(&url, &table) >= Some(260)).then_some(())
    });
    let rows = wait_for("the table /tables/messages", 30, &mut child, &log, || {
        query_table(admin, "messages").filter(|t| t.len() >= 260)
    });
    assert!(terminate(&mut child).success(), "see {}", log.display());
    assert_eq!(stored_messages(&url, &table), expected_messages(0..260));
    // The queryable table holds the same messages, keyed by event id.
    let senders: BTreeSet<String> = rows
        .values()
        .map(|v| v["sender"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rows.len(), 260, "one row per message in /tables/messages");
    assert_eq!(senders, expected_messages(0..260).into_keys().collect());
    assert_eq!(
        rt.block_on(client.depth(&queue)).0,
        0,
        "every message was acknowledged"
    );
    assert!(
        dead_letters(&dir.path().join("state")).is_empty(),
        "no dead letters expected"
    );
    psql(&url, &format!("DROP TABLE \"{table}\""));
}

/// Per product: (orders, units, revenue); per customer: (orders, spent, last ts).
#[allow(clippy::type_complexity)]
fn orders_oracle() -> (
    BTreeMap<String, (i64, i64, f64)>,
    BTreeMap<String, (i64, f64, i64)>,
) {
    let mut products: BTreeMap<String, (i64, i64, f64)> = BTreeMap::new();
    let mut customers: BTreeMap<String, (i64, f64, i64)> = BTreeMap::new();
    for o in records("orders.ndjson") {
        let p = products
            .entry(o["product"].as_str().unwrap().to_string())
            .or_default();
        p.0 += 1;
        p.1 += o["quantity"].as_i64().unwrap();
        p.2 += o["amount"].as_f64().unwrap();
        let c = customers
            .entry(o["customer_id"].as_str().unwrap().to_string())
            .or_insert((0, 0.0, i64::MIN));
        c.0 += 1;
        c.1 += o["amount"].as_f64().unwrap();
        c.2 = c.2.max(o["ts"].as_i64().unwrap());
    }
    (products, customers)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

/// Use case 3: the sample orders published to RabbitMQ by one example
/// (file -> AMQP sink) and aggregated per product and per customer by the
/// other (AMQP source -> tables + change-log file, poison messages to a
/// dead-letter queue). sluice is killed with SIGKILL while orders arrive.
#[cfg(feature = "amqp")]
#[test]
fn use_case_3_orders_from_rabbitmq() {
    use support::amqp::{rt, shared_broker, Cleanup, Client};
    use support::services::unique;

    let amqp = shared_broker();
    let queue = unique("uc3_orders");
    let dead = format!("{queue}.dead");
    let _cleanup = Cleanup {
        url: amqp.clone(),
        queues: vec![queue.clone(), dead.clone()],
        exchanges: vec![],
    };
    let rt = rt();
    let client = rt.block_on(Client::connect(&amqp));
    rt.block_on(client.durable_queue(&queue, None));
    rt.block_on(client.durable_queue(&dead, None));

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sluice.log");
    let admin = pick_port();
    let output = dir.path().join("per_product.ndjson");
    let env = vec![
        ("STATE_DIR", dir.path().join("state").display().to_string()),
        (
            "PUBLISH_STATE_DIR",
            dir.path().join("publish").display().to_string(),
        ),
        ("ORDERS_INPUT", data("orders.ndjson").display().to_string()),
        ("ADMIN", format!("127.0.0.1:{admin}")),
        ("AMQP_URL", amqp.clone()),
        ("ORDERS_QUEUE", queue.clone()),
        ("DEAD_LETTER_QUEUE", dead.clone()),
        ("OUTPUT", output.display().to_string()),
    ];
    let consumer = example("use-case-3-amqp.toml");

    let mut child = spawn_serve(&consumer, &env, &log);
    wait_for_port(admin, &mut child, &log);
    run_once(&example("use-case-3-publish-orders.toml"), &env, &log);
    rt.block_on(client.publish(
        &queue,
        &[(
            Some("poison-1".into()),
            b"{\"order_id\": \"o-1\", ".to_vec(),
        )],
    ));
    // Killed while the orders are counted (once some have come in); the
    // broker redelivers what was not acknowledged.
    wait_for("orders coming in", 60, &mut child, &log, || {
        metric_total(admin, "sluice_events_in_total").filter(|n| *n > 0.0)
    });
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = spawn_serve(&consumer, &env, &log);
    wait_for_port(admin, &mut child, &log);
    let (products, customers) = orders_oracle();
    let orders = products.values().map(|p| p.0).sum::<i64>();
    let counted = |t: &BTreeMap<String, Value>| {
        t.values()
            .map(|v| v["orders"].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    let got_products = wait_for(
        "all orders in /tables/products",
        60,
        &mut child,
        &log,
        || query_table(admin, "products").filter(|t| counted(t) >= orders),
    );
    let got_customers = wait_for(
        "all orders in /tables/customers",
        30,
        &mut child,
        &log,
        || query_table(admin, "customers").filter(|t| counted(t) >= orders),
    );
    let dead_letters = rt.block_on(client.drain(&dead, Duration::from_secs(3)));
    assert!(terminate(&mut child).success(), "see {}", log.display());

    assert_eq!(
        got_products.keys().collect::<Vec<_>>(),
        products.keys().collect::<Vec<_>>()
    );
    for (product, (n, units, revenue)) in &products {
        let v = &got_products[product];
        assert_eq!(v["orders"], *n, "{product}: {v}");
        assert_eq!(v["units"], *units, "{product}: {v}");
        assert!(
            close(v["revenue"].as_f64().unwrap(), *revenue),
            "{product}: {v} vs {revenue}"
        );
    }
    assert_eq!(
        got_customers.keys().collect::<Vec<_>>(),
        customers.keys().collect::<Vec<_>>()
    );
    for (customer, (n, spent, last)) in &customers {
        let v = &got_customers[customer];
        assert_eq!(v["orders"], *n, "{customer}: {v}");
        assert!(
            close(v["spent"].as_f64().unwrap(), *spent),
            "{customer}: {v} vs {spent}"
        );
        assert_eq!(v["last_order"], *last, "{customer}: {v}");
    }
    // The change-log file materialises to the same product totals.
    let file = materialize(&output);
    assert_eq!(file.len(), products.len());
    for (product, (n, _, _)) in &products {
        assert_eq!(
            file[product]["orders"],
            *n,
            "{product} in {}",
            output.display()
        );
    }
    // The one poison message is in the dead-letter queue. The AMQP sink
    // publishes at least once with a stable message_id (the kill may have
    // come before its epoch was acknowledged, and the epoch is published
    // again): one dead letter per distinct id. The orders queue is empty
    // (all acknowledged).
    let ids: BTreeSet<String> = dead_letters
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .expect("message_id")
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "dead letters: {ids:?}");
    for d in &dead_letters {
        let letter: Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(letter["error_type"], "malformed_json", "{letter}");
        assert_eq!(letter["raw"], "{\"order_id\": \"o-1\", ", "{letter}");
    }
    assert_eq!(rt.block_on(client.depth(&queue)).0, 0);
}

/// Use case 4, Kafka side: reports from a 3-partition topic -> counts per
/// country (all-time and per minute) -> a Kafka topic keyed by group key,
/// and the queryable table; a bad report goes to the dead-letter topic. The
/// last value per key of the output topic equals the oracle, and after a
/// graceful stop the group's committed offsets are the end of the input.
#[cfg(feature = "kafka")]
#[test]
fn use_case_4_kafka_in_kafka_out() {
    use support::kafka::{
        broker, committed, create_topic, end_offsets, produce_lines, read_until, unique_topic,
    };

    let Some(brokers) = broker() else {
        return;
    };
    let input = unique_topic("uc4-message");
    let output = unique_topic("uc4-country-counts");
    let dead = unique_topic("uc4-message-dead");
    create_topic(&brokers, &input, 3);
    create_topic(&brokers, &output, 3);
    create_topic(&brokers, &dead, 1);
    let text = std::fs::read_to_string(data("weather.ndjson")).unwrap();
    let bad = "{\"id\": 5001, this is not json";
    let produced = produce_lines(&brokers, &input, 3, text.lines().chain([bad]));
    assert_eq!(produced, 5001);

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sluice.log");
    let admin = pick_port();
    let env = vec![
        ("STATE_DIR", dir.path().join("state").display().to_string()),
        ("ADMIN", format!("127.0.0.1:{admin}")),
        ("KAFKA_BROKERS", brokers.clone()),
        ("INPUT_TOPIC", input.clone()),
        ("OUTPUT_TOPIC", output.clone()),
        ("DEAD_LETTER_TOPIC", dead.clone()),
    ];
    let mut child = spawn_serve(&example("use-case-4-kafka.toml"), &env, &log);
    let (total, windows) = weather_oracle();
    let counts = wait_for(
        "5000 reports in /tables/country_counts",
        120,
        &mut child,
        &log,
        || {
            query_table(admin, "country_counts").filter(|t| {
                t.values()
                    .map(|v| v["reports"].as_i64().unwrap_or(0))
                    .sum::<i64>()
                    >= 5000
            })
        },
    );
    // One more checkpoint, so that the last results are in the output
    // topic, then a graceful stop (final checkpoint and commit).
    let checkpoints = metric_total(admin, "sluice_checkpoints_total").unwrap_or(0.0);
    wait_for("one more checkpoint", 30, &mut child, &log, || {
        metric_total(admin, "sluice_checkpoints_total").filter(|n| *n >= checkpoints + 1.0)
    });
    assert!(terminate(&mut child).success(), "see {}", log.display());

    let table_counts: BTreeMap<String, i64> = counts
        .iter()
        .map(|(k, v)| (k.clone(), v["reports"].as_i64().unwrap()))
        .collect();
    assert_eq!(table_counts, total, "/tables/country_counts");

    let mut expected: BTreeMap<String, i64> = total.clone();
    for (w, counts) in &windows {
        for (country, n) in counts {
            expected.insert(format!("{country}|{w}"), *n);
        }
    }
    let last_values = |messages: &[(i32, String, Option<String>)]| {
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        for (_, key, value) in messages {
            let value: Value =
                serde_json::from_str(value.as_deref().expect("no tombstones")).unwrap();
            last.insert(key.clone(), value["reports"].as_i64().unwrap());
        }
        last
    };
    let messages = read_until(&brokers, &output, 3, Duration::from_secs(60), |m| {
        last_values(m) == expected
    });
    assert_eq!(
        last_values(&messages),
        expected,
        "last value per key of {output}"
    );

    let dead_letters = read_until(&brokers, &dead, 1, Duration::from_secs(5), |_| false);
    assert_eq!(dead_letters.len(), 1, "{dead_letters:?}");
    assert!(
        dead_letters[0]
            .2
            .as_deref()
            .unwrap_or("")
            .contains("this is not json"),
        "{dead_letters:?}"
    );
    let ends = end_offsets(&brokers, &input, 3).unwrap();
    let commits = committed(&brokers, "sluice-use-case-4", &input, 3);
    assert_eq!(commits, ends.iter().map(|e| Some(*e)).collect::<Vec<_>>());
}
