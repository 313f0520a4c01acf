//! A rolling update that changes the worker count (issue 13,
//! docs/scaling.md "On Kubernetes"): Kubernetes starts the pods of the new
//! count beside the old ones and replaces the old ones one by one. Key
//! groups never move that way: the new workers wait, not ready, saying
//! whom they wait for, while the old ones go on alone; nothing is counted
//! twice or lost. The documented recovery (scale to 0, the old count once
//! more, scale to 0, the new count) ends exact. The cluster workload
//! (tests/support/cluster_workload.rs) over AMQP with `[state] remote` on
//! the shared S3 API (tests/s3.sh).

mod support;

use std::time::Duration;

use support::cluster::Cluster;
use support::cluster_workload as wl;
use support::remote::{
    assert_no_dead_letters, assert_rescale_restores, remote_cluster, settle_so_far, with_remote,
    RESCALE_EVENTS, SETTLE,
};
use support::s3::Bucket;

/// What a worker of the new count logs while an old one still owns its
/// key groups.
const WAITING: &str = "to release key group";
/// What a worker logs when its clean stop released its key groups.
const RELEASED: &str = "released this worker's key groups";

fn not_ready(c: &Cluster, w: usize) -> bool {
    support::http_request(c.admin_port(w), "GET", "/ready", &[], b"")
        .is_ok_and(|(status, _)| status == 503)
}

/// 2 -> 3 as a rolling update: pod 2 of 3 starts beside pods 0 and 1 of
/// 2, which go on counting what arrives; then pod 1 is replaced (its stop
/// cannot release: worker 0 still sends to it) and the new pod 1 waits
/// too. Then the recovery: every pod stopped (SIGTERM ends a start that
/// waits at once), 2 workers once more on their own state, stopped
/// together (they release), 3 workers: exact results.
#[cfg(all(feature = "amqp", feature = "postgres"))]
#[test]
fn a_rolling_update_that_changes_the_count_waits_safely_until_the_documented_recovery() {
    use support::remote::{amqp_source, AmqpInput};
    use support::services::{postgres_url, unique};
    let test = "remote_rolling_update";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, RESCALE_EVENTS);
    let oracle = wl::oracle(&events).normalized();
    let amqp = AmqpInput::new(&events);
    let text = with_remote(&wl::pipeline(test, &amqp_source(), wl::POSTGRES_SINKS));
    let bucket = Bucket::shared("rolling");
    let queue = amqp.queue(test);
    let table = format!("sluice_it_{}", unique(test));
    let read = || wl::read_postgres(&postgres_url(), &table).normalized();
    let mut c = remote_cluster(test, &text, Some(2), &bucket)
        .env("AMQP_URL", amqp.url.as_str())
        .env("QUEUE", queue.as_str())
        .env("POSTGRES_URL", postgres_url())
        .env("TABLE", table.as_str())
        .start();
    amqp.wait_for_consumers(&mut c, &queue, 2);
    let third = amqp.messages.len() / 3;
    amqp.publish(&queue, ..third);
    let so_far = wl::oracle(&events[..third]).normalized();
    settle_so_far(&mut c, "2 workers", &so_far, &oracle, read);

    // `kubectl apply` with 3 replicas and SLUICE_WORKERS=3: the new pod 2
    // starts beside the old pods.
    let mut old = c.rolling_update(3);
    c.start_worker(2);
    c.worker(2).wait_log(WAITING, 1);
    assert!(not_ready(&c, 2), "worker 2 of 3 must not be ready");
    // The old workers go on alone: what arrives now is counted once.
    amqp.publish(&queue, third..2 * third);
    let so_far = wl::oracle(&events[..2 * third]).normalized();
    settle_so_far(
        &mut c,
        "2 old workers beside a new one",
        &so_far,
        &oracle,
        read,
    );
    assert!(not_ready(&c, 2), "worker 2 of 3 must still wait");

    // The controller replaces pod 1: its stop cannot release (worker 0
    // still runs and may send to it), and the new pod 1 waits too.
    old[1].signal("TERM");
    let status = old[1].wait_exit(SETTLE);
    assert!(status.success(), "old worker 1 exited with {status}");
    assert!(
        !old[1].log_since_start().contains(RELEASED),
        "old worker 1 released its key groups while worker 0 still ran"
    );
    c.start_worker(1);
    c.worker(1).wait_log(WAITING, 1);
    assert!(not_ready(&c, 1), "worker 1 of 3 must not be ready");
    std::thread::sleep(Duration::from_secs(2));
    let got = read();
    assert!(
        got.all == so_far.all,
        "while the update waits, nothing is counted again:\n{}",
        got.diff(&so_far)
    );

    // The recovery: scale to 0 (a waiting start ends at once at SIGTERM)...
    for w in [1, 2] {
        c.worker(w).signal("TERM");
    }
    old[0].signal("TERM");
    for w in [1, 2] {
        let status = c.worker(w).wait_exit(Duration::from_secs(5));
        assert!(
            status.success(),
            "waiting worker {w} of 3 exited with {status}"
        );
    }
    let status = old[0].wait_exit(SETTLE + SETTLE);
    assert!(status.success(), "old worker 0 exited with {status}");
    drop(old);
    // ...the old count once more on its own state, stopped together...
    c.rescale(2);
    c.start_all();
    amqp.wait_for_consumers(&mut c, &queue, 2);
    c.stop_all();
    for w in 0..2 {
        assert!(
            c.worker(w).log_since_start().contains(RELEASED),
            "worker {w} of 2 did not release\n{}",
            c.context()
        );
    }
    // ...then the new count.
    c.rescale(3);
    c.start_all();
    assert_rescale_restores(&mut c, 2, 3);
    amqp.wait_for_consumers(&mut c, &queue, 3);
    amqp.publish(&queue, 2 * third..);
    let got = amqp.finish(&mut c, &queue, &oracle, read);
    assert!(got == oracle, "after the recovery:\n{}", got.diff(&oracle));
    c.stop_all();
    assert_no_dead_letters(&c);
    wl::clean_postgres(&postgres_url(), &table);
}
