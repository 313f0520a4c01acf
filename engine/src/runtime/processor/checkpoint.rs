//! Carrying out what the checkpoint protocol ([`crate::checkpoint`]) asks
//! for: snapshots of the operators, write jobs for the checkpoint writer,
//! epochs to the sinks, commits to the sources, and the metrics of each.

use std::time::Instant;

use super::Processor;
use crate::checkpoint::{Action, Event, Snapshot};
use crate::error::Report;
use crate::metrics as m;
use crate::operator::{Emitter, StateWriter};
use crate::runtime::store::{CheckpointDone, CheckpointJob};
use crate::runtime::{CheckpointError, RunError};
use crate::sink::SinkEpoch;
use crate::source::Commit;
use crate::time::now_ms;

impl Processor {
    /// Carries out `actions` in order (a snapshot leads to its write).
    pub(super) fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::TakeSnapshot => {
                    self.checkpoint_started = Some(Instant::now());
                    let snapshot = self.take_snapshot();
                    let next = self.protocol.handle(Event::Snapshot(snapshot));
                    self.execute(next);
                }
                Action::Write { epoch, writes } => {
                    let job = CheckpointJob {
                        epoch,
                        writes,
                        started: self.checkpoint_started.take().unwrap_or_else(Instant::now),
                    };
                    if let Some(c) = &self.cluster {
                        // Written only once every row sent before the
                        // snapshot is durable at its owner.
                        let gate = c.gate();
                        let jobs = self.jobs.clone();
                        let failed = self.gate_failures.0.clone();
                        tokio::spawn(async move {
                            match gate.passed().await {
                                Ok(()) => {
                                    if jobs.send(job).is_err() {
                                        let _ = failed.send("the checkpoint writer stopped".into());
                                    }
                                }
                                Err(reason) => {
                                    let _ = failed.send(reason);
                                }
                            }
                        });
                    } else if self.jobs.send(job).is_err() {
                        self.failure = Some(RunError::Checkpoint(CheckpointError::WriterStopped));
                    }
                }
                Action::Deliver {
                    sink,
                    epoch,
                    records,
                } => {
                    if let Some(tx) = &self.sink_txs[sink] {
                        let _ = tx.send(SinkEpoch { epoch, records });
                    }
                }
                Action::Commit {
                    source,
                    epoch,
                    positions,
                } => {
                    let _ = self.commit_txs[source].send(Commit { epoch, positions });
                }
                Action::StopSources => {
                    let _ = self.stop.send(true);
                }
                Action::Idle => {
                    // An idle pipeline is healthy: its last checkpoint is current.
                    metrics::gauge!(
                        m::CHECKPOINT_LAST_SUCCESS,
                        m::pipeline_labels(&self.pipeline)
                    )
                    .set(now_ms() as f64 / 1000.0);
                }
                Action::Finish { unacked } => {
                    self.all_acked = unacked.is_empty();
                    for (sink, epochs) in unacked {
                        tracing::warn!(sink = %self.sink_names[sink], epochs = ?epochs,
                            "stopping before the sink acknowledged these epochs; they are in the checkpoint and will be re-delivered at the next start");
                    }
                    self.finished = true;
                }
                Action::Fail { epoch, error } => {
                    let labels = m::pipeline_labels(&self.pipeline);
                    metrics::counter!(m::CHECKPOINT_FAILURES, labels).increment(1);
                    tracing::error!(epoch, %error, "checkpoint failed; stopping (the previous checkpoint is intact)");
                    let cause = self
                        .write_error
                        .take()
                        // (a failed write always comes with its cause)
                        .unwrap_or(CheckpointError::WriterStopped);
                    self.failure = Some(RunError::Checkpoint(cause));
                }
            }
        }
    }

    /// Step 1 of a checkpoint: operators emit what `on_checkpoint` gives
    /// (routed into the outboxes), then hand over their changed state.
    fn take_snapshot(&mut self) -> Snapshot {
        for idx in 0..self.graph.order.len() {
            let node = self.graph.order[idx];
            if node < self.n_sources || self.sink_of[node].is_some() {
                continue;
            }
            let mut out = Vec::new();
            let mut dead = Vec::new();
            if let Some(op) = self.operators[node - self.n_sources].as_mut() {
                op.on_checkpoint(&mut Emitter {
                    out: &mut out,
                    dead: &mut dead,
                });
            }
            self.dead_letters(dead);
            for b in out {
                self.forward(node, b);
            }
        }
        let mut snapshot = Snapshot::default();
        for (t, op) in self.operators.iter_mut().enumerate() {
            if !self.stateful[t] {
                continue;
            }
            let Some(op) = op.as_mut() else { continue };
            let name = &self.names[self.n_sources + t];
            let mut w = StateWriter::default();
            op.snapshot(&mut w);
            snapshot.state.push((name.clone(), w));
            let stats = op.state_stats();
            let labels = m::component_labels(&self.pipeline, name, "transform");
            metrics::gauge!(m::STATE_KEYS, labels.clone()).set(stats.keys as f64);
            metrics::gauge!(m::STATE_BYTES, labels.clone()).set(stats.bytes as f64);
        }
        snapshot.max_times = (0..self.sources.len())
            .map(|s| self.tracker.max_times(s).collect())
            .collect();
        if self.cluster.is_some() {
            // Everything routed so far goes out before the gate is made.
            self.flush_exchange(false);
        }
        if let Some(c) = &self.cluster {
            let (bytes, inbound) = c.checkpoint();
            snapshot.cluster = Some(bytes);
            self.inflight_inbound = Some(inbound);
        }
        snapshot
    }

    /// The checkpoint writer's report.
    pub(super) fn on_checkpoint_done(&mut self, done: CheckpointDone) {
        let event = match done.result {
            Err(error) => {
                // The protocol only needs the text; the typed cause is
                // kept for the run's error.
                let text = Report(&error).to_string();
                self.write_error = Some(error);
                Event::WriteFailed {
                    epoch: done.epoch,
                    error: text,
                }
            }
            Ok(()) => {
                let labels = m::pipeline_labels(&self.pipeline);
                let secs = done.duration.as_secs_f64();
                metrics::counter!(m::CHECKPOINTS, labels.clone()).increment(1);
                metrics::histogram!(m::CHECKPOINT_DURATION, labels.clone()).record(secs);
                metrics::gauge!(m::CHECKPOINT_LAST_DURATION, labels.clone()).set(secs);
                metrics::gauge!(m::CHECKPOINT_SIZE, labels.clone()).set(done.bytes as f64);
                metrics::gauge!(m::CHECKPOINT_EPOCH, labels.clone()).set(done.epoch as f64);
                metrics::gauge!(m::CHECKPOINT_LAST_SUCCESS, labels.clone())
                    .set(now_ms() as f64 / 1000.0);
                tracing::debug!(
                    epoch = done.epoch,
                    bytes = done.bytes,
                    duration_ms = done.duration.as_millis() as u64,
                    "checkpoint durable"
                );
                if let (Some(c), Some(inbound)) = (&self.cluster, self.inflight_inbound.take()) {
                    c.committed(&inbound);
                }
                Event::WriteDone { epoch: done.epoch }
            }
        };
        let actions = self.protocol.handle(event);
        self.execute(actions);
    }
}
