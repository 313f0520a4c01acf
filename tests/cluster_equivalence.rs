//! One pipeline run as 3 workers (issue 12) leaves exactly what a
//! single-worker run of the same input leaves, and what the oracle
//! computed here says: all-time statistics per station and 1-minute
//! tumbling windows per country, with count, sum, avg, min, max and
//! count_distinct (tests/support/cluster_workload.rs; its module comment
//! explains why the windows' results do not depend on how the input is
//! split and interleaved).
//!
//! For each kind of source, as a StatefulSet would share it out:
//! - HTTP NDJSON requests posted round-robin to the workers -> Redis and
//!   PostgreSQL;
//! - AMQP competing consumers of one queue -> PostgreSQL;
//! - a Kafka topic of 3 partitions read by one consumer group -> Redis
//!   (skipped, loudly, when no broker can be started: tests/kafka.sh);
//! - files, one part per worker (`part-${SLUICE_WORKER_ID}.ndjson`) -> each
//!   worker's file sinks, whose union must hold every key exactly once.
//!
//! Each test runs the single worker first (the baseline, as sluice runs
//! without `[cluster]`), then the 3 workers, and compares both with the
//! oracle (by value, sink columns aside) and with each other (record for
//! record, as the same sink wrote them).

mod support;

use std::time::Duration;

use support::cluster::Cluster;
use support::cluster_workload::{self as wl, Results};
use support::services::unique;

const EVENTS: u64 = 6_000;
const WORKERS: u32 = 3;
/// How long the sinks may take to hold every result once the input is in.
const SETTLE: Duration = Duration::from_secs(45);

/// The baseline (`workers` = 1, no `[cluster]`) or a cluster of `workers`.
fn cluster(name: &str, pipeline: &str, workers: u32) -> support::cluster::ClusterBuilder {
    if workers == 1 {
        Cluster::single(name, pipeline)
    } else {
        Cluster::of(name, pipeline, workers)
    }
}

/// Waits until `read` (a sink) holds the oracle's results, stops every
/// worker with SIGTERM, checks that no worker has dead letters (no event
/// is late, one worker or three), and returns what the sink holds then,
/// checked against the oracle once more.
fn settle(
    c: &mut Cluster,
    what: &str,
    want: &Results,
    share: Share,
    mut read: impl FnMut() -> Results,
) -> Results {
    let want = want.normalized();
    let got = c.wait_for_result(&want, SETTLE, || read().normalized());
    assert!(
        got == want,
        "{what}: the sink differs from the oracle:\n{}\n{}",
        got.diff(&want),
        c.context()
    );
    // What each worker's source read (flush events included).
    let reads: Vec<f64> = (0..c.workers())
        .map(|i| {
            c.metric(i, "sluice_events_in_total", &[("component", "events")])
                .unwrap_or(0.0)
        })
        .collect();
    eprintln!("{what}: events read by each worker's source: {reads:?}");
    if share == Share::EveryWorker {
        assert!(
            reads.iter().all(|&n| n > 0.0),
            "{what}: a worker read nothing, the input was not shared: {reads:?}"
        );
    }
    c.stop_all();
    let dead = wl::dead_letters(&c.worker_dirs());
    assert!(
        dead.is_empty(),
        "{what}: {} dead letters (first 3: {:?})",
        dead.len(),
        &dead[..dead.len().min(3)]
    );
    let last = read();
    assert!(
        last.normalized() == want,
        "{what}: the sink changed after it held the oracle's results:\n{}",
        last.normalized().diff(&want)
    );
    last
}

/// Whether every worker must have read part of the input (not so with
/// Kafka: a worker that joins the group late may find its partition read).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Share {
    EveryWorker,
    AsItFalls,
}

/// `cluster` (3 workers) must hold, record for record, what `single` holds.
fn assert_same(what: &str, cluster: &Results, single: &Results) {
    assert!(
        cluster == single,
        "{what}: 3 workers differ from one worker:\n{}",
        cluster.diff(single)
    );
}

/// HTTP NDJSON posted round-robin (100 events per request) to the
/// workers, then a flush event to each, into Redis and PostgreSQL.
#[cfg(all(feature = "http", feature = "redis", feature = "postgres"))]
#[test]
fn http_round_robin_to_three_workers_equals_one_worker_in_redis_and_postgres() {
    use support::services::{postgres_url, redis_url};
    let test = "http_equivalence";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, EVENTS);
    let oracle = wl::oracle(&events);
    let lines = wl::lines(&events);
    let sinks = format!("{}{}", wl::REDIS_SINKS, wl::POSTGRES_SINKS);
    let text = wl::pipeline("cluster_http", &wl::http_source(), &sinks);
    let run = |workers: u32| -> (Results, Results) {
        let name = format!("{test}_{workers}w");
        let prefix = format!("sluice-it:{}:", unique(&name));
        let table = format!("sluice_it_{}", unique(&name));
        let mut c = cluster(&name, &text, workers)
            .port("HTTP_PORT")
            .env("REDIS_URL", redis_url())
            .env("PREFIX", prefix.as_str())
            .env("POSTGRES_URL", postgres_url())
            .env("TABLE", table.as_str())
            .start();
        let n = c.workers();
        for (k, batch) in lines.chunks(100).enumerate() {
            wl::post_ndjson(c.port(k % n, "HTTP_PORT"), batch, SETTLE);
        }
        for i in 0..n {
            wl::post_ndjson(c.port(i, "HTTP_PORT"), &[wl::flush_line()], SETTLE);
        }
        let redis = settle(
            &mut c,
            &format!("{name} redis"),
            &oracle,
            Share::EveryWorker,
            || wl::read_redis(&redis_url(), &prefix),
        );
        let pg = wl::read_postgres(&postgres_url(), &table);
        assert!(
            pg.normalized() == oracle.normalized(),
            "{name} postgres: the table differs from the oracle:\n{}",
            pg.normalized().diff(&oracle.normalized())
        );
        wl::clean_redis(&redis_url(), &prefix);
        wl::clean_postgres(&postgres_url(), &table);
        (redis, pg)
    };
    let (redis_1, pg_1) = run(1);
    let (redis_3, pg_3) = run(WORKERS);
    assert_same("http -> redis", &redis_3, &redis_1);
    assert_same("http -> postgres", &pg_3, &pg_1);
}

/// AMQP: the workers consume one durable queue as competing consumers.
/// Which worker gets which message is the broker's choice, so flush
/// events are published every 300 ms until each consumer's share has
/// moved its watermark past the last window.
#[cfg(all(feature = "amqp", feature = "postgres"))]
#[test]
fn amqp_competing_consumers_on_three_workers_equal_one_worker_in_postgres() {
    use support::amqp::{rt, shared_broker, Cleanup, Client};
    use support::services::postgres_url;
    let test = "amqp_equivalence";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, EVENTS);
    let oracle = wl::oracle(&events);
    let url = shared_broker();
    let rt = rt();
    let client = rt.block_on(Client::connect(&url));
    let source = format!(
        r#"
[sources.events]
type = "amqp"
url = "${{AMQP_URL}}"
queue = "${{QUEUE}}"
prefetch = 500
{}
"#,
        wl::event_time()
    );
    let text = wl::pipeline("cluster_amqp", &source, wl::POSTGRES_SINKS);
    let mut queues = Vec::new();
    let mut run = |workers: u32| -> Results {
        let name = format!("{test}_{workers}w");
        let queue = unique(&name);
        queues.push(queue.clone());
        let table = format!("sluice_it_{}", unique(&name));
        rt.block_on(client.durable_queue(&queue, None));
        // The peers as a list of addresses (the other tests use a template).
        let mut c = cluster(&name, &text, workers)
            .peer_list()
            .env("AMQP_URL", url.as_str())
            .env("QUEUE", queue.as_str())
            .env("POSTGRES_URL", postgres_url())
            .env("TABLE", table.as_str())
            .start();
        // Every consumer is attached before the first message.
        c.wait_until("a consumer per worker", SETTLE, || {
            rt.block_on(client.depth(&queue)).1 >= workers
        });
        let messages: Vec<(Option<String>, Vec<u8>)> = events
            .iter()
            .map(|e| (Some(format!("e{}", e.id)), e.line().into_bytes()))
            .collect();
        rt.block_on(client.publish(&queue, &messages));
        let mut flushes = 0;
        let mut last_flush = std::time::Instant::now() - Duration::from_secs(1);
        let pg = settle(&mut c, &name, &oracle, Share::EveryWorker, || {
            if last_flush.elapsed() >= Duration::from_millis(300) {
                let flush = (
                    Some(format!("flush{flushes}")),
                    wl::flush_line().into_bytes(),
                );
                rt.block_on(client.publish(&queue, &[flush]));
                flushes += 1;
                last_flush = std::time::Instant::now();
            }
            wl::read_postgres(&postgres_url(), &table)
        });
        eprintln!("{name}: {flushes} flush events published");
        wl::clean_postgres(&postgres_url(), &table);
        pg
    };
    let single = run(1);
    let three = run(WORKERS);
    assert_same("amqp -> postgres", &three, &single);
    drop(Cleanup {
        url: url.clone(),
        queues,
        exchanges: Vec::new(),
    });
}

/// Kafka: a topic of 3 partitions (events round-robin over them, then a
/// flush event in each), read by a consumer group of 3 workers, which
/// join while the others already read (rebalances move partitions).
#[cfg(all(feature = "kafka", feature = "redis"))]
#[test]
fn kafka_three_partitions_on_three_workers_equal_one_worker_in_redis() {
    use support::kafka::{broker, create_topic, delete_topics, produce_lines, unique_topic};
    use support::services::redis_url;
    let test = "kafka_equivalence";
    let Some(brokers) = broker() else { return };
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, EVENTS);
    let oracle = wl::oracle(&events);
    let topic = unique_topic(test);
    create_topic(&brokers, &topic, 3);
    let lines = wl::lines(&events);
    assert_eq!(
        produce_lines(&brokers, &topic, 3, lines.iter().map(String::as_str)),
        EVENTS
    );
    let flush = [wl::flush_line(), wl::flush_line(), wl::flush_line()];
    produce_lines(&brokers, &topic, 3, flush.iter().map(String::as_str));
    let source = format!(
        r#"
[sources.events]
type = "kafka"
brokers = ["${{KAFKA_BROKERS}}"]
topics = ["${{TOPIC}}"]
group_id = "${{GROUP}}"
group_instance_id = "${{GROUP}}-${{SLUICE_WORKER_ID:-0}}"
poll_timeout = "20ms"
close_timeout = "5s"
{}
"#,
        wl::event_time()
    );
    let text = wl::pipeline("cluster_kafka", &source, wl::REDIS_SINKS);
    let run = |workers: u32| -> Results {
        let name = format!("{test}_{workers}w");
        let prefix = format!("sluice-it:{}:", unique(&name));
        let mut c = cluster(&name, &text, workers)
            .env("KAFKA_BROKERS", brokers.as_str())
            .env("TOPIC", topic.as_str())
            .env("GROUP", format!("{topic}-{workers}w"))
            .env("REDIS_URL", redis_url())
            .env("PREFIX", prefix.as_str())
            .start();
        let redis = settle(&mut c, &name, &oracle, Share::AsItFalls, || {
            wl::read_redis(&redis_url(), &prefix)
        });
        wl::clean_redis(&redis_url(), &prefix);
        redis
    };
    let single = run(1);
    let three = run(WORKERS);
    assert_same("kafka -> redis", &three, &single);
    delete_topics(&brokers, &[&topic]);
}

/// Files: each worker follows its own part (`part-${SLUICE_WORKER_ID}`,
/// events dealt round-robin, a flush event last); the single worker
/// follows the whole input in one file. Each worker writes the results of
/// the key groups it owns to its own file sinks.
#[test]
fn file_parts_on_three_workers_equal_one_worker_in_file_sinks() {
    let test = "file_equivalence";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, EVENTS);
    let oracle = wl::oracle(&events);
    let input = tempfile::tempdir().unwrap();
    let write = |name: &str, events: &[wl::Event]| {
        let mut text: String = events.iter().map(|e| e.line() + "\n").collect();
        text.push_str(&(wl::flush_line() + "\n"));
        std::fs::write(input.path().join(name), text).unwrap();
    };
    write("all.ndjson", &events);
    for (i, part) in wl::round_robin(&events, WORKERS as usize)
        .iter()
        .enumerate()
    {
        write(&format!("part-{i}.ndjson"), part);
    }
    let run = |workers: u32, path: &str| -> Results {
        let name = format!("{test}_{workers}w");
        let text = wl::pipeline("cluster_files", &wl::file_source(path), wl::FILE_SINKS);
        let mut c = cluster(&name, &text, workers)
            .env("INPUT_DIR", input.path().display().to_string())
            .start();
        let dirs = c.worker_dirs();
        let read = || wl::read_files(&dirs);
        settle(&mut c, &name, &oracle, Share::EveryWorker, read)
    };
    let single = run(1, "${INPUT_DIR}/all.ndjson");
    let three = run(WORKERS, "${INPUT_DIR}/part-${SLUICE_WORKER_ID}.ndjson");
    assert_same("files -> file sinks", &three, &single);
}

/// The premise of the window comparisons: in the input and in any
/// round-robin split of it, no event is `max_disorder` (5 s) or more older
/// than an event before it, so none can be late in any interleaving; and
/// the input fills all ten 1-minute windows.
#[test]
fn the_workload_cannot_have_late_events_in_any_split() {
    let mut rng = support::rng("the_workload_cannot_have_late_events_in_any_split");
    let events = wl::generate(&mut rng, EVENTS);
    for parts in 1..=WORKERS as usize {
        for part in wl::round_robin(&events, parts) {
            let mut max = 0;
            for e in &part {
                // max_disorder = MAX_DISORDER = 5 s
                assert!(
                    max - e.ts < 5_000,
                    "event {} at {} is 5 s or more older than {max} before it",
                    e.id,
                    e.ts
                );
                assert!(e.ts < wl::FLUSH_TS - 60_000 - 5_000);
                max = max.max(e.ts);
            }
        }
    }
    let windows: std::collections::BTreeSet<i64> =
        events.iter().map(|e| e.ts - e.ts % 60_000).collect();
    assert_eq!(windows.len(), 10, "{windows:?}");
    assert_eq!(wl::oracle(&events).windows.len(), 10 * 8);
}
