//! What the rescale tests through the remote copy of the state share
//! (issue 13: tests/remote_rescale.rs, tests/remote_release.rs,
//! tests/remote_sigkill.rs): the cluster workload with `[state] remote`
//! on a bucket, the key groups each worker owns, the checks that a worker
//! restored what it gained and that the sinks hold what the oracle says,
//! and the AMQP input of the tests whose workers are competing consumers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
#[cfg(feature = "amqp")]
use std::time::Instant;

use super::cluster::{Cluster, ClusterBuilder};
use super::cluster_workload as wl;
use super::s3::Bucket;

/// How long the sinks may take to hold what the oracle says.
pub const SETTLE: Duration = Duration::from_secs(30);
/// What the log says when a worker restores from the remote copy.
pub const RESTORED: &str = "restored the state from the remote copy";

/// The worker counts of the rescale tests, in order.
pub const STEPS: [u32; 4] = [1, 3, 2, 1];
/// Events of a rescale test (a quarter per step).
pub const RESCALE_EVENTS: u64 = 4_000;

/// The cluster workload's pipeline text with `remote = "${REMOTE}"`.
pub fn with_remote(text: &str) -> String {
    let state = "dir = \"${WORKER_DIR}/state\"\n";
    assert!(text.contains(state), "the workload's [state] changed");
    text.replace(state, &format!("{state}remote = \"${{REMOTE}}\"\n"))
}

/// The key groups worker `w` of `n` owns (docs/scaling.md: 128 groups,
/// contiguous ranges).
pub fn owned(w: u32, n: u32) -> std::ops::Range<u32> {
    128 * w / n..128 * (w + 1) / n
}

/// Whether worker `w` of `n` owns a key group that worker `w` of `before`
/// did not: it must restore that group from another worker's copy.
pub fn gains(w: u32, before: u32, n: u32) -> bool {
    if w >= before {
        return true;
    }
    let (old, new) = (owned(w, before), owned(w, n));
    new.start < old.start || new.end > old.end
}

/// `workers` workers (None: the single-worker baseline, no `[cluster]`)
/// of `text`, with the remote copy under `name` in `bucket`.
pub fn remote_cluster(
    name: &str,
    text: &str,
    workers: Option<u32>,
    bucket: &Bucket,
) -> ClusterBuilder {
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
pub fn assert_rescale_restores(c: &mut Cluster, before: u32, n: u32) {
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
pub fn settle_so_far(
    c: &mut Cluster,
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

/// Fails the test if a worker directory the rescale used holds a dead
/// letter (shows the first three).
pub fn assert_no_dead_letters(c: &Cluster) {
    let dead = all_dead_letters(c);
    assert!(
        dead.is_empty(),
        "{} dead letters: {:?}",
        dead.len(),
        &dead[..dead.len().min(3)]
    );
}

/// The dead letters of every worker directory the rescale used.
pub fn all_dead_letters(c: &Cluster) -> Vec<String> {
    let dirs: Vec<PathBuf> = (0..*STEPS.iter().max().unwrap())
        .map(|i| c.dir().join(format!("worker-{i}")))
        .collect();
    wl::dead_letters(&dirs)
}

/// An AMQP source on `${QUEUE}` (competing consumers).
#[cfg(feature = "amqp")]
pub fn amqp_source() -> String {
    format!(
        r#"
[sources.events]
type = "amqp"
url = "${{AMQP_URL}}"
queue = "${{QUEUE}}"
prefetch = 500
{}
"#,
        wl::event_time()
    )
}

/// An AMQP message: its message id and body.
#[cfg(feature = "amqp")]
pub type Message = (Option<String>, Vec<u8>);

/// The AMQP input of a test: the shared broker (tests/rabbitmq.sh), a
/// client, the events as messages (each with its message id), and the
/// durable queues the test declared, deleted when this is dropped.
#[cfg(feature = "amqp")]
pub struct AmqpInput {
    /// The shared broker's URL (`AMQP_URL` of the workers).
    pub url: String,
    /// The events as AMQP messages, in input order.
    pub messages: Vec<Message>,
    rt: tokio::runtime::Runtime,
    client: super::amqp::Client,
    queues: std::cell::RefCell<Vec<String>>,
}

#[cfg(feature = "amqp")]
impl AmqpInput {
    /// Connects to the shared broker; `events` become the messages.
    pub fn new(events: &[wl::Event]) -> AmqpInput {
        let url = super::amqp::shared_broker();
        let rt = super::amqp::rt();
        let client = rt.block_on(super::amqp::Client::connect(&url));
        let messages = events
            .iter()
            .map(|e| (Some(format!("e{}", e.id)), e.line().into_bytes()))
            .collect();
        AmqpInput {
            url,
            messages,
            rt,
            client,
            queues: Default::default(),
        }
    }

    /// Declares a durable queue with a unique name made from `name`, deleted
    /// with this input; its name.
    pub fn queue(&self, name: &str) -> String {
        let queue = super::services::unique(name);
        self.rt.block_on(self.client.durable_queue(&queue, None));
        self.queues.borrow_mut().push(queue.clone());
        queue
    }

    /// Publishes the messages in `range` to `queue`.
    pub fn publish(
        &self,
        queue: &str,
        range: impl std::slice::SliceIndex<[Message], Output = [Message]>,
    ) {
        self.rt
            .block_on(self.client.publish(queue, &self.messages[range]));
    }

    /// Waits until `queue` has at least `n` consumers (one per worker).
    pub fn wait_for_consumers(&self, c: &mut Cluster, queue: &str, n: u32) {
        c.wait_until("a consumer per worker", SETTLE, || {
            self.rt.block_on(self.client.depth(queue)).1 >= n
        });
    }

    /// Publishes a flush event every 300 ms (each consumer must get one for
    /// its watermark to pass the last window) until `read` holds `oracle`;
    /// returns what it holds then.
    pub fn finish(
        &self,
        c: &mut Cluster,
        queue: &str,
        oracle: &wl::Results,
        mut read: impl FnMut() -> wl::Results,
    ) -> wl::Results {
        let mut flushes = 0;
        let mut last = Instant::now() - Duration::from_secs(1);
        let got = c.wait_for_result(oracle, SETTLE, || {
            if last.elapsed() >= Duration::from_millis(300) {
                let flush = (
                    Some(format!("flush{flushes}")),
                    wl::flush_line().into_bytes(),
                );
                self.rt.block_on(self.client.publish(queue, &[flush]));
                flushes += 1;
                last = Instant::now();
            }
            read()
        });
        assert!(got == *oracle, "{}\n{}", got.diff(oracle), c.context());
        got
    }
}

#[cfg(feature = "amqp")]
impl Drop for AmqpInput {
    fn drop(&mut self) {
        drop(super::amqp::Cleanup {
            url: self.url.clone(),
            queues: self.queues.take(),
            exchanges: Vec::new(),
        });
    }
}
