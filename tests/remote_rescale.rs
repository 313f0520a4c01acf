//! Rescaling through the remote copy of the state (issue 13): the cluster
//! workload (tests/support/cluster_workload.rs) with `[state] remote` on
//! the shared S3 API (tests/s3.sh), scaled 1 -> 3 -> 2 -> 1 on the same
//! worker directories (`Cluster::rescale`) while HTTP or AMQP input keeps
//! arriving: at every step the sinks hold what the oracle computed from
//! the input so far, and at the end what a single worker leaves for the
//! same input. Each worker that gains key groups restores them from the
//! remote copy and says so (log line, `sluice_remote_restores_total{reason="rescale"}`).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::cluster::Cluster;
use support::cluster_workload as wl;
use support::s3::{Bucket, PrivateS3};

/// How long the sinks may take to hold what the oracle says.
const SETTLE: Duration = Duration::from_secs(30);
/// What the log says when a worker restores from the remote copy.
const RESTORED: &str = "restored the state from the remote copy";

/// The worker counts of the rescale tests, in order.
const STEPS: [u32; 4] = [1, 3, 2, 1];
/// Events of a rescale test (a quarter per step).
const RESCALE_EVENTS: u64 = 4_000;

/// The cluster workload's pipeline text with `remote = "${REMOTE}"`.
fn with_remote(text: &str) -> String {
    let state = "dir = \"${WORKER_DIR}/state\"\n";
    assert!(text.contains(state), "the workload's [state] changed");
    text.replace(state, &format!("{state}remote = \"${{REMOTE}}\"\n"))
}

/// The key groups worker `w` of `n` owns (docs/scaling.md: 128 groups,
/// contiguous ranges).
fn owned(w: u32, n: u32) -> std::ops::Range<u32> {
    128 * w / n..128 * (w + 1) / n
}

/// Whether worker `w` of `n` owns a key group that worker `w` of `before`
/// did not: it must restore that group from another worker's copy.
fn gains(w: u32, before: u32, n: u32) -> bool {
    if w >= before {
        return true;
    }
    let (old, new) = (owned(w, before), owned(w, n));
    new.start < old.start || new.end > old.end
}

/// `workers` workers (None: the single-worker baseline, no `[cluster]`)
/// of `text`, with the remote copy under `name` in `bucket`.
fn remote_cluster(
    name: &str,
    text: &str,
    workers: Option<u32>,
    bucket: &Bucket,
) -> support::cluster::ClusterBuilder {
    let builder = match workers {
        Some(n) => Cluster::of(name, text, n),
        None => Cluster::single(name, text),
    };
    bucket
        .env()
        .into_iter()
        .fold(builder, |b, (k, v)| b.env(&k, v))
        .env("REMOTE", bucket.url(name))
}

/// After the start of `n` workers that were `before`: each worker that
/// gained key groups restored them from the remote copy, and says so in
/// its log and `sluice_remote_restores_total{reason="rescale"}`.
fn assert_rescale_restores(c: &mut Cluster, before: u32, n: u32) {
    for w in (0..n).filter(|&w| gains(w, before, n)) {
        let restores = c.metric(
            w as usize,
            "sluice_remote_restores_total",
            &[("reason", "rescale")],
        );
        assert_eq!(
            restores,
            Some(1.0),
            "{before} -> {n}: worker {w} gained key groups but its \
             sluice_remote_restores_total{{reason=\"rescale\"}} is not 1\n{}",
            c.context()
        );
        let log = c.worker(w as usize).log_since_start();
        assert!(
            log.lines()
                .any(|l| l.contains(RESTORED) && l.contains("rescale")),
            "{before} -> {n}: worker {w} does not log `{RESTORED}` for a rescale"
        );
    }
}

/// Waits until `read` (a sink) holds the all-time results of the events
/// sent so far (`so_far`), then checks that every window it holds is
/// final (`oracle`: no event is late, so a closed window is complete).
fn settle_so_far(
    c: &mut Cluster,
    what: &str,
    so_far: &wl::Results,
    oracle: &wl::Results,
    mut read: impl FnMut() -> wl::Results,
) {
    let all = c.wait_for_result(&so_far.all, SETTLE, || read().normalized().all);
    let only_all = |all: &BTreeMap<String, serde_json::Value>| wl::Results {
        all: all.clone(),
        windows: BTreeMap::new(),
    };
    assert!(
        all == so_far.all,
        "{what}: the all-time results differ:\n{}\n{}",
        only_all(&all).diff(&only_all(&so_far.all)),
        c.context()
    );
    for (key, got) in &read().normalized().windows {
        assert_eq!(
            Some(got),
            oracle.windows.get(key),
            "{what}: window {key} was emitted before it was complete"
        );
    }
}

/// The dead letters of every worker directory the rescale used.
fn all_dead_letters(c: &Cluster) -> Vec<String> {
    let dirs: Vec<PathBuf> = (0..*STEPS.iter().max().unwrap())
        .map(|i| c.dir().join(format!("worker-{i}")))
        .collect();
    wl::dead_letters(&dirs)
}

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
    let dead = all_dead_letters(&c);
    assert!(
        dead.is_empty(),
        "{} dead letters: {:?}",
        dead.len(),
        &dead[..dead.len().min(3)]
    );
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

/// An AMQP source on `${QUEUE}` (competing consumers).
#[cfg(feature = "amqp")]
fn amqp_source() -> String {
    format!(
        r#"
[sources.events]
type = "amqp"
url = "${{AMQP_URL}}"
queue = "${{QUEUE}}"
prefetch = 500
{}
"#,
        wl::event_time()
    )
}

/// The events as AMQP messages, each with its message id.
#[cfg(feature = "amqp")]
fn amqp_messages(events: &[wl::Event]) -> Vec<(Option<String>, Vec<u8>)> {
    events
        .iter()
        .map(|e| (Some(format!("e{}", e.id)), e.line().into_bytes()))
        .collect()
}

/// Publishes a flush event every 300 ms (each consumer must get one for
/// its watermark to pass the last window) until `read` holds `oracle`;
/// returns what it holds then.
#[cfg(feature = "amqp")]
fn finish(
    c: &mut Cluster,
    rt: &tokio::runtime::Runtime,
    client: &support::amqp::Client,
    queue: &str,
    oracle: &wl::Results,
    mut read: impl FnMut() -> wl::Results,
) -> wl::Results {
    let mut flushes = 0;
    let mut last = Instant::now() - Duration::from_secs(1);
    let got = c.wait_for_result(oracle, SETTLE, || {
        if last.elapsed() >= Duration::from_millis(300) {
            let flush = (
                Some(format!("flush{flushes}")),
                wl::flush_line().into_bytes(),
            );
            rt.block_on(client.publish(queue, &[flush]));
            flushes += 1;
            last = Instant::now();
        }
        read()
    });
    assert!(got == *oracle, "{}\n{}", got.diff(oracle), c.context());
    got
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
    use support::amqp::{rt, shared_broker, Cleanup, Client};
    use support::services::{postgres_url, unique};
    let test = "remote_rescale_amqp";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, RESCALE_EVENTS);
    let oracle = wl::oracle(&events).normalized();
    let url = shared_broker();
    let rt = rt();
    let client = rt.block_on(Client::connect(&url));
    let text = with_remote(&wl::pipeline(
        "remote_rescale_amqp",
        &amqp_source(),
        wl::POSTGRES_SINKS,
    ));
    let bucket = Bucket::shared("rescale-amqp");
    let messages = amqp_messages(&events);
    let mut queues = Vec::new();
    let mut run = |name: &str, workers: Option<u32>| {
        let queue = unique(name);
        let table = format!("sluice_it_{}", unique(name));
        rt.block_on(client.durable_queue(&queue, None));
        queues.push(queue.clone());
        let c = remote_cluster(name, &text, workers, &bucket)
            .env("AMQP_URL", url.as_str())
            .env("QUEUE", queue.as_str())
            .env("POSTGRES_URL", postgres_url())
            .env("TABLE", table.as_str())
            .start();
        (c, queue, table)
    };
    let read = |table: &str| wl::read_postgres(&postgres_url(), table).normalized();
    let consumers = |c: &mut Cluster, queue: &str, n: u32| {
        c.wait_until("a consumer per worker", SETTLE, || {
            rt.block_on(client.depth(queue)).1 >= n
        });
    };
    let single = {
        let (mut c, queue, table) = run(&format!("{test}_single"), None);
        consumers(&mut c, &queue, 1);
        rt.block_on(client.publish(&queue, &messages));
        let got = finish(&mut c, &rt, &client, &queue, &oracle, || read(&table));
        c.stop_all();
        wl::clean_postgres(&postgres_url(), &table);
        got
    };

    let (mut c, queue, table) = run(&format!("{test}_steps"), Some(STEPS[0]));
    let quarter = messages.len() / STEPS.len();
    for (step, &n) in STEPS.iter().enumerate() {
        if step > 0 {
            c.stop_all();
            c.rescale(n);
            c.start_all();
            assert_rescale_restores(&mut c, STEPS[step - 1], n);
        }
        consumers(&mut c, &queue, n);
        rt.block_on(client.publish(&queue, &messages[step * quarter..(step + 1) * quarter]));
        let sent = (step + 1) * quarter;
        let so_far = wl::oracle(&events[..sent]).normalized();
        let what = format!("{n} workers, {sent} events published");
        settle_so_far(&mut c, &what, &so_far, &oracle, || read(&table));
    }
    let got = finish(&mut c, &rt, &client, &queue, &oracle, || read(&table));
    c.stop_all();
    let dead = all_dead_letters(&c);
    assert!(
        dead.is_empty(),
        "{} dead letters: {:?}",
        dead.len(),
        &dead[..dead.len().min(3)]
    );
    assert!(
        got == single,
        "postgres: the rescaled run differs from one worker:\n{}",
        got.diff(&single)
    );
    wl::clean_postgres(&postgres_url(), &table);
    drop(Cleanup {
        url: url.clone(),
        queues,
        exchanges: Vec::new(),
    });
}

/// A worker killed with SIGKILL releases nothing: after a rescale 1 -> 2
/// the new workers wait for it (not ready; the log names the worker and
/// what to do) until the operator runs `sluice release --worker 0
/// --workers 1` (docs/scaling.md); then they take over from its last
/// uploaded checkpoint, the AMQP messages it had not acknowledged come
/// again, the output of its last checkpoint that its sinks had not
/// acknowledged is written for it, and the results are exact.
#[cfg(all(feature = "amqp", feature = "postgres"))]
#[test]
fn a_killed_owner_holds_its_key_groups_until_the_operator_releases_them() {
    use support::amqp::{rt, shared_broker, Cleanup, Client};
    use support::services::{postgres_url, unique};
    const WAITING: &str = "waiting for worker 0 of 1 to release key group";
    let test = "remote_release_after_sigkill";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, RESCALE_EVENTS);
    let oracle = wl::oracle(&events).normalized();
    let url = shared_broker();
    let rt = rt();
    let client = rt.block_on(Client::connect(&url));
    let text = with_remote(&wl::pipeline(
        "remote_release",
        &amqp_source(),
        wl::POSTGRES_SINKS,
    ));
    let bucket = Bucket::shared("release");
    let messages = amqp_messages(&events);
    let queue = unique(test);
    let table = format!("sluice_it_{}", unique(test));
    rt.block_on(client.durable_queue(&queue, None));
    let read = || wl::read_postgres(&postgres_url(), &table).normalized();
    let mut c = remote_cluster(test, &text, Some(1), &bucket)
        .env("AMQP_URL", url.as_str())
        .env("QUEUE", queue.as_str())
        .env("POSTGRES_URL", postgres_url())
        .env("TABLE", table.as_str())
        .start();
    let half = messages.len() / 2;
    let quarter = messages.len() / 4;
    rt.block_on(client.publish(&queue, &messages[..half]));
    let so_far = wl::oracle(&events[..half]).normalized();
    settle_so_far(&mut c, "1 worker", &so_far, &oracle, read);
    // More input, and the owner dies while it reads it.
    rt.block_on(client.publish(&queue, &messages[half..half + quarter]));
    let admin = c.admin_port(0);
    c.wait_until("the worker to read some of it", SETTLE, || {
        support::metric_series(admin, "sluice_events_in_total", &[("component", "events")])
            .is_some_and(|n| n > half as f64)
    });
    assert!(c.kill(0), "the worker was not running");

    c.rescale(2);
    c.start_worker(0);
    c.start_worker(1);
    for w in 0..2 {
        c.worker(w).wait_log(WAITING, 1);
    }
    let ready =
        |c: &Cluster, w: usize| support::http_request(c.admin_port(w), "GET", "/ready", &[], b"");
    let w1 = ready(&c, 1);
    assert!(
        w1.as_ref().is_ok_and(|(s, _)| *s == 503),
        "worker 1 of 2 must wait for the killed owner, /ready: {w1:?}"
    );
    let out = c
        .worker(0)
        .command(&["release", "--worker", "0", "--workers", "1"])
        .output()
        .expect("run sluice release");
    assert!(
        out.status.success(),
        "sluice release failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_ready();
    assert_rescale_restores(&mut c, 1, 2);

    rt.block_on(client.publish(&queue, &messages[half + quarter..]));
    let got = finish(&mut c, &rt, &client, &queue, &oracle, read);
    assert!(got == oracle, "after the release:\n{}", got.diff(&oracle));
    c.stop_all();
    let dead = all_dead_letters(&c);
    assert!(
        dead.is_empty(),
        "{} dead letters: {:?}",
        dead.len(),
        &dead[..dead.len().min(3)]
    );
    wl::clean_postgres(&postgres_url(), &table);
    drop(Cleanup {
        url: url.clone(),
        queues: vec![queue],
        exchanges: Vec::new(),
    });
}

/// A worker whose sink never acknowledged anything (its Redis was
/// unreachable) is killed after a checkpoint covered all its input (the
/// HTTP journal is released, so the input is never read again); the only
/// copy of its results is the output stored with that checkpoint. After the
/// operator releases it, the new owner of its first key group writes that
/// output before taking over, and the results are exact without any
/// further input; then more input goes to the new workers.
#[cfg(all(feature = "http", feature = "redis"))]
#[test]
fn a_killed_owners_undelivered_output_is_written_by_its_successor() {
    use support::services::{redis_url, unique};
    const WAITING: &str = "waiting for worker 0 of 1 to release key group";
    let test = "remote_undelivered";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, 2_000);
    let lines = wl::lines(&events);
    let text = with_remote(&wl::pipeline(test, &wl::http_source(), wl::REDIS_SINKS));
    let bucket = Bucket::shared("undelivered");
    let prefix = format!("sluice-it:{}:", unique(test));
    let read = || wl::read_redis(&redis_url(), &prefix).normalized();
    let cluster = |name: &str, n: u32, redis: &str| {
        remote_cluster(name, &text, Some(n), &bucket)
            .env("REMOTE", bucket.url(test))
            .port("HTTP_PORT")
            .env("REDIS_URL", redis)
            .env("PREFIX", prefix.as_str())
    };
    let half = lines.len() / 2;
    // Nothing listens on the discard port: every write is retried, none
    // is acknowledged.
    let mut old = cluster(&format!("{test}_old"), 1, "redis://127.0.0.1:9").start();
    for chunk in lines[..half].chunks(200) {
        wl::post_ndjson(old.port(0, "HTTP_PORT"), chunk, SETTLE);
    }
    let admin = old.admin_port(0);
    old.wait_until("a checkpoint to cover all the input", SETTLE, || {
        support::metric_series(admin, "sluice_events_in_total", &[("component", "events")])
            .is_some_and(|n| n >= half as f64)
            && support::metric_total(admin, "sluice_journal_backlog_events") == Some(0.0)
            && support::metric_total(admin, "sluice_sink_pending_epochs").is_some_and(|n| n >= 1.0)
    });
    assert!(old.kill(0), "the old worker was not running");
    assert!(
        read().all.is_empty(),
        "the old worker wrote to Redis although it was unreachable"
    );

    let mut new = cluster(&format!("{test}_new"), 2, &redis_url()).launch();
    for w in 0..2 {
        new.worker(w).wait_log(WAITING, 1);
    }
    let out = new
        .worker(0)
        .command(&["release", "--worker", "0", "--workers", "1"])
        .output()
        .expect("run sluice release");
    assert!(
        out.status.success(),
        "sluice release failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    new.wait_ready();
    new.worker(0).wait_log(
        "wrote the output the gone worker's sink never acknowledged",
        1,
    );
    let first = wl::oracle(&events[..half]).normalized();
    let all_of = |r: &wl::Results| r.all.clone();
    let got = new.wait_for_result(&first.all, SETTLE, || all_of(&read()));
    assert_eq!(got, first.all, "the killed worker's results");
    for (k, chunk) in lines[half..].chunks(100).enumerate() {
        wl::post_ndjson(new.port(k % 2, "HTTP_PORT"), chunk, SETTLE);
    }
    let oracle = wl::oracle(&events).normalized();
    let got = new.wait_for_result(&oracle.all, SETTLE, || all_of(&read()));
    assert_eq!(got, oracle.all, "the new owners' results");
    new.stop_all();
    let dead = all_dead_letters(&new);
    assert!(dead.is_empty(), "{} dead letters", dead.len());
    wl::clean_redis(&redis_url(), &prefix);
}

/// A former owner that froze (SIGSTOP) during a rescale is a zombie: the
/// new workers wait for it until the operator releases it (`sluice
/// release`), then take over from its last uploaded checkpoint and write
/// with new write generations. When the zombie resumes (SIGCONT) and is
/// given more input, every write it makes to a key the new owners wrote is
/// refused and counted (`sluice_sink_fenced_writes_total`), and the
/// all-time results stay the new owners'. (Keys the new owners have not
/// written since the takeover have no newer value to protect: the fence
/// compares per key, so the zombie's windows are not checked here.)
#[cfg(all(feature = "http", feature = "redis"))]
#[test]
fn a_zombie_former_owner_is_fenced_after_the_operator_releases_it() {
    use support::services::{redis_url, unique};
    const WAITING: &str = "waiting for worker 0 of 1 to release key group";
    let test = "remote_zombie";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, 2_000);
    let lines = wl::lines(&events);
    let text = with_remote(&wl::pipeline(
        "remote_zombie",
        &wl::http_source(),
        wl::REDIS_SINKS,
    ));
    let bucket = Bucket::shared("zombie");
    let prefix = format!("sluice-it:{}:", unique(test));
    let read = || wl::read_redis(&redis_url(), &prefix).normalized();
    // The old owner and the new workers share one remote copy and one
    // Redis prefix, but not directories or ports (the zombie keeps its own).
    let cluster = |name: &str, n: u32| {
        remote_cluster(name, &text, Some(n), &bucket)
            .env("REMOTE", bucket.url(test))
            .port("HTTP_PORT")
            .env("REDIS_URL", redis_url())
            .env("PREFIX", prefix.as_str())
    };
    let half = lines.len() / 2;
    let mut old = cluster(&format!("{test}_old"), 1).start();
    for chunk in lines[..half].chunks(200) {
        wl::post_ndjson(old.port(0, "HTTP_PORT"), chunk, SETTLE);
    }
    let first = wl::oracle(&events[..half]).normalized();
    let all_of = |r: &wl::Results| r.all.clone();
    let got = old.wait_for_result(&first.all, SETTLE, || all_of(&read()));
    assert_eq!(got, first.all, "the old owner's results");
    old.pause(0);

    let mut new = cluster(&format!("{test}_new"), 2).launch();
    for w in 0..2 {
        new.worker(w).wait_log(WAITING, 1);
    }
    let out = new
        .worker(0)
        .command(&["release", "--worker", "0", "--workers", "1"])
        .output()
        .expect("run sluice release");
    assert!(
        out.status.success(),
        "sluice release failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    new.wait_ready();
    assert_rescale_restores(&mut new, 1, 2);
    for (k, chunk) in lines[half..].chunks(100).enumerate() {
        wl::post_ndjson(new.port(k % 2, "HTTP_PORT"), chunk, SETTLE);
    }
    let oracle = wl::oracle(&events).normalized();
    let got = new.wait_for_result(&oracle.all, SETTLE, || all_of(&read()));
    assert_eq!(got, oracle.all, "the new owners' results");

    // The zombie wakes up and is given input again: each of its writes to
    // a key the new owners wrote is fenced.
    old.resume(0);
    for chunk in lines[half..].chunks(200) {
        wl::post_ndjson(old.port(0, "HTTP_PORT"), chunk, SETTLE);
    }
    let admin = old.admin_port(0);
    old.wait_until("the zombie's writes to be fenced", SETTLE, || {
        support::metric_total(admin, "sluice_sink_fenced_writes_total").is_some_and(|n| n > 0.0)
    });
    // Its writes are all refused: once it has read everything it was
    // given and its sinks have nothing pending, the all-time results are
    // still the new owners'.
    let given = lines.len() as f64;
    old.wait_until("the zombie to deliver all it read", SETTLE, || {
        support::metric_series(admin, "sluice_events_in_total", &[("component", "events")])
            .is_some_and(|n| n >= given)
            && support::metric_total(admin, "sluice_sink_pending_epochs") == Some(0.0)
    });
    assert_eq!(all_of(&read()), oracle.all, "the zombie changed results");
    old.stop_all();
    new.stop_all();
    wl::clean_redis(&redis_url(), &prefix);
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

/// What a worker logs once it has taken key groups over (uploaded their
/// state and claimed them).
const TAKEN_OVER: &str = "key groups taken over: time per phase";
/// What a worker logs when its clean stop released its key groups.
const RELEASED: &str = "released this worker's key groups";
/// What a worker logs once its admin server listens (after its signal
/// handler is set up).
const ADMIN: &str = "admin server listening";

/// The `max_disorder` of the kill test's source. The broker redelivers
/// the messages a killed worker had not acknowledged after newer ones were
/// read, often by another worker: with the workload's 5 s they would be
/// late. In flight at a kill are at most the rest of one quarter of the
/// input (150 s of event time) and the first quarter of the next (37.5
/// s), so no event is late, and windows still close as the input goes on.
const REDELIVERY_DISORDER: &str = "200s";

/// Waits up to `timeout` until `happened` or worker `w` is ready; whether
/// it still runs then.
fn wait_for_moment(
    c: &mut Cluster,
    w: usize,
    timeout: Duration,
    mut happened: impl FnMut(&mut Cluster) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && c.is_running(w) {
        let ready = support::http_request(c.admin_port(w), "GET", "/ready", &[], b"")
            .is_ok_and(|(s, _)| s == 200);
        if ready || happened(c) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    c.is_running(w)
}

/// Whether worker `w`'s log since its start holds `text`.
fn logged(text: &str, w: usize) -> impl FnMut(&mut Cluster) -> bool + '_ {
    move |c| c.worker(w).log_since_start().contains(text)
}

/// How many claim objects (`claims/<group>/<generation>`) of the key
/// groups `groups` the remote copy under `prefix` holds.
fn claims(bucket: &Bucket, prefix: &str, groups: &std::ops::Range<u32>) -> usize {
    bucket
        .keys(&format!("{prefix}/claims/"))
        .iter()
        .filter_map(|k| k.rsplit('/').nth(1)?.parse::<u32>().ok())
        .filter(|g| groups.contains(g))
        .count()
}

/// Scale 1 -> 3 -> 2 -> 1 as in the AMQP test above (competing consumers,
/// Redis and PostgreSQL sinks), with SIGKILLs at random (seeded) moments
/// of every handover:
/// - one worker of the old count while it stops: a random delay after it
///   logs `SIGTERM received` (draining its source) or `source finished`
///   (its final checkpoint, the upload, waiting for the other workers,
///   the release). A killed worker releases nothing. The single worker
///   of 1 -> 3 is then released by the operator (`sluice release
///   --worker 0 --workers 1`, docs/scaling.md). A killed worker of several
///   is started again at once and stopped with the others; if one of
///   them still did not release (it waited in vain for its last rows to
///   be taken), the old count runs once more and stops together;
/// - three times, a starting worker that gains key groups: a random delay
///   after its start (waiting for releases, writing a gone worker's
///   output, fetching, applying, uploading, claiming), once the remote
///   copy holds a random number of its new claims (between two claims),
///   or a random delay after it logs that it took its groups over (before
///   or after it is ready); each is started again at once.
///
/// A quarter of the input is published in each step: an eighth just
/// before the old workers get SIGTERM, an eighth while the new ones take
/// over, the rest once they are ready. Then the sinks must hold the
/// oracle's all-time results for what was published (and only final
/// windows). The first worker is stopped while it still reads the first
/// quarter, and the remote copy (a private S3 API) may be unreachable
/// (SIGSTOP) until it is killed: since before its first upload (its key
/// groups then move without a release: nothing of it was released
/// upstream), or since it read a random part of the quarter (its
/// directory is then ahead of its release).
/// The source's `max_disorder` is [`REDELIVERY_DISORDER`]. At the end
/// Redis and PostgreSQL hold exactly the oracle's results, with no dead
/// letters, after at least 5 kills.
#[cfg(all(feature = "amqp", feature = "redis", feature = "postgres"))]
#[test]
fn a_rescale_1_3_2_1_with_sigkills_during_the_handovers_equals_the_oracle() {
    use rand::Rng;
    use support::amqp::{rt, shared_broker, Cleanup, Client};
    use support::services::{postgres_url, redis_url, unique};
    /// Starting workers killed per step.
    const STARTING_KILLS: usize = 3;
    let test = "remote_rescale_kills";
    let started = Instant::now();
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, RESCALE_EVENTS);
    let oracle = wl::oracle(&events).normalized();
    let url = shared_broker();
    let rt = rt();
    let client = rt.block_on(Client::connect(&url));
    let sinks = format!("{}{}", wl::REDIS_SINKS, wl::POSTGRES_SINKS);
    let disorder = |d: &str| format!("max_disorder = \"{d}\"");
    let source = amqp_source().replace(&disorder(wl::MAX_DISORDER), &disorder(REDELIVERY_DISORDER));
    assert!(source.contains(&disorder(REDELIVERY_DISORDER)));
    let text = with_remote(&wl::pipeline(test, &source, &sinks));
    // A private S3 API: the test makes it unreachable for a while.
    let s3 = PrivateS3::start();
    let bucket = s3.bucket("rescale-kills");
    let messages = amqp_messages(&events);
    let queue = unique(test);
    let table = format!("sluice_it_{}", unique(test));
    let prefix = format!("sluice-it:{}:", unique(test));
    rt.block_on(client.durable_queue(&queue, None));
    let _cleanup = Cleanup {
        url: url.clone(),
        queues: vec![queue.clone()],
        exchanges: Vec::new(),
    };
    let read_pg = || wl::read_postgres(&postgres_url(), &table).normalized();
    let read_redis = || wl::read_redis(&redis_url(), &prefix).normalized();
    let publish = |range: std::ops::Range<usize>| {
        rt.block_on(client.publish(&queue, &messages[range]));
    };
    let consumers = |c: &mut Cluster, n: u32| {
        c.wait_until("a consumer per worker", SETTLE, || {
            rt.block_on(client.depth(&queue)).1 >= n
        });
    };
    // The cluster's name is also its prefix in the bucket.
    let mut c = remote_cluster(test, &text, Some(STEPS[0]), &bucket)
        .env("AMQP_URL", url.as_str())
        .env("QUEUE", queue.as_str())
        .env("REDIS_URL", redis_url())
        .env("PREFIX", prefix.as_str())
        .env("POSTGRES_URL", postgres_url())
        .env("TABLE", table.as_str())
        .start();
    let quarter = messages.len() / STEPS.len();
    consumers(&mut c, STEPS[0]);
    // The remote copy may be unreachable when the first worker is killed:
    // since before its first upload, or since it read a random part of
    // the first quarter (its directory then holds checkpoints, and
    // acknowledgements of its sinks, that the remote copy does not).
    let outage = rng.random_range(0..3);
    if outage == 0 {
        s3.freeze();
    }
    publish(0..quarter);
    if outage == 1 {
        let read = rng.random_range(100..quarter) as f64;
        let admin = c.admin_port(0);
        c.wait_until("the first worker to read some input", SETTLE, || {
            support::metric_series(admin, "sluice_events_in_total", &[("component", "events")])
                .is_some_and(|n| n >= read)
        });
        s3.freeze();
    }
    if outage < 2 {
        eprintln!("{test}: the remote copy is unreachable (outage {outage})");
        // Checkpoints go on locally.
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut kills = Vec::new();
    for step in 1..STEPS.len() {
        let (before, n) = (STEPS[step - 1], STEPS[step]);
        let from = step * quarter;
        let (stopping, starting) = (from + quarter / 8, from + quarter / 4);
        // Input arrives as the old workers stop; one of them is killed
        // on the way.
        publish(from..stopping);
        for w in 0..before as usize {
            c.worker(w).signal("TERM");
        }
        let victim = rng.random_range(0..before as usize);
        // One worker drains, checkpoints, uploads and releases within
        // about 150 ms of SIGTERM; several wait for each other for seconds.
        let (phase, delay) = match (rng.random_bool(0.5), before) {
            (true, 1) => ("SIGTERM received", rng.random_range(0..120)),
            (false, 1) => ("source finished", rng.random_range(0..50)),
            (true, _) => ("SIGTERM received", rng.random_range(0..150)),
            (false, _) => ("source finished", rng.random_range(0..1_500)),
        };
        let delay = Duration::from_millis(delay);
        let killed = wait_for_moment(&mut c, victim, SETTLE, logged(phase, victim)) && {
            std::thread::sleep(delay);
            c.kill(victim)
        };
        if killed {
            let kill = format!(
                "{before} -> {n}: stopping worker {victim} of {before}, {delay:?} after `{phase}`"
            );
            eprintln!("{test}: kill: {kill}");
            kills.push(kill);
        }
        if step == 1 && outage < 2 {
            s3.thaw();
        }
        if killed && before > 1 {
            // Started again at once on its directory (as a supervisor
            // would) and stopped like the others, which wait for its
            // last rows.
            c.start_worker(victim);
            wait_for_moment(&mut c, victim, SETTLE, logged(ADMIN, victim));
            std::thread::sleep(Duration::from_millis(100));
            c.worker(victim).signal("TERM");
        }
        let gone = killed && before == 1;
        for w in (0..before as usize).filter(|&w| !(gone && w == victim)) {
            let status = c.worker(w).wait_exit(SETTLE + SETTLE);
            assert!(
                status.success(),
                "{before} -> {n}: worker {w} exited with {status} after SIGTERM\n{}",
                c.context()
            );
        }
        let unreleased = |c: &mut Cluster| -> Vec<usize> {
            (0..before as usize)
                .filter(|&w| !c.worker(w).log_since_start().contains(RELEASED))
                .collect()
        };
        if before == 1 {
            // One worker: the operator releases it (docs/scaling.md, a
            // worker that is gone for good). With no other worker, nothing
            // reached it through the exchange: nothing is lost.
            for w in unreleased(&mut c) {
                let (worker, workers) = (w.to_string(), before.to_string());
                let out = c
                    .worker(w)
                    .command(&["release", "--worker", &worker, "--workers", &workers])
                    .output()
                    .expect("run sluice release");
                assert!(
                    out.status.success(),
                    "sluice release --worker {w} --workers {before} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                eprintln!("{test}: {before} -> {n}: the operator released worker {w}");
            }
        } else {
            // Several: a worker that did not release (killed, or one that
            // waited in vain for its last rows to be taken) is not gone, so
            // the old count runs once more and stops together
            // (docs/scaling.md). A forced release would lose the rows the
            // others had handed to it since its last upload.
            for _ in 0..2 {
                let left = unreleased(&mut c);
                if left.is_empty() {
                    break;
                }
                eprintln!(
                    "{test}: {before} -> {n}: {left:?} did not release: the old count runs again"
                );
                c.start_all();
                c.stop_all();
            }
            let left = unreleased(&mut c);
            assert!(
                left.is_empty(),
                "{before} -> {n}: workers {left:?} did not release\n{}",
                c.context()
            );
        }

        // The new workers start while input arrives; some of those that
        // take key groups over are killed on the way and started again.
        let gaining: Vec<u32> = (0..n).filter(|&w| gains(w, before, n)).collect();
        let claimed: Vec<usize> = (0..n)
            .map(|w| claims(&bucket, test, &owned(w, n)))
            .collect();
        c.rescale(n);
        for w in 0..n as usize {
            c.start_worker(w);
        }
        publish(stopping..starting);
        for _ in 0..STARTING_KILLS {
            let w = gaining[rng.random_range(0..gaining.len())];
            let (groups, i) = (owned(w, n), w as usize);
            let moment = match rng.random_range(0..3) {
                0 => {
                    let delay = Duration::from_millis(rng.random_range(0..1_500));
                    std::thread::sleep(delay);
                    format!("{delay:?} after its start")
                }
                1 => {
                    let k = rng.random_range(1..=groups.len() / 2);
                    wait_for_moment(&mut c, i, SETTLE, |_| {
                        claims(&bucket, test, &groups) >= claimed[i] + k
                    });
                    format!("once {k} of its new claims were written")
                }
                _ => {
                    let delay = Duration::from_millis(rng.random_range(0..300));
                    wait_for_moment(&mut c, i, SETTLE, logged(TAKEN_OVER, i));
                    std::thread::sleep(delay);
                    format!("{delay:?} after it took its key groups over (or was ready)")
                }
            };
            if c.kill(i) {
                let kill = format!("{before} -> {n}: starting worker {w} of {n}, {moment}");
                eprintln!("{test}: kill: {kill}");
                kills.push(kill);
            }
            c.start_worker(i);
        }
        c.wait_ready();
        consumers(&mut c, n);
        publish(starting..from + quarter);
        let sent = from + quarter;
        let so_far = wl::oracle(&events[..sent]).normalized();
        let what = format!("{n} workers after the kills, {sent} events published");
        settle_so_far(
            &mut c,
            &format!("{what}, postgres"),
            &so_far,
            &oracle,
            read_pg,
        );
        settle_so_far(
            &mut c,
            &format!("{what}, redis"),
            &so_far,
            &oracle,
            read_redis,
        );
    }
    eprintln!("{test}: {} kills: {kills:#?}", kills.len());
    let pg = finish(&mut c, &rt, &client, &queue, &oracle, read_pg);
    let redis = c.wait_for_result(&oracle, SETTLE, read_redis);
    c.stop_all();
    let dead = all_dead_letters(&c);
    assert!(
        dead.is_empty(),
        "{} dead letters: {:?}",
        dead.len(),
        &dead[..dead.len().min(3)]
    );
    assert!(
        pg == oracle,
        "postgres after the kills:\n{}",
        pg.diff(&oracle)
    );
    assert!(
        redis == oracle,
        "redis after the kills:\n{}",
        redis.diff(&oracle)
    );
    assert!(
        kills.len() >= 5,
        "only {} kills landed: {kills:#?}",
        kills.len()
    );
    eprintln!("{test}: took {:.1} s", started.elapsed().as_secs_f64());
    wl::clean_postgres(&postgres_url(), &table);
    wl::clean_redis(&redis_url(), &prefix);
}
