//! The remote copy of the state in object storage (issue 13, `[state]
//! remote`), through the real binary, on a real S3 API (moto, started by
//! tests/s3.sh; tests/support/s3.rs) and on a `file://` store:
//!
//! - a lost volume: a worker stopped with SIGTERM whose state directory is
//!   then deleted comes back from the remote copy, says so (log line and
//!   `sluice_remote_restores_total{reason="lost_volume"}`), and goes on
//!   counting exactly;
//! - a rescale 1 -> 3 -> 2 -> 1 while HTTP or AMQP input keeps arriving: at
//!   every step the sinks hold what the oracle computed from the input so
//!   far, and at the end what a single worker leaves for the same input;
//! - the store unavailable for 10 s (a private moto frozen with SIGSTOP):
//!   nothing is committed that is not uploaded, nothing is lost, the
//!   uploads catch up and the remote copy is whole afterwards.
//!
//! The lost-volume and outage pipelines count HTTP events by account; the
//! rescale tests run the cluster workload (tests/support/cluster_workload.rs)
//! with the remote copy added. The oracles are folds over the generated
//! events.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use support::cluster_workload as wl;
use support::s3::{Bucket, PrivateS3};
use support::worker::{Ready, Worker};
use support::{materialize_so_far, metric_series, metric_total};

/// How long the sink may take to hold what the oracle says.
const SETTLE: Duration = Duration::from_secs(30);
/// The accounts the events are counted by.
const ACCOUNTS: usize = 40;
/// What the log says when a worker restores from the remote copy.
const RESTORED: &str = "restored the state from the remote copy";

/// HTTP events -> count and sum per account -> a file of changes; state in
/// `${WORK}/state`, its remote copy at `${REMOTE}`.
const COUNTING: &str = r#"
[pipeline]
name = "remote_counting"

[state]
dir = "${WORK}/state"
remote = "${REMOTE}"

[checkpoint]
interval = "100ms"

[admin]
address = "127.0.0.1:${ADMIN_PORT}"

[sources.events]
type = "http"
address = "127.0.0.1:${HTTP_PORT}"

[transforms.per_account]
type = "aggregate"
inputs = ["events"]
group_by = ["account"]
aggregates = { n = "count", total = { fn = "sum", field = "amount" } }

[sinks.out]
type = "file"
inputs = ["per_account"]
path = "${WORK}/out.ndjson"
format = "changes"
"#;

/// Per account: (count, sum of amounts).
type Counts = BTreeMap<String, (i64, i64)>;

/// `n` events as NDJSON lines, numbered from `first`. The first
/// [`ACCOUNTS`] of a batch name every account once, so that each batch
/// changes every account's result.
fn events(rng: &mut impl Rng, first: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|k| {
            let account = if k < ACCOUNTS {
                k
            } else {
                rng.random_range(0..ACCOUNTS)
            };
            serde_json::json!({
                "id": first + k,
                "account": format!("acct-{account:02}"),
                "amount": rng.random_range(1..1000),
            })
            .to_string()
        })
        .collect()
}

/// The oracle: what the pipeline must leave for these events.
fn fold(counts: &mut Counts, lines: &[String]) {
    for line in lines {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let c = counts
            .entry(e["account"].as_str().unwrap().to_string())
            .or_default();
        c.0 += 1;
        c.1 += e["amount"].as_i64().unwrap();
    }
}

/// What the file sink holds (complete lines only).
fn sink(out: &Path) -> Counts {
    materialize_so_far(out)
        .into_values()
        .map(|r| {
            let int = |f: &str| {
                let v = r[f].as_f64().unwrap_or_else(|| panic!("no {f} in {r}"));
                assert_eq!(v.fract(), 0.0, "{f} is not whole in {r}");
                v as i64
            };
            (
                r["account"].as_str().unwrap().to_string(),
                (int("n"), int("total")),
            )
        })
        .collect()
}

/// POSTs `lines` in requests of 200 events.
fn post(port: u16, lines: &[String]) {
    for chunk in lines.chunks(200) {
        wl::post_ndjson(port, chunk, SETTLE);
    }
}

/// A single worker of [`COUNTING`] in a fresh directory.
struct Single {
    dir: tempfile::TempDir,
    worker: Worker,
    http: u16,
    admin: u16,
}

impl Single {
    fn new(remote: &str, env: &[(String, String)]) -> Single {
        let dir = tempfile::Builder::new()
            .prefix("sluice-remote-")
            .tempdir()
            .unwrap();
        let pipeline = dir.path().join("pipeline.toml");
        std::fs::write(&pipeline, COUNTING).unwrap();
        let (http, admin) = (support::pick_port(), support::pick_port());
        let worker = Worker::new(&pipeline, &dir.path().join("sluice.log"))
            .envs(env)
            .env("WORK", dir.path().display().to_string())
            .env("REMOTE", remote)
            .env("HTTP_PORT", http.to_string())
            .env("ADMIN_PORT", admin.to_string());
        Single {
            dir,
            worker,
            http,
            admin,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&mut self) {
        self.worker.start().wait_ready(&Ready::Admin(self.admin));
    }

    /// SIGTERM, which must end the process with success.
    fn stop(&mut self) {
        let status = self.worker.terminate();
        assert!(
            status.success(),
            "sluice exited with {status} after SIGTERM:\n{}",
            support::log_tail(self.worker.log())
        );
    }

    /// Waits until the sink holds `want`, failing with the difference.
    fn expect(&mut self, what: &str, want: &Counts) {
        let out = self.path("out.ndjson");
        let mut got = Counts::new();
        let deadline = Instant::now() + SETTLE;
        self.worker
            .wait_until(what, SETTLE + Duration::from_secs(1), || {
                got = sink(&out);
                got == *want || Instant::now() > deadline
            });
        assert_eq!(
            &got,
            want,
            "{what}: the sink differs from the oracle; log:\n{}",
            support::log_tail(self.worker.log())
        );
    }

    fn metric(&self, name: &str) -> f64 {
        metric_total(self.admin, name).unwrap_or_else(|| panic!("no {name} on /metrics"))
    }

    /// Deletes the state directory (the lost volume).
    fn lose_volume(&self) {
        let state = self.path("state");
        assert!(state.exists(), "no state directory at {}", state.display());
        std::fs::remove_dir_all(&state).unwrap();
    }

    /// Checks that the start that just happened restored the state from
    /// the remote copy for `reason`, in the log and the metric.
    fn assert_restored(&mut self, reason: &str) {
        let log = self.worker.wait_log(RESTORED, 1);
        let line = log.lines().find(|l| l.contains(RESTORED)).unwrap();
        assert!(
            line.contains(reason),
            "the restore's log line does not say {reason}: {line}"
        );
        let restores = metric_series(
            self.admin,
            "sluice_remote_restores_total",
            &[("reason", reason)],
        );
        assert_eq!(
            restores,
            Some(1.0),
            "sluice_remote_restores_total{{reason=\"{reason}\"}}"
        );
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The lost-volume scenario on `remote`; `stored` counts the objects the
/// remote copy holds.
fn lost_volume(test: &str, remote: &str, env: &[(String, String)], stored: impl Fn() -> usize) {
    let mut rng = support::rng(test);
    let mut want = Counts::new();
    let mut w = Single::new(remote, env);
    w.start();
    let first = events(&mut rng, 0, 3_000);
    post(w.http, &first);
    fold(&mut want, &first);
    w.expect("before the stop", &want);
    w.stop();
    assert!(stored() > 0, "the remote copy at {remote} is empty");
    w.lose_volume();
    w.start();
    w.assert_restored("lost_volume");
    // Every account gets more events: a fresh start would show only these.
    let second = events(&mut rng, first.len(), 1_000);
    post(w.http, &second);
    fold(&mut want, &second);
    w.expect("after the restore", &want);
    w.stop();
}

#[cfg(feature = "http")]
#[test]
fn a_lost_volume_comes_back_exact_from_s3() {
    let bucket = Bucket::shared("lost-volume");
    lost_volume(
        "a_lost_volume_comes_back_exact_from_s3",
        &bucket.url("pipeline"),
        &bucket.env(),
        || bucket.keys("pipeline/").len(),
    );
}

#[cfg(feature = "http")]
#[test]
fn a_lost_volume_comes_back_exact_from_a_file_store() {
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    lost_volume(
        "a_lost_volume_comes_back_exact_from_a_file_store",
        &url,
        &[],
        || files_under(remote.path()).len(),
    );
}

/// The store frozen (SIGSTOP) for 10 s while events keep arriving: the
/// sink gets nothing that is not in the remote copy yet; once the store is
/// back the outage shows in the failures or upload durations, the uploads
/// catch up, the results are exact, and the remote copy alone restores
/// them.
#[cfg(feature = "http")]
#[test]
fn ten_seconds_without_the_store_lose_nothing_and_the_uploads_catch_up() {
    const FREEZE: Duration = Duration::from_secs(10);
    let test = "ten_seconds_without_the_store_lose_nothing_and_the_uploads_catch_up";
    let mut rng = support::rng(test);
    let s3 = PrivateS3::start();
    let bucket = s3.bucket("outage");
    let mut want = Counts::new();
    let mut w = Single::new(&bucket.url("p"), &bucket.env());
    w.start();
    let first = events(&mut rng, 0, 2_000);
    post(w.http, &first);
    fold(&mut want, &first);
    w.expect("before the outage", &want);
    let before = want.clone();

    s3.freeze();
    let frozen = Instant::now();
    let second = events(&mut rng, first.len(), 2_000);
    post(w.http, &second);
    fold(&mut want, &second);
    // Nothing of the second batch may be committed while it cannot be
    // uploaded; the admin server answers meanwhile.
    let mut lag = 0.0_f64;
    while frozen.elapsed() < FREEZE {
        assert_eq!(
            sink(&w.path("out.ndjson")),
            before,
            "the sink got results that the remote copy cannot hold yet"
        );
        lag = lag.max(w.metric("sluice_remote_lag_epochs"));
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{test}: largest sluice_remote_lag_epochs while the store was down: {lag}");
    s3.thaw();

    w.expect("after the outage", &want);
    let checkpoint = w.metric("sluice_checkpoint_epoch");
    w.worker.wait_until("the uploads to catch up", SETTLE, || {
        metric_total(w.admin, "sluice_remote_epoch").is_some_and(|e| e >= checkpoint)
            && metric_total(w.admin, "sluice_remote_lag_epochs") == Some(0.0)
    });
    let failures = w.metric("sluice_remote_failures_total");
    let waited = w.metric("sluice_remote_upload_duration_seconds_sum");
    eprintln!("{test}: {failures} failed uploads, {waited} s spent uploading");
    assert!(
        failures > 0.0 || waited >= FREEZE.as_secs_f64() / 2.0,
        "the outage shows neither in sluice_remote_failures_total ({failures}) \
         nor in the upload durations ({waited} s in all)"
    );

    // More input, then the remote copy alone must hold all of it.
    let third = events(&mut rng, first.len() + second.len(), 1_000);
    post(w.http, &third);
    fold(&mut want, &third);
    w.expect("after the catch-up", &want);
    w.stop();
    w.lose_volume();
    w.start();
    w.assert_restored("lost_volume");
    let fourth = events(&mut rng, 5_000, ACCOUNTS);
    post(w.http, &fourth);
    fold(&mut want, &fourth);
    w.expect("restored from the copy uploaded after the outage", &want);
    w.stop();
}

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
    use support::cluster::Cluster;
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
fn assert_rescale_restores(c: &mut support::cluster::Cluster, before: u32, n: u32) {
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
    c: &mut support::cluster::Cluster,
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
fn all_dead_letters(c: &support::cluster::Cluster) -> Vec<String> {
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
        post(c.port(0, "HTTP_PORT"), &lines);
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
    let text = with_remote(&wl::pipeline(
        "remote_rescale_amqp",
        &source,
        wl::POSTGRES_SINKS,
    ));
    let bucket = Bucket::shared("rescale-amqp");
    let messages: Vec<(Option<String>, Vec<u8>)> = events
        .iter()
        .map(|e| (Some(format!("e{}", e.id)), e.line().into_bytes()))
        .collect();
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
    let consumers = |c: &mut support::cluster::Cluster, queue: &str, n: u32| {
        c.wait_until("a consumer per worker", SETTLE, || {
            rt.block_on(client.depth(queue)).1 >= n
        });
    };
    // Publishes a flush event every 300 ms until the table holds `want`.
    let finish = |c: &mut support::cluster::Cluster, queue: &str, table: &str| {
        let mut flushes = 0;
        let mut last = Instant::now() - Duration::from_secs(1);
        let got = c.wait_for_result(&oracle, SETTLE, || {
            if last.elapsed() >= Duration::from_millis(300) {
                let flush = (
                    Some(format!("flush{flushes}")),
                    wl::flush_line().into_bytes(),
                );
                rt.block_on(client.publish(queue, &[flush]));
                flushes += 1;
                last = Instant::now();
            }
            read(table)
        });
        assert!(got == oracle, "{}\n{}", got.diff(&oracle), c.context());
        got
    };

    let single = {
        let (mut c, queue, table) = run(&format!("{test}_single"), None);
        consumers(&mut c, &queue, 1);
        rt.block_on(client.publish(&queue, &messages));
        let got = finish(&mut c, &queue, &table);
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
    let got = finish(&mut c, &queue, &table);
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
