//! The librdkafka callbacks of the source's consumer: rebalances (assign
//! each partition at its checkpointed offset, else at `start`), commit
//! results and statistics (high watermarks, for the lag metric).
//!
//! Callbacks run inside `BaseConsumer::poll`, on the source's own thread;
//! they only record what happened in [`Shared`] and the poll loop acts on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::Offset;
use sluice_engine::metrics as m;
use sluice_engine::source::SourceHealth;

use super::positions::TopicPartition;
use crate::kafka::ErrorLog;

/// A change of assignment, for the poll loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

/// State shared by the callbacks and the poll loop.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Next offset to read per partition: restored from the checkpoint,
    /// then advanced as batches are emitted. A partition (re)assigned to
    /// this consumer starts there.
    pub next: HashMap<TopicPartition, i64>,
    /// Assignment changes not yet handled by the poll loop.
    pub changes: Vec<Change>,
    /// High watermarks from the last statistics.
    pub high: HashMap<TopicPartition, i64>,
}

/// The consumer's context.
pub(super) struct KafkaContext {
    source: Arc<str>,
    /// Where a partition without a position starts.
    start: Offset,
    labels: Vec<metrics::Label>,
    shared: Mutex<Shared>,
    errors: ErrorLog,
    /// Down while librdkafka reports all brokers down, up again once
    /// its statistics show a broker up.
    health: Arc<SourceHealth>,
}

impl KafkaContext {
    pub(super) fn new(
        source: Arc<str>,
        start: Offset,
        labels: Vec<metrics::Label>,
        next: HashMap<TopicPartition, i64>,
        health: Arc<SourceHealth>,
    ) -> Self {
        KafkaContext {
            source,
            start,
            labels,
            shared: Mutex::new(Shared {
                next,
                ..Shared::default()
            }),
            errors: ErrorLog::default(),
            health,
        }
    }

    /// Locks the shared state (a poisoned lock is still usable: the state
    /// is plain data).
    pub(super) fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn topic_partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
        tpl.elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect()
    }
}

impl ClientContext for KafkaContext {
    fn stats(&self, stats: Statistics) {
        if stats.brokers.values().any(|b| b.state == "UP") {
            self.health.up();
        }
        let mut shared = self.shared();
        for (topic, t) in stats.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.hi_offset >= 0 {
                    shared.high.insert((topic.clone(), partition), p.hi_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health
                .down(format!("all Kafka brokers are down: {reason}"));
        }
        metrics::counter!(m::ERRORS, m::with_error(&self.labels, "kafka_client")).increment(1);
        if let Some(total) = self.errors.should_log() {
            tracing::warn!(source = %self.source, error = %crate::kafka::describe(&error),
                reason, total, "Kafka client error");
        }
    }
}

impl ConsumerContext for KafkaContext {
    /// Replaces librdkafka's default rebalance: newly assigned partitions
    /// are assigned *at* their start offsets (no seek after the fact).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let tps = Self::topic_partitions(tpl);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut shared = self.shared();
                for (topic, partition) in &tps {
                    let offset = shared
                        .next
                        .get(&(topic.clone(), *partition))
                        .map_or(self.start, |&n| Offset::Offset(n));
                    if let Err(e) = tpl.set_partition_offset(topic, *partition, offset) {
                        tracing::warn!(source = %self.source, topic, partition, error = %e, "cannot set the start offset");
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match result {
                    Ok(()) => {
                        tracing::info!(source = %self.source, partitions = ?tps, "partitions assigned");
                        shared.changes.push(Change::Assigned(tps));
                    }
                    Err(e) => {
                        tracing::error!(source = %self.source, error = %e, "assigning partitions failed")
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::warn!(source = %self.source, error = %e, "unassigning partitions failed");
                }
                tracing::info!(source = %self.source, partitions = ?tps, "partitions revoked");
                self.shared().changes.push(Change::Revoked(tps));
            }
            other => {
                // librdkafka's advice for rebalance errors: drop the assignment.
                tracing::error!(source = %self.source, error = ?other, "rebalance failed");
                let _ = consumer.unassign();
                self.shared().changes.push(Change::Revoked(tps));
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            metrics::counter!(m::ERRORS, m::with_error(&self.labels, "kafka_commit")).increment(1);
            tracing::warn!(source = %self.source, error = %crate::kafka::describe(&e),
                partitions = offsets.count(),
                "committing offsets to Kafka failed (the next checkpoint commits again)");
        }
    }
}
