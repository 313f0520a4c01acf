//! Property tests: agreement with `serde_json`, write/parse round trips,
//! projection vs. full parse, and identical acceptance under mutation.

use proptest::prelude::*;

use super::error::msg;
use super::*;
use crate::value::{Map, Str, Value};

// ------------------------------------------------------------ generators

/// Short strings biased towards characters that need care.
fn arb_string() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        '"', '\\', '/', '\n', '\t', '\u{0}', '\u{1f}', '\u{7f}', 'é', '€', '😀',
    ]);
    let ch = prop_oneof![3 => any::<char>(), 2 => special, 5 => prop::char::range('a', 'z')];
    prop::collection::vec(ch, 0..12).prop_map(String::from_iter)
}

fn arb_finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        (-1_000_000i64..1_000_000).prop_map(|i| i as f64 / 8.0),
        Just(-0.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(5e-324),
    ]
}

fn arb_serde_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value as J;
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<u64>().prop_map(J::from),
        arb_finite_f64().prop_map(J::from),
        arb_string().prop_map(J::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Array),
            prop::collection::vec((arb_string(), inner), 0..6)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
}

/// Our model of a serde_json value.
fn from_serde(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => Value::Array(a.iter().map(from_serde).collect()),
        J::Object(o) => Value::Object(Map(o
            .iter()
            .map(|(k, v)| (Str::from(k.as_str()), from_serde(v)))
            .collect())),
    }
}

/// `v` with object members sorted by key, as serde_json's `Map` keeps them.
fn sorted(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        Value::Object(Map(mut members)) => {
            members.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(Map(members
                .into_iter()
                .map(|(k, v)| (k, sorted(v)))
                .collect()))
        }
        v => v,
    }
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Float(_) => true,
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.iter().any(|(_, v)| has_float(v)),
        _ => false,
    }
}

/// Values without `Missing`, with finite floats and unique keys.
fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        arb_finite_f64().prop_map(Value::Float),
        arb_string().prop_map(|s| Value::from(s.as_str())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_string(), inner), 0..6).prop_map(|members| {
                let mut map = Map::new();
                for (k, v) in members {
                    map.insert(k, v);
                }
                Value::Object(map)
            }),
        ]
    })
}

/// A JSON document as text structure: keys may repeat, strings may be
/// written with `\u` escapes, whitespace varies, numbers vary in spelling.
#[derive(Debug, Clone)]
enum Raw {
    Lit(&'static str),
    Int(i64),
    Float(f64, bool),
    Str(String, u8),
    Arr(Vec<Raw>, u8),
    Obj(Vec<(String, u8, Raw)>, u8),
}

/// Keys from a small alphabet, so random paths hit them and keys repeat.
fn arb_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a",
        "b",
        "c",
        "ab",
        "é",
        "q\"",
        "long_key_name_x",
        "long_key_name_y",
        "😀",
        "",
    ])
    .prop_map(str::to_owned)
}

fn arb_raw() -> impl Strategy<Value = Raw> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["true", "false", "null"]).prop_map(Raw::Lit),
        any::<i64>().prop_map(Raw::Int),
        (arb_finite_f64(), any::<bool>()).prop_map(|(f, e)| Raw::Float(f, e)),
        (arb_string(), any::<u8>()).prop_map(|(s, m)| Raw::Str(s, m)),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..5), any::<u8>())
                .prop_map(|(a, w)| Raw::Arr(a, w)),
            (
                prop::collection::vec((arb_key(), any::<u8>(), inner), 0..6),
                any::<u8>()
            )
                .prop_map(|(m, w)| Raw::Obj(m, w)),
        ]
    })
}

fn arb_raw_object() -> impl Strategy<Value = Raw> {
    (
        prop::collection::vec((arb_key(), any::<u8>(), arb_raw()), 0..7),
        any::<u8>(),
    )
        .prop_map(|(m, w)| Raw::Obj(m, w))
}

fn ws(w: u8) -> &'static str {
    ["", "", "", " ", "\n  ", "\t\r\n "][w as usize % 6]
}

/// Writes `s` as a JSON string; `mode` picks which characters become `\u` escapes.
fn render_str(out: &mut String, s: &str, mode: u8) {
    out.push('"');
    for (i, c) in s.chars().enumerate() {
        let escape = match mode % 4 {
            0 | 1 => false,
            2 => true,
            _ => i % 2 == 0,
        };
        if escape {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        } else {
            let mut buf = Vec::new();
            write_str(&mut buf, c.encode_utf8(&mut [0; 4]));
            out.push_str(&String::from_utf8_lossy(&buf[1..buf.len() - 1]));
        }
    }
    out.push('"');
}

fn render(out: &mut String, raw: &Raw) {
    match raw {
        Raw::Lit(l) => out.push_str(l),
        Raw::Int(i) => out.push_str(&i.to_string()),
        Raw::Float(f, false) => out.push_str(ryu::Buffer::new().format_finite(*f)),
        Raw::Float(f, true) => out.push_str(&format!("{f:E}")),
        Raw::Str(s, mode) => render_str(out, s, *mode),
        Raw::Arr(items, w) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(ws(*w));
                if i > 0 {
                    out.push(',');
                    out.push_str(ws(w / 8));
                }
                render(out, item);
            }
            out.push_str(ws(w / 64));
            out.push(']');
        }
        Raw::Obj(members, w) => {
            out.push('{');
            for (i, (k, mode, v)) in members.iter().enumerate() {
                out.push_str(ws(*w));
                if i > 0 {
                    out.push(',');
                    out.push_str(ws(w / 8));
                }
                render_str(out, k, *mode);
                out.push_str(ws(mode / 4));
                out.push(':');
                out.push_str(ws(mode / 32));
                render(out, v);
            }
            out.push_str(ws(w / 64));
            out.push('}');
        }
    }
}

fn rendered(raw: &Raw) -> String {
    let mut s = String::new();
    render(&mut s, raw);
    s
}

fn arb_paths() -> impl Strategy<Value = Vec<Vec<Str>>> {
    let path = prop_oneof![
        1 => Just(Vec::new()),
        12 => prop::collection::vec(arb_key().prop_map(Str::from), 1..4),
    ];
    prop::collection::vec(path, 0..6)
}

/// A random edit of `doc`: truncation, or a byte inserted, deleted or replaced.
fn arb_mutation() -> impl Strategy<Value = (u8, prop::sample::Index, u8)> {
    let byte = prop_oneof![
        prop::sample::select(
            b"\"\\{}[],:0123456789-+.eEutrnlfa \n\t\x00\x1f\x7f\x80\xc3\xa9\xed\xa0\xff/".to_vec()
        ),
        any::<u8>(),
    ];
    (0u8..4, any::<prop::sample::Index>(), byte)
}

fn mutate(doc: &[u8], (kind, at, byte): (u8, prop::sample::Index, u8)) -> Vec<u8> {
    let mut m = doc.to_vec();
    let i = at.index(m.len() + 1);
    match kind {
        0 => m.truncate(i),
        1 => m.insert(i, byte),
        2 if i < m.len() => {
            m.remove(i);
        }
        _ if i < m.len() => m[i] = byte,
        _ => m.push(byte),
    }
    m
}

/// What the full parser makes of the paths: the reference for `decode`.
fn expected(doc: &Value, paths: &[Vec<Str>]) -> Vec<Value> {
    paths.iter().map(|p| doc.get_path(p).clone()).collect()
}

fn decode(p: &Projection, doc: &[u8]) -> Result<Vec<Value>, JsonError> {
    let mut out = vec![Value::Null; p.len()];
    p.decode(doc, &mut out).map(|()| out)
}

// ------------------------------------------------------------ properties

/// 512 cases unless `PROPTEST_CASES` asks for a different number.
fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_some() {
        default
    } else {
        ProptestConfig {
            cases: 512,
            ..default
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// (a) Whatever serde_json writes, we read back as the same value.
    #[test]
    fn parses_what_serde_json_writes(v in arb_serde_json(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) };
        let text = text.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parse_value(&text), Ok(from_serde(&v)));
    }

    /// (b) write_value then parse_value is the identity, and serde_json
    /// reads our output as the same value (up to key order, and up to its
    /// not always correctly rounded float parsing, hence no floats there).
    #[test]
    fn write_then_parse_round_trips(v in arb_value()) {
        let mut out = Vec::new();
        write_value(&mut out, &v);
        prop_assert_eq!(parse_value(&out), Ok(v.clone()));
        prop_assert_eq!(to_string(&v).into_bytes(), out.clone());
        let theirs: serde_json::Value = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if !has_float(&v) {
            // serde_json may or may not keep key order (its `preserve_order`
            // feature is switched on by other crates in the workspace)
            prop_assert_eq!(sorted(from_serde(&theirs)), sorted(v));
        }
    }

    /// (c) Projection::decode agrees with get_path on parse_value's result,
    /// including duplicate keys, escaped keys and prefix paths.
    #[test]
    fn projection_matches_full_parse(raw in arb_raw_object(), paths in arb_paths()) {
        let text = rendered(&raw);
        let full = parse_value(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        let p = Projection::new(&paths);
        prop_assert_eq!(decode(&p, text.as_bytes()), Ok(expected(&full, &paths)), "{}", text);
    }

    /// (d) Under random edits, parse_value accepts exactly what serde_json
    /// accepts (ignoring number-range differences), and decode accepts
    /// exactly the object documents parse_value accepts — with the same
    /// slot values.
    #[test]
    fn acceptance_agrees(raw in arb_raw(), paths in arb_paths(), edits in prop::collection::vec(arb_mutation(), 1..4)) {
        let mut doc = rendered(&raw).into_bytes();
        for edit in edits {
            doc = mutate(&doc, edit);
        }
        let ours = parse_value(&doc);
        let theirs = serde_json::from_slice::<serde_json::Value>(&doc);
        let range_issue = matches!(&ours, Err(e) if e.message == msg::NUMBER_RANGE)
            || matches!(&theirs, Err(e) if e.to_string().contains("number out of range"));
        if !range_issue {
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "ours {:?}, serde_json {:?}: {:?}",
                ours, theirs.as_ref().err(), String::from_utf8_lossy(&doc));
        }
        let p = Projection::new(&paths);
        match &ours {
            Ok(v @ Value::Object(_)) => prop_assert_eq!(decode(&p, &doc), Ok(expected(v, &paths))),
            _ => prop_assert!(decode(&p, &doc).is_err(), "decode accepted {:?}", String::from_utf8_lossy(&doc)),
        }
    }

    /// (e) One output reused for document after document, as the decoders
    /// reuse it (a slot keeps the previous value until the next document
    /// sets it), holds exactly what a fresh one would; all `Missing` after
    /// an error.
    #[test]
    fn reused_slots_hold_only_the_current_document(
        docs in prop::collection::vec((arb_raw_object(), prop::collection::vec(arb_mutation(), 0..2)), 1..6),
        paths in arb_paths(),
    ) {
        let p = Projection::new(&paths);
        let mut out = vec![Value::Missing; p.len()];
        for (raw, edits) in docs {
            let mut doc = rendered(&raw).into_bytes();
            for edit in edits {
                doc = mutate(&doc, edit);
            }
            let reused = p.decode(&doc, &mut out).map(|()| out.clone());
            if reused.is_err() {
                prop_assert!(out.iter().all(|v| *v == Value::Missing), "{:?}", out);
            }
            prop_assert_eq!(reused, decode(&p, &doc), "{}", String::from_utf8_lossy(&doc));
        }
    }

    /// Decoding with spans, slots reused across documents, gives each
    /// document's values once the spans are read as strings: a span only
    /// for a slot in `keep` whose value is a string without escapes, whose
    /// bytes are then exactly the string; nothing after an error.
    #[test]
    fn spans_hold_the_strings_they_replace(
        docs in prop::collection::vec((arb_raw_object(), prop::collection::vec(arb_mutation(), 0..2)), 1..6),
        paths in arb_paths(),
        keep in any::<u64>(),
    ) {
        let p = Projection::new(&paths);
        let mut out = vec![Value::Missing; p.len()];
        let mut spans = vec![Span::default(); p.len()];
        for (raw, edits) in docs {
            let mut doc = rendered(&raw).into_bytes();
            for edit in edits {
                doc = mutate(&doc, edit);
            }
            let result = p.decode_spans(&doc, &mut out, keep, &mut spans);
            let expected = decode(&p, &doc);
            let Ok(mask) = result else {
                prop_assert!(out.iter().all(|v| *v == Value::Missing), "{:?}", out);
                prop_assert!(expected.is_err());
                continue;
            };
            prop_assert_eq!(mask & !keep, 0);
            let mut got = out.clone();
            for (i, v) in got.iter_mut().enumerate().take(64) {
                if mask & (1 << i) != 0 {
                    prop_assert_eq!(&*v, &Value::Missing);
                    let text = &doc[spans[i].start..spans[i].end];
                    prop_assert!(!text.contains(&b'\\'));
                    *v = Value::Str(Str::from(std::str::from_utf8(text).unwrap()));
                }
            }
            prop_assert_eq!(Ok(got), expected, "{}", String::from_utf8_lossy(&doc));
        }
    }

    /// Every strict prefix of a valid object document is rejected.
    #[test]
    fn strict_prefixes_are_rejected(raw in arb_raw_object(), paths in arb_paths()) {
        let text = rendered(&raw);
        let p = Projection::new(&paths);
        prop_assert!(decode(&p, text.as_bytes()).is_ok());
        for end in 0..text.len() {
            let prefix = &text.as_bytes()[..end];
            prop_assert!(decode(&p, prefix).is_err(), "accepted prefix {:?}", String::from_utf8_lossy(prefix));
            prop_assert!(parse_value(prefix).is_err(), "accepted prefix {:?}", String::from_utf8_lossy(prefix));
        }
    }
}
