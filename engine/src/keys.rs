//! Group keys, their stable encoding, and key groups.
//!
//! A group key is the tuple of values of the `group_by` fields, encoded into
//! a compact byte string. The encoding is stable across versions and
//! platforms because it is stored in checkpoints and decides which key group
//! (and so which worker) owns the key: the hash is FNV-1a 64 over the encoded
//! bytes, never a process-seeded hasher.

use smallvec::SmallVec;

use crate::value::{Map, Str, Value};

/// Encoded group key (inline up to 32 bytes: a window start and a short
/// key, as folding uses them, need no heap block).
pub type GroupKey = SmallVec<[u8; 32]>;

/// Default number of key groups (the unit of rescaling). Fixed for the life
/// of a state directory.
pub const DEFAULT_KEY_GROUPS: u16 = 128;

const TAG_MISSING: u8 = 0;
const TAG_NULL: u8 = 1;
const TAG_FALSE: u8 = 2;
const TAG_TRUE: u8 = 3;
const TAG_INT: u8 = 4;
const TAG_FLOAT: u8 = 5;
const TAG_STR: u8 = 6;
const TAG_JSON: u8 = 7;

/// Appends the encoding of one key component. Integers and floats with an
/// integral value encode identically, so `1` and `1.0` group together.
pub fn encode_component(out: &mut impl KeyBytes, v: &Value) {
    match v {
        Value::Missing => out.push(TAG_MISSING),
        Value::Null => out.push(TAG_NULL),
        Value::Bool(false) => out.push(TAG_FALSE),
        Value::Bool(true) => out.push(TAG_TRUE),
        Value::Int(i) => {
            out.push(TAG_INT);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            out.push(TAG_INT);
            out.extend_from_slice(&(*f as i64).to_be_bytes());
        }
        Value::Float(f) => {
            out.push(TAG_FLOAT);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Value::Str(s) => encode_str(out, s.as_bytes()),
        other => {
            let mut json = Vec::new();
            crate::json::write_value(&mut json, other);
            out.push(TAG_JSON);
            push_len(out, json.len());
            out.extend_from_slice(&json);
        }
    }
}

/// Appends the encoding of a string component whose UTF-8 content is
/// `bytes` (what [`encode_component`] appends for `Value::Str`).
#[inline(always)]
pub fn encode_str(out: &mut impl KeyBytes, bytes: &[u8]) {
    out.push(TAG_STR);
    push_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn push_len(out: &mut impl KeyBytes, len: usize) {
    // LEB128
    let mut n = len;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
}

/// A buffer keys are encoded into: a [`GroupKey`], or a reused `Vec<u8>`
/// (cheaper to append to on a hot path: no inline-or-heap branch).
pub trait KeyBytes {
    /// Appends one byte.
    fn push(&mut self, byte: u8);
    /// Appends `bytes`.
    fn extend_from_slice(&mut self, bytes: &[u8]);
}

impl KeyBytes for GroupKey {
    #[inline(always)]
    fn push(&mut self, byte: u8) {
        SmallVec::push(self, byte);
    }

    #[inline(always)]
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        SmallVec::extend_from_slice(self, bytes);
    }
}

impl KeyBytes for Vec<u8> {
    #[inline(always)]
    fn push(&mut self, byte: u8) {
        Vec::push(self, byte);
    }

    #[inline(always)]
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }
}

/// Decodes a key produced by [`encode_component`] calls back into values.
pub fn decode_key(mut bytes: &[u8]) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        let v = match tag {
            TAG_MISSING => Value::Missing,
            TAG_NULL => Value::Null,
            TAG_FALSE => Value::Bool(false),
            TAG_TRUE => Value::Bool(true),
            TAG_INT | TAG_FLOAT => {
                let (num, rest) = bytes.split_at_checked(8)?;
                bytes = rest;
                let raw = u64::from_be_bytes(num.try_into().ok()?);
                if tag == TAG_INT {
                    Value::Int(raw as i64)
                } else {
                    Value::Float(f64::from_bits(raw))
                }
            }
            TAG_STR | TAG_JSON => {
                let mut len = 0usize;
                let mut shift = 0;
                loop {
                    let (&b, rest) = bytes.split_first()?;
                    bytes = rest;
                    len |= ((b & 0x7f) as usize) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        break;
                    }
                    if shift > 63 {
                        return None;
                    }
                }
                let (data, rest) = bytes.split_at_checked(len)?;
                bytes = rest;
                if tag == TAG_STR {
                    Value::Str(Str::from(std::str::from_utf8(data).ok()?))
                } else {
                    crate::json::parse_value(data).ok()?
                }
            }
            _ => return None,
        };
        out.push(v);
    }
    Some(out)
}

/// FNV-1a 64-bit: stable, seedless, good enough spread for key groups.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // final avalanche (from splitmix64) so that low bits are well mixed
    h ^= h >> 31;
    h = h.wrapping_mul(0x7fb5_d329_728e_a185);
    h ^= h >> 27;
    h
}

/// The key group a key belongs to, in `0..key_groups`.
pub fn key_group(key: &[u8], key_groups: u16) -> u16 {
    (stable_hash(key) % u64::from(key_groups.max(1))) as u16
}

/// The key groups a worker owns when `workers` workers share `key_groups`
/// groups: contiguous ranges, so that rescaling moves whole ranges.
pub fn owned_key_groups(worker: u32, workers: u32, key_groups: u16) -> std::ops::Range<u16> {
    let workers = workers.max(1);
    let worker = worker.min(workers - 1);
    let kg = u32::from(key_groups);
    let start = (kg * worker) / workers;
    let end = (kg * (worker + 1)) / workers;
    start as u16..end as u16
}

/// Builds a row object from named key values (used to put group fields back
/// into aggregate results).
pub fn key_object(names: &[Vec<Str>], values: &[Value]) -> Value {
    let mut obj = Value::Object(Map::new());
    for (path, v) in names.iter().zip(values) {
        obj.set_path(path, v.clone());
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ints_and_integral_floats_group_together() {
        let (mut a, mut b) = (GroupKey::new(), GroupKey::new());
        encode_component(&mut a, &Value::Int(3));
        encode_component(&mut b, &Value::Float(3.0));
        assert_eq!(a, b);
    }

    #[test]
    fn hash_is_stable() {
        // Pinned values (computed independently): they are the on-disk and
        // ownership contract. Changing the hash would move keys between
        // workers and orphan restored state.
        assert_eq!(stable_hash(b""), 0xf687_0ab3_55a6_3d2c);
        assert_eq!(stable_hash(b"GT"), 0x0df7_e5dd_9e7c_a939);
        let mut k = GroupKey::new();
        encode_component(&mut k, &Value::from("GT"));
        assert_eq!(k.as_slice(), &[6, 2, b'G', b'T']);
        assert_eq!(stable_hash(&k), 0x1937_b759_1605_80cd);
        assert_eq!(key_group(&k, 128), 77);
    }

    #[test]
    fn key_groups_partition_the_range() {
        for workers in 1..9 {
            let mut next = 0;
            for w in 0..workers {
                let r = owned_key_groups(w, workers, 128);
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, 128);
        }
    }

    #[test]
    fn key_groups_spread_evenly() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            let mut k = GroupKey::new();
            encode_component(&mut k, &Value::Int(i));
            counts[key_group(&k, 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(parts in proptest::collection::vec(
            prop_oneof![
                any::<i64>().prop_map(Value::Int),
                "[a-zA-Z0-9 é]{0,40}".prop_map(|s| Value::from(s.as_str())),
                any::<bool>().prop_map(Value::Bool),
                Just(Value::Null),
                (-1e9f64..1e9).prop_filter("non-integral", |f| f.fract() != 0.0).prop_map(Value::Float),
            ], 0..5)) {
            let mut k = GroupKey::new();
            for p in &parts { encode_component(&mut k, p); }
            prop_assert_eq!(decode_key(&k).unwrap(), parts);
        }

        #[test]
        fn distinct_tuples_encode_distinctly(a in "[a-z]{0,5}", b in "[a-z]{0,5}", c in "[a-z]{0,5}", d in "[a-z]{0,5}") {
            let enc = |x: &str, y: &str| {
                let mut k = GroupKey::new();
                encode_component(&mut k, &Value::from(x));
                encode_component(&mut k, &Value::from(y));
                k
            };
            prop_assert_eq!(enc(&a, &b) == enc(&c, &d), a == c && b == d);
        }
    }
}
