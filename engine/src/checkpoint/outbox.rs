//! A sink's outbox: the records routed to it during the current epoch.

use rustc_hash::FxHashMap;

use crate::keys::GroupKey;
use crate::sink::SinkRecord;

/// The records of one sink collected during the current epoch. A record
/// with an upsert key replaces the earlier record of the same key, so an
/// epoch carries one change per key.
#[derive(Default)]
pub(super) struct Outbox {
    records: Vec<SinkRecord>,
    by_key: FxHashMap<GroupKey, usize>,
}

impl Outbox {
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub(super) fn push(&mut self, record: SinkRecord, upsert_key: Option<&GroupKey>) {
        let Some(key) = upsert_key else {
            self.records.push(record);
            return;
        };
        match self.by_key.get(key) {
            Some(&at) => self.records[at] = record,
            None => {
                self.by_key.insert(key.clone(), self.records.len());
                self.records.push(record);
            }
        }
    }

    pub(super) fn take(&mut self) -> Vec<SinkRecord> {
        self.by_key.clear();
        std::mem::take(&mut self.records)
    }
}
