//! `aggregate`: keyed aggregations, all-time or per event-time (or
//! processing-time) window, with watermarks and allowed lateness.
//!
//! ```toml
//! [transforms.per_minute]
//! type = "aggregate"
//! inputs = ["weather"]
//! group_by = ["country", "weather"]
//! window = { type = "tumbling", size = "1m" }
//! allowed_lateness = "10s"
//! emit = "on_close"
//! aggregates = { count = "count", avg_temp = { fn = "avg", field = "temp_c" } }
//! ```
//!
//! Results are upserts keyed by (group key, window start) carrying absolute
//! values: `{"country":"GT","weather":"Sunny","window_start":...,
//! "window_end":...,"count":17,"avg_temp":21.3}`. With `emit = "on_close"`
//! (the default for windows) a window's result is emitted once the
//! watermark passes its end, and again if a late event within
//! `allowed_lateness` changes it; with `emit = "updates"` (the default
//! without a window) changed results are emitted at every checkpoint.
//! Events later than the allowed lateness go to the dead-letter output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_engine::batch::Batch;
use sluice_engine::dead_letter::{DeadLetter, ErrorType};
use sluice_engine::error::Invalid;
use sluice_engine::keys::GroupKey;
use sluice_engine::operator::{
    BuildContext, BuildError, Emitter, FieldPath, FieldSet, Operator, OperatorSpec, Stream, TimeUse,
};
use sluice_engine::time::HumanDuration;
use sluice_engine::value::parse_path;

use crate::accumulator::{AggSpec, Aggregate};
use crate::fixed::FixedAggregate;
use crate::key_by::{compute_keys, missing_key};
use crate::session::SessionAggregate;
use crate::window::WindowConfig;

/// When results are emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmitMode {
    /// When the watermark passes the end of the window (final results).
    OnClose,
    /// At every checkpoint, for every result that changed (continuous).
    Updates,
}

/// Which clock assigns windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeMode {
    /// The sources' `event_time` field (needs `event_time` on every source).
    Event,
    /// The wall clock when the event is processed.
    Processing,
}

/// Configuration of an `aggregate` transform.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Fields (dotted paths) to group by. Omit to use the key of an upstream
    /// `key_by`, or to aggregate everything into one group.
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    /// Output columns: `name = "count"` or `name = { fn = "sum", field = "x" }`;
    /// functions: count, sum, min, max, avg, count_distinct, first, last.
    pub aggregates: BTreeMap<String, AggSpec>,
    /// Window; omit for all-time aggregates.
    #[serde(default)]
    pub window: Option<WindowConfig>,
    /// `event` (default when every source has `event_time`) or `processing`.
    #[serde(default)]
    pub time: Option<TimeMode>,
    /// How long after a window closes late events may still update it.
    #[serde(default)]
    pub allowed_lateness: HumanDuration,
    /// `on_close` (default with a window) or `updates` (default without).
    #[serde(default)]
    pub emit: Option<EmitMode>,
    /// Name of the window-start field in results.
    #[serde(default = "default_start")]
    pub window_start_field: String,
    /// Name of the window-end field in results.
    #[serde(default = "default_end")]
    pub window_end_field: String,
}

fn default_start() -> String {
    "window_start".into()
}

fn default_end() -> String {
    "window_end".into()
}

/// A validated aggregate.
#[derive(Debug, Clone)]
pub struct AggregateSpec {
    pub config: AggregateConfig,
    pub group_by: Option<Vec<FieldPath>>,
    pub aggregates: Vec<Aggregate>,
}

impl AggregateSpec {
    pub fn new(config: &AggregateConfig) -> Result<Self, Invalid> {
        if config.aggregates.is_empty() {
            return Err(
                "`aggregates` must define at least one output, e.g. { count = \"count\" }".into(),
            );
        }
        if let Some(w) = &config.window {
            w.validate()?;
        }
        let group_by = config
            .group_by
            .as_ref()
            .map(|g| g.iter().map(|f| parse_path(f)).collect::<Vec<_>>());
        let mut names: Vec<&str> = config.aggregates.keys().map(String::as_str).collect();
        if let Some(g) = &config.group_by {
            names.extend(g.iter().map(String::as_str));
        }
        if config.window.is_some() {
            names.push(&config.window_start_field);
            names.push(&config.window_end_field);
        }
        let mut sorted = names.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Invalid::new(format!(
                "the output field `{}` is defined twice",
                w[0]
            )));
        }
        Ok(AggregateSpec {
            config: config.clone(),
            group_by,
            aggregates: config
                .aggregates
                .iter()
                .map(|(n, s)| Aggregate::new(n, s))
                .collect(),
        })
    }

    pub fn emit_mode(&self) -> EmitMode {
        self.config.emit.unwrap_or(if self.config.window.is_some() {
            EmitMode::OnClose
        } else {
            EmitMode::Updates
        })
    }
}

impl OperatorSpec for AggregateSpec {
    fn input_reads(&self, _downstream: &FieldSet) -> FieldSet {
        let mut reads = FieldSet::empty();
        for g in self.group_by.iter().flatten() {
            reads.insert(g.clone());
        }
        for a in &self.aggregates {
            if let Some(f) = &a.field {
                reads.insert(f.clone());
            }
        }
        reads
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn output_stream(&self, _input: Stream) -> Stream {
        Stream::Changelog {
            settles_after: self
                .config
                .window
                .as_ref()
                .map(|_| self.config.allowed_lateness.as_millis()),
        }
    }

    fn check_input(&self, input: Stream) -> Result<(), Invalid> {
        let Stream::Changelog { settles_after } = input else {
            return Ok(());
        };
        if let Some(WindowConfig::Session { .. }) = self.config.window {
            return Err(
                "reads the changelog of an aggregate, which a session window cannot: \
                 merged sessions cannot take back a row. Use a tumbling or hopping window, \
                 or aggregate the events themselves"
                    .into(),
            );
        }
        if let Some(a) = self.aggregates.iter().find(|a| !a.retractable()) {
            let func = format!("{:?}", a.func).to_lowercase();
            return Err(Invalid::new(format!(
                "reads the changelog of an aggregate, so every function must be able to take \
                 back a replaced row, and `{}` uses `{func}`, which cannot. Use min/max, or \
                 aggregate the events themselves",
                a.name
            )));
        }
        if self.config.window.is_some() && settles_after.is_none() {
            return Err(
                "is windowed but reads the changelog of an all-time aggregate, whose \
                 rows have no event time of their own. Window the upstream aggregate, or make \
                 this one all-time"
                    .into(),
            );
        }
        Ok(())
    }

    fn time_use(&self) -> TimeUse {
        match (&self.config.window, self.config.time) {
            (None, _) => TimeUse::Untimed,
            (Some(_), Some(TimeMode::Event)) => TimeUse::EventWindow,
            (Some(_), _) => TimeUse::Window,
        }
    }

    fn state_signature(&self) -> String {
        // Everything that gives the stored accumulators their meaning.
        let aggs: Vec<String> = self
            .aggregates
            .iter()
            .map(|a| {
                format!(
                    "{}={:?}({})",
                    a.name,
                    a.func,
                    a.field.as_ref().map(|f| f.join(".")).unwrap_or_default()
                )
            })
            .collect();
        format!(
            "v1 group_by={:?} window={:?} aggs=[{}]",
            self.config.group_by,
            self.config.window,
            aggs.join(",")
        )
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Operator>, BuildError> {
        let err = |message: String| BuildError {
            component: ctx.name.to_string(),
            message,
        };
        let processing = match self.config.time {
            Some(TimeMode::Processing) => true,
            Some(TimeMode::Event) => false,
            None => !ctx.event_time,
        };
        if self.config.window.is_some() && !processing && !ctx.event_time {
            return Err(err(
                "`time = \"event\"` needs `event_time` on every source feeding it".into(),
            ));
        }
        let group = match (&self.group_by, &ctx.upstream_key) {
            (Some(g), _) => Grouping::Fields(g.clone()),
            (None, Some(k)) => Grouping::Upstream(k.clone()),
            (None, None) => Grouping::Global,
        };
        let common = Common {
            name: ctx.name.clone(),
            aggregates: self.aggregates.clone(),
            group,
            emit: self.emit_mode(),
            lateness: self.config.allowed_lateness.as_millis(),
            processing_time: processing,
            key_groups: ctx.key_groups,
            start_field: parse_path(&self.config.window_start_field),
            end_field: parse_path(&self.config.window_end_field),
            input: ctx.input,
        };
        self.check_input(ctx.input).map_err(|e| err(e.into()))?;
        Ok(match self.config.window {
            None => Box::new(FixedAggregate::new(common, None)),
            Some(WindowConfig::Tumbling { size }) => Box::new(FixedAggregate::new(
                common,
                Some((size.as_millis(), size.as_millis())),
            )),
            Some(WindowConfig::Hopping { size, slide }) => Box::new(FixedAggregate::new(
                common,
                Some((size.as_millis(), slide.as_millis())),
            )),
            Some(WindowConfig::Session { gap }) => {
                Box::new(SessionAggregate::new(common, gap.as_millis()))
            }
        })
    }
}

/// Where group keys come from.
#[derive(Debug, Clone)]
pub enum Grouping {
    /// `group_by` fields.
    Fields(Vec<FieldPath>),
    /// The key set by an upstream `key_by` on these fields.
    Upstream(Vec<FieldPath>),
    /// One group for everything.
    Global,
}

impl Grouping {
    /// The names of the key fields in results.
    pub fn names(&self) -> &[FieldPath] {
        match self {
            Grouping::Fields(f) | Grouping::Upstream(f) => f,
            Grouping::Global => &[],
        }
    }
}

/// Settings shared by the aggregate operators.
#[derive(Debug, Clone)]
pub struct Common {
    pub name: std::sync::Arc<str>,
    pub aggregates: Vec<Aggregate>,
    pub group: Grouping,
    pub emit: EmitMode,
    pub lateness: i64,
    pub processing_time: bool,
    pub key_groups: u16,
    pub start_field: FieldPath,
    pub end_field: FieldPath,
    /// Events, or an aggregate's changelog (rows replace earlier rows).
    pub input: Stream,
}

impl Common {
    /// The group key of every row of `batch` (`Err(field index)` when a
    /// key field is missing).
    pub fn keys(&self, batch: &Batch, keys: &mut Vec<Result<GroupKey, usize>>) {
        match &self.group {
            Grouping::Fields(fields) => compute_keys(fields, batch, keys),
            Grouping::Upstream(_) if batch.is_keyed() => {
                keys.clear();
                keys.extend(batch.keys.iter().cloned().map(Ok));
            }
            _ => {
                keys.clear();
                keys.resize(batch.len(), Ok(GroupKey::new()));
            }
        }
    }

    /// Admits row `i`: returns its key and time, or sends it to the dead
    /// letters (missing key field, or an input of the wrong type for an
    /// aggregate — checked before any accumulator is touched).
    pub fn admit<'k>(
        &self,
        batch: &Batch,
        i: usize,
        key: &'k Result<GroupKey, usize>,
        now: i64,
        out: &mut Emitter<'_>,
    ) -> Option<(&'k GroupKey, i64)> {
        let key = match key {
            Ok(k) => k,
            Err(f) => {
                out.dead_letter(missing_key(batch, i, &self.name, &self.group.names()[*f]));
                return None;
            }
        };
        if let Err(dead) = self.check_row(batch, i) {
            out.dead_letter(dead);
            return None;
        }
        Some((key, self.time_of(batch, i, now)))
    }

    /// Checks the inputs of row `i` for every aggregate: the dead letter of
    /// a row of the wrong type.
    pub fn check_row(&self, batch: &Batch, i: usize) -> Result<(), DeadLetter> {
        let row = &batch.rows[i];
        match self
            .aggregates
            .iter()
            .find_map(|a| a.check(a.input(row)).err())
        {
            None => Ok(()),
            Some(reason) => Err(DeadLetter::from_row(
                batch,
                i,
                &self.name,
                ErrorType::WrongType,
                String::from(reason),
            )),
        }
    }

    /// The time row `i` counts at: `now` with processing time, else its
    /// event time.
    pub fn time_of(&self, batch: &Batch, i: usize, now: i64) -> i64 {
        if self.processing_time {
            now
        } else {
            batch.meta[i].time
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
group_by = ["country", "weather"]
window = { type = "tumbling", size = "1m" }
allowed_lateness = "10s"
emit = "on_close"
aggregates = { count = "count", avg_temp = { fn = "avg", field = "temp_c" } }
"#;

    #[test]
    fn example_config_parses() {
        let c: AggregateConfig = toml::from_str(EXAMPLE).unwrap();
        let spec = AggregateSpec::new(&c).unwrap();
        assert_eq!(spec.emit_mode(), EmitMode::OnClose);
        let FieldSet::Paths(reads) = spec.input_reads(&FieldSet::All) else {
            panic!()
        };
        assert_eq!(reads.len(), 3);
    }

    #[test]
    fn rejects_mistakes() {
        let bad = |t: &str| {
            let c: AggregateConfig = toml::from_str(t).unwrap();
            AggregateSpec::new(&c).unwrap_err().to_string()
        };
        assert!(bad("aggregates = {}").contains("at least one"));
        assert!(
            bad("group_by = [\"count\"]\naggregates = { count = \"count\" }")
                .contains("defined twice")
        );
        assert!(bad("aggregates = { n = \"count\" }\nwindow = { type = \"hopping\", size = \"1m\", slide = \"7s\" }")
            .contains("must divide"));
        let e = toml::from_str::<AggregateConfig>(
            "aggregates = { n = \"count\" }\nwindow = { type = \"tumbeling\", size = \"1m\" }",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tumbeling"), "{e}");
    }
}
