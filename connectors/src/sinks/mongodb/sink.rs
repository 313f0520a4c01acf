//! Writing epochs to MongoDB: plan the writes of an epoch (pure), send them
//! in bulk through a [`MongoClient`], and sort per-document errors into
//! stale (fenced out), duplicate (dedup), retryable and rejected.

use std::collections::HashMap;

use mongodb::bson::{Bson, Document};
use sluice_engine::batch::RowKind;
use sluice_engine::sink::{Sink, SinkError, SinkRecord, WriteOutcome};
use sluice_engine::source::BoxFuture;
use sluice_engine::value::Value;

use crate::mongo::commands::{classify, generation_owner, DUPLICATE_KEY, FENCE_FIELD};
use crate::mongo::{value_to_bson, DriverClient, ErrorClass, MongoClient, MongoError, WriteOp};
use crate::sinks::fence::{self, restored, Progress, Restored, Writer};

use super::config::{MongoSinkConfig, MongoSinkMode};

/// The writes of one epoch.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub ops: Vec<WriteOp>,
    /// The record index each op came from.
    pub records: Vec<usize>,
    /// Records that cannot be written: `(index, reason)`.
    pub rejected: Vec<(usize, String)>,
}

/// Plans the writes of an epoch. In upsert mode only the last record per
/// id counts (records are absolute values), so every op names a distinct
/// `_id`; in append mode repeated ids are inserted once.
pub fn plan_writes(mode: MongoSinkMode, records: &[SinkRecord], fence: i64) -> Plan {
    let mut plan = Plan::default();
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        last.insert(r.id.as_str(), i);
    }
    for (i, r) in records.iter().enumerate() {
        if last.get(r.id.as_str()) != Some(&i) {
            continue;
        }
        let id = r.id.to_string();
        if r.kind == RowKind::Delete {
            plan.ops.push(WriteOp::FencedDelete { id, fence });
            plan.records.push(i);
            continue;
        }
        let mut doc = match value_to_bson(&r.value) {
            Some(Bson::Document(d)) => d,
            _ => {
                plan.rejected.push((
                    i,
                    format!(
                        "record is {}, not an object: it cannot be a document",
                        r.value.type_name()
                    ),
                ));
                continue;
            }
        };
        if matches!(r.value, Value::Object(_)) {
            doc.remove("_id");
        }
        let mut full = Document::new();
        full.insert("_id", id.clone());
        full.extend(doc);
        let op = match mode {
            MongoSinkMode::Upsert => {
                full.insert(FENCE_FIELD, fence);
                WriteOp::FencedUpsert {
                    id,
                    doc: full,
                    fence,
                }
            }
            MongoSinkMode::Append => WriteOp::Insert { doc: full },
        };
        plan.ops.push(op);
        plan.records.push(i);
    }
    plan
}

/// A configured MongoDB sink on any [`MongoClient`] (the driver by default).
pub struct MongoSink<C: MongoClient = DriverClient> {
    name: String,
    config: MongoSinkConfig,
    client: C,
    generation: Option<u64>,
    writer: Writer,
}

impl MongoSink<DriverClient> {
    /// `name` is the component name (for messages). Connecting happens at
    /// the first write; the URI was checked when the pipeline was loaded.
    pub fn new(name: &str, config: MongoSinkConfig) -> Self {
        let client = DriverClient::new(&config.uri);
        MongoSink::with_client(name, config, client)
    }
}

impl<C: MongoClient> MongoSink<C> {
    pub fn with_client(name: &str, config: MongoSinkConfig, client: C) -> Self {
        MongoSink {
            name: name.to_string(),
            config,
            client,
            generation: None,
            writer: Writer::single(name),
        }
    }

    /// The writer this sink is (pipeline, sink, worker): with several
    /// workers, every generation it draws is recorded in
    /// `<database>.sluice_generation_owners`.
    pub fn with_writer(mut self, writer: Writer) -> Self {
        self.writer = writer;
        self
    }

    fn error(&self, e: MongoError, what: &str) -> SinkError {
        let msg = format!(
            "mongodb sink `{}`: {what} {}.{}: {e}",
            self.name, self.config.database, self.config.collection
        );
        match e.class {
            ErrorClass::Retryable => SinkError::Retryable(msg),
            ErrorClass::Fatal | ErrorClass::HistoryLost => SinkError::Fatal(msg),
        }
    }

    async fn write_epoch(
        &mut self,
        epoch: u64,
        records: &[SinkRecord],
    ) -> Result<WriteOutcome, SinkError> {
        let generation = self
            .generation
            .ok_or_else(|| SinkError::Internal("mongodb sink used before restore".into()))?;
        let progress = Some(
            Progress {
                generation,
                worker: self.writer.worker_id(),
            }
            .encode(),
        );
        let fence = fence::fence(generation, epoch).ok_or_else(|| {
            SinkError::Fatal(format!(
                "mongodb sink `{}`: epoch {epoch} / generation {generation} out of range",
                self.name
            ))
        })? as i64;
        let plan = plan_writes(self.config.mode, records, fence);
        let mut rejected = plan.rejected;
        let (mut stale, mut duplicates, mut transient) = (0usize, 0usize, None);
        let size = self.config.batch_size.max(1);
        for (c, chunk) in plan.ops.chunks(size).enumerate() {
            let outcome = self
                .client
                .bulk_write(&self.config.database, &self.config.collection, chunk)
                .await
                .map_err(|e| self.error(e, "cannot write to"))?;
            for err in outcome.errors {
                let Some(op) = chunk.get(err.index) else {
                    continue;
                };
                let record = plan.records[c * size + err.index];
                match (err.code, op) {
                    (DUPLICATE_KEY, WriteOp::FencedUpsert { .. }) => stale += 1,
                    (DUPLICATE_KEY, WriteOp::Insert { .. }) => duplicates += 1,
                    (code, _) => match classify(code, &err.message, &[]) {
                        ErrorClass::Retryable => transient = Some(err.message),
                        _ => rejected.push((
                            record,
                            format!(
                                "mongodb refused the {} of _id {:?} ({code}): {}",
                                op.verb(),
                                records[record].id.as_str(),
                                err.message
                            ),
                        )),
                    },
                }
            }
        }
        if let Some(text) = transient {
            return Err(SinkError::Retryable(format!(
                "mongodb sink `{}`: {text}",
                self.name
            )));
        }
        tracing::debug!(component = %self.name, epoch, stale, duplicates, rejected = rejected.len(), "epoch written");
        rejected.sort_by_key(|(i, _)| *i);
        Ok(WriteOutcome {
            progress,
            rejected,
            fenced: stale as u64,
        })
    }
}

impl<C: MongoClient> Sink for MongoSink<C> {
    fn restore_former<'a>(
        &'a mut self,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<bool, SinkError>> {
        Box::pin(async move {
            if self.config.mode == MongoSinkMode::Append {
                // Appends are keyed by the record's id (`_id`).
                self.generation = Some(0);
                return Ok(true);
            }
            // Every write is fenced (and keyed by the record's id): the
            // former owner's epochs, under its generation, only fill keys
            // no newer owner wrote since.
            let generation = fence::former_generation(progress).ok_or_else(|| {
                SinkError::Fatal(format!("mongodb sink `{}`: corrupt progress", self.name))
            })?;
            self.generation = Some(generation);
            Ok(true)
        })
    }

    fn restore<'a>(
        &'a mut self,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let worker = self.writer.worker_id();
            let previous = match restored(progress, worker) {
                Some(Restored::Keep(generation)) => {
                    self.generation = Some(generation);
                    return Ok(());
                }
                Some(Restored::Draw { previous }) => previous,
                None => {
                    return Err(SinkError::Fatal(format!(
                        "mongodb sink `{}`: corrupt progress",
                        self.name
                    )))
                }
            };
            if self.config.mode == MongoSinkMode::Append {
                // Appends are not fenced; no generation needed.
                self.generation = Some(0);
                return Ok(());
            }
            let generation = self
                .client
                .next_generation(&self.config.database, &self.config.collection)
                .await
                .map_err(|e| self.error(e, "cannot draw a write generation for"))?;
            if self.writer.shared() {
                let writer = mongodb::bson::to_document(&self.writer).unwrap_or_default();
                let owner = generation_owner(&self.config.collection, generation, writer);
                self.client
                    .record_generation_owner(&self.config.database, &owner)
                    .await
                    .map_err(|e| self.error(e, "cannot record the write generation's owner for"))?;
            }
            match previous {
                None => {
                    tracing::info!(component = %self.name, generation, "fresh start: new write generation")
                }
                Some(p) => {
                    tracing::info!(component = %self.name, generation, previous = p.generation, was = %p.worker, now = %worker,
                        "key group ownership changed: new write generation")
                }
            }
            self.generation = Some(generation);
            Ok(())
        })
    }

    fn write<'a>(
        &'a mut self,
        epoch: u64,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<WriteOutcome, SinkError>> {
        Box::pin(self.write_epoch(epoch, records))
    }
}
