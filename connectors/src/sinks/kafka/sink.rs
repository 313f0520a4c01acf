//! Producing one epoch's records and waiting until every one of them is
//! delivered (or failed) before acknowledging the epoch.
//!
//! Delivery reports come back through the producer context (no future per
//! message): each message carries `(write generation, record index)` as
//! its opaque; the context counts what is outstanding for the current
//! write and wakes the writer when nothing is. Reports of an abandoned
//! write (a retried epoch) are ignored.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use sluice_engine::batch::RowKind;
use sluice_engine::json::write_value;
use sluice_engine::sink::{Sink, SinkError, SinkRecord, WriteOutcome};
use sluice_engine::source::BoxFuture;
use tokio::sync::Notify;

use super::config::KafkaSinkConfig;
use crate::kafka::{client_config, close_with_timeout, describe, ErrorLog};

/// How long a metadata request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Records per write generation are indexed with the low 32 bits.
const INDEX_BITS: u32 = 32;

/// Delivery bookkeeping of the current write.
#[derive(Debug, Default)]
struct Deliveries {
    generation: usize,
    outstanding: usize,
    /// `(record index, error)` of failed deliveries.
    failed: Vec<(usize, KafkaError)>,
}

/// The producer's context: collects delivery reports.
#[derive(Default)]
pub(super) struct SinkContext {
    deliveries: Mutex<Deliveries>,
    done: Notify,
    errors: ErrorLog,
}

impl SinkContext {
    fn deliveries(&self) -> MutexGuard<'_, Deliveries> {
        self.deliveries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(total) = self.errors.should_log() {
            tracing::warn!(error = %describe(&error), reason, total, "Kafka producer error");
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let generation = opaque >> INDEX_BITS;
        let index = opaque & ((1 << INDEX_BITS) - 1);
        let mut d = self.deliveries();
        if generation != d.generation {
            return; // from an abandoned write
        }
        if let Err((e, _)) = result {
            d.failed.push((index, e.clone()));
        }
        d.outstanding = d.outstanding.saturating_sub(1);
        if d.outstanding == 0 {
            self.done.notify_one();
        }
    }
}

type KafkaProducer = ThreadedProducer<SinkContext>;

/// A configured Kafka sink.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    producer: Option<KafkaProducer>,
    buf: Vec<u8>,
}

/// What a failed delivery means for its record.
enum Verdict {
    /// This record can never be written: it goes to the dead letters.
    Reject(String),
    /// Nothing can be written until the configuration changes.
    Fatal(String),
    /// Try the epoch again.
    Retry(String),
}

fn verdict(e: &KafkaError, topic: &str) -> Verdict {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidRecord | C::InvalidMessage,
        ) => Verdict::Reject(format!("Kafka refused the record: {}", describe(e))),
        Some(C::UnknownTopicOrPartition | C::UnknownTopic) => Verdict::Fatal(format!(
            "topic `{topic}` does not exist; create it first (sluice does not create topics)"
        )),
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed,
        ) => Verdict::Fatal(format!(
            "not allowed to write to `{topic}`: {}",
            describe(e)
        )),
        _ => Verdict::Retry(describe(e)),
    }
}

impl KafkaSink {
    pub fn new(config: KafkaSinkConfig) -> Self {
        KafkaSink {
            config,
            producer: None,
            buf: Vec::new(),
        }
    }

    fn create_producer(&self) -> Result<KafkaProducer, SinkError> {
        let c = &self.config;
        let mut own = vec![
            ("enable.idempotence", "true".to_string()),
            ("linger.ms", c.linger_ms.to_string()),
            ("batch.size", c.batch_size.to_string()),
            ("compression.type", c.compression.as_str().to_string()),
            (
                "message.timeout.ms",
                c.delivery_timeout.as_millis().max(1).to_string(),
            ),
        ];
        for (k, v) in [
            ("partitioner", "murmur2_random"),
            ("allow.auto.create.topics", "false"),
        ] {
            if !c.options.contains_key(k) {
                own.push((k, v.to_string()));
            }
        }
        client_config(&c.brokers, &own, &c.options)
            .create_with_context(SinkContext::default())
            .map_err(|e| SinkError::Fatal(format!("kafka sink: {}", describe(&e))))
    }

    /// The producer, created on first use (and again after a fatal error).
    fn producer(&mut self) -> Result<&KafkaProducer, SinkError> {
        if self.producer.is_none() {
            self.producer = Some(self.create_producer()?);
        }
        self.producer
            .as_ref()
            .ok_or_else(|| SinkError::Retryable("no producer".into()))
    }

    /// Drops a producer that hit a fatal error (e.g. an idempotence
    /// sequence gap): the next write starts a new one.
    async fn reset_if_fatal(&mut self) {
        let fatal = self
            .producer
            .as_ref()
            .and_then(|p| p.client().fatal_error());
        if let Some((code, reason)) = fatal {
            tracing::warn!(topic = %self.config.topic, ?code, %reason, "the Kafka producer hit a fatal error; starting a new one");
            self.close_producer().await;
        }
    }

    async fn close_producer(&mut self) {
        let Some(producer) = self.producer.take() else {
            return;
        };
        let timeout = self.config.close_timeout.0;
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = producer.flush(timeout) {
                tracing::warn!(error = %describe(&e), "flushing the Kafka producer at close failed");
            }
            close_with_timeout(producer, timeout, "kafka sink producer");
        })
        .await;
    }

    /// Checks that the topic exists (a precise error instead of timeouts).
    /// Unreachable brokers are only a warning: writes retry until they are
    /// back (and a missing topic then fails the first write).
    async fn check_topic(&mut self) -> Result<(), SinkError> {
        let producer = self.producer()?.clone();
        let topic = self.config.topic.clone();
        let brokers = self.config.brokers.join(",");
        tokio::task::spawn_blocking(move || {
            let meta = match producer
                .client()
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
            {
                Ok(meta) => meta,
                Err(e) => {
                    tracing::warn!(%topic, %brokers, error = %describe(&e),
                        "cannot reach the Kafka brokers to check the topic; writes will retry");
                    return Ok(());
                }
            };

            let exists = meta
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            if exists {
                Ok(())
            } else {
                Err(SinkError::Fatal(format!(
                    "topic `{topic}` does not exist on {brokers}; create it first (sluice does not create topics)"
                )))
            }
        })
        .await
        .map_err(|e| SinkError::Retryable(format!("metadata request panicked: {e}")))?
    }

    async fn write_epoch(&mut self, records: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
        if records.len() >= 1 << INDEX_BITS {
            return Err(SinkError::Fatal(
                "an epoch with more than 2^32 records".into(),
            ));
        }
        let topic = self.config.topic.clone();
        let producer = self.producer()?.clone();
        let context = producer.context().clone();
        let generation = {
            let mut d = context.deliveries();
            d.generation = (d.generation + 1) % (1 << 16);
            d.outstanding = records.len();
            d.failed.clear();
            d.generation
        };
        let mut send_failed = Vec::new();
        for (i, record) in records.iter().enumerate() {
            self.buf.clear();
            let payload = match record.kind {
                RowKind::Delete => None,
                _ => {
                    write_value(&mut self.buf, &record.value);
                    Some(self.buf.as_slice())
                }
            };
            let opaque = (generation << INDEX_BITS) | i;
            let mut message = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&topic, opaque)
                .key(record.id.as_bytes());
            if let Some(p) = payload {
                message = message.payload(p);
            }
            loop {
                match producer.send(message) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        message = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        // Refused before sending (e.g. larger than message.max.bytes).
                        send_failed.push((i, e));
                        let mut d = context.deliveries();
                        d.outstanding = d.outstanding.saturating_sub(1);
                        break;
                    }
                }
            }
        }
        // Every message of the epoch is delivered or failed (they fail at the
        // latest after `delivery_timeout`).
        loop {
            let notified = context.done.notified();
            if context.deliveries().outstanding == 0 {
                break;
            }
            notified.await;
        }
        let mut failed = std::mem::take(&mut context.deliveries().failed);
        failed.extend(send_failed);
        let mut outcome = WriteOutcome::default();
        for (i, e) in failed {
            match verdict(&e, &topic) {
                Verdict::Reject(reason) => outcome.rejected.push((i, reason)),
                Verdict::Fatal(reason) => return Err(SinkError::Fatal(reason)),
                Verdict::Retry(reason) => {
                    return Err(SinkError::Retryable(format!(
                        "delivery to `{topic}` failed: {reason}"
                    )))
                }
            }
        }
        outcome.rejected.sort_by_key(|(i, _)| *i);
        Ok(outcome)
    }
}

impl Sink for KafkaSink {
    fn restore<'a>(
        &'a mut self,
        _progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.check_topic())
    }

    fn write<'a>(
        &'a mut self,
        _epoch: u64,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<WriteOutcome, SinkError>> {
        Box::pin(async move {
            let result = self.write_epoch(records).await;
            if result.is_err() {
                self.reset_if_fatal().await;
            }
            result
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            self.close_producer().await;
            Ok(())
        })
    }
}
