//! One `sluice run` process under test: start it, wait for a readiness
//! signal (never a fixed sleep), signal it (SIGKILL, SIGTERM, SIGSTOP /
//! SIGCONT), restart it on the same state, and show its log on failure.
//!
//! A [`Worker`] owns its process, log file and environment and nothing
//! else, so a test can run several of them side by side (one per state
//! directory and port) on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{log_tail, sluice};

/// How long a worker may take to reach a readiness signal by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);

/// What tells a test that a started worker is ready.
#[derive(Debug, Clone)]
pub enum Ready {
    /// `GET /ready` on this admin port answers 200.
    Admin(u16),
    /// Something accepts TCP connections on this 127.0.0.1 port.
    Port(u16),
    /// The log holds this text (counted from the latest start).
    Log(String),
    /// This file exists.
    File(PathBuf),
}

/// A `sluice run` process, restartable on the same pipeline, environment
/// and log.
pub struct Worker {
    pipeline: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Variables removed from the inherited environment.
    unset: Vec<String>,
    child: Option<Child>,
    /// Length of the log when the current process started.
    log_start: usize,
}

impl Worker {
    /// A worker for `pipeline` that appends its stderr to `log`. Nothing
    /// runs before [`start`](Self::start).
    pub fn new(pipeline: &Path, log: &Path) -> Worker {
        Worker {
            pipeline: pipeline.to_path_buf(),
            log: log.to_path_buf(),
            args: Vec::new(),
            env: vec![("RUST_LOG".into(), "info".into())],
            unset: Vec::new(),
            child: None,
            log_start: 0,
        }
    }

    /// Runs `sluice run --once`: the process exits when its bounded
    /// sources are exhausted.
    pub fn once(self) -> Worker {
        self.arg("--once")
    }

    /// An extra argument of `sluice run` (before the pipeline path).
    pub fn arg(mut self, arg: &str) -> Worker {
        self.args.push(arg.to_string());
        self
    }

    /// An environment variable of every start.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Worker {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// A variable absent from every start (also the default `RUST_LOG`).
    pub(crate) fn env_remove(mut self, key: &str) -> Worker {
        self.env.retain(|(k, _)| k != key);
        self.unset.push(key.to_string());
        self
    }

    /// Environment variables of every start.
    pub fn envs<K: AsRef<str>>(self, vars: &[(K, String)]) -> Worker {
        vars.iter()
            .fold(self, |w, (k, v)| w.env(k.as_ref(), v.clone()))
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The log written since the current (or last) process started.
    pub fn log_since_start(&self) -> String {
        log_from(&self.log, self.log_start)
    }

    /// `sluice <args...> <pipeline>` with this worker's environment (not
    /// its `run` arguments), e.g. an operator's command about its pipeline.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = sluice();
        cmd.args(args).arg(&self.pipeline);
        for k in &self.unset {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the process (a restart when it ran before: same state).
    ///
    /// # Panics
    /// When the previous process is still running.
    pub fn start(&mut self) -> &mut Worker {
        assert!(!self.is_running(), "start: the worker is still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the worker's log");
        self.log_start = log.metadata().map_or(0, |m| m.len() as usize);
        let mut cmd = sluice();
        cmd.arg("run")
            .args(&self.args)
            .arg(&self.pipeline)
            .stdout(Stdio::null())
            .stderr(log);
        for k in &self.unset {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start sluice"));
        self
    }

    /// The process id while one runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs (not exited; a stopped one runs).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    /// The exit status once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Polls `ok` until it holds. Fails after `timeout`, or when the
    /// process exits with an error first, with the log's last lines.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if ok() {
                return;
            }
            if let Some(status) = self.exit_status() {
                // The condition may have become true just before the exit.
                if ok() {
                    return;
                }
                panic!(
                    "sluice exited ({status}) while waiting for {what}; log {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; log {}:\n{}",
                self.log.display(),
                log_tail(&self.log)
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits for a readiness signal (within [`READY_TIMEOUT`]).
    pub fn wait_ready(&mut self, ready: &Ready) -> &mut Worker {
        match ready {
            Ready::Admin(port) => {
                let port = *port;
                self.wait_until("GET /ready = 200", READY_TIMEOUT, || {
                    super::http_request(port, "GET", "/ready", &[], b"")
                        .is_ok_and(|(s, _)| s == 200)
                })
            }
            Ready::Port(port) => {
                let port = *port;
                self.wait_until(&format!("a listener on {port}"), READY_TIMEOUT, || {
                    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                })
            }
            Ready::Log(text) => {
                self.wait_log(text, 1);
            }
            Ready::File(path) => {
                let path = path.clone();
                self.wait_until(&format!("{}", path.display()), READY_TIMEOUT, || {
                    path.exists()
                })
            }
        }
        self
    }

    /// Waits until the log of the current process holds `text` at least
    /// `times` times; returns that log.
    pub fn wait_log(&mut self, text: &str, times: usize) -> String {
        let (log, from) = (self.log.clone(), self.log_start);
        let mut seen = String::new();
        self.wait_until(
            &format!("{times} × {text:?} in the log"),
            READY_TIMEOUT,
            || {
                seen = log_from(&log, from);
                seen.matches(text).count() >= times
            },
        );
        seen
    }

    /// SIGKILL. Returns whether it hit a running process; either way the
    /// process is reaped. A process that had already failed fails the test.
    pub fn kill(&mut self) -> bool {
        let running = self.is_running();
        if let Some(child) = self.child.as_mut() {
            if running {
                child.kill().expect("SIGKILL");
            }
            let status = child.wait().expect("wait");
            assert!(
                running || status.success(),
                "sluice had failed ({status}) before the kill; log {}:\n{}",
                self.log.display(),
                log_tail(&self.log)
            );
        }
        running
    }

    /// SIGTERM (graceful shutdown); returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(READY_TIMEOUT)
    }

    /// SIGSTOP: the process freezes (its sockets stay open).
    pub fn pause(&mut self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        self.signal("CONT");
    }

    /// Sends a signal by name (`TERM`, `HUP`, `STOP`...).
    pub fn signal(&mut self, name: &str) {
        let pid = self.pid().expect("signal: the worker was never started");
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} {pid} failed");
    }

    /// Waits for the process to exit (failing after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "sluice did not exit within {timeout:?}; log {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the process to exit with success.
    pub fn wait_success(&mut self, timeout: Duration) {
        let status = self.wait_exit(timeout);
        assert!(
            status.success(),
            "sluice failed ({status}); log {}:\n{}",
            self.log.display(),
            log_tail(&self.log)
        );
    }

    /// Starts the process and waits for it to exit with success.
    pub fn run_to_end(&mut self, timeout: Duration) {
        self.start();
        self.wait_success(timeout);
    }
}

/// The text of `log` from byte `from` on.
fn log_from(log: &Path, from: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.get(from..).unwrap_or_default().to_string()
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
