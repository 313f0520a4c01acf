//! Releasing a gone worker's key groups (issue 13, docs/scaling.md): a
//! worker killed with SIGKILL or frozen with SIGSTOP releases nothing, so
//! after a rescale the new workers wait for it until the operator runs
//! `sluice release`. Then they take over from its last uploaded
//! checkpoint, write the output its sinks never acknowledged, and fence
//! its writes if it comes back. The cluster workload
//! (tests/support/cluster_workload.rs) with `[state] remote` on the shared
//! S3 API (tests/s3.sh); the helpers are in tests/support/remote.rs.

mod support;

use support::cluster::Cluster;
use support::cluster_workload as wl;
use support::remote::{
    assert_no_dead_letters, assert_rescale_restores, remote_cluster, settle_so_far, with_remote,
    RESCALE_EVENTS, SETTLE,
};
use support::s3::Bucket;

/// What the new workers log while they wait for the former single worker
/// to release its key groups.
const WAITING: &str = "waiting for worker 0 of 1 to release key group";

/// The operator releases the key groups of worker 0 of 1, gone for good
/// (`sluice release --worker 0 --workers 1`, docs/scaling.md), with the
/// pipeline and environment of `c`'s worker 0.
fn release_worker_0_of_1(c: &mut Cluster) {
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
    use support::remote::{amqp_source, AmqpInput};
    use support::services::{postgres_url, unique};
    let test = "remote_release_after_sigkill";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, RESCALE_EVENTS);
    let oracle = wl::oracle(&events).normalized();
    let amqp = AmqpInput::new(&events);
    let text = with_remote(&wl::pipeline(
        "remote_release",
        &amqp_source(),
        wl::POSTGRES_SINKS,
    ));
    let bucket = Bucket::shared("release");
    let queue = amqp.queue(test);
    let table = format!("sluice_it_{}", unique(test));
    let read = || wl::read_postgres(&postgres_url(), &table).normalized();
    let mut c = remote_cluster(test, &text, Some(1), &bucket)
        .env("AMQP_URL", amqp.url.as_str())
        .env("QUEUE", queue.as_str())
        .env("POSTGRES_URL", postgres_url())
        .env("TABLE", table.as_str())
        .start();
    let half = amqp.messages.len() / 2;
    let quarter = amqp.messages.len() / 4;
    amqp.publish(&queue, ..half);
    let so_far = wl::oracle(&events[..half]).normalized();
    settle_so_far(&mut c, "1 worker", &so_far, &oracle, read);
    // More input, and the owner dies while it reads it.
    amqp.publish(&queue, half..half + quarter);
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
    release_worker_0_of_1(&mut c);
    c.wait_ready();
    assert_rescale_restores(&mut c, 1, 2);

    amqp.publish(&queue, half + quarter..);
    let got = amqp.finish(&mut c, &queue, &oracle, read);
    assert!(got == oracle, "after the release:\n{}", got.diff(&oracle));
    c.stop_all();
    assert_no_dead_letters(&c);
    wl::clean_postgres(&postgres_url(), &table);
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
    release_worker_0_of_1(&mut new);
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
    assert_no_dead_letters(&new);
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
    release_worker_0_of_1(&mut new);
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
