//! The checkpoint protocol of the processor (steps 1-4 in the `processor`
//! module docs): building epoch `e`'s sled batch for the writer thread, and,
//! once it is durable, handing the outboxes to the sinks and the positions
//! to the sources.

use super::*;

impl Processor {
    pub(super) fn start_checkpoint(&mut self) {
        let started = Instant::now();
        // 1. continuous aggregates emit their changed results
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
        // 2. one atomic batch
        self.epoch += 1;
        let epoch = self.epoch;
        let mut batch = sled::Batch::default();
        let mut bytes = 0u64;
        let mut put = |batch: &mut sled::Batch, k: Vec<u8>, v: Vec<u8>| {
            bytes += (k.len() + v.len()) as u64;
            batch.insert(k, v);
        };
        for (t, op) in self.operators.iter_mut().enumerate() {
            if !self.stateful[t] {
                continue;
            }
            let Some(op) = op.as_mut() else { continue };
            let name = &self.names[self.n_sources + t];
            let mut w = StateWriter::default();
            op.snapshot(&mut w);
            for (kg, k, v) in w.entries {
                let full = key::state(name, kg, &k);
                match v {
                    Some(v) => put(&mut batch, full, v),
                    None => batch.remove(full),
                }
            }
            let stats = op.state_stats();
            let labels = m::component_labels(&self.pipeline, name, "transform");
            metrics::gauge!(m::STATE_KEYS, labels.clone()).set(stats.keys as f64);
            metrics::gauge!(m::STATE_BYTES, labels.clone()).set(stats.bytes as f64);
        }
        for (name, sig) in &self.signatures {
            put(&mut batch, key::signature(name), sig.as_bytes().to_vec());
        }
        if self.positions_dirty {
            for (s, parts) in self.positions.iter().enumerate() {
                for (&p, pos) in parts {
                    put(&mut batch, key::position(&self.sources[s], p), pos.clone());
                }
                for (p, t) in self.tracker.max_times(s) {
                    put(
                        &mut batch,
                        key::watermark(&self.sources[s], p),
                        t.to_be_bytes().to_vec(),
                    );
                }
            }
            self.positions_dirty = false;
        }
        let mut outboxes = Vec::new();
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            if !sink.outbox.records.is_empty() {
                let records = sink.outbox.take();
                put(&mut batch, key::outbox(&sink.name, epoch), encode(&records));
                sink.stored.insert(epoch);
                sink.pending.insert(epoch);
                outboxes.push((i, Arc::new(records)));
            }
            if sink.ack_dirty {
                if let Some(ack) = &sink.ack {
                    put(&mut batch, key::ack(&sink.name), encode(ack));
                    let covered: Vec<u64> = sink.stored.range(..=ack.epoch).copied().collect();
                    for e in covered {
                        batch.remove(key::outbox(&sink.name, e));
                        sink.stored.remove(&e);
                    }
                }
                sink.ack_dirty = false;
            }
        }
        put(
            &mut batch,
            key::EPOCH.to_vec(),
            epoch.to_be_bytes().to_vec(),
        );
        put(
            &mut batch,
            key::FORMAT.to_vec(),
            FORMAT_VERSION.to_be_bytes().to_vec(),
        );
        put(
            &mut batch,
            key::KEY_GROUPS.to_vec(),
            self.key_groups.to_be_bytes().to_vec(),
        );
        self.inflight = Some(Inflight {
            epoch,
            positions: self.positions.clone(),
            outboxes,
        });
        self.changed = false;
        let job = CheckpointJob {
            epoch,
            batch,
            bytes,
            started,
        };
        if self.jobs.send(job).is_err() {
            self.failure = Some(RunError::Checkpoint(CheckpointError::WriterStopped));
        }
    }

    pub(super) fn on_checkpoint_done(&mut self, done: CheckpointDone) {
        let labels = m::pipeline_labels(&self.pipeline);
        if let Err(error) = done.result {
            metrics::counter!(m::CHECKPOINT_FAILURES, labels.clone()).increment(1);
            tracing::error!(epoch = done.epoch, error = %Report(&error), "checkpoint failed; stopping (the previous checkpoint is intact)");
            self.failure = Some(RunError::Checkpoint(error));
            return;
        }
        metrics::counter!(m::CHECKPOINTS, labels.clone()).increment(1);
        metrics::histogram!(m::CHECKPOINT_DURATION, labels.clone())
            .record(done.duration.as_secs_f64());
        metrics::gauge!(m::CHECKPOINT_LAST_DURATION, labels.clone())
            .set(done.duration.as_secs_f64());
        metrics::gauge!(m::CHECKPOINT_SIZE, labels.clone()).set(done.bytes as f64);
        metrics::gauge!(m::CHECKPOINT_EPOCH, labels.clone()).set(done.epoch as f64);
        metrics::gauge!(m::CHECKPOINT_LAST_SUCCESS, labels.clone()).set(now_ms() as f64 / 1000.0);
        tracing::debug!(
            epoch = done.epoch,
            bytes = done.bytes,
            duration_ms = done.duration.as_millis() as u64,
            "checkpoint durable"
        );
        let Some(inflight) = self.inflight.take() else {
            return;
        };
        debug_assert_eq!(inflight.epoch, done.epoch);
        for (sink, records) in inflight.outboxes {
            if let Some(tx) = &self.sinks[sink].tx {
                let _ = tx.send(SinkEpoch {
                    epoch: inflight.epoch,
                    records,
                });
            }
        }
        for (s, positions) in inflight.positions.into_iter().enumerate() {
            if !positions.is_empty() {
                let _ = self.commit_txs[s].send(Commit {
                    epoch: inflight.epoch,
                    positions,
                });
            }
        }
    }
}
