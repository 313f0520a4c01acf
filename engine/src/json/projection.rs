//! Decoding only the fields a pipeline needs.

use super::error::{msg, JsonError};
use super::parse::{parse_any, parse_object};
use super::read::{RawStr, Reader};
use crate::value::{Str, Value};

/// A precompiled set of field paths to pull out of JSON object documents.
///
/// Path `i` (a list of object keys from the top-level object; empty means
/// the whole document) fills slot `i` of the output. The whole document is
/// validated exactly as strictly as [`parse_value`](super::parse_value)
/// does — the two accept the same documents — but subtrees no path needs
/// are skipped without building values or allocating, and nested paths
/// only descend into the keys they name.
///
/// A `Projection` is immutable, `Send + Sync`, and meant to be built once
/// and reused for every event.
///
/// ```
/// use sluice_engine::json::Projection;
/// use sluice_engine::{Str, Value};
///
/// let p = Projection::new(&[vec![Str::from("country")], vec![Str::from("ts")]]);
/// let mut out = vec![Value::Missing; p.len()];
/// p.decode(br#"{"ts":17,"country":"GT","x":[1,2]}"#, &mut out).unwrap();
/// assert_eq!(out, [Value::from("GT"), Value::Int(17)]);
/// ```
#[derive(Debug, Clone)]
pub struct Projection {
    /// The trie of requested keys; `nodes[0]` is the top-level object.
    nodes: Vec<Node>,
    /// The requested paths, by slot.
    paths: Vec<Vec<Str>>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Number of keys from the document root to this node.
    level: usize,
    /// Slots whose path ends here (they need the whole value).
    whole: Vec<usize>,
    /// Slots whose path continues below this node.
    below: Vec<usize>,
    /// `whole` and `below` together: everything a repeated key must reset.
    all: Vec<usize>,
    /// The slot, if exactly one path ends here and none continues below.
    leaf: Option<usize>,
    /// Keys to descend into.
    children: Vec<Child>,
}

#[derive(Debug, Clone)]
struct Child {
    key: Box<[u8]>,
    /// `head(&key)`, compared before the key itself.
    head: u64,
    node: usize,
}

/// The first `min(8, len)` bytes of `key` as a little-endian word, zero padded.
fn head(key: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = key.len().min(8);
    w[..n].copy_from_slice(&key[..n]);
    u64::from_le_bytes(w)
}

/// `head` of the `len` key bytes at `bytes[start..]`, reading a whole word
/// from the input when there is room (the bytes after a key are its closing
/// quote and beyond, masked off here).
#[inline(always)]
fn head_at(bytes: &[u8], start: usize, len: usize) -> u64 {
    match bytes.get(start..).and_then(|s| s.first_chunk::<8>()) {
        Some(chunk) if len >= 8 => u64::from_le_bytes(*chunk),
        Some(chunk) => u64::from_le_bytes(*chunk) & ((1u64 << (8 * len)) - 1),
        None => head(&bytes[start..start + len]),
    }
}

/// Sets every slot to `Missing`.
#[inline(always)]
fn clear(out: &mut [Value]) {
    for slot in out {
        store(slot, Value::Missing);
    }
}

/// `*slot = v`, but without a call to the destructor when the old value
/// owns no heap memory (the common case for event fields), which is
/// measurably faster on the decode hot path.
#[inline(always)]
fn store(slot: &mut Value, v: Value) {
    let old = std::mem::replace(slot, v);
    let owns_heap = match &old {
        Value::Str(s) => s.is_heap_allocated(),
        Value::Array(_) | Value::Object(_) => true,
        _ => false,
    };
    if owns_heap {
        drop(old);
    } else {
        // Nothing to free: scalars and inline strings.
        std::mem::forget(old);
    }
}

impl Node {
    /// The child for key bytes `key` (whose `head` is `word`), if any path
    /// continues through it.
    #[inline(always)]
    fn find(&self, key: &[u8], word: u64) -> Option<usize> {
        self.children
            .iter()
            .find(|c| {
                c.head == word
                    && c.key.len() == key.len()
                    && (key.len() <= 8 || c.key[8..] == key[8..])
            })
            .map(|c| c.node)
    }
}

impl Projection {
    /// Compiles `paths`; path `i` will fill slot `i` of [`decode`](Self::decode)'s output.
    #[must_use]
    pub fn new(paths: &[Vec<Str>]) -> Projection {
        let mut nodes = vec![Node::default()];
        for (slot, path) in paths.iter().enumerate() {
            let mut cur = 0;
            for (level, key) in path.iter().enumerate() {
                nodes[cur].below.push(slot);
                nodes[cur].all.push(slot);
                cur = match nodes[cur].find(key.as_bytes(), head(key.as_bytes())) {
                    Some(next) => next,
                    None => {
                        let next = nodes.len();
                        nodes.push(Node {
                            level: level + 1,
                            ..Node::default()
                        });
                        let child = Child {
                            key: key.as_bytes().into(),
                            head: head(key.as_bytes()),
                            node: next,
                        };
                        nodes[cur].children.push(child);
                        next
                    }
                };
            }
            nodes[cur].whole.push(slot);
            nodes[cur].all.push(slot);
        }
        for node in &mut nodes {
            if let ([slot], []) = (&node.whole[..], &node.below[..]) {
                node.leaf = Some(*slot);
            }
        }
        Projection {
            nodes,
            paths: paths.to_vec(),
        }
    }

    /// Number of paths, which is the number of output slots.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True if there are no paths.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The paths this projection was built from, by slot.
    pub fn paths(&self) -> &[Vec<Str>] {
        &self.paths
    }

    /// Validates the JSON object document `bytes` and stores the value at
    /// each path in its slot of `out` ([`Value::Missing`] if the path is
    /// absent or runs through a non-object). Duplicate keys resolve as in
    /// [`parse_value`](super::parse_value): the last one wins.
    ///
    /// # Errors
    ///
    /// If the document is not valid JSON or its top level is not an object.
    /// All slots are `Missing` after an error.
    ///
    /// # Panics
    ///
    /// If `out.len()` differs from the number of paths.
    pub fn decode(&self, bytes: &[u8], out: &mut [Value]) -> Result<(), JsonError> {
        self.decode_spans(bytes, out, 0, &mut []).map(|_| ())
    }

    /// [`decode`](Self::decode), except that a slot in `keep` (bit `i` for
    /// slot `i`; slots from 64 on never are) whose value is a string
    /// without escapes is not decoded: the range of its content in `bytes`
    /// (valid UTF-8, as the whole document was validated) goes to
    /// `spans[i]`, `out[i]` is `Missing`, and bit `i` of the returned mask
    /// is set. This saves building a string that is only going to be
    /// copied as bytes (a group key).
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode); the mask is then empty.
    ///
    /// # Panics
    ///
    /// If `out.len()` differs from the number of paths, or `spans` is
    /// shorter than the highest slot in `keep`.
    pub fn decode_spans(
        &self,
        bytes: &[u8],
        out: &mut [Value],
        keep: u64,
        spans: &mut [Span],
    ) -> Result<u64, JsonError> {
        assert_eq!(
            out.len(),
            self.paths.len(),
            "Projection::decode: output slots must match the number of paths"
        );
        // Up to 64 slots, a slot keeps the previous document's value until
        // this one sets it (a string is then overwritten in place, with no
        // new value built and moved in); the slots it did not set become
        // `Missing` at the end.
        let lazy = out.len() <= 64;
        if !lazy {
            clear(out);
        }
        let mut slots = Slots {
            out,
            set: 0,
            keep,
            spans,
            raw: 0,
        };
        let result = self.decode_inner(bytes, &mut slots);
        let Slots { out, set, raw, .. } = slots;
        match result {
            Err(e) => {
                clear(out);
                return Err(e);
            }
            Ok(()) if lazy => {
                for (i, slot) in out.iter_mut().enumerate() {
                    if set & (1 << i) == 0 {
                        store(slot, Value::Missing);
                    }
                }
            }
            Ok(()) => {}
        }
        Ok(raw)
    }

    fn decode_inner(&self, bytes: &[u8], out: &mut Slots<'_>) -> Result<(), JsonError> {
        let mut r = Reader::new(bytes);
        r.skip_ws();
        let found = match r.peek() {
            Some(b'{') => None,
            Some(b'[') => Some(msg::FOUND_ARRAY),
            Some(b'"') => Some(msg::FOUND_STRING),
            Some(b'-' | b'0'..=b'9') => Some(msg::FOUND_NUMBER),
            // Only a whole literal is named as one: `this is not json` is
            // not "a boolean".
            Some(b't' | b'f' | b'n') => {
                let rest = &bytes[r.pos..];
                if rest.starts_with(b"true") || rest.starts_with(b"false") {
                    Some(msg::FOUND_BOOL)
                } else if rest.starts_with(b"null") {
                    Some(msg::FOUND_NULL)
                } else {
                    Some(msg::EXPECTED_VALUE)
                }
            }
            _ => Some(msg::EXPECTED_VALUE),
        };
        if let Some(message) = found {
            return Err(r.unexpected(message));
        }
        if self.nodes[0].whole.is_empty() {
            self.object(&mut r, 0, 0, out)?;
        } else {
            let v = parse_object(&mut r, 0)?;
            r.finish()?;
            self.fill_from(0, v, out);
            return Ok(());
        }
        r.finish()
    }

    /// Decodes the object at the cursor (at `{`) for trie node `node`,
    /// inside `depth` open containers.
    fn object(
        &self,
        r: &mut Reader<'_>,
        node: usize,
        depth: usize,
        out: &mut Slots<'_>,
    ) -> Result<(), JsonError> {
        r.enter(depth)?;
        r.pos += 1;
        r.skip_ws();
        if r.peek() == Some(b'}') {
            r.pos += 1;
            return Ok(());
        }
        let node = &self.nodes[node];
        loop {
            r.key_quote()?;
            let start = r.pos;
            let child = match r.read_str_raw()? {
                RawStr::Plain(key) => node.find(key, head_at(r.bytes, start, key.len())),
                RawStr::Escaped { start } => {
                    let mut key = Str::default();
                    r.finish_escaped(start, &mut key)?;
                    node.find(key.as_bytes(), head(key.as_bytes()))
                }
            };
            r.colon()?;
            match child {
                // Inline the common scalar skips; containers recurse.
                None => match r.peek() {
                    Some(b'"') => {
                        r.pos += 1;
                        r.skip_str()?;
                    }
                    Some(b'-' | b'0'..=b'9') => r.skip_number()?,
                    _ => r.skip_value(depth + 1)?,
                },
                Some(child) => self.member(r, child, depth + 1, out)?,
            }
            if !r.object_sep()? {
                return Ok(());
            }
        }
    }

    /// Decodes the value of a member some path goes through.
    #[inline]
    fn member(
        &self,
        r: &mut Reader<'_>,
        node: usize,
        depth: usize,
        out: &mut Slots<'_>,
    ) -> Result<(), JsonError> {
        let n = &self.nodes[node];
        if let Some(slot) = n.leaf {
            // Overwrites an earlier occurrence of the key, if any.
            if out.keeps(slot) && r.peek() == Some(b'"') {
                r.pos += 1;
                let start = r.pos;
                match r.read_str_raw()? {
                    RawStr::Plain(raw) => out.keep_span(slot, start, start + raw.len()),
                    RawStr::Escaped { start } => {
                        // Decoded after all: the bytes are not the content.
                        let mut s = Str::default();
                        r.finish_escaped(start, &mut s)?;
                        store(out.at(slot), Value::Str(s));
                    }
                }
                return Ok(());
            }
            let at = out.at(slot);
            match (r.peek(), at) {
                (Some(b'"'), Value::Str(s)) => {
                    r.pos += 1;
                    r.read_str_into(s)?;
                }
                (Some(b'"'), at) => {
                    r.pos += 1;
                    store(at, Value::Str(r.read_str()?));
                }
                (Some(b'-' | b'0'..=b'9'), at) => match (r.number()?, at) {
                    (Value::Int(new), Value::Int(old)) => *old = new,
                    (v, at) => store(at, v),
                },
                (_, at) => store(at, parse_any(r, depth)?),
            }
            return Ok(());
        }
        // A repeated key replaces everything an earlier occurrence set.
        for &slot in &n.all {
            store(out.at(slot), Value::Missing);
        }
        if !n.whole.is_empty() {
            let v = parse_any(r, depth)?;
            self.fill_from(node, v, out);
            Ok(())
        } else if r.peek() == Some(b'{') {
            self.object(r, node, depth, out)
        } else {
            r.skip_value(depth)
        }
    }

    /// Fills every slot at or below `node` from its fully parsed value.
    fn fill_from(&self, node: usize, v: Value, out: &mut Slots<'_>) {
        let n = &self.nodes[node];
        for &slot in &n.below {
            *out.at(slot) = v.get_path(&self.paths[slot][n.level..]).clone();
        }
        if let Some((&last, rest)) = n.whole.split_last() {
            for &slot in rest {
                *out.at(slot) = v.clone();
            }
            *out.at(last) = v;
        }
    }
}

/// The byte range of a string's content in a document (see
/// [`Projection::decode_spans`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// The offset of the first content byte (after the opening quote).
    pub start: usize,
    /// The offset of the closing quote.
    pub end: usize,
}

/// The output slots of one [`Projection::decode_spans`], which of them this
/// document has set (bit `i` for slot `i`; only read with up to 64
/// slots), and which hold a string span instead of a value.
struct Slots<'a> {
    out: &'a mut [Value],
    set: u64,
    /// The slots that may hold a span.
    keep: u64,
    spans: &'a mut [Span],
    /// The slots holding a span (`out` is `Missing` there).
    raw: u64,
}

impl Slots<'_> {
    /// Slot `i`, marked as set by this document (to a value, not a span).
    #[inline(always)]
    fn at(&mut self, i: usize) -> &mut Value {
        let bit = 1u64.wrapping_shl(i as u32);
        self.set |= bit;
        self.raw &= !bit;
        &mut self.out[i]
    }

    /// True if slot `i` may hold a span.
    #[inline(always)]
    fn keeps(&self, i: usize) -> bool {
        i < 64 && self.keep & (1 << i) != 0
    }

    /// Slot `i` (one that [`keeps`](Self::keeps)) set to the string at
    /// `start..end` of the document.
    #[inline(always)]
    fn keep_span(&mut self, i: usize, start: usize, end: usize) {
        store(self.at(i), Value::Missing);
        self.raw |= 1 << i;
        self.spans[i] = Span { start, end };
    }
}
