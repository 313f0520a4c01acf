//! Write fencing shared by the sinks that update data in place (Redis,
//! PostgreSQL): every write carries a fence `generation * 2^40 + epoch`,
//! and a destination keeps a value unless the incoming fence is at least
//! the one stored with it.
//!
//! The epoch is the checkpoint epoch the records were committed in, so
//! within one incarnation of a pipeline an older epoch replayed late can
//! never overwrite a newer one, while re-delivering the same epoch rewrites
//! the same values. The generation is drawn from the destination when a
//! sink starts from empty state (epochs restart at 1) and is kept in the
//! sink's checkpointed progress afterwards, so a pipeline whose state was
//! wiped or rebuilt supersedes what an earlier incarnation wrote.
//!
//! With several workers ([`WorkerId`], `workers > 1`) every worker writes
//! the keys of the key groups it owns into the same destination. The
//! progress then also records which (worker, workers) the generation was
//! drawn for, and a sink draws a fresh generation whenever that differs from
//! the current one (ownership of key groups moved), so a key group that
//! moves is written with a generation above every earlier writer's and a
//! stale former owner is fenced out. Each generation drawn by a worker is
//! recorded at the destination with its [`Writer`], and the start check
//! ([`unexplained_for`]) only looks at values of generations this worker of
//! this pipeline and sink drew: the other workers' values are theirs.

use serde::{Deserialize, Serialize};
use sluice_engine::cluster::WorkerId;
use sluice_engine::connector::ConnectorContext;

/// Epochs must stay below 2^40 (35,000 years of 1 s checkpoints).
pub const EPOCH_BITS: u32 = 40;

/// The fence of `epoch` in `generation`; None if out of range (the result
/// always fits a signed 64-bit integer).
pub fn fence(generation: u64, epoch: u64) -> Option<u64> {
    if epoch >= 1 << EPOCH_BITS || generation >= 1 << (63 - EPOCH_BITS) {
        return None;
    }
    Some((generation << EPOCH_BITS) | epoch)
}

/// The generation a fence was written in.
pub fn generation_of(fence: u64) -> u64 {
    fence >> EPOCH_BITS
}

/// The rule every destination applies: a write with fence `new` replaces a
/// value written with fence `stored` iff `stored <= new`.
pub fn accepts(stored: Option<u64>, new: u64) -> bool {
    match stored {
        None => true,
        Some(s) => s <= new,
    }
}

/// Progress bytes of a fenced sink: its generation.
pub fn encode_progress(generation: u64) -> Vec<u8> {
    generation.to_be_bytes().to_vec()
}

/// Reads progress written by [`encode_progress`].
pub fn decode_progress(progress: &[u8]) -> Option<u64> {
    progress.try_into().ok().map(u64::from_be_bytes)
}

/// Progress of a fenced sink: its generation and the (worker, workers) it
/// was drawn for. A single worker's progress is encoded as the 8 bytes of
/// [`encode_progress`], exactly as before workers existed; several
/// workers' as 16 bytes (generation, worker, workers, big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub generation: u64,
    pub worker: WorkerId,
}

impl Progress {
    pub fn encode(&self) -> Vec<u8> {
        if self.worker.is_single() {
            return encode_progress(self.generation);
        }
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.worker.worker.to_be_bytes());
        out.extend_from_slice(&self.worker.workers.to_be_bytes());
        out
    }

    /// Reads both encodings; 8 bytes (written before workers existed, or by
    /// a single worker) mean "the single worker".
    pub fn decode(progress: &[u8]) -> Option<Progress> {
        match progress.len() {
            8 => decode_progress(progress).map(|generation| Progress {
                generation,
                worker: WorkerId::SINGLE,
            }),
            16 => {
                let generation = u64::from_be_bytes(progress[..8].try_into().ok()?);
                let worker = u32::from_be_bytes(progress[8..12].try_into().ok()?);
                let workers = u32::from_be_bytes(progress[12..].try_into().ok()?);
                Some(Progress {
                    generation,
                    worker: WorkerId::new(worker, workers)?,
                })
            }
            _ => None,
        }
    }
}

/// What a sink does with its restored progress at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Keep writing with this generation.
    Keep(u64),
    /// Draw a new generation: there is no progress (fresh state), or it was
    /// drawn for another (worker, workers) (`previous`), i.e. the key
    /// groups this worker owns changed.
    Draw { previous: Option<Progress> },
}

/// Decides from the restored progress whether `worker` keeps its generation;
/// None when the progress cannot be read.
pub fn restored(progress: Option<&[u8]>, worker: WorkerId) -> Option<Restored> {
    let Some(bytes) = progress else {
        return Some(Restored::Draw { previous: None });
    };
    let p = Progress::decode(bytes)?;
    if p.worker == worker {
        Some(Restored::Keep(p.generation))
    } else {
        Some(Restored::Draw { previous: Some(p) })
    }
}

/// The generation a former owner of key groups wrote with, from its last
/// acknowledged progress ([`sluice_engine::sink::Sink::restore_former`]):
/// 0 when it acknowledged nothing (below every drawn generation, so its
/// output only fills keys nobody wrote since); None when the progress
/// cannot be read.
pub fn former_generation(progress: Option<&[u8]>) -> Option<u64> {
    match progress {
        None => Some(0),
        Some(bytes) => Progress::decode(bytes).map(|p| p.generation),
    }
}

/// Who writes through a fenced sink: recorded at the destination beside
/// every generation a worker of a multi-worker run draws.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    pub pipeline: String,
    pub sink: String,
    pub worker: u32,
    pub workers: u32,
}

impl Writer {
    /// A sink of a single-worker run (nothing is recorded for it).
    pub fn single(sink: &str) -> Writer {
        Writer {
            pipeline: String::new(),
            sink: sink.to_string(),
            worker: 0,
            workers: 1,
        }
    }

    /// The sink being built in `ctx`.
    pub fn of(ctx: &ConnectorContext<'_>) -> Writer {
        Writer {
            pipeline: ctx.pipeline.to_string(),
            sink: ctx.name.to_string(),
            worker: ctx.worker.worker,
            workers: ctx.worker.workers,
        }
    }

    pub fn worker_id(&self) -> WorkerId {
        WorkerId::new(self.worker, self.workers).unwrap_or(WorkerId::SINGLE)
    }

    /// True when several workers write (generations are recorded and the
    /// start check looks only at this worker's own generations).
    pub fn shared(&self) -> bool {
        !self.worker_id().is_single()
    }

    /// Whether a generation recorded for `other` is one of this worker's
    /// own (same pipeline, sink and worker number; the worker count may
    /// have changed since).
    pub fn same_worker(&self, other: &Writer) -> bool {
        self.pipeline == other.pipeline && self.sink == other.sink && self.worker == other.worker
    }

    /// The record stored at the destination (JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Option<Writer> {
        serde_json::from_str(text).ok()
    }
}

/// The epoch a fence was written in.
pub fn epoch_of(fence: u64) -> u64 {
    fence & ((1 << EPOCH_BITS) - 1)
}

/// What the newest fence at a destination (`newest`, None when it holds
/// none) shows that the restored state does not explain: values written
/// while the store holds no checkpoint (the state of an earlier run was
/// lost), by a newer write generation than the restored one, or in a newer
/// epoch of the same generation (the state is older than what the sink
/// saw). `progress` is the sink's restored progress (its generation).
pub fn unexplained(
    destination: &str,
    newest: Option<u64>,
    restored_epoch: u64,
    progress: Option<&[u8]>,
) -> Option<String> {
    unexplained_for(
        destination,
        newest,
        restored_epoch,
        progress,
        WorkerId::SINGLE,
    )
}

/// [`unexplained`] for `worker`. With several workers, `newest` must be the
/// newest fence among the generations this worker drew (see [`Writer`]),
/// and a restored progress drawn for another (worker, workers) is about to
/// be replaced by a new generation: like a missing progress, it gives
/// nothing to compare with.
pub fn unexplained_for(
    destination: &str,
    newest: Option<u64>,
    restored_epoch: u64,
    progress: Option<&[u8]>,
    worker: WorkerId,
) -> Option<String> {
    let newest = newest.filter(|&f| f > 0)?;
    let (g, e) = (generation_of(newest), epoch_of(newest));
    if restored_epoch == 0 {
        let who = if worker.is_single() {
            "an earlier run".to_string()
        } else {
            format!("an earlier run of this worker ({worker})")
        };
        return Some(format!(
            "{destination} holds values {who} wrote (write generation {g}, epoch {e})"
        ));
    }
    // Without progress the sink had not confirmed an epoch yet: its
    // generation was not recorded, so there is nothing to compare with.
    let restored = Progress::decode(progress?)?;
    if restored.worker != worker {
        return None;
    }
    let ours = restored.generation;
    if g > ours {
        Some(format!(
            "{destination} holds values of write generation {g}, newer than the restored state's \
             generation {ours}: another run wrote after this state was saved"
        ))
    } else if g == ours && e > restored_epoch {
        Some(format!(
            "{destination} holds values of epoch {e}, newer than the restored checkpoint \
             epoch {restored_epoch}: the state is older than what the sink already saw"
        ))
    } else {
        None
    }
}

/// Runs sinks through the engine's sink driver with a metrics recorder of
/// their own, to read what the driver exports for them.
#[cfg(test)]
pub(crate) mod driven {
    use std::sync::Arc;

    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
    use sluice_engine::sink::{drive_sink, RetryPolicy, Sink, SinkEpoch, SinkEvent, SinkRecord};
    use tokio::sync::mpsc;

    /// A recorder, and the runtime the driven sinks run on (the recorder is
    /// installed for this thread only while a sink is driven).
    pub(crate) struct Driver {
        pub recorder: PrometheusRecorder,
        pub rt: tokio::runtime::Runtime,
    }

    impl Driver {
        pub(crate) fn new() -> Driver {
            Driver {
                recorder: PrometheusBuilder::new().build_recorder(),
                rt: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap(),
            }
        }

        /// Restores `sink` from `restored` and writes one epoch through the
        /// sink driver of pipeline `pipeline`; returns the ack's progress.
        pub(crate) fn write(
            &self,
            pipeline: &str,
            name: &str,
            sink: Box<dyn Sink>,
            restored: Option<Vec<u8>>,
            epoch: u64,
            records: Vec<SinkRecord>,
        ) -> Option<Vec<u8>> {
            let (tx, rx) = mpsc::unbounded_channel();
            let (events, mut acks) = mpsc::unbounded_channel();
            tx.send(SinkEpoch {
                epoch,
                records: Arc::new(records),
            })
            .unwrap();
            drop(tx);
            let run = drive_sink(
                0,
                name.into(),
                pipeline.into(),
                sink,
                restored,
                rx,
                events,
                RetryPolicy::default(),
            );
            metrics::with_local_recorder(&self.recorder, || self.rt.block_on(run));
            match acks.try_recv() {
                Ok(SinkEvent::Acked { progress, .. }) => progress,
                other => panic!("expected the epoch's ack, got {other:?}"),
            }
        }

        /// Registers the pipeline's series as the runtime does at start.
        pub(crate) fn register(&self, pipeline: &str, name: &str) {
            metrics::with_local_recorder(&self.recorder, || {
                sluice_engine::metrics::register_pipeline(pipeline, &[], &[], &[name.to_string()])
            });
        }

        /// The value of `sluice_sink_fenced_writes_total` for the sink.
        pub(crate) fn fenced(&self, pipeline: &str, name: &str) -> Option<f64> {
            let text = self.recorder.handle().render();
            let series = format!(
                "{}{{pipeline=\"{pipeline}\",component=\"{name}\",component_kind=\"sink\"}} ",
                sluice_engine::metrics::SINK_FENCED_WRITES
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .and_then(|v| v.trim().parse().ok())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_the_state_does_not_explain() {
        let f = |g, e| fence(g, e);
        let p = encode_progress(3);
        assert_eq!(unexplained("t", None, 0, None), None);
        assert_eq!(unexplained("t", None, 9, Some(&p)), None);
        assert!(unexplained("t", f(3, 9), 0, None)
            .unwrap()
            .contains("earlier run"));
        assert_eq!(unexplained("t", f(3, 9), 9, Some(&p)), None);
        assert_eq!(unexplained("t", f(2, 90), 9, Some(&p)), None);
        assert!(unexplained("t", f(3, 10), 9, Some(&p))
            .unwrap()
            .contains("epoch 10"));
        assert!(unexplained("t", f(4, 1), 9, Some(&p))
            .unwrap()
            .contains("generation 4"));
        assert_eq!(unexplained("t", f(4, 1), 9, None), None);
    }

    #[test]
    fn progress_keeps_the_worker_and_reads_the_old_encoding() {
        let two = |w| WorkerId::new(w, 2).unwrap();
        let single = Progress {
            generation: 7,
            worker: WorkerId::SINGLE,
        };
        assert_eq!(
            single.encode(),
            encode_progress(7),
            "a single worker's bytes are unchanged"
        );
        assert_eq!(Progress::decode(&encode_progress(7)), Some(single));
        let p = Progress {
            generation: 9,
            worker: two(1),
        };
        assert_eq!(p.encode().len(), 16);
        assert_eq!(Progress::decode(&p.encode()), Some(p));
        assert_eq!(Progress::decode(b"bad"), None);
        let mut bad = p.encode();
        bad[11] = 5; // worker 5 of 2
        assert_eq!(Progress::decode(&bad), None);
        // keep the generation only for the same (worker, workers)
        assert_eq!(
            restored(None, two(1)),
            Some(Restored::Draw { previous: None })
        );
        assert_eq!(restored(Some(&p.encode()), two(1)), Some(Restored::Keep(9)));
        assert_eq!(
            restored(Some(&p.encode()), WorkerId::new(1, 3).unwrap()),
            Some(Restored::Draw { previous: Some(p) })
        );
        assert_eq!(
            restored(Some(&encode_progress(7)), two(0)),
            Some(Restored::Draw {
                previous: Some(single)
            })
        );
        assert_eq!(
            restored(Some(&encode_progress(7)), WorkerId::SINGLE),
            Some(Restored::Keep(7))
        );
        assert_eq!(restored(Some(b"bad"), WorkerId::SINGLE), None);
    }

    #[test]
    fn a_worker_compares_only_with_its_own_progress() {
        let w1 = WorkerId::new(1, 2).unwrap();
        let f = |g, e| fence(g, e);
        let ours = Progress {
            generation: 3,
            worker: w1,
        }
        .encode();
        assert!(unexplained_for("t", f(3, 9), 0, None, w1)
            .unwrap()
            .contains("worker 1 of 2"));
        assert_eq!(unexplained_for("t", f(3, 9), 9, Some(&ours), w1), None);
        assert!(unexplained_for("t", f(4, 1), 9, Some(&ours), w1)
            .unwrap()
            .contains("generation 4"));
        assert!(unexplained_for("t", f(3, 10), 9, Some(&ours), w1)
            .unwrap()
            .contains("epoch 10"));
        // progress of another (worker, workers) is replaced at restore
        let moved = WorkerId::new(1, 3).unwrap();
        assert_eq!(unexplained_for("t", f(4, 1), 9, Some(&ours), moved), None);
        let w = Writer {
            pipeline: "p".into(),
            sink: "s".into(),
            worker: 1,
            workers: 2,
        };
        assert_eq!(Writer::from_json(&w.to_json()), Some(w.clone()));
        assert!(w.same_worker(&Writer {
            workers: 3,
            ..w.clone()
        }));
        assert!(!w.same_worker(&Writer {
            worker: 0,
            ..w.clone()
        }));
        assert!(!w.same_worker(&Writer {
            pipeline: "q".into(),
            ..w.clone()
        }));
        assert!(w.shared());
        assert!(!Writer::single("s").shared());
    }

    #[test]
    fn generations_order_before_epochs() {
        let f = |g, e| fence(g, e).unwrap();
        assert!(f(1, 5) > f(1, 3));
        assert!(f(2, 1) > f(1, (1 << 40) - 1));
        assert_eq!(generation_of(f(7, 123)), 7);
        assert_eq!(fence(1, 1 << 40), None);
        assert_eq!(fence(1 << 23, 1), None);
        assert!(fence((1 << 23) - 1, (1 << 40) - 1).unwrap() <= i64::MAX as u64);
        assert!(accepts(None, f(1, 1)));
        assert!(accepts(Some(f(1, 5)), f(1, 5)), "re-delivery rewrites");
        assert!(
            !accepts(Some(f(1, 5)), f(1, 3)),
            "an older epoch never overwrites"
        );
        assert!(accepts(Some(f(1, 900)), f(2, 1)), "a new generation wins");
        assert_eq!(decode_progress(&encode_progress(42)), Some(42));
        assert_eq!(decode_progress(b"bad"), None);
    }
}
