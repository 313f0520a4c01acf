//! Routing rows at an exchange point: the rows this worker owns stay, the
//! others are buffered for their owners, as records or folded into
//! partial results.

use super::*;

impl ClusterRun {
    /// Keeps the rows of `batch` this worker owns (and has not applied
    /// before) and buffers the others for their owners: as records, or,
    /// when `op` has a combiner and the rows come from a partition only
    /// this worker reads, folded into partial results (from the offsets the
    /// owner said it holds nothing of, see [`link::FoldFrom`]). Rows the
    /// combiner refuses go to `dead`.
    pub(in crate::runtime) fn route(
        &mut self,
        node: usize,
        node_name: &str,
        mut batch: Batch,
        op: &dyn Operator,
        dead: &mut Vec<DeadLetter>,
    ) -> Batch {
        let Some(origin) = batch.origin.clone() else {
            return batch;
        };
        let Some(&source) = self.source_index.get(&*origin.source) else {
            return batch;
        };
        let mut keys = Vec::new();
        if !op.routing_keys(&batch, &mut keys) {
            return batch;
        }
        let stream = stream_id(&origin.source, node_name);
        let shared = matches!(
            self.distribution[source],
            Distribution::SharedPartitions | Distribution::SharedQueue
        );
        let id = (stream.clone(), origin.partition);
        // Per worker: the combiner and the first offset it may fold.
        let mut folders: Vec<Option<(Folding, u64)>> = Vec::new();
        if !shared && *self.combinable[node].get_or_insert_with(|| op.combiner().is_some()) {
            for (w, peer) in self.peers.iter().enumerate() {
                let from = peer.as_ref().and_then(|p| {
                    let from = p.fold_from.borrow();
                    from.as_ref().map(|f| f.get(&id).copied().unwrap_or(0))
                });
                folders.push(from.and_then(|from| {
                    let folding = match self.folding[w].remove(&id) {
                        Some(f) => f,
                        None => Folding::new(op.combiner()?),
                    };
                    Some((folding, from))
                }));
            }
        }
        let mut keep = vec![true; batch.len()];
        let mut replayed = 0u64;
        let mut moved = 0usize;
        let mut folded = 0usize;
        let mut out = Vec::new();
        // the records for each other worker, in offset order
        let mut moving: Vec<Vec<Record>> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let (owner, kg) = match key {
                Ok(k) => {
                    let kg = key_group(k, self.key_groups);
                    (self.me.owner_of(kg, self.key_groups), kg)
                }
                // no key: it becomes a dead letter here
                Err(_) => (self.me.worker, 0),
            };
            let meta = batch.meta[i];
            if owner == self.me.worker {
                if shared && !self.inbound.admit(&id, meta.offset) {
                    keep[i] = false;
                    replayed += 1;
                }
                continue;
            }
            keep[i] = false;
            if let (Some(Some((f, from))), Ok(k)) = (folders.get_mut(owner as usize), key) {
                if meta.offset >= *from {
                    f.add(k, &batch, i, meta.offset, &mut out, dead);
                    folded += 1;
                    continue;
                }
            }
            moved += 1;
            if moving.is_empty() {
                moving.resize_with(self.out.len(), Vec::new);
            }
            moving[owner as usize].push(Record {
                offset: meta.offset,
                key_group: kg,
                // the owner computes the key again from the value
                key: Vec::new(),
                time: meta.time,
                watermark: meta.watermark,
                value: std::mem::replace(&mut batch.rows[i], Value::Null),
            });
        }
        for (w, f) in folders.into_iter().enumerate() {
            if let Some((f, _)) = f {
                self.folded_keys += f.combiner.len() - f.keys_counted;
                let mut f = f;
                f.keys_counted = f.combiner.len();
                self.folding[w].insert(id.clone(), f);
            }
        }
        self.folded_rows += folded;
        for (owner, records) in moving.into_iter().enumerate() {
            if records.is_empty() {
                continue;
            }
            let part = self.out[owner]
                .entry(id.clone())
                .or_insert_with(|| PartitionBatch {
                    source: stream.clone(),
                    partition: origin.partition,
                    watermark: i64::MIN,
                    records: Vec::new(),
                    combined_from: None,
                });
            if part.records.is_empty() {
                part.records = records;
            } else {
                part.records.extend(records);
            }
        }
        self.out_records += moved;
        if replayed > 0 {
            self.replayed += replayed;
            metrics::counter!(m::EXCHANGE_REPLAYED_RECORDS, self.pipeline_labels.clone())
                .increment(replayed);
        }
        if moved > 0 || replayed > 0 || folded > 0 {
            batch.retain_mask(&keep);
        }
        batch
    }
}
