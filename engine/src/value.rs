//! The dynamic value model every event field is held in.
//!
//! Values are JSON-shaped with one addition: [`Value::Missing`] marks a field
//! that was absent from the event (as opposed to an explicit `null`), so that
//! `exists` filters and dead-letter reasons can tell the two apart. Strings
//! are [`Str`] (inline up to 24 bytes), so the short strings typical of keys
//! ("GT", "Sunny") never touch the heap.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A string stored inline when short (<= 24 bytes), on the heap otherwise.
pub type Str = compact_str::CompactString;

/// An ordered JSON object. Objects in events are small, so a vector with
/// linear lookup beats a hash map and keeps the original field order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Map(pub Vec<(Str, Value)>);

/// A dynamically typed field value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// The field was not present in the event.
    #[default]
    Missing,
    /// JSON `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integral number that fits in `i64`.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    Str(Str),
    /// A JSON array.
    Array(Vec<Value>),
    /// A JSON object, fields in insertion order.
    Object(Map),
}

impl Map {
    /// An empty object.
    pub fn new() -> Self {
        Map(Vec::new())
    }

    /// The value under `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of field `key`, to change it.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Inserts or replaces `key`, keeping the position of an existing key.
    pub fn insert(&mut self, key: impl Into<Str>, value: Value) {
        let key = key.into();
        match self.get_mut(&key) {
            Some(slot) => *slot = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes `key` and returns its value (or `Missing`).
    pub fn remove(&mut self, key: &str) -> Value {
        match self.0.iter().position(|(k, _)| k == key) {
            Some(i) => self.0.remove(i).1,
            None => Value::Missing,
        }
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the object has no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &(Str, Value)> {
        self.0.iter()
    }
}

static MISSING: Value = Value::Missing;

impl Value {
    /// True unless the value is [`Value::Missing`].
    pub fn exists(&self) -> bool {
        !matches!(self, Value::Missing)
    }

    /// Follows `path` (object keys) from this value; `Missing` if any step is absent
    /// or is not an object.
    pub fn get_path(&self, path: &[Str]) -> &Value {
        let mut cur = self;
        for key in path {
            match cur {
                Value::Object(map) => match map.get(key) {
                    Some(v) => cur = v,
                    None => return &MISSING,
                },
                _ => return &MISSING,
            }
        }
        cur
    }

    /// Sets the value at `path`, creating intermediate objects (and replacing
    /// non-object intermediates). An empty path replaces the whole value.
    pub fn set_path(&mut self, path: &[Str], value: Value) {
        let Some((last, parents)) = path.split_last() else {
            *self = value;
            return;
        };
        let mut cur = self;
        for key in parents {
            if !matches!(cur, Value::Object(_)) {
                *cur = Value::Object(Map::new());
            }
            let Value::Object(map) = cur else {
                unreachable!()
            };
            if map.get(key).is_none() {
                map.0.push((key.clone(), Value::Object(Map::new())));
            }
            cur = map.get_mut(key).expect("just inserted");
        }
        if !matches!(cur, Value::Object(_)) {
            *cur = Value::Object(Map::new());
        }
        if let Value::Object(map) = cur {
            map.insert(last.clone(), value);
        }
    }

    /// Removes the value at `path` and returns it (`Missing` if absent).
    pub fn take_path(&mut self, path: &[Str]) -> Value {
        let Some((last, parents)) = path.split_last() else {
            return std::mem::take(self);
        };
        let mut cur = self;
        for key in parents {
            match cur {
                Value::Object(map) => match map.get_mut(key) {
                    Some(v) => cur = v,
                    None => return Value::Missing,
                },
                _ => return Value::Missing,
            }
        }
        match cur {
            Value::Object(map) => map.remove(last),
            _ => Value::Missing,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Missing => "missing",
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// The value as a float if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The value as an integer: an integer, or a float without a fraction.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
            _ => None,
        }
    }

    /// The value as a string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A total order used by min/max and comparisons: numbers compare
    /// numerically (ints and floats together), strings lexically, and values
    /// of different kinds by kind (missing < null < bool < number < string <
    /// array < object).
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        fn rank(v: &Value) -> u8 {
            match v {
                Value::Missing => 0,
                Value::Null => 1,
                Value::Bool(_) => 2,
                Value::Int(_) | Value::Float(_) => 3,
                Value::Str(_) => 4,
                Value::Array(_) => 5,
                Value::Object(_) => 6,
            }
        }
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                let (a, b) = (self.as_f64().unwrap_or(0.0), other.as_f64().unwrap_or(0.0));
                a.total_cmp(&b)
            }
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Array(a), Value::Array(b)) => {
                for (x, y) in a.iter().zip(b) {
                    let o = x.total_cmp(y);
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.len().cmp(&b.len())
            }
            _ => rank(self).cmp(&rank(other)),
        }
    }

    /// Loose equality used by filters: `1 == 1.0`, otherwise structural.
    pub fn loose_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                self.total_cmp(other) == Ordering::Equal
            }
            _ => self == other,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(Str::from(s))
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl fmt::Display for Value {
    /// Renders the value as compact JSON (`Missing` renders as `null`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        crate::json::write_value(&mut out, self);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

/// Splits a dotted field path (`a.b.c`) into its keys.
pub fn parse_path(path: &str) -> Vec<Str> {
    if path.is_empty() {
        return Vec::new();
    }
    path.split('.').map(Str::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_set_take() {
        let mut v = Value::Object(Map::new());
        v.set_path(&parse_path("a.b"), Value::Int(1));
        assert_eq!(v.get_path(&parse_path("a.b")), &Value::Int(1));
        assert_eq!(v.get_path(&parse_path("a.c")), &Value::Missing);
        assert_eq!(v.get_path(&parse_path("a.b.c")), &Value::Missing);
        assert_eq!(v.take_path(&parse_path("a.b")), Value::Int(1));
        assert_eq!(v.get_path(&parse_path("a.b")), &Value::Missing);
    }

    #[test]
    fn numbers_compare_across_kinds() {
        assert!(Value::Int(1).loose_eq(&Value::Float(1.0)));
        assert_eq!(
            Value::Int(2).total_cmp(&Value::Float(1.5)),
            Ordering::Greater
        );
        assert_eq!(
            Value::from("a").total_cmp(&Value::Int(9)),
            Ordering::Greater
        );
    }
}
