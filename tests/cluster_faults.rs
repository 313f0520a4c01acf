//! Faults of a 3-worker cluster (issue 12), each ending with the sinks
//! holding exactly the oracle's results (the workload of
//! tests/support/cluster_workload.rs: all-time statistics per station and
//! 1-minute windows per country):
//! - SIGKILL of a random worker at random moments mid-stream, at least 5
//!   times, each worker at least once, each restarted on its state. Every
//!   worker both sends (it reads its own part of the input and routes each
//!   record to its key group's owner) and receives (it owns a third of the
//!   key groups), so each kill hits a sender and a receiver at once.
//! - A worker frozen with SIGSTOP for longer than the exchange's timeouts
//!   (a request unanswered for 10 s is retried: `SenderOptions` in
//!   engine/src/exchange/sender.rs), then resumed.
//! - A peer gone for a while (SIGTERM) while HTTP clients post to the
//!   others: once their exchange backlog is full, they answer 503 with
//!   `Retry-After`; the client retries, and nothing is lost once the peer
//!   is back.
//!
//! The random choices come from a seeded RNG whose seed is printed
//! (SLUICE_TEST_SEED replays it).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;
use support::cluster::Cluster;
use support::cluster_workload::{self as wl, Results};
use support::services::unique;

const WORKERS: u32 = 3;
/// How long the sinks may take to hold every result once the input is in.
const SETTLE: Duration = Duration::from_secs(45);
/// SIGKILLs per run in the kill test.
const KILLS: usize = 6;
/// The exchange's request timeout (engine/src/exchange/sender.rs,
/// `SenderOptions::new`; the runtime keeps the defaults).
const EXCHANGE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Its connect timeout (resolving, TCP, HTTP/2 handshake), likewise.
const EXCHANGE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes `part-<i>.ndjson` (events dealt round-robin, a flush event last)
/// for each worker into `dir`.
fn write_parts(dir: &std::path::Path, events: &[wl::Event]) {
    for (i, part) in wl::round_robin(events, WORKERS as usize).iter().enumerate() {
        let mut text: String = part.iter().map(|e| e.line() + "\n").collect();
        text.push_str(&(wl::flush_line() + "\n"));
        std::fs::write(dir.join(format!("part-{i}.ndjson")), text).unwrap();
    }
}

/// Waits until `read` holds the oracle's results, stops the workers,
/// checks that none has dead letters (no event is late) and checks the
/// results once more.
fn assert_settles(
    c: &mut Cluster,
    what: &str,
    oracle: &Results,
    mut read: impl FnMut() -> Results,
) {
    let want = oracle.normalized();
    let got = c.wait_for_result(&want, SETTLE, || read().normalized());
    assert!(
        got == want,
        "{what}: the sink differs from the oracle:\n{}\n{}",
        got.diff(&want),
        c.context()
    );
    c.stop_all();
    let dead = wl::dead_letters(&c.worker_dirs());
    assert!(
        dead.is_empty(),
        "{what}: {} dead letters (first 3: {:?})",
        dead.len(),
        &dead[..dead.len().min(3)]
    );
    let last = read().normalized();
    assert!(
        last == want,
        "{what}: the sink changed after it held the oracle's results:\n{}",
        last.diff(&want)
    );
}

/// 6 SIGKILLs of random workers (the first three a permutation of all
/// three) at random moments while each worker reads its part at 300
/// events/s (about 10 s of input), each killed worker restarted after a
/// random pause. At least 5 kills must land before the results are
/// complete.
#[cfg(feature = "postgres")]
#[test]
fn random_sigkills_of_senders_and_receivers_leave_the_oracle_results_in_postgres() {
    use support::services::postgres_url;
    let test = "cluster_sigkills";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, 9_000);
    let oracle = wl::oracle(&events);
    let want = oracle.normalized();
    let input = tempfile::tempdir().unwrap();
    write_parts(input.path(), &events);
    let table = format!("sluice_it_{}", unique(test));
    let text = wl::pipeline(
        "cluster_kills",
        &wl::file_source("${INPUT_DIR}/part-${SLUICE_WORKER_ID}.ndjson"),
        wl::POSTGRES_SINKS,
    );
    let mut c = Cluster::of(test, &text, WORKERS)
        .env("INPUT_DIR", input.path().display().to_string())
        .env("PACE", "300")
        .env("POSTGRES_URL", postgres_url())
        .env("TABLE", table.as_str())
        .launch();
    let read = || wl::read_postgres(&postgres_url(), &table);
    let mut victims: Vec<usize> = (0..WORKERS as usize).collect();
    victims.shuffle(&mut rng);
    while victims.len() < KILLS {
        victims.push(rng.random_range(0..WORKERS as usize));
    }
    let started = Instant::now();
    let mut mid_stream = 0;
    for (k, &i) in victims.iter().enumerate() {
        // The kill points are the subject: random moments mid-stream.
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1_500)));
        let complete = read().normalized() == want;
        c.check_exits();
        assert!(c.kill(i), "worker {i} was not running at kill {k}");
        mid_stream += usize::from(!complete);
        eprintln!(
            "{test}: kill {k} of worker {i} at {:.1} s (results complete: {complete})",
            started.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
        c.start_worker(i);
    }
    assert!(
        mid_stream >= 5,
        "only {mid_stream} of {} kills landed before the results were complete",
        victims.len()
    );
    assert_settles(&mut c, test, &oracle, read);
    eprintln!("{test}: done in {:.1} s", started.elapsed().as_secs_f64());
    wl::clean_postgres(&postgres_url(), &table);
}

/// A worker frozen with SIGSTOP at a random moment mid-stream for longer
/// than the exchange's request and connect timeouts, then resumed: the
/// others' requests to it go unanswered and are retried (a delivery to it
/// must have taken more than the 10 s request timeout, by the others'
/// `sluice_exchange_delivery_seconds`), its own are answered late. The
/// results are exact.
#[cfg(feature = "redis")]
#[test]
fn a_worker_stopped_past_the_exchange_timeouts_and_resumed_leaves_the_oracle_results_in_redis() {
    use support::services::redis_url;
    let test = "cluster_sigstop";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, 6_000);
    let oracle = wl::oracle(&events);
    let want = oracle.normalized();
    let input = tempfile::tempdir().unwrap();
    write_parts(input.path(), &events);
    let prefix = format!("sluice-it:{}:", unique(test));
    let text = wl::pipeline(
        "cluster_stop",
        &wl::file_source("${INPUT_DIR}/part-${SLUICE_WORKER_ID}.ndjson"),
        wl::REDIS_SINKS,
    );
    let mut c = Cluster::of(test, &text, WORKERS)
        .env("INPUT_DIR", input.path().display().to_string())
        .env("PACE", "400")
        .env("REDIS_URL", redis_url())
        .env("PREFIX", prefix.as_str())
        .launch();
    let read = || wl::read_redis(&redis_url(), &prefix);
    let victim = rng.random_range(0..WORKERS as usize);
    let others: Vec<usize> = (0..WORKERS as usize).filter(|&i| i != victim).collect();
    // The moment is the subject: a random point of the 5 s of input.
    std::thread::sleep(Duration::from_millis(rng.random_range(500..3_000)));
    c.check_exits();
    let frozen = EXCHANGE_REQUEST_TIMEOUT + EXCHANGE_CONNECT_TIMEOUT + Duration::from_secs(2);
    eprintln!("{test}: SIGSTOP worker {victim} for {frozen:?}");
    c.pause(victim);
    let stopped = Instant::now();
    let peer = victim.to_string();
    let mut peer_up = Vec::new();
    while stopped.elapsed() < frozen {
        // Meanwhile the others keep running.
        c.check_exits();
        for &i in &others {
            peer_up.push(c.metric(i, "sluice_exchange_peer_up", &[("peer", &peer)]));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let during = read().normalized();
    c.resume(victim);
    let down = peer_up.iter().filter(|v| **v == Some(0.0)).count();
    eprintln!(
        "{test}: the others reported worker {victim} down (sluice_exchange_peer_up = 0) in {down} of {} samples while it was stopped",
        peer_up.len()
    );
    assert!(
        during != want,
        "the results were complete while worker {victim} was stopped: the stop came too late"
    );
    // A frozen worker accepts connections (the kernel does) but answers
    // nothing: once a batch has waited longer than a request may take, the
    // others report it down.
    assert!(
        down > 0,
        "the others kept reporting the frozen worker {victim} up (sluice_exchange_peer_up = 1) in all {} samples",
        peer_up.len()
    );
    let want_settled = want.clone();
    let got = c.wait_for_result(&want_settled, SETTLE, || read().normalized());
    // Deliveries to the stopped worker that took longer than the request
    // timeout (the histogram has a bucket at 10 s).
    let late: f64 = others
        .iter()
        .map(|&i| {
            let labels = [("peer", peer.as_str())];
            let all = c.metric(i, "sluice_exchange_delivery_seconds_count", &labels);
            let within = c.metric(
                i,
                "sluice_exchange_delivery_seconds_bucket",
                &[("peer", peer.as_str()), ("le", "10")],
            );
            all.unwrap_or(0.0) - within.unwrap_or(0.0)
        })
        .sum();
    eprintln!("{test}: {late} deliveries to worker {victim} took more than 10 s");
    assert!(
        got == want,
        "{test}: the sink differs from the oracle:\n{}\n{}",
        got.diff(&want),
        c.context()
    );
    assert!(
        late >= 1.0,
        "no delivery to worker {victim} took longer than the 10 s request timeout: the stop did not outlast it"
    );
    assert_settles(&mut c, test, &oracle, read);
    wl::clean_redis(&redis_url(), &prefix);
}

/// HTTP clients post to the workers; worker 2 is stopped (SIGTERM) after
/// the first requests and the clients go on posting to workers 0 and 1,
/// whose records for worker 2's key groups cannot be delivered. With
/// `max_backlog_events = 200`, they must soon answer 503 with
/// `Retry-After`; the client retries each refused request. Worker 2 comes
/// back a random while after the first 503, and then every event is
/// counted exactly once.
#[cfg(feature = "http")]
#[test]
fn an_unreachable_peer_brings_503_with_retry_after_and_nothing_is_lost() {
    let test = "cluster_backpressure";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, 3_000);
    let oracle = wl::oracle(&events);
    let lines = wl::lines(&events);
    let batches: Vec<&[String]> = lines.chunks(50).collect();
    let text = wl::pipeline("cluster_backpressure", &wl::http_source(), wl::FILE_SINKS);
    let mut c = Cluster::of(test, &text, WORKERS)
        .port("HTTP_PORT")
        .env("MAX_BACKLOG", "200")
        .start();
    let ports: Vec<u16> = (0..c.workers()).map(|i| c.port(i, "HTTP_PORT")).collect();
    let (before, during) = batches.split_at(9);
    for (k, batch) in before.iter().enumerate() {
        wl::post_ndjson(ports[k % 3], batch, SETTLE);
    }
    c.terminate(2);
    let refused = AtomicU32::new(0);
    let posted = AtomicBool::new(false);
    let down_for = std::thread::scope(|scope| {
        scope.spawn(|| {
            for (k, batch) in during.iter().enumerate() {
                wl::post_ndjson_counting(ports[k % 2], batch, Duration::from_secs(60), &refused);
            }
            posted.store(true, Ordering::Relaxed);
        });
        let down = Instant::now();
        c.wait_until(
            "a 503 from worker 0 or 1 while worker 2 is down",
            Duration::from_secs(30),
            || refused.load(Ordering::Relaxed) > 0 || posted.load(Ordering::Relaxed),
        );
        assert!(
            refused.load(Ordering::Relaxed) > 0,
            "workers 0 and 1 accepted all {} events while worker 2 was down: no backpressure\n{}",
            during.len() * 50,
            c.context()
        );
        // How long the peer stays away after the first 503 is the subject.
        std::thread::sleep(Duration::from_millis(rng.random_range(500..3_000)));
        let down_for = down.elapsed();
        c.restart(2);
        down_for
    });
    eprintln!(
        "{test}: worker 2 down for {down_for:?}; {} requests refused with 503",
        refused.load(Ordering::Relaxed)
    );
    for port in &ports {
        wl::post_ndjson(*port, &[wl::flush_line()], SETTLE);
    }
    let dirs = c.worker_dirs();
    assert_settles(&mut c, test, &oracle, || wl::read_files(&dirs));
}

/// AMQP competing consumers with a long checkpoint interval: each of 6
/// kills (every worker at least once) lands while the killed worker holds
/// messages it has read and routed to their owners but not yet
/// acknowledged, so the broker redelivers them, often to another worker.
/// The owners, which applied the rows of the first delivery, must drop
/// the second (they remember the ids of the last records of the queue);
/// the results must equal the oracle. Event times are kept within 2 s so
/// that no redelivered event is late (max_disorder is 5 s): a difference
/// can only come from counting a message twice or losing one.
#[cfg(all(feature = "amqp", feature = "postgres"))]
#[test]
fn amqp_redeliveries_to_other_workers_after_sigkills_are_counted_once() {
    use support::amqp::{rt, shared_broker, Cleanup, Client};
    use support::services::postgres_url;
    let test = "cluster_amqp_kills";
    let mut rng = support::rng(test);
    let mut events = wl::generate(&mut rng, 6_000);
    for e in &mut events {
        e.ts = wl::T0 + 1_000 + (e.ts - wl::T0).rem_euclid(2_000);
    }
    let oracle = wl::oracle(&events);
    let url = shared_broker();
    let rt = rt();
    let client = rt.block_on(Client::connect(&url));
    let queue = unique(test);
    rt.block_on(client.durable_queue(&queue, None));
    let table = format!("sluice_it_{}", unique(test));
    let source = format!(
        r#"
[sources.events]
type = "amqp"
url = "${{AMQP_URL}}"
queue = "${{QUEUE}}"
prefetch = 200
{}
"#,
        wl::event_time()
    );
    let text = wl::pipeline("cluster_amqp_kills", &source, wl::POSTGRES_SINKS)
        .replace("interval = \"100ms\"", "interval = \"3s\"");
    assert!(text.contains("interval = \"3s\""));
    let mut c = Cluster::of(test, &text, WORKERS)
        .env("AMQP_URL", url.as_str())
        .env("QUEUE", queue.as_str())
        .env("POSTGRES_URL", postgres_url())
        .env("TABLE", table.as_str())
        .start();
    c.wait_until("a consumer per worker", SETTLE, || {
        rt.block_on(client.depth(&queue)).1 >= WORKERS
    });
    let mut victims: Vec<usize> = (0..WORKERS as usize).collect();
    victims.shuffle(&mut rng);
    while victims.len() < KILLS {
        victims.push(rng.random_range(0..WORKERS as usize));
    }
    let chunk = events.len().div_ceil(KILLS);
    for (k, (&i, part)) in victims.iter().zip(events.chunks(chunk)).enumerate() {
        let messages: Vec<(Option<String>, Vec<u8>)> = part
            .iter()
            .map(|e| (Some(format!("e{}", e.id)), e.line().into_bytes()))
            .collect();
        rt.block_on(client.publish(&queue, &messages));
        // read and routed, well within the 3 s between checkpoints
        std::thread::sleep(Duration::from_millis(rng.random_range(400..900)));
        c.check_exits();
        assert!(c.kill(i), "worker {i} was not running at kill {k}");
        eprintln!("{test}: kill {k} of worker {i}");
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        c.start_worker(i);
    }
    // Every redelivery is done once the queue is empty and every worker
    // is back (a live consumer keeps its unacknowledged messages).
    c.wait_until("every worker consuming, the queue drained", SETTLE, || {
        let (ready, consumers) = rt.block_on(client.depth(&queue));
        ready == 0 && consumers >= WORKERS
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut flushes = 0;
    let mut last_flush = Instant::now() - Duration::from_secs(1);
    assert_settles(&mut c, test, &oracle, || {
        if last_flush.elapsed() >= Duration::from_millis(300) {
            let flush = (
                Some(format!("flush{flushes}")),
                wl::flush_line().into_bytes(),
            );
            rt.block_on(client.publish(&queue, &[flush]));
            flushes += 1;
            last_flush = Instant::now();
        }
        wl::read_postgres(&postgres_url(), &table)
    });
    wl::clean_postgres(&postgres_url(), &table);
    drop(Cleanup {
        url: url.clone(),
        queues: vec![queue],
        exchanges: Vec::new(),
    });
}
