//! N `sluice run` workers of one pipeline on loopback (issue 12): each
//! with its own directory (state, outputs, log), admin port and any other
//! per-worker ports the test names, the exchange between them configured by
//! a `[cluster]` section the harness appends to the pipeline text:
//!
//! ```toml
//! [cluster]
//! listen = "127.0.0.1:2345${SLUICE_WORKER_ID}"
//! peers = "127.0.0.1:2345{worker}"
//! ```
//!
//! (the issue's local example: N consecutive free ports `base*10 + i`), or,
//! with [`ClusterBuilder::peer_list`], `listen = "127.0.0.1:${EXCHANGE_PORT}"`
//! and the list of the N addresses.
//!
//! Workers are started as `sluice run --workers N --worker i`, except odd
//! ones, which get `SLUICE_WORKERS` / `SLUICE_WORKER_ID` instead, so that
//! every cluster run goes through both ways of naming a worker.
//!
//! A cluster of one ([`Cluster::single`]) is the baseline a test compares
//! with: the same pipeline text without `[cluster]` and without worker
//! flags, exactly the single-worker run of today.
//!
//! Every worker gets these variables for the pipeline text:
//! `WORKER_DIR` (its own directory), `ADMIN_PORT`, one per name given to
//! [`ClusterBuilder::port`], `EXCHANGE_PORT` (cluster runs), plus what
//! [`ClusterBuilder::env`] sets for all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::log_tail;
use super::services::free_port;
use super::worker::{Worker, READY_TIMEOUT};

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(100);

/// How the workers learn each other's exchange addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peers {
    /// `peers = "127.0.0.1:<base>{worker}"`, `listen` through
    /// `${SLUICE_WORKER_ID}`.
    Template,
    /// `peers = [ ...N addresses... ]`, `listen` through `${EXCHANGE_PORT}`.
    List,
}

/// What a cluster is made of, before it starts.
pub struct ClusterBuilder {
    name: String,
    pipeline: String,
    workers: u32,
    cluster: bool,
    peers: Peers,
    env: Vec<(String, String)>,
    ports: Vec<String>,
    /// Per worker, extra variables.
    worker_env: BTreeMap<u32, Vec<(String, String)>>,
}

impl ClusterBuilder {
    /// A variable of the pipeline text, the same for every worker.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// A variable for worker `worker` only.
    pub fn worker_env(mut self, worker: u32, key: &str, value: impl Into<String>) -> Self {
        self.worker_env
            .entry(worker)
            .or_default()
            .push((key.to_string(), value.into()));
        self
    }

    /// A free port per worker, in the variable `name` (e.g. `HTTP_PORT`).
    pub fn port(mut self, name: &str) -> Self {
        self.ports.push(name.to_string());
        self
    }

    /// Address the peers by a list of N addresses instead of a template.
    pub fn peer_list(mut self) -> Self {
        self.peers = Peers::List;
        self
    }

    /// Starts every worker at once (a StatefulSet with
    /// `podManagementPolicy: Parallel`) and waits until each is ready
    /// ([`Cluster::wait_ready`]).
    pub fn start(self) -> Cluster {
        let mut cluster = self.build();
        for i in 0..cluster.workers.len() {
            cluster.workers[i].start();
        }
        cluster.wait_ready();
        cluster
    }

    /// Starts every worker at once without waiting for readiness (a
    /// followed, paced input keeps `/ready` at 503 until it has caught up).
    pub fn launch(self) -> Cluster {
        let mut cluster = self.build();
        for i in 0..cluster.workers.len() {
            cluster.workers[i].start();
        }
        cluster
    }

    /// Writes the pipeline and prepares the workers without starting them.
    pub fn build(self) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-{}-", self.name))
            .tempdir()
            .unwrap();
        let n = self.workers;
        let exchange = if self.cluster {
            consecutive_free_ports(n)
        } else {
            Vec::new()
        };
        let spec = Spec {
            text: self.pipeline,
            cluster: self.cluster,
            peers: self.peers,
            env: self.env,
            ports: self.ports,
            worker_env: self.worker_env,
        };
        let pipeline = dir.path().join("pipeline.toml");
        std::fs::write(&pipeline, spec.pipeline_text(&exchange)).unwrap();
        let mut workers = Vec::new();
        let mut ports = Vec::new();
        for i in 0..n {
            let mine = spec.worker_ports(i, &exchange, None);
            workers.push(spec.worker(dir.path(), &pipeline, i, n, &mine));
            ports.push(mine);
        }
        eprintln!(
            "{}: {} in {} (pipeline {}, exchange ports {exchange:?})",
            self.name,
            if spec.cluster {
                format!("{n} workers")
            } else {
                "one worker, no [cluster]".to_string()
            },
            dir.path().display(),
            pipeline.display()
        );
        Cluster {
            name: self.name,
            dir,
            pipeline,
            workers,
            ports,
            exchange,
            spec,
            keep: std::env::var_os("SLUICE_KEEP_CLUSTER").is_some(),
        }
    }
}

/// What every worker of a cluster is made from, kept to make the workers
/// of another N ([`Cluster::rescale`]).
struct Spec {
    /// The pipeline text, without `[cluster]`.
    text: String,
    cluster: bool,
    peers: Peers,
    env: Vec<(String, String)>,
    ports: Vec<String>,
    worker_env: BTreeMap<u32, Vec<(String, String)>>,
}

impl Spec {
    /// The pipeline file's text for workers on the `exchange` ports.
    fn pipeline_text(&self, exchange: &[u16]) -> String {
        let mut text = self.text.clone();
        if self.cluster {
            text.push_str(&cluster_section(exchange, self.peers));
        }
        text
    }

    /// Worker `i`'s ports: those it had (`before`), else free ones, and
    /// its exchange port.
    fn worker_ports(
        &self,
        i: u32,
        exchange: &[u16],
        before: Option<&BTreeMap<String, u16>>,
    ) -> BTreeMap<String, u16> {
        let mut mine = before.cloned().unwrap_or_default();
        mine.entry("ADMIN_PORT".to_string())
            .or_insert_with(free_port);
        for name in &self.ports {
            mine.entry(name.clone()).or_insert_with(free_port);
        }
        if self.cluster {
            mine.insert("EXCHANGE_PORT".to_string(), exchange[i as usize]);
        }
        mine
    }

    /// Worker `i` of `n`, in `<dir>/worker-<i>` (made if missing).
    fn worker(
        &self,
        dir: &Path,
        pipeline: &Path,
        i: u32,
        n: u32,
        ports: &BTreeMap<String, u16>,
    ) -> Worker {
        let wdir = dir.join(format!("worker-{i}"));
        std::fs::create_dir_all(&wdir).unwrap();
        let mut w = Worker::new(pipeline, &wdir.join("sluice.log"))
            .envs(&self.env)
            .env("WORK_DIR", dir.display().to_string())
            .env("WORKER_DIR", wdir.display().to_string())
            .env_remove("SLUICE_WORKERS")
            .env_remove("SLUICE_WORKER_ID");
        for (k, v) in ports {
            w = w.env(k, v.to_string());
        }
        if let Some(extra) = self.worker_env.get(&i) {
            w = w.envs(extra);
        }
        if self.cluster {
            w = if i.is_multiple_of(2) {
                w.arg("--workers")
                    .arg(&n.to_string())
                    .arg("--worker")
                    .arg(&i.to_string())
            } else {
                w.env("SLUICE_WORKERS", n.to_string())
                    .env("SLUICE_WORKER_ID", i.to_string())
            };
        }
        w
    }
}

/// The `[cluster]` section for workers on loopback.
fn cluster_section(ports: &[u16], peers: Peers) -> String {
    match peers {
        Peers::Template => {
            let base = ports[0] / 10;
            format!(
                "\n[cluster]\nlisten = \"127.0.0.1:{base}${{SLUICE_WORKER_ID}}\"\npeers = \"127.0.0.1:{base}{{worker}}\"\n"
            )
        }
        Peers::List => {
            let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
            format!(
                "\n[cluster]\nlisten = \"127.0.0.1:${{EXCHANGE_PORT}}\"\npeers = [{}]\n",
                list.join(", ")
            )
        }
    }
}

/// `n` (at most 10) free ports `base*10 + i`, below the ephemeral range, so
/// that `listen = "127.0.0.1:<base>${SLUICE_WORKER_ID}"` names them.
fn consecutive_free_ports(n: u32) -> Vec<u16> {
    assert!(
        (1..=10).contains(&n),
        "the port template holds 1 to 10 workers"
    );
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut x = seed | 1;
    for _ in 0..1000 {
        // xorshift: a different base per attempt and per test process.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 1100 + (x % 2000) as u16; // ports 11000..31009
        let ports: Vec<u16> = (0..n as u16).map(|i| base * 10 + i).collect();
        let free = ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
        if free {
            return ports;
        }
    }
    panic!("no {n} consecutive free ports found");
}

/// N workers of one pipeline.
pub struct Cluster {
    name: String,
    dir: tempfile::TempDir,
    pipeline: PathBuf,
    workers: Vec<Worker>,
    ports: Vec<BTreeMap<String, u16>>,
    exchange: Vec<u16>,
    spec: Spec,
    /// Keep the directory (SLUICE_KEEP_CLUSTER) to look at after the test.
    keep: bool,
}

impl Cluster {
    /// `workers` workers of `pipeline` (the text, with `${...}` variables),
    /// joined by an exchange. `name` names the directory and messages.
    pub fn of(name: &str, pipeline: &str, workers: u32) -> ClusterBuilder {
        ClusterBuilder {
            name: name.to_string(),
            pipeline: pipeline.to_string(),
            workers,
            cluster: true,
            peers: Peers::Template,
            env: Vec::new(),
            ports: Vec::new(),
            worker_env: BTreeMap::new(),
        }
    }

    /// The single-worker baseline: one `sluice run` of `pipeline`, no
    /// `[cluster]`, no worker flags or variables.
    pub fn single(name: &str, pipeline: &str) -> ClusterBuilder {
        ClusterBuilder {
            cluster: false,
            ..Cluster::of(name, pipeline, 1)
        }
    }

    /// How many workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The directory holding the pipeline and one directory per worker.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Worker `i`'s directory (`WORKER_DIR`).
    pub fn worker_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{i}"))
    }

    /// Every worker's directory, in worker order.
    pub fn worker_dirs(&self) -> Vec<PathBuf> {
        (0..self.workers.len())
            .map(|i| self.worker_dir(i))
            .collect()
    }

    pub fn pipeline(&self) -> &Path {
        &self.pipeline
    }

    /// Worker `i`'s port named `name` (`ADMIN_PORT`, `EXCHANGE_PORT`, or
    /// one given to [`ClusterBuilder::port`]).
    pub fn port(&self, i: usize, name: &str) -> u16 {
        *self.ports[i]
            .get(name)
            .unwrap_or_else(|| panic!("worker {i} has no port {name}"))
    }

    pub fn admin_port(&self, i: usize) -> u16 {
        self.port(i, "ADMIN_PORT")
    }

    /// The exchange ports, worker by worker (empty for a single worker).
    pub fn exchange_ports(&self) -> &[u16] {
        &self.exchange
    }

    pub fn worker(&mut self, i: usize) -> &mut Worker {
        &mut self.workers[i]
    }

    /// Whether worker `i`'s process runs (a stopped one runs).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.workers[i].is_running()
    }

    /// Waits until every worker answers `GET /ready` with 200 (state
    /// restored, all peers reached), or has already run to a successful end
    /// (a bounded input), within [`READY_TIMEOUT`].
    pub fn wait_ready(&mut self) {
        for i in 0..self.workers.len() {
            self.wait_ready_one(i);
        }
    }

    fn wait_ready_one(&mut self, i: usize) {
        let port = self.admin_port(i);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if super::http_request(port, "GET", "/ready", &[], b"").is_ok_and(|(s, _)| s == 200) {
                return;
            }
            self.check_exits();
            if self.workers[i].exit_status().is_some() {
                return; // ran to its end
            }
            if Instant::now() > deadline {
                let why = super::http_request(port, "GET", "/ready", &[], b"")
                    .map(|(s, body)| format!("{s} {body}"))
                    .unwrap_or_else(|e| e.to_string());
                panic!(
                    "{}: worker {i} not ready after {READY_TIMEOUT:?} (/ready: {why})\n{}",
                    self.name,
                    self.context()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL worker `i`; whether it hit a running process.
    pub fn kill(&mut self, i: usize) -> bool {
        self.workers[i].kill()
    }

    /// Starts worker `i` again on its state (after a kill or a stop), and
    /// waits until it is ready.
    pub fn restart(&mut self, i: usize) {
        self.workers[i].start();
        self.wait_ready_one(i);
    }

    /// Starts worker `i` again without waiting for it to be ready.
    pub fn start_worker(&mut self, i: usize) {
        self.workers[i].start();
    }

    /// SIGSTOP worker `i`.
    pub fn pause(&mut self, i: usize) {
        self.workers[i].pause();
    }

    /// SIGCONT worker `i`.
    pub fn resume(&mut self, i: usize) {
        self.workers[i].resume();
    }

    /// SIGTERM worker `i` and wait for its exit, which must be a success.
    pub fn terminate(&mut self, i: usize) {
        let status = self.workers[i].terminate();
        assert!(
            status.success(),
            "{}: worker {i} exited with {status} after SIGTERM\n{}",
            self.name,
            self.context()
        );
    }

    /// SIGTERM every running worker at once, then waits for them; every
    /// exit must be a success.
    pub fn stop_all(&mut self) {
        for w in &mut self.workers {
            if w.is_running() {
                w.signal("TERM");
            }
        }
        for i in 0..self.workers.len() {
            let status = self.workers[i].wait_exit(READY_TIMEOUT);
            assert!(
                status.success(),
                "{}: worker {i} exited with {status} after SIGTERM\n{}",
                self.name,
                self.context()
            );
        }
    }

    /// Makes this cluster one of `n` workers on the same directories
    /// (issue 13's rescale): worker `i` below both counts keeps its
    /// directory (state, outputs, log) and its ports; new workers get new
    /// ones. Nothing is started. The pipeline file keeps its text when the
    /// exchange ports of the new count are free at the same base (the
    /// template then names them all), else it names new ones.
    ///
    /// # Panics
    /// When a worker still runs (stop them all first: [`stop_all`](Self::stop_all)),
    /// or for the single-worker baseline, which has no `[cluster]`.
    pub fn rescale(&mut self, n: u32) {
        for i in 0..self.workers.len() {
            assert!(
                !self.workers[i].is_running(),
                "{}: rescale: worker {i} still runs",
                self.name
            );
        }
        self.rolling_update(n);
    }

    /// Makes this cluster one of `n` workers as [`rescale`](Self::rescale)
    /// does, while the workers of the old count may still run, as in a
    /// Kubernetes rolling update: returns them (each still running or
    /// not). A new worker `i` has the ports of the old worker `i`: start
    /// it only once that one has stopped (as a pod is replaced).
    pub fn rolling_update(&mut self, n: u32) -> Vec<Worker> {
        assert!(
            self.spec.cluster,
            "{}: the single-worker baseline cannot be rescaled",
            self.name
        );
        let base = self.exchange[0] / 10;
        let same_base: Vec<u16> = (0..n as u16).map(|i| base * 10 + i).collect();
        let free = same_base.iter().all(|p| {
            self.exchange.contains(p) || std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()
        });
        let exchange = if free && self.spec.peers == Peers::Template {
            same_base
        } else {
            consecutive_free_ports(n)
        };
        std::fs::write(&self.pipeline, self.spec.pipeline_text(&exchange)).unwrap();
        let mut workers = Vec::new();
        let mut ports = Vec::new();
        for i in 0..n {
            let mine = self
                .spec
                .worker_ports(i, &exchange, self.ports.get(i as usize));
            workers.push(
                self.spec
                    .worker(self.dir.path(), &self.pipeline, i, n, &mine),
            );
            ports.push(mine);
        }
        eprintln!(
            "{}: rescaled from {} to {n} workers (exchange ports {exchange:?})",
            self.name,
            self.workers.len()
        );
        self.ports = ports;
        self.exchange = exchange;
        std::mem::replace(&mut self.workers, workers)
    }

    /// Starts every worker at once and waits until each is ready.
    pub fn start_all(&mut self) {
        for w in &mut self.workers {
            w.start();
        }
        self.wait_ready();
    }

    /// Fails the test, with the logs, if a worker exited with an error.
    pub fn check_exits(&mut self) {
        for i in 0..self.workers.len() {
            if let Some(status) = self.workers[i].exit_status() {
                if !status.success() {
                    panic!(
                        "{}: worker {i} failed ({status})\n{}",
                        self.name,
                        self.context()
                    );
                }
            }
        }
    }

    /// Polls `ok` until it holds; fails after `timeout` or as soon as a
    /// worker fails.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if ok() {
                return;
            }
            self.check_exits();
            assert!(
                Instant::now() < deadline,
                "{}: timed out after {timeout:?} waiting for {what}\n{}",
                self.name,
                self.context()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Reads the sink with `read` until it equals `want` (or `timeout`
    /// passes; or a worker fails, which fails the test at once). Returns
    /// the last reading, for the caller to compare (and show the
    /// difference) once more.
    pub fn wait_for_result<T: PartialEq>(
        &mut self,
        want: &T,
        timeout: Duration,
        mut read: impl FnMut() -> T,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let got = read();
            if got == *want {
                return got;
            }
            self.check_exits();
            if Instant::now() > deadline {
                eprintln!(
                    "{}: the sink does not hold the expected result after {timeout:?}\n{}",
                    self.name,
                    self.context()
                );
                return got;
            }
            std::thread::sleep(POLL);
        }
    }

    /// The value of the series of metric `name` with these labels on
    /// worker `i`'s `/metrics` (None: no answer, or no such series).
    pub fn metric(&self, i: usize, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        super::metric_series(self.admin_port(i), name, labels)
    }

    /// The last lines of every worker's log, for failure messages.
    pub fn context(&self) -> String {
        let mut out = String::new();
        for (i, w) in self.workers.iter().enumerate() {
            out.push_str(&format!(
                "--- worker {i}: {}\n{}\n",
                w.log().display(),
                log_tail(w.log())
            ));
        }
        out
    }

    /// Every worker's whole log, concatenated.
    pub fn logs(&self) -> String {
        self.workers
            .iter()
            .map(|w| std::fs::read_to_string(w.log()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The workers are killed by their own Drop (SIGKILL also ends a
        // stopped process).
        if self.keep {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("{}: kept {}", self.name, dir.keep().display());
        }
    }
}
