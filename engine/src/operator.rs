//! The operator traits: [`OperatorSpec`] (what the planner needs to know
//! about a configured operator) and [`Operator`] (the running instance).
//!
//! Operators are synchronous and batch-at-a-time: the processor thread calls
//! [`Operator::process`] with a whole batch and forwards whatever the
//! operator emitted to its downstream nodes. Every lifecycle hook except
//! `process` has a no-op default.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::batch::Batch;
use crate::dead_letter::DeadLetter;
use crate::error::{Classify, ErrorClass, Invalid};
use crate::value::Str;

/// A field path (`["a", "b"]` for `a.b`).
pub type FieldPath = Vec<Str>;

/// The fields a decoder projected from one event, by slot, for
/// [`Combiner::add_fields`]: each a decoded value, except that a slot the
/// combiner reads only as part of a group key
/// ([`Combiner::key_only_slots`]) may hold a string as the range of its
/// content in the document instead (a string without escapes, whose bytes
/// are its content; the document was validated as a whole).
pub struct Fields<'a> {
    values: &'a [crate::value::Value],
    doc: &'a [u8],
    spans: &'a [crate::json::Span],
    /// The slots holding a span (their value is `Missing`).
    raw: u64,
}

impl<'a> Fields<'a> {
    /// Fields that are all decoded values.
    pub fn new(values: &'a [crate::value::Value]) -> Self {
        Fields {
            values,
            doc: &[],
            spans: &[],
            raw: 0,
        }
    }

    /// Fields as [`Projection::decode_spans`](crate::json::Projection::decode_spans)
    /// left them: `values`, and for the slots in `raw` a span of `doc`.
    pub fn with_spans(
        values: &'a [crate::value::Value],
        doc: &'a [u8],
        spans: &'a [crate::json::Span],
        raw: u64,
    ) -> Self {
        Fields {
            values,
            doc,
            spans,
            raw,
        }
    }

    /// The decoded value of `slot`. Only for slots outside
    /// [`Combiner::key_only_slots`] (a span reads as `Missing`).
    #[inline(always)]
    pub fn value(&self, slot: usize) -> &'a crate::value::Value {
        debug_assert!(!self.is_span(slot), "slot {slot} holds a span");
        &self.values[slot]
    }

    /// Appends the group key component of `slot` (as
    /// [`keys::encode_component`](crate::keys::encode_component) encodes
    /// its value); false if the field is missing.
    #[inline(always)]
    pub fn encode_key(&self, slot: usize, out: &mut impl crate::keys::KeyBytes) -> bool {
        if self.is_span(slot) {
            let span = self.spans[slot];
            crate::keys::encode_str(out, &self.doc[span.start..span.end]);
            true
        } else {
            let v = &self.values[slot];
            crate::keys::encode_component(out, v);
            v.exists()
        }
    }

    #[inline(always)]
    fn is_span(&self, slot: usize) -> bool {
        slot < 64 && self.raw & (1 << slot) != 0
    }
}

/// The fields a part of the pipeline reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldSet {
    /// The whole event (e.g. events flow to a sink unchanged).
    All,
    /// Only these paths.
    Paths(BTreeSet<FieldPath>),
}

impl FieldSet {
    /// No fields at all (the start of a union).
    pub fn empty() -> Self {
        FieldSet::Paths(BTreeSet::new())
    }

    /// Adds `path`; no-op on [`FieldSet::All`], which already holds it.
    pub fn insert(&mut self, path: FieldPath) {
        if let FieldSet::Paths(set) = self {
            set.insert(path);
        }
    }

    /// Adds every field of `other`; either side being `All` makes `All`.
    pub fn union(&mut self, other: &FieldSet) {
        match (&mut *self, other) {
            (FieldSet::All, _) => {}
            (_, FieldSet::All) => *self = FieldSet::All,
            (FieldSet::Paths(a), FieldSet::Paths(b)) => a.extend(b.iter().cloned()),
        }
    }
}

/// What flows along an edge of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stream {
    /// Events: every row is a new fact.
    #[default]
    Events,
    /// A changelog (the output of an aggregate): upserts and deletes of
    /// rows identified by [`crate::batch::Batch::keys`]. A row replaces the
    /// previous row of its key, so a reader must retract that previous row
    /// before applying the new one.
    Changelog {
        /// A key whose row has time `t` no longer changes once the
        /// watermark reaches `t + 1 + settles_after` (a window's allowed
        /// lateness); `None` when keys may change forever (all-time).
        settles_after: Option<i64>,
    },
}

impl Stream {
    /// True for [`Stream::Changelog`], whatever its `settles_after`.
    pub fn is_changelog(self) -> bool {
        matches!(self, Stream::Changelog { .. })
    }
}

/// How an operator places events in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeUse {
    /// It does not (filter, map...).
    #[default]
    Untimed,
    /// A window in event time when its sources provide it, in processing
    /// time when none does; a mix of both is refused.
    Window,
    /// A window the user set to event time: every source must provide it.
    EventWindow,
    /// A period (`within`) counted like [`TimeUse::Window`].
    Period,
}

/// What the planner tells an operator when building it.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The operator's name in the pipeline file.
    pub name: Arc<str>,
    /// Number of key groups state is partitioned into.
    pub key_groups: u16,
    /// The group key set by an upstream `key_by`, if any.
    pub upstream_key: Option<Vec<FieldPath>>,
    /// Whether the rows reaching this operator carry event time (false:
    /// processing time).
    pub event_time: bool,
    /// What the operator reads: events, or an aggregate's changelog.
    pub input: Stream,
}

/// Errors building an operator from its (already parsed) config.
#[derive(Debug, thiserror::Error)]
#[error("{component}: {message}")]
pub struct BuildError {
    /// The name of the transform that failed to build.
    pub component: String,
    /// What is wrong with its config, for the user.
    pub message: String,
}

impl Classify for BuildError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// The static description of a configured operator.
pub trait OperatorSpec: Send + Sync {
    /// The paths this operator reads from its input, given the paths read
    /// downstream of it. Stateless operators pass the downstream reads
    /// through (rewritten, e.g. across a rename); stateful ones return only
    /// their own reads since their output rows are new records.
    fn input_reads(&self, downstream: &FieldSet) -> FieldSet;

    /// True for operators that keep state (aggregations, windows).
    fn is_stateful(&self) -> bool {
        false
    }

    /// How the operator places events in time; the planner checks it
    /// against the event time of the sources feeding the operator.
    fn time_use(&self) -> TimeUse {
        TimeUse::Untimed
    }

    /// The group key of the output, given the input's.
    fn output_key(&self, input: Option<&[FieldPath]>) -> Option<Vec<FieldPath>> {
        if self.is_stateful() {
            None
        } else {
            input.map(<[FieldPath]>::to_vec)
        }
    }

    /// What this operator emits, given what it reads. Stateless operators
    /// keep the kind of their input (a filter over a changelog turns the
    /// upserts it rejects into deletes); stateful ones emit events unless
    /// they say otherwise (aggregates emit a changelog).
    fn output_stream(&self, input: Stream) -> Stream {
        if self.is_stateful() {
            Stream::Events
        } else {
            input
        }
    }

    /// Whether this operator can read `input`; the error says why not and
    /// what to do instead. Checked by `sluice validate` and at start.
    fn check_input(&self, input: Stream) -> Result<(), Invalid> {
        let _ = input;
        Ok(())
    }

    /// A fingerprint of everything that determines the meaning of this
    /// operator's state; a change is detected at start and refused (the
    /// state must then be rebuilt with `sluice replay`).
    fn state_signature(&self) -> String {
        String::new()
    }

    /// A fresh running instance for one run of the pipeline; its state
    /// comes later through [`Operator::restore`].
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Operator>, BuildError>;
}

/// A spec shared between the loaded pipeline file and the runs built from
/// it (a reload builds a new run from the same file).
impl<T: OperatorSpec + ?Sized> OperatorSpec for Arc<T> {
    fn input_reads(&self, downstream: &FieldSet) -> FieldSet {
        (**self).input_reads(downstream)
    }
    fn is_stateful(&self) -> bool {
        (**self).is_stateful()
    }
    fn time_use(&self) -> TimeUse {
        (**self).time_use()
    }
    fn output_key(&self, input: Option<&[FieldPath]>) -> Option<Vec<FieldPath>> {
        (**self).output_key(input)
    }
    fn output_stream(&self, input: Stream) -> Stream {
        (**self).output_stream(input)
    }
    fn check_input(&self, input: Stream) -> Result<(), Invalid> {
        (**self).check_input(input)
    }
    fn state_signature(&self) -> String {
        (**self).state_signature()
    }
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Operator>, BuildError> {
        (**self).build(ctx)
    }
}

/// Where an operator puts its results.
pub struct Emitter<'a> {
    /// The batches emitted so far, for the nodes downstream.
    pub out: &'a mut Vec<Batch>,
    /// The rows the operator refused, with their reasons.
    pub dead: &'a mut Vec<DeadLetter>,
}

impl Emitter<'_> {
    /// Sends `batch` downstream; empty batches are dropped.
    pub fn emit(&mut self, batch: Batch) {
        if !batch.is_empty() {
            self.out.push(batch);
        }
    }

    /// Sends a refused row to the dead-letter output.
    pub fn dead_letter(&mut self, d: DeadLetter) {
        self.dead.push(d);
    }
}

/// Collects an operator's state changes for a checkpoint.
#[derive(Debug, Default)]
pub struct StateWriter {
    /// `(key group, key, Some(value) | None for delete)`.
    pub entries: Vec<(u16, Vec<u8>, Option<Vec<u8>>)>,
}

impl StateWriter {
    /// Records that `key` in `key_group` now holds `value`.
    pub fn put(&mut self, key_group: u16, key: Vec<u8>, value: Vec<u8>) {
        self.entries.push((key_group, key, Some(value)));
    }

    /// Records that `key` in `key_group` no longer exists.
    pub fn delete(&mut self, key_group: u16, key: Vec<u8>) {
        self.entries.push((key_group, key, None));
    }
}

/// One restored state entry: `(key group, key, value)`.
pub type StateEntry = (u16, Vec<u8>, Vec<u8>);

/// Errors restoring state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The entry was written in another format version (by another
    /// build): [`ErrorClass::User`], the state must be rebuilt.
    #[error("state entry has version {found}, this build reads version {expected}")]
    Version {
        /// The version byte the entry starts with.
        found: u8,
        /// The version this build writes and reads.
        expected: u8,
    },
    /// The bytes do not decode (a damaged state directory):
    /// [`ErrorClass::External`].
    #[error("state entry is corrupt: {0}")]
    Corrupt(String),
}

impl Classify for StateError {
    fn class(&self) -> ErrorClass {
        match self {
            // State written by another build: rebuild it with `sluice replay`.
            StateError::Version { .. } => ErrorClass::User,
            // Bytes that do not decode: a damaged state directory.
            StateError::Corrupt(_) => ErrorClass::External,
        }
    }
}

/// Encodes a state value as `[version] ++ bincode(value)`.
pub fn encode_versioned<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .expect("writing to a Vec cannot fail");
    out
}

/// Decodes a value written by [`encode_versioned`], checking the version.
pub fn decode_versioned<T: DeserializeOwned>(expected: u8, bytes: &[u8]) -> Result<T, StateError> {
    let (&version, rest) = bytes
        .split_first()
        .ok_or_else(|| StateError::Corrupt("empty value".into()))?;
    if version != expected {
        return Err(StateError::Version {
            found: version,
            expected,
        });
    }
    bincode::serde::decode_from_slice(rest, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| StateError::Corrupt(e.to_string()))
}

/// Key and byte counts of an operator's state (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Number of keys held.
    pub keys: u64,
    /// Bytes of the stored keys and values.
    pub bytes: u64,
}

/// A running operator instance, driven by the processor thread.
pub trait Operator: Send {
    /// Processes one batch. Results go to `out`; rows that cannot be
    /// processed go to `out.dead_letter` with the reason.
    fn process(&mut self, batch: Batch, out: &mut Emitter<'_>);

    /// The watermark of this operator's inputs advanced to `watermark`
    /// (epoch ms; `i64::MAX` at the end of bounded input).
    fn on_watermark(&mut self, _watermark: i64, _out: &mut Emitter<'_>) {}

    /// Called just before a checkpoint snapshot; continuous-update
    /// aggregations emit their changed results here.
    fn on_checkpoint(&mut self, _out: &mut Emitter<'_>) {}

    /// Writes the state changed since the last snapshot.
    fn snapshot(&mut self, _writer: &mut StateWriter) {}

    /// Writes all of the state, exactly as the snapshots so far left it in
    /// the store, and returns true; or returns false if it cannot (the
    /// state changed since the last snapshot, or the operator does not
    /// support it, the default). A clean stop writes this for the next
    /// start to restore from ([`crate::state::restart`]); what is written
    /// is read back by [`Operator::restore`]. Flags that the store learns
    /// only with a key's next change (a session's "emitted") may be newer
    /// here than in the store.
    fn snapshot_all(&self, _writer: &mut StateWriter) -> bool {
        false
    }

    /// Loads state written by earlier snapshots (called once, before any batch).
    fn restore(&mut self, _entries: Vec<StateEntry>) -> Result<(), StateError> {
        Ok(())
    }

    /// Size of the state now held, reported as gauges at each checkpoint;
    /// zero for stateless operators.
    fn state_stats(&self) -> StateStats {
        StateStats::default()
    }

    /// For a keyed stateful operator: the routing key of every row of
    /// `batch` (the bytes whose key group decides which worker keeps the
    /// row's state; `Err` when the row has no key and can only become a
    /// dead letter), written to `keys`; returns true. Operators whose state
    /// is not keyed return false (every row stays where it is).
    fn routing_keys(
        &self,
        _batch: &Batch,
        _keys: &mut Vec<Result<crate::keys::GroupKey, usize>>,
    ) -> bool {
        false
    }

    /// For a keyed stateful operator whose results are the same whether it
    /// takes rows one by one or partial results folded from them (an
    /// all-time aggregate of events): a [`Combiner`] that folds the rows
    /// bound for another worker, so that one partial result per key
    /// crosses the exchange instead of every row. `None` (the default):
    /// rows cross as they are.
    fn combiner(&self) -> Option<Box<dyn Combiner>> {
        None
    }

    /// Takes partial results made by this operator's [`Combiner`] on
    /// another worker: `batch.keys` holds the group keys, `batch.rows` the
    /// partial values. Called only on operators that return a combiner.
    fn merge_partials(&mut self, _batch: Batch, _out: &mut Emitter<'_>) {
        debug_assert!(false, "partial results for an operator without a combiner");
    }

    /// Takes the partial results `combiner` (one of this operator's
    /// [`batch_combiner`](Self::batch_combiner)s) folded from one batch
    /// where it was decoded. The default drains them into
    /// [`merge_partials`](Self::merge_partials); an operator that knows its
    /// combiner can take them without that conversion.
    fn merge_folded(&mut self, mut combiner: Box<dyn Combiner>, out: &mut Emitter<'_>) {
        let mut partials = Vec::with_capacity(combiner.len());
        combiner.drain(&mut partials);
        let mut batch = Batch::default();
        for (key, value) in partials {
            batch.keys.push(key);
            batch.rows.push(value);
        }
        self.merge_partials(batch, out);
    }

    /// A combiner folding whole batches of one source partition where they
    /// are decoded, in a run of one worker (see
    /// [`crate::source::SourceOutput::with_fold`]); its partial results go
    /// to [`merge_folded`](Self::merge_folded) when
    /// [`takes_folded`](Self::takes_folded) accepts the batch. The default
    /// is the exchange's [`combiner`](Self::combiner); an operator that can
    /// fold more where the batch's row metadata is checked first (windows:
    /// no row may be late) returns a wider one.
    fn batch_combiner(&self) -> Option<Box<dyn Combiner>> {
        self.combiner()
    }

    /// Whether the partial results [`batch_combiner`](Self::batch_combiner)
    /// folded from a batch whose rows have `meta` (watermarks stamped, in
    /// log order) are exactly what taking its rows one by one would do now.
    /// When false the engine decodes the batch again and calls
    /// [`process`](Self::process) with its rows.
    fn takes_folded(&self, _meta: &[crate::batch::RowMeta]) -> bool {
        true
    }
}

/// Folds rows into one partial result per key before they cross the
/// exchange to their owner (see [`Operator::combiner`]), like a combiner
/// in map-reduce or Flink's local-global aggregation.
pub trait Combiner: Send + Sync {
    /// Folds row `i` of `batch`, whose group key is `key`, into that key's
    /// partial result. A row the operator would refuse goes to
    /// `out.dead_letter` instead, as the same dead letter the operator
    /// would make of it.
    fn add(&mut self, key: &[u8], batch: &Batch, i: usize, out: &mut Emitter<'_>);

    /// Folds every row of `batch`, computing each row's group key; rows
    /// without one go to `out.dead_letter` as the operator would send them.
    fn add_batch(&mut self, batch: &Batch, out: &mut Emitter<'_>);

    /// An empty combiner of the same operator (for another thread).
    fn fresh(&self) -> Box<dyn Combiner>;

    /// This combiner as `Any`, for its operator to take its partial results
    /// as they are ([`Operator::merge_folded`]).
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;

    /// Prepares to fold events straight from the fields a source's decoder
    /// projects (`paths`, by slot; see [`add_fields`](Self::add_fields)),
    /// without building rows. False when it cannot (a field it reads is
    /// not one of `paths`); it is then only given rows. The decoder calls
    /// it before each batch it folds: a combiner on processing time reads
    /// the clock here, once for the batch.
    fn bind_fields(&mut self, _paths: &[FieldPath]) -> bool {
        false
    }

    /// Folds one event from its projected `fields` (by slot, as bound by
    /// [`bind_fields`](Self::bind_fields)) at event time `time` (the
    /// batch's clock instead on processing time), as [`add`](Self::add)
    /// would fold its row. False, touching nothing,
    /// exactly when `add` would refuse the row (a key field missing, an
    /// input of the wrong type): the row is then built and given to `add`,
    /// which makes its dead letter.
    fn add_fields(&mut self, _fields: &Fields<'_>, _time: i64) -> bool {
        false
    }

    /// The slots (bit `i` for slot `i`, as bound by
    /// [`bind_fields`](Self::bind_fields)) it reads only as part of a
    /// group key: [`add_fields`](Self::add_fields) may find a string there
    /// as the bytes of the document ([`Fields::encode_key`]), not decoded.
    fn key_only_slots(&self) -> u64 {
        0
    }

    /// Whether merging its partial results can round differently from
    /// taking the rows one by one (float sums: `(s + a) + b` is not always
    /// `s + (a + b)`). Rows of one partition then no longer give the same
    /// last digits whatever the batches they are read in, so a source's
    /// rows are folded where they are decoded only when this is false.
    fn rounds_differently(&self) -> bool;

    /// The number of keys holding a partial result.
    fn len(&self) -> usize;

    /// True when no key holds a partial result.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every partial result as `(key, value)`, in the order of each
    /// key's first row, leaving the combiner empty.
    fn drain(&mut self, out: &mut Vec<(crate::keys::GroupKey, crate::value::Value)>);
}
