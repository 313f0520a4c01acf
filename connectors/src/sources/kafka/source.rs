//! The consumer loop: a librdkafka `BaseConsumer` polled on a dedicated
//! thread, batching events per partition and emitting them with their
//! positions; offsets go to Kafka only when a checkpoint's [`Commit`]
//! arrives.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_engine::metrics as m;
use sluice_engine::source::{
    BoxFuture, Commit, RawBatch, RawEvent, Source, SourceContext, SourceError,
};

use super::config::{KafkaSourceConfig, StartFrom};
use super::context::{Change, KafkaContext};
use super::positions::{self, reached_end, PartitionIds, TopicPartition};
use crate::kafka::{client_config, close_with_timeout, describe};
use crate::lines::OVERSIZED_KEEP;

/// How long metadata and watermark requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the lag gauge is updated.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// A configured Kafka source.
pub struct KafkaSource {
    config: KafkaSourceConfig,
    /// One of several workers sharing the consumer group: this worker's id.
    shared: Option<u32>,
}

impl KafkaSource {
    pub fn new(config: KafkaSourceConfig) -> Self {
        KafkaSource {
            config,
            shared: None,
        }
    }

    /// A source of one of several workers: partition ids are the same on
    /// every worker, and a partition this worker has no position for starts
    /// at the group's committed offset (where the worker that read it
    /// before released it), else at `start`.
    /// The default `group_instance_id` then names the worker too, so that
    /// workers on one host do not fence each other.
    pub fn shared(mut self, worker: u32) -> Self {
        self.shared = Some(worker);
        self
    }
}

impl Source for KafkaSource {
    fn distribution(&self) -> sluice_engine::source::Distribution {
        sluice_engine::source::Distribution::SharedPartitions
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        let config = self.config;
        let shared = self.shared;
        Box::pin(async move {
            let name = ctx.name.clone();
            tokio::task::spawn_blocking(move || run_blocking(config, shared, ctx))
                .await
                .map_err(|e| {
                    SourceError::Internal(format!("kafka source `{name}` panicked: {e}"))
                })?
        })
    }
}

type KafkaConsumer = BaseConsumer<KafkaContext>;

/// An assigned partition and the batch being collected for it.
struct Part {
    tp: TopicPartition,
    id: u32,
    /// Next offset to read (None: nothing read and no checkpoint yet).
    next: Option<i64>,
    /// `next` as of the last emitted batch.
    emitted: Option<i64>,
    buf: Vec<u8>,
    events: Vec<RawEvent>,
    bytes: u64,
    /// Bounded runs: the end offset, and where an unread partition starts.
    end: Option<i64>,
    start_at: Option<i64>,
    done: bool,
}

struct Runner {
    config: KafkaSourceConfig,
    ctx: SourceContext,
    consumer: KafkaConsumer,
    ids: PartitionIds,
    parts: Vec<Part>,
    /// Offsets covered by a durable checkpoint.
    durable: HashMap<TopicPartition, i64>,
    /// Offsets last committed to Kafka.
    committed: HashMap<TopicPartition, i64>,
    labels: Vec<metrics::Label>,
    /// An assignment was received (bounded runs finish only after one).
    assigned_once: bool,
    /// Every partition of the subscribed topics, from the metadata read at
    /// start: a bounded run reads all of them to their end.
    expected: Vec<TopicPartition>,
    /// Bounded runs: the partitions this consumer has read to their end.
    finished: HashSet<TopicPartition>,
    /// Bounded runs: when waiting for unassigned partitions was last logged.
    waiting_logged: Option<Instant>,
    skipped: u64,
    errors: u64,
}

fn external(what: &str) -> impl FnOnce(KafkaError) -> SourceError + '_ {
    move |e| SourceError::External(format!("{what}: {}", describe(&e)))
}

fn run_blocking(
    config: KafkaSourceConfig,
    shared: Option<u32>,
    ctx: SourceContext,
) -> Result<(), SourceError> {
    if config.topics.is_empty() {
        return Err(SourceError::Config("`topics` is empty".into()));
    }
    let (mut ids, next) = PartitionIds::restore(&ctx.restored)
        .map_err(|e| SourceError::Config(format!("source `{}`: {e}", ctx.name)))?;
    if shared.is_some() {
        ids.fix(&config.topics);
    }
    let labels = m::component_labels(&ctx.pipeline, &ctx.name, "source");
    let start = match config.start {
        // the committed offset, else `auto.offset.reset` (= `start`)
        _ if shared.is_some() => Offset::Stored,
        StartFrom::Earliest => Offset::Beginning,
        StartFrom::Latest => Offset::End,
    };
    let mut own = vec![
        ("group.id", config.group_id.clone()),
        ("enable.auto.commit", "false".to_string()),
        ("enable.auto.offset.store", "false".to_string()),
        ("auto.offset.reset", reset_policy(config.start).to_string()),
        ("statistics.interval.ms", "5000".to_string()),
    ];
    if let Some(id) = config.instance_id() {
        let id = match (shared, &config.group_instance_id) {
            (Some(worker), None) => format!("{id}-worker-{worker}"),
            _ => id,
        };
        own.push(("group.instance.id", id));
    }
    let context = KafkaContext::new(
        ctx.name.clone(),
        start,
        labels.clone(),
        next.clone(),
        ctx.output.health().clone(),
    );
    let consumer: KafkaConsumer = client_config(&config.brokers, &own, &config.options)
        .create_with_context(context)
        .map_err(|e| {
            SourceError::Config(format!("kafka source `{}`: {}", ctx.name, describe(&e)))
        })?;
    let mut runner = Runner {
        config,
        ctx,
        consumer,
        ids,
        parts: Vec::new(),
        durable: next,
        committed: HashMap::new(),
        labels,
        assigned_once: false,
        expected: Vec::new(),
        finished: HashSet::new(),
        waiting_logged: None,
        skipped: 0,
        errors: 0,
    };
    let result = runner.run();
    let Runner {
        consumer, config, ..
    } = runner;
    close_with_timeout(consumer, config.close_timeout.0, "kafka source consumer");
    result
}

fn reset_policy(start: StartFrom) -> &'static str {
    match start {
        StartFrom::Earliest => "earliest",
        StartFrom::Latest => "latest",
    }
}

impl Runner {
    fn stopping(&self) -> bool {
        *self.ctx.shutdown.borrow()
    }

    fn run(&mut self) -> Result<(), SourceError> {
        if !self.check_topics()? {
            return Ok(());
        }
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .map_err(external("subscribing failed"))?;
        // Ready without partitions too (more workers than partitions).
        self.ctx.output.health().up();
        let mut last_lag = Instant::now();
        loop {
            if self.stopping() {
                self.finish(Some(self.config.close_timeout.0));
                return Ok(());
            }
            self.take_commits(CommitMode::Async);
            self.handle_changes()?;
            if self.ctx.bounded && self.all_done() {
                self.finish(None);
                return Ok(());
            }
            self.poll_batch()?;
            if !self.emit_batches() {
                return Ok(()); // the pipeline is shutting down
            }
            if self.ctx.bounded {
                self.mark_done();
            }
            if last_lag.elapsed() >= LAG_INTERVAL {
                self.report_lag();
                last_lag = Instant::now();
            }
        }
    }

    /// Fails with a precise message when a topic does not exist; waits
    /// (and retries) while the brokers cannot be reached. False on shutdown.
    fn check_topics(&mut self) -> Result<bool, SourceError> {
        for topic in &self.config.topics {
            let mut attempt = 0u32;
            loop {
                if self.stopping() {
                    return Ok(false);
                }
                match self.consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT) {
                    Ok(meta) => {
                        let t = meta.topics().iter().find(|t| t.name() == topic);
                        let missing = match t {
                            None => true,
                            Some(t) => t.error().is_some() || t.partitions().is_empty(),
                        };
                        if let Some(t) = t.filter(|_| !missing) {
                            self.expected
                                .extend(t.partitions().iter().map(|p| (topic.clone(), p.id())));
                        }
                        if missing {
                            return Err(SourceError::Config(format!(
                                "kafka source `{}`: topic `{topic}` does not exist on {}; create it first (sluice does not create topics)",
                                self.ctx.name,
                                self.config.brokers.join(",")
                            )));
                        }
                        break;
                    }
                    Err(e) => {
                        let delay = Duration::from_millis(500 << attempt.min(5));
                        tracing::warn!(source = %self.ctx.name, brokers = %self.config.brokers.join(","),
                            error = %describe(&e), ?delay, "cannot reach the Kafka brokers; retrying");
                        self.sleep_unless_stopping(delay);
                        attempt += 1;
                    }
                }
            }
        }
        Ok(true)
    }

    /// Sleeps for `delay`, waking up early at shutdown.
    fn sleep_unless_stopping(&self, delay: Duration) {
        let until = Instant::now() + delay;
        while !self.stopping() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Applies assignment changes recorded by the rebalance callback.
    fn handle_changes(&mut self) -> Result<(), SourceError> {
        let changes = std::mem::take(&mut self.consumer.context().shared().changes);
        for change in changes {
            match change {
                Change::Assigned(tps) => self.assign(tps)?,
                Change::Revoked(tps) => self.revoke(&tps),
            }
        }
        Ok(())
    }

    fn assign(&mut self, tps: Vec<TopicPartition>) -> Result<(), SourceError> {
        let first = !self.assigned_once;
        self.assigned_once = true;
        let mut ids = Vec::new();
        let mut commit = TopicPartitionList::new();
        for tp in tps {
            if self.parts.iter().any(|p| p.tp == tp) {
                continue;
            }
            let id = self.ids.id(&tp.0, tp.1);
            let next = self.consumer.context().shared().next.get(&tp).copied();
            let (end, start_at) = if self.ctx.bounded {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(&tp.0, tp.1, REQUEST_TIMEOUT)
                    .map_err(external("reading the end offsets failed"))?;
                let start_at = (self.config.start == StartFrom::Earliest).then_some(low);
                (Some(high), start_at)
            } else {
                (None, None)
            };
            // Positions restored from the checkpoint are durable: commit them.
            if let Some(&offset) = self.durable.get(&tp) {
                if self.committed.get(&tp) != Some(&offset) {
                    let _ = commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(offset));
                    self.committed.insert(tp.clone(), offset);
                }
            }
            ids.push(id);
            self.parts.push(Part {
                tp,
                id,
                next,
                emitted: next,
                buf: Vec::new(),
                events: Vec::new(),
                bytes: 0,
                end,
                start_at,
                done: false,
            });
        }
        if commit.count() > 0 {
            if let Err(e) = self.consumer.commit(&commit, CommitMode::Async) {
                tracing::warn!(source = %self.ctx.name, error = %describe(&e), "committing restored offsets failed");
            }
        }
        if first {
            // Partitions of the checkpoint that the group gave to another
            // worker: their restored event times must not hold the
            // watermark back.
            let others: Vec<u32> = self
                .ids
                .known()
                .filter(|id| !self.parts.iter().any(|p| p.id == *id))
                .collect();
            if !others.is_empty() {
                let _ = self.ctx.output.partitions_released_blocking(others);
            }
        }
        if !ids.is_empty() {
            // Err: the pipeline is shutting down, which the loop notices.
            let _ = self.ctx.output.partitions_blocking(ids);
        }
        Ok(())
    }

    /// Stops reading revoked partitions: what was collected but not emitted
    /// is dropped (the next owner reads it); what was emitted is covered by
    /// the next checkpoint. They are released, not finished: they no longer
    /// hold the watermark back, but a rebalance that revokes every
    /// partition (the eager protocol does, on any member change) must not
    /// move the watermark to the end of time and close every window.
    fn revoke(&mut self, tps: &[TopicPartition]) {
        let (gone, kept): (Vec<Part>, Vec<Part>) = std::mem::take(&mut self.parts)
            .into_iter()
            .partition(|p| tps.contains(&p.tp));
        self.parts = kept;
        let mut released = Vec::with_capacity(gone.len());
        for p in gone {
            self.committed.remove(&p.tp);
            released.push(p.id);
        }
        if !released.is_empty() {
            let _ = self.ctx.output.partitions_released_blocking(released);
        }
    }

    /// Polls up to `max_poll_records` events (waiting at most `poll_timeout`
    /// for the first one) into the per-partition batches.
    fn poll_batch(&mut self) -> Result<(), SourceError> {
        let max_records = self.config.max_poll_records.max(1);
        // Event starts are u32 offsets into the batch buffer.
        let max_bytes = self.config.max_batch_bytes.clamp(1, 1 << 30) as u64;
        let max_event = self.ctx.output.max_event_bytes();
        let mut records = 0usize;
        let mut bytes = 0u64;
        let mut timeout = self.config.poll_timeout.0;
        let mut last = 0usize;
        while records < max_records && bytes < max_bytes {
            let Some(result) = self.consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            let msg = match result {
                Ok(msg) => msg,
                Err(e) => {
                    self.on_poll_error(e)?;
                    continue;
                }
            };
            let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
            let found = if self
                .parts
                .get(last)
                .is_some_and(|p| p.tp.1 == partition && p.tp.0 == topic)
            {
                Some(last)
            } else {
                self.parts
                    .iter()
                    .position(|p| p.tp.1 == partition && p.tp.0 == topic)
            };
            let Some(i) = found else {
                continue; // revoked meanwhile
            };
            last = i;
            let part = &mut self.parts[i];
            if part.next.is_some_and(|n| offset < n) || part.end.is_some_and(|e| offset >= e) {
                // Already read (a broker re-sending old offsets), or past the
                // end of a bounded run.
                self.skipped += 1;
                if self.skipped.is_power_of_two() {
                    tracing::debug!(source = %self.ctx.name, topic, partition, offset, skipped = self.skipped,
                        "skipping an event before the position or after the end");
                }
                continue;
            }
            let payload = msg.payload().unwrap_or_default();
            let len = payload.len();
            let (kept, oversized) = if len > max_event {
                (&payload[..OVERSIZED_KEEP.min(len)], Some(len as u64))
            } else {
                (payload, None)
            };
            part.events.push(RawEvent {
                start: part.buf.len() as u32,
                len: kept.len() as u32,
                offset: offset as u64,
                oversized,
            });
            part.buf.extend_from_slice(kept);
            part.bytes += len as u64;
            part.next = Some(offset + 1);
            records += 1;
            bytes += len as u64;
        }
        Ok(())
    }

    fn on_poll_error(&mut self, e: KafkaError) -> Result<(), SourceError> {
        if let Some((code, reason)) = self.consumer.client().fatal_error() {
            let hint = if code == RDKafkaErrorCode::FencedInstanceId {
                " (another consumer joined the group with the same group_instance_id: do two workers share a host name?)"
            } else {
                ""
            };
            return Err(SourceError::External(format!(
                "kafka source `{}`: fatal consumer error: {reason} ({code:?}){hint}",
                self.ctx.name
            )));
        }
        self.errors += 1;
        metrics::counter!(m::ERRORS, m::with_error(&self.labels, "kafka_consume")).increment(1);
        if self.errors.is_power_of_two() {
            tracing::warn!(source = %self.ctx.name, error = %describe(&e), total = self.errors, "Kafka consumer error");
        }
        Ok(())
    }

    /// Emits the collected batches. False when the pipeline is shutting down.
    fn emit_batches(&mut self) -> bool {
        for part in &mut self.parts {
            if part.events.is_empty() {
                continue;
            }
            let Some(next) = part.next else { continue };
            let batch = RawBatch {
                partition: part.id,
                buf: Arc::new(std::mem::take(&mut part.buf)),
                events: std::mem::take(&mut part.events),
                position: positions::encode(&part.tp.0, part.tp.1, next),
                bytes: std::mem::take(&mut part.bytes),
            };
            if self.ctx.output.emit_blocking(batch).is_err() {
                return false;
            }
            part.emitted = Some(next);
            self.consumer
                .context()
                .shared()
                .next
                .insert(part.tp.clone(), next);
        }
        true
    }

    /// Bounded runs: partitions at their end offset no longer hold the
    /// watermark back.
    fn mark_done(&mut self) {
        for part in &mut self.parts {
            if part.done {
                continue;
            }
            let Some(end) = part.end else { continue };
            if part.events.is_empty() && reached_end(part.next, part.start_at, end) {
                part.done = true;
                self.finished.insert(part.tp.clone());
                let _ = self.ctx.output.partition_done_blocking(part.id);
            }
        }
    }

    /// Bounded runs: done once every partition of the topics was read to
    /// its end by this consumer. An empty assignment, or partitions held by
    /// another member of the group, are waited for (and logged), never
    /// taken for the end of the input.
    fn all_done(&mut self) -> bool {
        self.mark_done();
        if !(self.assigned_once && self.parts.iter().all(|p| p.done)) {
            return false;
        }
        let missing: Vec<String> = self
            .expected
            .iter()
            .filter(|tp| !self.finished.contains(*tp))
            .map(|(t, p)| format!("{t}[{p}]"))
            .collect();
        if missing.is_empty() {
            return true;
        }
        if self
            .waiting_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
        {
            self.waiting_logged = Some(Instant::now());
            tracing::warn!(source = %self.ctx.name, group = %self.config.group_id, partitions = %missing.join(", "),
                "bounded run: these partitions are not assigned to this consumer (another member of the group holds them, or a rebalance is pending); waiting for them, to read every partition to its end");
        }
        false
    }

    /// Applies the commits received so far: remembers their offsets as
    /// durable and commits those of assigned partitions to Kafka. False
    /// once the processor is gone.
    fn take_commits(&mut self, mode: CommitMode) -> bool {
        loop {
            match self.ctx.commits.try_recv() {
                Ok(commit) => self.record_commit(commit),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        self.commit_durable(mode, false);
        true
    }

    fn record_commit(&mut self, commit: Commit) {
        for bytes in commit.positions.values() {
            if let Some(pos) = positions::decode(bytes) {
                let e = self
                    .durable
                    .entry((pos.topic, pos.partition))
                    .or_insert(pos.next);
                *e = (*e).max(pos.next);
            }
        }
    }

    /// Commits the durable offsets of assigned partitions that changed (all
    /// of them with `force`).
    fn commit_durable(&mut self, mode: CommitMode, force: bool) {
        let mut tpl = TopicPartitionList::new();
        for part in &self.parts {
            let Some(&offset) = self.durable.get(&part.tp) else {
                continue;
            };
            if force || self.committed.get(&part.tp) != Some(&offset) {
                let _ = tpl.add_partition_offset(&part.tp.0, part.tp.1, Offset::Offset(offset));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match self.consumer.commit(&tpl, mode) {
            Ok(()) => {
                for e in tpl.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        self.committed
                            .insert((e.topic().to_string(), e.partition()), o);
                    }
                }
            }
            Err(e) => {
                metrics::counter!(m::ERRORS, m::with_error(&self.labels, "kafka_commit"))
                    .increment(1);
                tracing::warn!(source = %self.ctx.name, error = %describe(&e),
                    "committing offsets to Kafka failed (the next checkpoint commits again)");
            }
        }
    }

    /// Waits for the checkpoint covering every emitted batch (at most
    /// `timeout`; None: until it comes or shutdown), then commits its
    /// offsets synchronously.
    fn finish(&mut self, timeout: Option<Duration>) {
        let started = Instant::now();
        loop {
            let open = self.take_commits(CommitMode::Async);
            let covered = self.parts.iter().all(|p| match p.emitted {
                None => true,
                Some(e) => self.durable.get(&p.tp).is_some_and(|&d| d >= e),
            });
            if covered || !open {
                break;
            }
            let expired = timeout.is_some_and(|t| started.elapsed() >= t);
            if expired || (timeout.is_none() && self.stopping()) {
                tracing::info!(source = %self.ctx.name,
                    "stopping before a checkpoint covered the last events read; their offsets are committed after the next start");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.commit_durable(CommitMode::Sync, true);
    }

    /// `sluice_source_lag_events`: high watermark - position, summed over
    /// the assigned partitions.
    fn report_lag(&self) {
        let shared = self.consumer.context().shared();
        let mut lag = 0i64;
        for part in &self.parts {
            let (Some(&high), Some(next)) = (shared.high.get(&part.tp), part.emitted) else {
                continue;
            };
            lag += (high - next).max(0);
        }
        metrics::gauge!(m::SOURCE_LAG, self.labels.clone()).set(lag as f64);
    }
}
