//! One fenced-sink scenario for every fenced sink: W1 input keeps arriving
//! (a paced source), the pipeline is killed without warning at random
//! points and restarted on its saved state, the destination is down for a
//! while in the middle, and at the end what the destination holds must
//! equal the W1 oracle (bench/w1/ref_counts.py) exactly.
//!
//! The scenario is written once, over [`FencedTarget`]; each destination
//! implements that trait (redis.rs, postgres.rs: the real binary against a
//! real server; mongodb.rs: in process, over the connector's fake client).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::support::w1::W1;

#[cfg(feature = "mongodb")]
pub(crate) mod mongodb;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) mod process;
#[cfg(feature = "redis")]
pub(crate) mod redis;

/// Events per scenario run and the pace they arrive at (events/s).
pub(crate) const EVENTS: u64 = 200_000;
pub(crate) const PACE: u64 = 25_000;

/// What a destination holds at the end, in the oracle's shapes.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    /// country -> count (an upsert table / hash / collection).
    pub by_country: BTreeMap<String, i64>,
    /// "window_start_ms,country,weather" -> count.
    pub by_window: BTreeMap<String, i64>,
    /// A stored total of all events, where the destination keeps one.
    pub total: Option<i64>,
    /// Raw events appended by id, where the destination keeps them.
    pub appended: Option<Appended>,
}

/// An append-mode output of the raw events.
#[derive(Debug, Default)]
pub(crate) struct Appended {
    pub rows: i64,
    pub distinct_ids: i64,
    /// country -> appended events.
    pub by_country: BTreeMap<String, i64>,
}

/// One way of running the W1 pipeline into one fenced destination: the
/// moves the scenario makes.
pub(crate) trait FencedTarget {
    /// For messages ("redis", "postgres", "mongodb (in process)").
    fn name(&self) -> String;
    /// Starts the pipeline; after a kill, restarts it on its saved state.
    fn start(&mut self);
    /// The number of events the destination reflects so far.
    fn written(&mut self) -> i64;
    /// Whether the pipeline ran to its end; fails the test if it failed.
    fn finished(&mut self) -> bool;
    /// Kills the pipeline without warning; whether it was still running.
    fn kill(&mut self) -> bool;
    /// Makes the destination unreachable.
    fn destination_down(&mut self);
    /// How many failed writes the pipeline has reported (and retried)
    /// since it last started.
    fn retries(&mut self) -> usize;
    /// Makes the destination reachable again.
    fn destination_up(&mut self);
    /// What the destination holds.
    fn stored(&mut self) -> Stored;
    /// Where to look when something fails (a log's last lines).
    fn context(&self) -> String;
}

/// Polls `ok` until it holds, failing after `timeout`.
pub(crate) fn wait_for<T: FencedTarget + ?Sized>(
    target: &mut T,
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut(&mut T) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !ok(target) {
        assert!(
            Instant::now() < deadline,
            "{}: timed out waiting for {what}\n{}",
            target.name(),
            target.context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the pipeline straight through (no kills, no outage) and checks
/// the result.
pub(crate) fn straight_run(target: &mut impl FencedTarget, w1: &W1) {
    target.start();
    wait_for(
        target,
        "the straight run to end",
        Duration::from_secs(120),
        |t| t.finished(),
    );
    assert_exact(target, w1, "straight run");
}

/// The scenario: `kills` SIGKILLs at random points after progress, one
/// outage of the destination in between (the pipeline must keep running
/// and retrying), then the run to its end and the oracle comparison.
pub(crate) fn kills_and_outage(
    target: &mut impl FencedTarget,
    w1: &W1,
    rng: &mut impl Rng,
    kills: usize,
) {
    let outage_round = rng.random_range(0..kills);
    let started = Instant::now();
    let mut hit = 0;
    let mut outage = None;
    target.start();
    for round in 0..kills {
        let before = target.written();
        wait_for(
            target,
            "progress after a start",
            Duration::from_secs(60),
            |t| t.finished() || t.written() > before,
        );
        // The kill point is the subject: a random moment after progress.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        if round == outage_round {
            outage = Some(destination_outage(target, rng));
        }
        if !target.kill() {
            break;
        }
        hit += 1;
        target.start();
    }
    wait_for(target, "the run to end", Duration::from_secs(120), |t| {
        t.finished()
    });
    eprintln!(
        "{}: {} events, {hit} kills, outage {outage:?}, {:.1} s",
        target.name(),
        w1.events,
        started.elapsed().as_secs_f64()
    );
    assert!(
        hit * 2 >= kills,
        "{}: only {hit} of {kills} kills hit a running pipeline",
        target.name()
    );
    assert!(
        outage.is_some(),
        "{}: the outage never happened",
        target.name()
    );
    assert_exact(target, w1, &format!("after {hit} kills and an outage"));
}

/// Takes the destination down until the pipeline has noticed (a retried
/// write) and for a random while longer, checks that the pipeline keeps
/// running meanwhile, and brings the destination back. Returns how long it
/// was down.
fn destination_outage(target: &mut impl FencedTarget, rng: &mut impl Rng) -> Duration {
    let retries = target.retries();
    target.destination_down();
    let down = Instant::now();
    wait_for(target, "a retried write", Duration::from_secs(60), |t| {
        t.retries() > retries
    });
    // The outage's length is the subject: down a while after it was noticed.
    std::thread::sleep(Duration::from_millis(rng.random_range(500..2_500)));
    assert!(
        !target.finished(),
        "{}: the pipeline ended while its destination was down\n{}",
        target.name(),
        target.context()
    );
    target.destination_up();
    down.elapsed()
}

/// Compares what the destination holds with the oracle.
pub(crate) fn assert_exact(target: &mut impl FencedTarget, w1: &W1, what: &str) {
    let name = target.name();
    let context = target.context();
    let stored = target.stored();
    assert_eq!(
        stored.by_country, w1.by_country,
        "{name}, {what}: per-country counts differ\n{context}"
    );
    assert_eq!(
        stored.by_window.len(),
        w1.by_window.len(),
        "{name}, {what}: window count differs"
    );
    assert_eq!(
        stored.by_window, w1.by_window,
        "{name}, {what}: per-window counts differ"
    );
    if let Some(total) = stored.total {
        assert_eq!(total, w1.events as i64, "{name}, {what}: the total differs");
    }
    if let Some(appended) = stored.appended {
        assert_eq!(
            (appended.rows, appended.distinct_ids),
            (w1.events as i64, w1.events as i64),
            "{name}, {what}: appended events (rows, distinct ids)"
        );
        assert_eq!(
            appended.by_country, w1.by_country,
            "{name}, {what}: appended events per country differ"
        );
    }
}
