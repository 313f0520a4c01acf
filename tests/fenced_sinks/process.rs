//! [`FencedTarget`] through the real binary: the W1 pipeline (a paced file
//! source, a per-country count, a per-minute window count) is written to a
//! temporary directory with the destination's sinks appended, run as a
//! [`Worker`] and killed with SIGKILL.

use crate::fenced_sinks::{FencedTarget, Stored};
use crate::support::log_tail;
use crate::support::services::{PrivatePostgres, PrivateRedis};
use crate::support::w1::W1;
use crate::support::worker::Worker;

/// The source and transforms every destination's pipeline shares; the
/// destination appends its `[sinks...]` tables.
const PIPELINE: &str = r#"
[pipeline]
name = "w1_fenced"
[state]
dir = "${STATE_DIR}"
[checkpoint]
interval = "100ms"
[sources.weather]
type = "file"
path = "${INPUT}"
max_events_per_second = ${PACE:-0}
event_time = { field = "ts", max_disorder = "2s" }
[transforms.by_country]
type = "aggregate"
inputs = ["weather"]
group_by = ["country"]
aggregates = { count = "count" }
[transforms.per_minute]
type = "aggregate"
inputs = ["weather"]
group_by = ["country", "weather"]
window = { type = "tumbling", size = "1m" }
emit = "on_close"
aggregates = { count = "count" }
"#;

/// A real destination the binary writes to.
pub(crate) trait Destination {
    fn name(&self) -> String;
    /// The `[sinks...]` tables: `counts` from `by_country`, `windows` from
    /// `per_minute` (and any more the destination checks).
    fn sinks(&self) -> &'static str;
    /// The variables `sinks()` refers to.
    fn env(&self) -> Vec<(&'static str, String)>;
    /// The number of events the stored results account for.
    fn written(&self) -> i64;
    fn stored(&self) -> Stored;
    fn down(&mut self);
    fn up(&mut self);
    /// Removes what the test wrote.
    fn cleanup(&self);
}

/// A private server a test may stop and start again.
pub(crate) trait PrivateServer {
    fn url(&self) -> String;
    fn stop(&self);
    fn launch(&self);
}

impl PrivateServer for PrivateRedis {
    fn url(&self) -> String {
        PrivateRedis::url(self)
    }
    fn stop(&self) {
        PrivateRedis::stop(self)
    }
    fn launch(&self) {
        PrivateRedis::launch(self)
    }
}

impl PrivateServer for PrivatePostgres {
    fn url(&self) -> String {
        PrivatePostgres::url(self)
    }
    fn stop(&self) {
        PrivatePostgres::stop(self)
    }
    fn launch(&self) {
        PrivatePostgres::launch(self)
    }
}

/// The server a destination writes to: a shared one (never stopped, the
/// test cleans up after itself) or a private one (the outage stops it; it
/// goes away with the test).
pub(crate) enum Server<P: PrivateServer> {
    Shared(String),
    Private(P),
}

impl<P: PrivateServer> Server<P> {
    pub(crate) fn url(&self) -> String {
        match self {
            Server::Shared(url) => url.clone(),
            Server::Private(p) => p.url(),
        }
    }

    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Server::Shared(_))
    }

    fn private(&self) -> &P {
        match self {
            Server::Private(p) => p,
            Server::Shared(url) => panic!("the shared server {url} is never stopped"),
        }
    }

    pub(crate) fn stop(&self) {
        self.private().stop();
    }

    pub(crate) fn launch(&self) {
        self.private().launch();
    }
}

/// The binary writing W1 to `D`.
pub(crate) struct Process<D: Destination> {
    pub destination: D,
    worker: Worker,
    _work: tempfile::TempDir,
}

impl<D: Destination> Process<D> {
    /// `pace`: events per second of the file source (0: as fast as it can).
    pub(crate) fn new(destination: D, w1: &W1, pace: u64) -> Process<D> {
        let work = tempfile::tempdir().unwrap();
        let pipeline = work.path().join("pipeline.toml");
        std::fs::write(&pipeline, format!("{PIPELINE}{}", destination.sinks())).unwrap();
        let worker = Worker::new(&pipeline, &work.path().join("sluice.log"))
            .once()
            .env("INPUT", w1.input.display().to_string())
            .env("STATE_DIR", work.path().join("state").display().to_string())
            .env("PACE", pace.to_string())
            .envs(&destination.env());
        Process {
            destination,
            worker,
            _work: work,
        }
    }
}

impl<D: Destination> FencedTarget for Process<D> {
    fn name(&self) -> String {
        self.destination.name()
    }

    fn start(&mut self) {
        self.worker.start();
    }

    fn written(&mut self) -> i64 {
        self.destination.written()
    }

    fn finished(&mut self) -> bool {
        match self.worker.exit_status() {
            None => false,
            Some(status) => {
                assert!(
                    status.success(),
                    "sluice failed ({status})\n{}",
                    self.context()
                );
                true
            }
        }
    }

    fn kill(&mut self) -> bool {
        self.worker.kill()
    }

    fn destination_down(&mut self) {
        self.destination.down();
    }

    fn retries(&mut self) -> usize {
        self.worker.log_since_start().matches("retrying").count()
    }

    fn destination_up(&mut self) {
        self.destination.up();
    }

    fn stored(&mut self) -> Stored {
        self.destination.stored()
    }

    fn context(&self) -> String {
        format!(
            "log {}:\n{}",
            self.worker.log().display(),
            log_tail(self.worker.log())
        )
    }
}

impl<D: Destination> Drop for Process<D> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.destination.cleanup();
        }
    }
}
