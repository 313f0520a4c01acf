//! Readiness: whether a running pipeline is doing its job *now*, for
//! `/ready` (Kubernetes readiness probes) and `sluice_ready`.
//!
//! A pipeline is ready when all of these hold:
//! - its state is restored and its processor runs (not while restoring,
//!   stopping or reloading);
//! - every source has started and is up: a broker source is connected, an
//!   HTTP source's listener is bound ([`SourceHealth::down`] says why not);
//! - every source that knows its backlog (events in its own log not yet
//!   processed, e.g. the HTTP journal) is at most `max_backlog` behind;
//! - no file source is still reading the files that existed when it started.
//!
//! Sources report through their [`SourceHealth`]; the engine adds the events
//! sent to the processor but not yet processed. The decision itself,
//! [`Readiness::report`], is a pure function of these values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;

/// Events behind a source may be for the pipeline to count as ready,
/// unless configured (`[admin] ready_max_backlog`).
pub const DEFAULT_MAX_BACKLOG: u64 = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a source can reach what it reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    /// Not yet started (e.g. recovering its journal).
    Starting,
    Up,
    /// Cannot work: the reason (broker unreachable, listener not bound).
    Down(String),
}

/// Events in a source's own log that it has not handed to the processor
/// yet (e.g. journal end minus the read position).
type BacklogProbe = Box<dyn Fn() -> u64 + Send + Sync>;

/// The health a running source reports: up or down with a reason, and how
/// far behind it is. Shared between the source, the engine and `/ready`.
pub struct SourceHealth {
    link: Mutex<Link>,
    /// Bytes of the files present at start that a file source has not read
    /// yet (`None` once it read them all, or for other sources).
    initial_read: Mutex<Option<u64>>,
    probe: Mutex<Option<BacklogProbe>>,
    /// Events sent to the processor and not yet processed.
    in_flight: AtomicU64,
}

impl Default for SourceHealth {
    fn default() -> Self {
        SourceHealth {
            link: Mutex::new(Link::Starting),
            initial_read: Mutex::new(None),
            probe: Mutex::new(None),
            in_flight: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for SourceHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHealth")
            .field("link", &*lock(&self.link))
            .field("backlog", &self.backlog())
            .finish()
    }
}

impl SourceHealth {
    /// The source works (connected, listening).
    pub fn up(&self) {
        *lock(&self.link) = Link::Up;
    }

    /// The source cannot work now; `reason` is shown by `/ready`.
    pub fn down(&self, reason: impl Into<String>) {
        *lock(&self.link) = Link::Down(reason.into());
    }

    /// Called when the source declares its partitions: a source that did
    /// not say otherwise counts as up from then on.
    pub(crate) fn started(&self) {
        let mut link = lock(&self.link);
        if *link == Link::Starting {
            *link = Link::Up;
        }
    }

    /// Reports how many events the source's own log holds beyond what it
    /// has emitted; called whenever readiness is evaluated, so it must be
    /// cheap and must not block.
    pub fn set_backlog_probe(&self, probe: impl Fn() -> u64 + Send + Sync + 'static) {
        *lock(&self.probe) = Some(Box::new(probe));
    }

    /// A file source still reading the files that existed at its start:
    /// `Some(bytes left)`; `None` once it reached their end.
    pub fn set_initial_read(&self, bytes_left: Option<u64>) {
        *lock(&self.initial_read) = bytes_left;
    }

    pub(crate) fn emitted(&self, events: u64) {
        self.in_flight.fetch_add(events, Ordering::Relaxed);
    }

    pub(crate) fn processed(&self, events: u64) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(events))
            });
    }

    /// Events behind, when the source knows its log's end: the probe plus
    /// the events on their way to the processor.
    pub fn backlog(&self) -> Option<u64> {
        let probe = lock(&self.probe);
        let behind = probe.as_ref()?();
        Some(behind + self.in_flight.load(Ordering::Relaxed))
    }

    fn snapshot(&self, name: &str) -> SourceStatus {
        SourceStatus {
            name: name.to_string(),
            link: lock(&self.link).clone(),
            backlog: self.backlog(),
            initial_read: *lock(&self.initial_read),
        }
    }
}

/// What one source looked like at one moment (the input of the decision).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceStatus {
    name: String,
    link: Link,
    backlog: Option<u64>,
    initial_read: Option<u64>,
}

/// Where the pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started yet, or opening and restoring its state.
    Restoring,
    Running,
    /// Stopping (shutdown, reload, failure).
    Stopped,
}

/// `/ready`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadyReport {
    /// True when `/ready` answers 200.
    pub ready: bool,
    /// Why not ready (empty when ready).
    pub reasons: Vec<String>,
    /// Per source: `up`/`starting`/`down`, and its backlog when known.
    pub sources: Vec<SourceReport>,
}

/// One source in a [`ReadyReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceReport {
    /// The source's name.
    pub name: String,
    /// `up`, `starting` or `down`.
    pub state: &'static str,
    /// Events received but not yet processed, when the source knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_events: Option<u64>,
}

struct RunState {
    phase: Phase,
    sources: Vec<(Arc<str>, Arc<SourceHealth>)>,
    /// While restoring: what the run waits for, if anything.
    waiting: Option<String>,
}

/// The readiness of a pipeline across its runs (a reload stops one run and
/// starts the next); shared by the runtime and the admin server.
pub struct Readiness {
    max_backlog: AtomicU64,
    run: Mutex<RunState>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new(DEFAULT_MAX_BACKLOG)
    }
}

impl Readiness {
    /// Not ready (restoring) until a run reports; an HTTP source more than
    /// `max_backlog` events behind makes the pipeline not ready.
    pub fn new(max_backlog: u64) -> Self {
        Readiness {
            max_backlog: AtomicU64::new(max_backlog),
            run: Mutex::new(RunState {
                phase: Phase::Restoring,
                sources: Vec::new(),
                waiting: None,
            }),
        }
    }

    /// Changes the backlog limit (a reload).
    pub fn set_max_backlog(&self, events: u64) {
        self.max_backlog.store(events, Ordering::Relaxed);
    }

    /// The backlog limit in events.
    pub fn max_backlog(&self) -> u64 {
        self.max_backlog.load(Ordering::Relaxed)
    }

    /// A run starts restoring its state.
    pub(crate) fn restoring(&self) {
        let mut run = lock(&self.run);
        run.phase = Phase::Restoring;
        run.sources.clear();
        run.waiting = None;
    }

    /// While restoring, the run waits for something (e.g. another worker
    /// to release key groups): `/ready` says what.
    pub(crate) fn waiting(&self, why: &str) {
        let mut run = lock(&self.run);
        if run.phase == Phase::Restoring {
            run.waiting = Some(why.to_string());
        }
    }

    /// State is restored; these sources run.
    pub(crate) fn running(&self, sources: Vec<(Arc<str>, Arc<SourceHealth>)>) {
        let mut run = lock(&self.run);
        run.phase = Phase::Running;
        run.sources = sources;
        run.waiting = None;
    }

    /// The run ended (or is ending).
    pub(crate) fn stopped(&self) {
        lock(&self.run).phase = Phase::Stopped;
    }

    /// What `/ready` answers now, as a boolean.
    pub fn is_ready(&self) -> bool {
        self.report().ready
    }

    /// Evaluates readiness now.
    pub fn report(&self) -> ReadyReport {
        let (phase, sources, waiting) = {
            let run = lock(&self.run);
            let sources: Vec<SourceStatus> = run
                .sources
                .iter()
                .map(|(name, h)| h.snapshot(name))
                .collect();
            (run.phase, sources, run.waiting.clone())
        };
        let mut report = decide(phase, &sources, self.max_backlog());
        if let Some(why) = waiting {
            report.reasons.push(why);
        }
        report
    }
}

/// The decision: pure, so that every rule is unit-tested.
fn decide(phase: Phase, sources: &[SourceStatus], max_backlog: u64) -> ReadyReport {
    let mut reasons = Vec::new();
    match phase {
        Phase::Restoring => reasons.push("restoring state".to_string()),
        Phase::Stopped => {
            reasons.push("the pipeline is not running (stopping or reloading)".into())
        }
        Phase::Running => {}
    }
    let mut report = Vec::new();
    for s in sources {
        let state = match &s.link {
            Link::Starting => {
                reasons.push(format!("source `{}` is starting", s.name));
                "starting"
            }
            Link::Down(why) => {
                reasons.push(format!("source `{}` is down: {why}", s.name));
                "down"
            }
            Link::Up => "up",
        };
        if let Some(bytes) = s.initial_read {
            reasons.push(format!(
                "source `{}` is catching up: {bytes} bytes of its files left to read",
                s.name
            ));
        }
        if let Some(b) = s.backlog.filter(|&b| b > max_backlog) {
            reasons.push(format!(
                "source `{}` is catching up: {b} events behind (ready at {max_backlog} or fewer)",
                s.name
            ));
        }
        report.push(SourceReport {
            name: s.name.clone(),
            state,
            backlog_events: s.backlog,
        });
    }
    ReadyReport {
        ready: reasons.is_empty(),
        reasons,
        sources: report,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(link: Link, backlog: Option<u64>, initial_read: Option<u64>) -> SourceStatus {
        SourceStatus {
            name: "web".into(),
            link,
            backlog,
            initial_read,
        }
    }

    #[test]
    fn ready_only_when_running_up_and_caught_up() {
        let up = source(Link::Up, Some(10), None);
        assert!(decide(Phase::Running, std::slice::from_ref(&up), 10).ready);
        assert!(decide(Phase::Running, &[], 10).ready);
        let r = decide(Phase::Restoring, std::slice::from_ref(&up), 10);
        assert_eq!(r.reasons, ["restoring state"]);
        assert!(!decide(Phase::Stopped, std::slice::from_ref(&up), 10).ready);
    }

    #[test]
    fn each_source_condition_is_a_reason() {
        let r = decide(Phase::Running, &[source(Link::Up, Some(11), None)], 10);
        assert_eq!(
            r.reasons,
            ["source `web` is catching up: 11 events behind (ready at 10 or fewer)"]
        );
        let r = decide(Phase::Running, &[source(Link::Starting, None, None)], 10);
        assert_eq!(r.reasons, ["source `web` is starting"]);
        assert_eq!(r.sources[0].state, "starting");
        let r = decide(
            Phase::Running,
            &[source(Link::Down("broker unreachable".into()), None, None)],
            10,
        );
        assert_eq!(r.reasons, ["source `web` is down: broker unreachable"]);
        let r = decide(Phase::Running, &[source(Link::Up, None, Some(5))], 10);
        assert_eq!(
            r.reasons,
            ["source `web` is catching up: 5 bytes of its files left to read"]
        );
    }

    #[test]
    fn backlog_counts_events_on_their_way_to_the_processor() {
        let h = SourceHealth::default();
        assert_eq!(h.backlog(), None);
        h.set_backlog_probe(|| 100);
        h.emitted(30);
        assert_eq!(h.backlog(), Some(130));
        h.processed(50);
        assert_eq!(h.backlog(), Some(100));
        h.started();
        assert_eq!(*lock(&h.link), Link::Up);
        h.down("gone");
        h.started();
        assert_eq!(*lock(&h.link), Link::Down("gone".into()));
    }

    #[test]
    fn readiness_follows_the_run() {
        let r = Readiness::new(5);
        assert!(!r.is_ready());
        let h = Arc::new(SourceHealth::default());
        r.running(vec![(Arc::from("web"), h.clone())]);
        assert!(!r.is_ready(), "a source that has not started");
        h.up();
        assert!(r.is_ready());
        r.stopped();
        assert!(!r.is_ready());
        r.restoring();
        assert!(r.report().sources.is_empty());
    }
}
