//! Full parsing of a JSON document into a [`Value`].

use rustc_hash::FxHashMap;

use super::error::{msg, JsonError};
use super::read::Reader;
use crate::value::{Map, Str, Value};

/// Parses exactly one JSON value (optionally surrounded by whitespace).
///
/// Strict RFC 8259: no comments, trailing commas, leading zeros, `NaN`, or
/// unescaped control characters; strings must be valid UTF-8 and `\u`
/// escapes must not leave surrogates unpaired. Numbers without fraction or
/// exponent that fit in `i64` become [`Value::Int`] (so `-0` is `Int(0)`),
/// all others [`Value::Float`]; a number too large for `f64` is an error.
/// Nesting deeper than 128 arrays/objects is an error. For duplicate object
/// keys the last value wins, at the position of the first occurrence.
///
/// # Errors
///
/// A [`JsonError`] with the byte offset and a description of the problem.
pub fn parse_value(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut r = Reader::new(bytes);
    r.skip_ws();
    let v = parse_any(&mut r, 0)?;
    r.finish()?;
    Ok(v)
}

/// Parses the value at the cursor, which is inside `depth` open containers.
pub(crate) fn parse_any(r: &mut Reader<'_>, depth: usize) -> Result<Value, JsonError> {
    match r.peek() {
        Some(b'"') => {
            r.pos += 1;
            Ok(Value::Str(r.read_str()?))
        }
        Some(b'-' | b'0'..=b'9') => r.number(),
        Some(b'{') => parse_object(r, depth),
        Some(b'[') => parse_array(r, depth),
        Some(b't') => r.literal(b"true").map(|()| Value::Bool(true)),
        Some(b'f') => r.literal(b"false").map(|()| Value::Bool(false)),
        Some(b'n') => r.literal(b"null").map(|()| Value::Null),
        _ => Err(r.unexpected(msg::EXPECTED_VALUE)),
    }
}

/// Parses the object at the cursor (at `{`).
pub(crate) fn parse_object(r: &mut Reader<'_>, depth: usize) -> Result<Value, JsonError> {
    r.enter(depth)?;
    r.pos += 1;
    r.skip_ws();
    let mut members: Vec<(Str, Value)> = Vec::new();
    if r.peek() == Some(b'}') {
        r.pos += 1;
        return Ok(Value::Object(Map(members)));
    }
    loop {
        r.key_quote()?;
        let key = r.read_str()?;
        r.colon()?;
        let value = parse_any(r, depth + 1)?;
        members.push((key, value));
        if !r.object_sep()? {
            break;
        }
    }
    dedup_keys(&mut members);
    Ok(Value::Object(Map(members)))
}

/// Parses the array at the cursor (at `[`).
fn parse_array(r: &mut Reader<'_>, depth: usize) -> Result<Value, JsonError> {
    r.enter(depth)?;
    r.pos += 1;
    r.skip_ws();
    let mut items = Vec::new();
    if r.peek() == Some(b']') {
        r.pos += 1;
        return Ok(Value::Array(items));
    }
    loop {
        items.push(parse_any(r, depth + 1)?);
        if !r.array_sep()? {
            return Ok(Value::Array(items));
        }
    }
}

/// Objects at most this large find duplicates by pairwise comparison.
const SMALL_OBJECT: usize = 16;

/// Resolves duplicate keys: the last value wins, stored at the position of
/// the first occurrence. Linear for large objects, allocation-free for
/// small ones and whenever there are no duplicates among them.
fn dedup_keys(members: &mut Vec<(Str, Value)>) {
    let n = members.len();
    if n < 2 {
        return;
    }
    // first[i] = index of the first member whose key equals member i's key.
    let first: Vec<usize> = if n <= SMALL_OBJECT {
        let has_dup = (1..n).any(|i| members[..i].iter().any(|(k, _)| *k == members[i].0));
        if !has_dup {
            return;
        }
        (0..n)
            .map(|i| {
                members[..i]
                    .iter()
                    .position(|(k, _)| *k == members[i].0)
                    .unwrap_or(i)
            })
            .collect()
    } else {
        let mut seen: FxHashMap<&str, usize> = FxHashMap::default();
        seen.reserve(n);
        let mut has_dup = false;
        let first = members
            .iter()
            .enumerate()
            .map(|(i, (k, _))| {
                let f = *seen.entry(k.as_str()).or_insert(i);
                has_dup |= f != i;
                f
            })
            .collect();
        if !has_dup {
            return;
        }
        first
    };
    for (i, &f) in first.iter().enumerate() {
        if f != i {
            members[f].1 = std::mem::take(&mut members[i].1);
        }
    }
    let mut i = 0;
    members.retain(|_| {
        let keep = first[i] == i;
        i += 1;
        keep
    });
}
