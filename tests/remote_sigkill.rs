//! A rescale 1 -> 3 -> 2 -> 1 through the remote copy of the state
//! (issue 13) with SIGKILLs during every handover, and the remote copy
//! unreachable for a while: the results equal the oracle's. The cluster
//! workload (tests/support/cluster_workload.rs) over AMQP, with `[state]
//! remote` on a private S3 API; the helpers are in tests/support/remote.rs.

mod support;

use std::time::{Duration, Instant};

use support::cluster::Cluster;
use support::cluster_workload as wl;
use support::remote::{
    assert_no_dead_letters, gains, owned, remote_cluster, settle_so_far, with_remote,
    RESCALE_EVENTS, SETTLE, STEPS,
};
use support::s3::{Bucket, PrivateS3};

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

/// The input of [`rescale_with_kills`].
#[cfg(all(feature = "redis", feature = "postgres"))]
enum Input {
    /// Competing consumers of one queue: messages are published while the
    /// workers stop and start, and a killed worker's unacknowledged ones
    /// are redelivered, often to another worker.
    #[cfg(feature = "amqp")]
    Amqp {
        amqp: Box<support::remote::AmqpInput>,
        queue: String,
    },
    /// NDJSON posts (each answered 202 once journaled), round robin over
    /// the running workers, never in flight while a worker is killed (a
    /// post without an answer might or might not count): before the old
    /// workers get SIGTERM, and once the new ones are ready. A killed
    /// worker's journal holds what it accepted.
    #[cfg(feature = "http")]
    Http { lines: Vec<String> },
}

#[cfg(all(feature = "redis", feature = "postgres"))]
impl Input {
    fn len(&self) -> usize {
        match self {
            #[cfg(feature = "amqp")]
            Input::Amqp { amqp, .. } => amqp.messages.len(),
            #[cfg(feature = "http")]
            Input::Http { lines } => lines.len(),
        }
    }

    /// Sends the events in `range` to the `workers` running workers.
    fn send(&self, c: &Cluster, range: std::ops::Range<usize>, workers: u32) {
        match self {
            #[cfg(feature = "amqp")]
            Input::Amqp { amqp, queue } => amqp.publish(queue, range),
            #[cfg(feature = "http")]
            Input::Http { lines } => {
                for (k, chunk) in lines[range].chunks(100).enumerate() {
                    let port = c.port(k % workers as usize, "HTTP_PORT");
                    wl::post_ndjson(port, chunk, SETTLE);
                }
            }
        }
    }

    /// Whether events may be sent while new workers start (before they
    /// are ready, while some are killed).
    fn while_starting(&self) -> bool {
        match self {
            #[cfg(feature = "amqp")]
            Input::Amqp { .. } => true,
            #[cfg(feature = "http")]
            Input::Http { .. } => false,
        }
    }

    /// Waits until the `n` workers take input.
    fn wait_for_workers(&self, c: &mut Cluster, n: u32) {
        match self {
            #[cfg(feature = "amqp")]
            Input::Amqp { amqp, queue } => amqp.wait_for_consumers(c, queue, n),
            #[cfg(feature = "http")]
            Input::Http { .. } => c.wait_ready(),
        }
    }

    /// Sends what closes the last windows; what `read` holds once it
    /// equals `oracle`.
    fn finish(
        &self,
        c: &mut Cluster,
        oracle: &wl::Results,
        read: impl FnMut() -> wl::Results,
    ) -> wl::Results {
        match self {
            #[cfg(feature = "amqp")]
            Input::Amqp { amqp, queue } => amqp.finish(c, queue, oracle, read),
            #[cfg(feature = "http")]
            Input::Http { .. } => {
                wl::post_ndjson(c.port(0, "HTTP_PORT"), &[wl::flush_line()], SETTLE);
                let got = c.wait_for_result(oracle, SETTLE, read);
                assert!(got == *oracle, "{}\n{}", got.diff(oracle), c.context());
                got
            }
        }
    }
}

/// Scale 1 -> 3 -> 2 -> 1 as in the AMQP test of tests/remote_rescale.rs
/// (competing consumers, Redis and PostgreSQL sinks), with SIGKILLs at
/// random (seeded) moments of every handover:
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
    use support::remote::{amqp_source, AmqpInput};
    let test = "remote_rescale_kills";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, RESCALE_EVENTS);
    let amqp = AmqpInput::new(&events);
    let queue = amqp.queue(test);
    let disorder = |d: &str| format!("max_disorder = \"{d}\"");
    let source = amqp_source().replace(&disorder(wl::MAX_DISORDER), &disorder(REDELIVERY_DISORDER));
    assert!(source.contains(&disorder(REDELIVERY_DISORDER)));
    let env = [("AMQP_URL", amqp.url.clone()), ("QUEUE", queue.clone())];
    rescale_with_kills(
        test,
        rng,
        &events,
        &source,
        &env,
        Input::Amqp {
            amqp: Box::new(amqp),
            queue,
        },
    );
}

/// The same over HTTP (see [`Input::Http`]): the old workers' journals
/// (drained at a clean stop, read again after a kill) carry what they
/// accepted; the new workers get input once they are ready.
#[cfg(all(feature = "http", feature = "redis", feature = "postgres"))]
#[test]
fn a_rescale_1_3_2_1_under_http_with_sigkills_during_the_handovers_equals_the_oracle() {
    let test = "remote_rescale_kills_http";
    let mut rng = support::rng(test);
    let events = wl::generate(&mut rng, RESCALE_EVENTS);
    let lines = wl::lines(&events);
    rescale_with_kills(
        test,
        rng,
        &events,
        &wl::http_source(),
        &[],
        Input::Http { lines },
    );
}

/// The body of the kill tests: `source` (with `env`) reading `input`.
#[cfg(all(feature = "redis", feature = "postgres"))]
fn rescale_with_kills(
    test: &str,
    mut rng: rand::rngs::StdRng,
    events: &[wl::Event],
    source: &str,
    env: &[(&str, String)],
    input: Input,
) {
    use rand::Rng;
    use support::services::{postgres_url, redis_url, unique};
    /// Starting workers killed per step.
    const STARTING_KILLS: usize = 3;
    let started = Instant::now();
    let oracle = wl::oracle(events).normalized();
    let sinks = format!("{}{}", wl::REDIS_SINKS, wl::POSTGRES_SINKS);
    let text = with_remote(&wl::pipeline(test, source, &sinks));
    // A private S3 API: the test makes it unreachable for a while.
    let s3 = PrivateS3::start();
    let bucket = s3.bucket(&test.replace('_', "-"));
    let table = format!("sluice_it_{}", unique(test));
    let prefix = format!("sluice-it:{}:", unique(test));
    let read_pg = || wl::read_postgres(&postgres_url(), &table).normalized();
    let read_redis = || wl::read_redis(&redis_url(), &prefix).normalized();
    // The cluster's name is also its prefix in the bucket.
    let builder = remote_cluster(test, &text, Some(STEPS[0]), &bucket)
        .port("HTTP_PORT")
        .env("REDIS_URL", redis_url())
        .env("PREFIX", prefix.as_str())
        .env("POSTGRES_URL", postgres_url())
        .env("TABLE", table.as_str());
    let mut c = env
        .iter()
        .fold(builder, |b, (k, v)| b.env(k, v.as_str()))
        .start();
    let quarter = input.len() / STEPS.len();
    input.wait_for_workers(&mut c, STEPS[0]);
    // The remote copy may be unreachable when the first worker is killed:
    // since before its first upload, or since it read a random part of
    // the first quarter (its directory then holds checkpoints, and
    // acknowledgements of its sinks, that the remote copy does not).
    let outage = rng.random_range(0..3);
    if outage == 0 {
        s3.freeze();
    }
    input.send(&c, 0..quarter, STEPS[0]);
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
        input.send(&c, from..stopping, before);
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
        let early = if input.while_starting() {
            input.send(&c, stopping..starting, n);
            starting
        } else {
            stopping
        };
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
        input.wait_for_workers(&mut c, n);
        input.send(&c, early..from + quarter, n);
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
    let pg = input.finish(&mut c, &oracle, read_pg);
    let redis = c.wait_for_result(&oracle, SETTLE, read_redis);
    c.stop_all();
    assert_no_dead_letters(&c);
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
