//! Rescaling through the remote copy of the state (issue 13): the cluster
//! workload (tests/support/cluster_workload.rs) with `[state] remote` on
//! the shared S3 API (tests/s3.sh), scaled 1 -> 3 -> 2 -> 1 on the same
//! worker directories (`Cluster::rescale`) while HTTP or AMQP input keeps
//! arriving: at every step the sinks hold what the oracle computed from
//! the input so far, and at the end what a single worker leaves for the
//! same input. Each worker that gains key groups restores them from the
//! remote copy and says so (log line, `sluice_remote_restores_total{reason="rescale"}`).
//! After each rescale every key is held by exactly one worker.
//!
//! Killed and frozen owners released by the operator are in
//! tests/remote_release.rs; SIGKILLs during every handover in
//! tests/remote_sigkill.rs. The helpers they share are in
//! tests/support/remote.rs.

mod support;

use support::cluster_workload as wl;
use support::remote::{
    assert_no_dead_letters, assert_rescale_restores, remote_cluster, settle_so_far, with_remote,
    RESCALE_EVENTS, SETTLE, STEPS,
};
use support::s3::Bucket;

/// Scale 1 -> 3 -> 2 -> 1 while HTTP input keeps arriving. In each step
/// the workers get a quarter of the input round-robin: the first half,
/// then the sinks must hold the oracle's all-time results for everything
/// sent so far (and any window already closed must be final); then the
/// second half, and every worker is stopped with SIGTERM at once, with
/// records still in journals and exchange (a worker that is removed must
/// drain them first). The last step ends the input with a flush event.
/// The final results in Redis and PostgreSQL equal the oracle's and a
/// single worker's over the same input.
#[cfg(all(feature = "http", feature = "redis", feature = "postgres"))]
#[test]
fn a_rescale_1_3_2_1_under_http_input_equals_one_worker() {
    use support::services::{postgres_url, redis_url, unique};
    let test = "remote_rescale_http";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, RESCALE_EVENTS);
    let oracle = wl::oracle(&events).normalized();
    let lines = wl::lines(&events);
    let sinks = format!("{}{}", wl::REDIS_SINKS, wl::POSTGRES_SINKS);
    let text = with_remote(&wl::pipeline("remote_rescale", &wl::http_source(), &sinks));
    let bucket = Bucket::shared("rescale-http");
    let read = |prefix: &str| wl::read_redis(&redis_url(), prefix).normalized();
    // Each run's sinks: a Redis prefix and a PostgreSQL table.
    let run = |name: &str, workers: Option<u32>| {
        let prefix = format!("sluice-it:{}:", unique(name));
        let table = format!("sluice_it_{}", unique(name));
        let c = remote_cluster(name, &text, workers, &bucket)
            .port("HTTP_PORT")
            .env("REDIS_URL", redis_url())
            .env("PREFIX", prefix.as_str())
            .env("POSTGRES_URL", postgres_url())
            .env("TABLE", table.as_str())
            .start();
        (c, prefix, table)
    };

    // The baseline: one worker, no [cluster], the whole input at once.
    let (single_redis, single_pg) = {
        let (mut c, prefix, table) = run(&format!("{test}_single"), None);
        for chunk in lines.chunks(200) {
            wl::post_ndjson(c.port(0, "HTTP_PORT"), chunk, SETTLE);
        }
        wl::post_ndjson(c.port(0, "HTTP_PORT"), &[wl::flush_line()], SETTLE);
        let got = c.wait_for_result(&oracle, SETTLE, || read(&prefix));
        assert!(got == oracle, "single worker:\n{}", got.diff(&oracle));
        c.stop_all();
        let pg = wl::read_postgres(&postgres_url(), &table).normalized();
        assert!(
            pg == oracle,
            "single worker, postgres:\n{}",
            pg.diff(&oracle)
        );
        wl::clean_redis(&redis_url(), &prefix);
        wl::clean_postgres(&postgres_url(), &table);
        (got, pg)
    };

    let (mut c, prefix, table) = run(&format!("{test}_steps"), Some(STEPS[0]));
    let quarter = lines.len() / STEPS.len();
    for (step, &n) in STEPS.iter().enumerate() {
        if step > 0 {
            c.stop_all();
            c.rescale(n);
            c.start_all();
            assert_rescale_restores(&mut c, STEPS[step - 1], n);
        }
        let slice = &lines[step * quarter..(step + 1) * quarter];
        let (first, second) = slice.split_at(quarter / 2);
        for (k, batch) in first.chunks(100).enumerate() {
            wl::post_ndjson(c.port(k % n as usize, "HTTP_PORT"), batch, SETTLE);
        }
        let sent = step * quarter + first.len();
        let so_far = wl::oracle(&events[..sent]).normalized();
        let what = format!("{n} workers, {sent} events sent");
        settle_so_far(&mut c, &what, &so_far, &oracle, || read(&prefix));
        for (k, batch) in second.chunks(100).enumerate() {
            wl::post_ndjson(c.port(k % n as usize, "HTTP_PORT"), batch, SETTLE);
        }
    }
    wl::post_ndjson(c.port(0, "HTTP_PORT"), &[wl::flush_line()], SETTLE);
    let got = c.wait_for_result(&oracle, SETTLE, || read(&prefix));
    assert!(
        got == oracle,
        "after 1 -> 3 -> 2 -> 1:\n{}\n{}",
        got.diff(&oracle),
        c.context()
    );
    c.stop_all();
    assert_no_dead_letters(&c);
    let pg = wl::read_postgres(&postgres_url(), &table).normalized();
    assert!(
        pg == oracle,
        "postgres after 1 -> 3 -> 2 -> 1:\n{}",
        pg.diff(&oracle)
    );
    assert!(
        got == single_redis,
        "redis: the rescaled run differs from one worker:\n{}",
        got.diff(&single_redis)
    );
    assert!(
        pg == single_pg,
        "postgres: the rescaled run differs from one worker:\n{}",
        pg.diff(&single_pg)
    );
    wl::clean_redis(&redis_url(), &prefix);
    wl::clean_postgres(&postgres_url(), &table);
}

/// Scale 1 -> 3 -> 2 -> 1 with the workers as competing consumers of one
/// AMQP queue: a quarter of the input is published in each step; the
/// PostgreSQL sinks must hold the oracle's all-time results for what was
/// published so far before the workers are stopped (SIGTERM) and started
/// as the next set. At the end flush events are published every 300 ms
/// until the last windows have closed. The final tables equal the
/// oracle's and a single worker's over the same input.
#[cfg(all(feature = "amqp", feature = "postgres"))]
#[test]
fn a_rescale_1_3_2_1_under_amqp_input_equals_one_worker() {
    use support::remote::{amqp_source, AmqpInput};
    use support::services::{postgres_url, unique};
    let test = "remote_rescale_amqp";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, RESCALE_EVENTS);
    let oracle = wl::oracle(&events).normalized();
    let amqp = AmqpInput::new(&events);
    let text = with_remote(&wl::pipeline(
        "remote_rescale_amqp",
        &amqp_source(),
        wl::POSTGRES_SINKS,
    ));
    let bucket = Bucket::shared("rescale-amqp");
    let run = |name: &str, workers: Option<u32>| {
        let queue = amqp.queue(name);
        let table = format!("sluice_it_{}", unique(name));
        let c = remote_cluster(name, &text, workers, &bucket)
            .env("AMQP_URL", amqp.url.as_str())
            .env("QUEUE", queue.as_str())
            .env("POSTGRES_URL", postgres_url())
            .env("TABLE", table.as_str())
            .start();
        (c, queue, table)
    };
    let read = |table: &str| wl::read_postgres(&postgres_url(), table).normalized();
    let single = {
        let (mut c, queue, table) = run(&format!("{test}_single"), None);
        amqp.wait_for_consumers(&mut c, &queue, 1);
        amqp.publish(&queue, ..);
        let got = amqp.finish(&mut c, &queue, &oracle, || read(&table));
        c.stop_all();
        wl::clean_postgres(&postgres_url(), &table);
        got
    };

    let (mut c, queue, table) = run(&format!("{test}_steps"), Some(STEPS[0]));
    let quarter = amqp.messages.len() / STEPS.len();
    for (step, &n) in STEPS.iter().enumerate() {
        if step > 0 {
            c.stop_all();
            c.rescale(n);
            c.start_all();
            assert_rescale_restores(&mut c, STEPS[step - 1], n);
        }
        amqp.wait_for_consumers(&mut c, &queue, n);
        amqp.publish(&queue, step * quarter..(step + 1) * quarter);
        let sent = (step + 1) * quarter;
        let so_far = wl::oracle(&events[..sent]).normalized();
        let what = format!("{n} workers, {sent} events published");
        settle_so_far(&mut c, &what, &so_far, &oracle, || read(&table));
    }
    let got = amqp.finish(&mut c, &queue, &oracle, || read(&table));
    c.stop_all();
    assert_no_dead_letters(&c);
    assert!(
        got == single,
        "postgres: the rescaled run differs from one worker:\n{}",
        got.diff(&single)
    );
    wl::clean_postgres(&postgres_url(), &table);
}

/// A count per key over a file source (worker 0 reads every key; the
/// others read empty files), with the remote copy.
const KEYS_ONCE: &str = r#"
[pipeline]
name = "keys-once"

[state]
dir = "${WORKER_DIR}/state"
remote = "${REMOTE}"

[checkpoint]
interval = "200ms"

[admin]
address = "127.0.0.1:${ADMIN_PORT}"

[sources.events]
type = "file"
path = "${INPUT_DIR}/part-${SLUICE_WORKER_ID}.ndjson"
follow = true

[transforms.per_key]
type = "aggregate"
inputs = ["events"]
group_by = ["k"]
aggregates = { n = "count" }

[sinks.out]
type = "null"
inputs = ["per_key"]
"#;

/// After each rescale every key is held by exactly one worker: a worker's
/// directory may still hold key groups it no longer owns (they are removed
/// after the start, and the log says so), but they are never restored, so
/// `sluice_state_keys` summed over the workers is the number of keys.
#[test]
fn each_key_is_held_by_one_worker_after_a_rescale() {
    const KEYS: usize = 3_000;
    let test = "remote_keys_once";
    let input = tempfile::tempdir().expect("tempdir");
    let lines: String = (0..KEYS)
        .map(|i| format!("{{\"k\":\"key-{i}\"}}\n"))
        .collect();
    std::fs::write(input.path().join("part-0.ndjson"), lines).expect("write input");
    for w in 1..3 {
        std::fs::write(input.path().join(format!("part-{w}.ndjson")), "").expect("write input");
    }
    let bucket = Bucket::shared("keysonce");
    let mut c = remote_cluster(test, KEYS_ONCE, Some(1), &bucket)
        .env("INPUT_DIR", input.path().display().to_string())
        .start();
    let held = |ports: &[u16]| -> f64 {
        ports
            .iter()
            .map(|&p| support::metric_total(p, "sluice_state_keys").unwrap_or(0.0))
            .sum()
    };
    let ports = [c.admin_port(0)];
    c.wait_until("the worker to count every key", SETTLE, || {
        held(&ports) == KEYS as f64
    });
    for n in [2u32, 3, 1] {
        c.stop_all();
        c.rescale(n);
        for w in 0..n as usize {
            c.start_worker(w);
        }
        c.wait_ready();
        let ports: Vec<u16> = (0..n as usize).map(|w| c.admin_port(w)).collect();
        let got = held(&ports);
        assert_eq!(
            got,
            KEYS as f64,
            "after the rescale to {n}: keys held over the workers\n{}",
            c.context()
        );
    }
    // Worker 0 of 2 (1 -> 2) started on the single worker's directory,
    // which held the other half too.
    let log = std::fs::read_to_string(c.worker_dir(0).join("sluice.log")).unwrap_or_default();
    assert!(
        log.contains("removed the state of key groups this worker no longer owns"),
        "worker 0 did not remove the groups it gave away"
    );
    c.stop_all();
}
