//! The remote copy of the state in object storage (issue 13, `[state]
//! remote`), through the real binary, on a real S3 API (moto, started by
//! tests/s3.sh; tests/support/s3.rs), on Azure Blob Storage (Azurite,
//! started by tests/azurite.sh; tests/support/azure.rs) and on a `file://`
//! store:
//!
//! - a lost volume: a worker stopped with SIGTERM whose state directory is
//!   then deleted comes back from the remote copy, says so (log line and
//!   `sluice_remote_restores_total{reason="lost_volume"}`), and goes on
//!   counting exactly;
//! - the store unavailable for 10 s (a private moto frozen with SIGSTOP):
//!   nothing is committed that is not uploaded, nothing is lost, the
//!   uploads catch up and the remote copy is whole afterwards.
//!
//! The pipeline counts HTTP events by account; the oracle is a fold over
//! the generated events. Rescaling through the remote copy is in
//! tests/remote_rescale.rs, tests/remote_release.rs and
//! tests/remote_sigkill.rs.

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

/// On Azure Blob Storage (`az://`), served by Azurite (tests/azurite.sh).
#[cfg(feature = "http")]
#[test]
fn a_lost_volume_comes_back_exact_from_azure_blob_storage() {
    let prefix = support::azure::Prefix::new("lost_volume");
    lost_volume(
        "a_lost_volume_comes_back_exact_from_azure_blob_storage",
        &prefix.url(),
        &prefix.env(),
        || prefix.blobs(),
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
