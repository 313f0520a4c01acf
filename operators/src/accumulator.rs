//! Aggregate functions and their accumulators: count, sum, min, max, avg,
//! count_distinct, first, last. Accumulators are serializable (they are the
//! operator state) and mergeable (session windows merge).

use std::fmt;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sluice_engine::error::Invalid;
use sluice_engine::keys::{encode_component, stable_hash, GroupKey};
use sluice_engine::operator::FieldPath;
use sluice_engine::value::{parse_path, Value};

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggFn {
    /// Number of events (or, with a field, of events where it is present and not null).
    Count,
    /// Sum of a numeric field (integer while every input is an integer).
    Sum,
    Min,
    Max,
    /// Arithmetic mean of a numeric field.
    Avg,
    /// Number of distinct values of a field (exact up to 64-bit hash collisions).
    CountDistinct,
    /// Value of the field in the earliest event (by event time).
    First,
    /// Value of the field in the latest event (by event time).
    Last,
}

impl AggFn {
    pub const NAMES: &'static [&'static str] = &[
        "count",
        "sum",
        "min",
        "max",
        "avg",
        "count_distinct",
        "first",
        "last",
    ];

    fn parse(s: &str) -> Option<AggFn> {
        Some(match s {
            "count" => AggFn::Count,
            "sum" => AggFn::Sum,
            "min" => AggFn::Min,
            "max" => AggFn::Max,
            "avg" => AggFn::Avg,
            "count_distinct" => AggFn::CountDistinct,
            "first" => AggFn::First,
            "last" => AggFn::Last,
            _ => return None,
        })
    }

    fn needs_field(self) -> bool {
        self != AggFn::Count
    }
}

/// One output column: `name = "count"` or `name = { fn = "sum", field = "amount" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AggSpec {
    /// The function.
    #[serde(rename = "fn")]
    pub func: AggFn,
    /// The input field (dotted path); required for every function but `count`.
    pub field: Option<String>,
}

impl<'de> Deserialize<'de> for AggSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AggSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a function name (\"count\") or a table { fn = \"sum\", field = \"amount\" }",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<AggSpec, E> {
                let func = AggFn::parse(s).ok_or_else(|| E::unknown_variant(s, AggFn::NAMES))?;
                if func.needs_field() {
                    return Err(E::custom(format!(
                        "`{s}` needs a field: write {{ fn = \"{s}\", field = \"...\" }}"
                    )));
                }
                Ok(AggSpec { func, field: None })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AggSpec, A::Error> {
                let (mut func, mut field) = (None, None);
                while let Some(k) = map.next_key::<String>()? {
                    match k.as_str() {
                        "fn" => {
                            let s: String = map.next_value()?;
                            func = Some(
                                AggFn::parse(&s)
                                    .ok_or_else(|| de::Error::unknown_variant(&s, AggFn::NAMES))?,
                            );
                        }
                        "field" => field = Some(map.next_value::<String>()?),
                        other => return Err(de::Error::unknown_field(other, &["fn", "field"])),
                    }
                }
                let func = func.ok_or_else(|| de::Error::missing_field("fn"))?;
                if func.needs_field() && field.is_none() {
                    return Err(de::Error::custom(
                        format!("`{func:?}` needs a `field`").to_lowercase(),
                    ));
                }
                Ok(AggSpec { func, field })
            }
        }
        d.deserialize_any(V)
    }
}

/// A resolved aggregate: function, input path, output name.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub name: String,
    pub func: AggFn,
    pub field: Option<FieldPath>,
}

impl Aggregate {
    pub fn new(name: &str, spec: &AggSpec) -> Self {
        Aggregate {
            name: name.to_string(),
            func: spec.func,
            field: spec.field.as_deref().map(parse_path),
        }
    }

    pub fn init(&self) -> Acc {
        match self.func {
            AggFn::Count => Acc::Count(0),
            AggFn::Sum => Acc::Sum {
                int: 0,
                float: 0.0,
                is_float: false,
            },
            AggFn::Min => Acc::Min(Value::Null),
            AggFn::Max => Acc::Max(Value::Null),
            AggFn::Avg => Acc::Avg { sum: 0.0, n: 0 },
            AggFn::CountDistinct => Acc::Distinct(FxHashSet::default()),
            AggFn::First => Acc::First {
                value: Value::Null,
                time: i64::MAX,
            },
            AggFn::Last => Acc::Last {
                value: Value::Null,
                time: i64::MIN,
            },
        }
    }

    /// Whether the accumulator can take back an input (needed to read a
    /// changelog); `first` and `last` cannot.
    pub fn retractable(&self) -> bool {
        !matches!(self.func, AggFn::First | AggFn::Last)
    }

    /// A retractable accumulator (for changelog input): min, max and
    /// count_distinct keep counts of their values so that taking one back
    /// finds the next result.
    pub fn init_retractable(&self) -> Acc {
        match self.func {
            AggFn::Min => Acc::MinOf(Vec::new()),
            AggFn::Max => Acc::MaxOf(Vec::new()),
            AggFn::CountDistinct => Acc::DistinctOf(FxHashMap::default()),
            _ => self.init(),
        }
    }

    /// The input of this aggregate in `row` (None for a plain count).
    pub fn input<'a>(&self, row: &'a Value) -> Option<&'a Value> {
        self.field.as_ref().map(|f| row.get_path(f))
    }

    /// Checks an input before any accumulator is touched, so a bad event
    /// is rejected whole. Missing and null inputs are skipped (SQL semantics).
    pub fn check(&self, v: Option<&Value>) -> Result<(), Invalid> {
        match (self.func, v) {
            (
                AggFn::Sum | AggFn::Avg,
                Some(v @ (Value::Str(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_))),
            ) => Err(Invalid::new(
                format!(
                    "field `{}` is {} `{v}`, {:?} needs a number",
                    self.field.as_ref().map(|f| f.join(".")).unwrap_or_default(),
                    v.type_name(),
                    self.func
                )
                .to_lowercase(),
            )),
            (AggFn::Sum | AggFn::Avg, Some(Value::Float(f))) if !f.is_finite() => {
                Err("a non-finite number cannot be summed".into())
            }
            _ => Ok(()),
        }
    }
}

/// Accumulator state of one aggregate for one key (and window).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Acc {
    Count(u64),
    Sum {
        int: i64,
        float: f64,
        is_float: bool,
    },
    Min(Value),
    Max(Value),
    Avg {
        sum: f64,
        n: u64,
    },
    Distinct(FxHashSet<u64>),
    First {
        value: Value,
        time: i64,
    },
    Last {
        value: Value,
        time: i64,
    },
    /// Retractable min: every value with its count, in `total_cmp` order.
    MinOf(Vec<(Value, u64)>),
    /// Retractable max: every value with its count, in `total_cmp` order.
    MaxOf(Vec<(Value, u64)>),
    /// Retractable count_distinct: value hash -> count.
    DistinctOf(FxHashMap<u64, u64>),
}

/// Adds `n` (1 or -1) occurrences of `v` to a sorted multiset.
fn multiset_add(set: &mut Vec<(Value, u64)>, v: &Value, add: bool) {
    match set.binary_search_by(|(x, _)| x.total_cmp(v)) {
        Ok(i) if add => set[i].1 += 1,
        Ok(i) => {
            set[i].1 -= 1;
            if set[i].1 == 0 {
                set.remove(i);
            }
        }
        Err(i) if add => set.insert(i, (v.clone(), 1)),
        Err(_) => {}
    }
}

/// Adds `v` to (or, with `negate`, subtracts it from) a sum that stays an
/// integer while every input is one and does not overflow.
fn add_to_sum(int: &mut i64, float: &mut f64, is_float: &mut bool, v: &Value, negate: bool) {
    if let (Value::Int(i), false) = (v, *is_float) {
        let exact = if negate {
            int.checked_sub(*i)
        } else {
            int.checked_add(*i)
        };
        if let Some(s) = exact {
            *int = s;
            return;
        }
    }
    if !*is_float {
        *is_float = true;
        *float = *int as f64;
    }
    let x = v.as_f64().unwrap_or(0.0);
    *float += if negate { -x } else { x };
}

fn value_hash(v: &Value) -> u64 {
    let mut k = GroupKey::new();
    encode_component(&mut k, v);
    stable_hash(&k)
}

fn present(v: Option<&Value>) -> Option<&Value> {
    match v {
        None => Some(&Value::Null),
        Some(Value::Missing | Value::Null) => None,
        Some(v) => Some(v),
    }
}

impl Acc {
    /// Adds one (checked) input observed at `time`.
    pub fn update(&mut self, input: Option<&Value>, time: i64) {
        let counted = input.is_none();
        let Some(v) = present(input) else { return };
        match self {
            Acc::Count(n) => *n += 1,
            Acc::Sum {
                int,
                float,
                is_float,
            } => add_to_sum(int, float, is_float, v, false),
            Acc::Min(m) => {
                if matches!(m, Value::Null) || v.total_cmp(m).is_lt() {
                    *m = v.clone();
                }
            }
            Acc::Max(m) => {
                if matches!(m, Value::Null) || v.total_cmp(m).is_gt() {
                    *m = v.clone();
                }
            }
            Acc::Avg { sum, n } => {
                *sum += v.as_f64().unwrap_or(0.0);
                *n += 1;
            }
            Acc::Distinct(set) => {
                if !counted {
                    set.insert(value_hash(v));
                }
            }
            Acc::MinOf(set) | Acc::MaxOf(set) => multiset_add(set, v, true),
            Acc::DistinctOf(counts) => {
                if !counted {
                    *counts.entry(value_hash(v)).or_default() += 1;
                }
            }
            Acc::First { value, time: t } => {
                if time < *t {
                    *value = v.clone();
                    *t = time;
                }
            }
            Acc::Last { value, time: t } => {
                if time >= *t {
                    *value = v.clone();
                    *t = time;
                }
            }
        }
    }

    /// Takes back one input added earlier by [`Acc::update`] (a changelog
    /// row replaced or deleted). Only for retractable accumulators.
    pub fn retract(&mut self, input: Option<&Value>) {
        let counted = input.is_none();
        let Some(v) = present(input) else { return };
        match self {
            Acc::Count(n) => *n = n.saturating_sub(1),
            Acc::Sum {
                int,
                float,
                is_float,
            } => add_to_sum(int, float, is_float, v, true),
            Acc::Avg { sum, n } => {
                *sum -= v.as_f64().unwrap_or(0.0);
                *n = n.saturating_sub(1);
            }
            Acc::MinOf(set) | Acc::MaxOf(set) => multiset_add(set, v, false),
            Acc::DistinctOf(counts) => {
                if !counted {
                    let h = value_hash(v);
                    if let Some(c) = counts.get_mut(&h) {
                        *c -= 1;
                        if *c == 0 {
                            counts.remove(&h);
                        }
                    }
                }
            }
            Acc::Min(_) | Acc::Max(_) | Acc::Distinct(_) | Acc::First { .. } | Acc::Last { .. } => {
                debug_assert!(false, "retracting from an accumulator that cannot")
            }
        }
    }

    /// Merges another accumulator of the same aggregate into this one.
    pub fn merge(&mut self, other: Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (
                Acc::Sum {
                    int,
                    float,
                    is_float,
                },
                Acc::Sum {
                    int: i2,
                    float: f2,
                    is_float: fl2,
                },
            ) => {
                let total_int = (!*is_float && !fl2).then(|| int.checked_add(i2)).flatten();
                match total_int {
                    Some(t) => *int = t,
                    None => {
                        let a = if *is_float { *float } else { *int as f64 };
                        let b = if fl2 { f2 } else { i2 as f64 };
                        *float = a + b;
                        *is_float = true;
                    }
                }
            }
            (a @ Acc::Min(_), Acc::Min(b)) => a.update(Some(&b), 0),
            (a @ Acc::Max(_), Acc::Max(b)) => a.update(Some(&b), 0),
            (Acc::Avg { sum, n }, Acc::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (Acc::Distinct(a), Acc::Distinct(b)) => a.extend(b),
            (Acc::MinOf(a), Acc::MinOf(b)) | (Acc::MaxOf(a), Acc::MaxOf(b)) => {
                for (v, n) in b {
                    for _ in 0..n {
                        multiset_add(a, &v, true);
                    }
                }
            }
            (Acc::DistinctOf(a), Acc::DistinctOf(b)) => {
                for (h, n) in b {
                    *a.entry(h).or_default() += n;
                }
            }
            (
                Acc::First { value, time },
                Acc::First {
                    value: v2,
                    time: t2,
                },
            ) => {
                if t2 < *time {
                    *value = v2;
                    *time = t2;
                }
            }
            (
                Acc::Last { value, time },
                Acc::Last {
                    value: v2,
                    time: t2,
                },
            ) => {
                if t2 >= *time {
                    *value = v2;
                    *time = t2;
                }
            }
            _ => debug_assert!(false, "merging accumulators of different functions"),
        }
    }

    /// This accumulator as a value that crosses the exchange (a partial
    /// result, see [`Acc::from_partial`]): count and sum as their number,
    /// min and max as their value, avg as `[sum, n]`, count_distinct as
    /// the sorted hashes, first and last as `[value, time]`. `None` for
    /// the retractable forms, which never cross.
    pub fn to_partial(&self) -> Option<Value> {
        Some(match self {
            Acc::Count(n) => Value::Int(*n as i64),
            Acc::Sum { .. } | Acc::Min(_) | Acc::Max(_) => self.result(),
            Acc::Avg { sum, n } => Value::Array(vec![Value::Float(*sum), Value::Int(*n as i64)]),
            Acc::Distinct(set) => {
                let mut hashes: Vec<u64> = set.iter().copied().collect();
                hashes.sort_unstable();
                Value::Array(hashes.into_iter().map(|h| Value::Int(h as i64)).collect())
            }
            Acc::First { value, time } | Acc::Last { value, time } => {
                Value::Array(vec![value.clone(), Value::Int(*time)])
            }
            Acc::MinOf(_) | Acc::MaxOf(_) | Acc::DistinctOf(_) => return None,
        })
    }

    /// The accumulator of `agg` that [`Acc::to_partial`] made `v` from;
    /// `None` when `v` is not such a value.
    pub fn from_partial(agg: &Aggregate, v: &Value) -> Option<Acc> {
        let int = |v: &Value| match v {
            Value::Int(i) => Some(*i),
            _ => None,
        };
        Some(match (agg.func, v) {
            (AggFn::Count, Value::Int(n)) => Acc::Count(u64::try_from(*n).ok()?),
            (AggFn::Sum, Value::Int(i)) => Acc::Sum {
                int: *i,
                float: 0.0,
                is_float: false,
            },
            (AggFn::Sum, Value::Float(f)) => Acc::Sum {
                int: 0,
                float: *f,
                is_float: true,
            },
            (AggFn::Min, v) => Acc::Min(v.clone()),
            (AggFn::Max, v) => Acc::Max(v.clone()),
            (AggFn::Avg, Value::Array(a)) => match a.as_slice() {
                [Value::Float(sum), n] => Acc::Avg {
                    sum: *sum,
                    n: u64::try_from(int(n)?).ok()?,
                },
                _ => return None,
            },
            (AggFn::CountDistinct, Value::Array(hashes)) => Acc::Distinct(
                hashes
                    .iter()
                    .map(|h| int(h).map(|h| h as u64))
                    .collect::<Option<_>>()?,
            ),
            (AggFn::First | AggFn::Last, Value::Array(a)) => match a.as_slice() {
                [value, time] => {
                    let (value, time) = (value.clone(), int(time)?);
                    if agg.func == AggFn::First {
                        Acc::First { value, time }
                    } else {
                        Acc::Last { value, time }
                    }
                }
                _ => return None,
            },
            _ => return None,
        })
    }

    /// The current result.
    pub fn result(&self) -> Value {
        match self {
            Acc::Count(n) => Value::Int(*n as i64),
            Acc::Sum {
                int,
                float,
                is_float,
            } => {
                if *is_float {
                    Value::Float(*float)
                } else {
                    Value::Int(*int)
                }
            }
            Acc::Min(v) | Acc::Max(v) => v.clone(),
            Acc::Avg { sum, n } => {
                if *n == 0 {
                    Value::Null
                } else {
                    Value::Float(sum / *n as f64)
                }
            }
            Acc::Distinct(set) => Value::Int(set.len() as i64),
            Acc::MinOf(set) => set.first().map_or(Value::Null, |(v, _)| v.clone()),
            Acc::MaxOf(set) => set.last().map_or(Value::Null, |(v, _)| v.clone()),
            Acc::DistinctOf(counts) => Value::Int(counts.len() as i64),
            Acc::First { value, .. } | Acc::Last { value, .. } => value.clone(),
        }
    }

    /// Approximate heap size, for the state-bytes metric.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Acc::Distinct(set) => 48 + set.len() * 8,
            Acc::DistinctOf(counts) => 48 + counts.len() * 16,
            Acc::MinOf(set) | Acc::MaxOf(set) => 48 + set.len() * 40,
            _ => 48,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agg(func: AggFn) -> Aggregate {
        Aggregate {
            name: "x".into(),
            func,
            field: if func == AggFn::Count {
                None
            } else {
                Some(parse_path("v"))
            },
        }
    }

    #[test]
    fn config_forms() {
        #[derive(Deserialize)]
        struct T {
            a: std::collections::BTreeMap<String, AggSpec>,
        }
        let t: T =
            toml::from_str("a = { n = \"count\", total = { fn = \"sum\", field = \"amount\" } }")
                .unwrap();
        assert_eq!(t.a["n"].func, AggFn::Count);
        assert_eq!(t.a["total"].field.as_deref(), Some("amount"));
        let e = toml::from_str::<T>("a = { n = \"cont\" }")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown variant `cont`"), "{e}");
        let e = toml::from_str::<T>("a = { n = \"sum\" }")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("needs a field"), "{e}");
        let e = toml::from_str::<T>("a = { n = { fn = \"sum\", feild = \"x\" } }")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown field `feild`"), "{e}");
    }

    #[test]
    fn wrong_types_are_rejected_missing_skipped() {
        let sum = agg(AggFn::Sum);
        assert!(sum
            .check(Some(&Value::from("12")))
            .unwrap_err()
            .message()
            .contains("needs a number"));
        assert!(sum.check(Some(&Value::Missing)).is_ok());
        let mut acc = sum.init();
        acc.update(Some(&Value::Missing), 0);
        acc.update(Some(&Value::Int(2)), 0);
        acc.update(Some(&Value::Null), 0);
        assert_eq!(acc.result(), Value::Int(2));
        let mut avg = agg(AggFn::Avg).init();
        assert_eq!(avg.result(), Value::Null);
        avg.update(Some(&Value::Int(1)), 0);
        avg.update(Some(&Value::Float(2.0)), 0);
        assert_eq!(avg.result(), Value::Float(1.5));
    }

    #[test]
    fn first_last_follow_event_time() {
        let mut first = agg(AggFn::First).init();
        let mut last = agg(AggFn::Last).init();
        for (v, t) in [(2, 20), (1, 10), (3, 30), (0, 5)] {
            first.update(Some(&Value::Int(v)), t);
            last.update(Some(&Value::Int(v)), t);
        }
        assert_eq!(first.result(), Value::Int(0));
        assert_eq!(last.result(), Value::Int(3));
    }

    proptest! {
        /// Folding all inputs equals merging the folds of any split.
        #[test]
        fn merge_equals_fold(values in proptest::collection::vec(-1000i64..1000, 0..50), split in 0usize..50) {
            for func in [AggFn::Count, AggFn::Sum, AggFn::Min, AggFn::Max, AggFn::Avg, AggFn::CountDistinct, AggFn::First, AggFn::Last] {
                let a = agg(func);
                let split = split.min(values.len());
                let mut whole = a.init();
                let (mut left, mut right) = (a.init(), a.init());
                for (i, v) in values.iter().enumerate() {
                    let row = Value::Object(sluice_engine::value::Map(vec![("v".into(), Value::Int(*v))]));
                    let input = a.input(&row).cloned();
                    whole.update(input.as_ref(), i as i64);
                    if i < split { left.update(input.as_ref(), i as i64) } else { right.update(input.as_ref(), i as i64) }
                }
                left.merge(right);
                prop_assert_eq!(left.result(), whole.result(), "{:?}", func);
            }
        }

        /// Taking back inputs leaves what a fold over the remaining inputs
        /// gives (the retractable accumulators of changelog input).
        #[test]
        fn retraction_equals_fold_of_what_remains(
            values in proptest::collection::vec(-20i64..20, 1..60),
            removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
        ) {
            for func in [AggFn::Count, AggFn::Sum, AggFn::Min, AggFn::Max, AggFn::Avg, AggFn::CountDistinct] {
                let a = agg(func);
                prop_assert!(a.retractable());
                let mut acc = a.init_retractable();
                let mut remaining = values.clone();
                for v in &values {
                    acc.update(Some(&Value::Int(*v)), 0);
                }
                for r in &removals {
                    if remaining.is_empty() {
                        break;
                    }
                    let v = remaining.remove(r.index(remaining.len()));
                    acc.retract(Some(&Value::Int(v)));
                }
                let mut fold = a.init();
                for v in &remaining {
                    fold.update(Some(&Value::Int(*v)), 0);
                }
                match (func, acc.result(), fold.result()) {
                    (AggFn::Avg, Value::Float(x), Value::Float(y)) => prop_assert!((x - y).abs() < 1e-9),
                    (_, x, y) => prop_assert_eq!(x, y, "{:?}", func),
                }
            }
            prop_assert!(!agg(AggFn::First).retractable() && !agg(AggFn::Last).retractable());
        }

        /// The accumulators agree with a straightforward fold.
        #[test]
        fn agrees_with_plain_fold(values in proptest::collection::vec(-1000i64..1000, 1..50)) {
            let run = |func| {
                let a = agg(func);
                let mut acc = a.init();
                for (i, v) in values.iter().enumerate() { acc.update(Some(&Value::Int(*v)), i as i64); }
                acc.result()
            };
            prop_assert_eq!(run(AggFn::Count), Value::Int(values.len() as i64));
            prop_assert_eq!(run(AggFn::Sum), Value::Int(values.iter().sum()));
            prop_assert_eq!(run(AggFn::Min), Value::Int(*values.iter().min().unwrap()));
            prop_assert_eq!(run(AggFn::Max), Value::Int(*values.iter().max().unwrap()));
            let distinct: std::collections::BTreeSet<_> = values.iter().collect();
            prop_assert_eq!(run(AggFn::CountDistinct), Value::Int(distinct.len() as i64));
            prop_assert_eq!(run(AggFn::First), Value::Int(values[0]));
            prop_assert_eq!(run(AggFn::Last), Value::Int(*values.last().unwrap()));
        }
    }
}
