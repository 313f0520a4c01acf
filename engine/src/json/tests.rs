//! Unit tests: parsing, every error kind, escapes, writing, projection, and
//! the allocation-free decode guarantee.

use super::error::msg;
use super::*;
use crate::value::{parse_path, Map, Str, Value};

fn parse(s: &str) -> Value {
    match parse_value(s.as_bytes()) {
        Ok(v) => v,
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

/// Asserts `input` is rejected with `message` at `offset`.
fn rejects(input: &[u8], offset: usize, message: &str) {
    match parse_value(input) {
        Ok(v) => panic!(
            "{:?} should be rejected, parsed as {v:?}",
            String::from_utf8_lossy(input)
        ),
        Err(e) => assert_eq!(
            (e.offset, e.message),
            (offset, message),
            "wrong error for {:?}",
            String::from_utf8_lossy(input)
        ),
    }
}

fn obj(members: &[(&str, Value)]) -> Value {
    Value::Object(Map(members
        .iter()
        .map(|(k, v)| (Str::from(*k), v.clone()))
        .collect()))
}

fn paths(ps: &[&str]) -> Vec<Vec<Str>> {
    ps.iter().map(|p| parse_path(p)).collect()
}

fn decode(p: &Projection, doc: &str) -> Result<Vec<Value>, JsonError> {
    let mut out = vec![Value::Null; p.len()];
    p.decode(doc.as_bytes(), &mut out).map(|()| out)
}

#[test]
fn parses_scalars() {
    assert_eq!(parse("null"), Value::Null);
    assert_eq!(parse(" true "), Value::Bool(true));
    assert_eq!(parse("\t\r\nfalse\n"), Value::Bool(false));
    assert_eq!(parse("0"), Value::Int(0));
    assert_eq!(parse("-0"), Value::Int(0));
    assert_eq!(parse("123"), Value::Int(123));
    assert_eq!(parse("-45"), Value::Int(-45));
    assert_eq!(parse("9223372036854775807"), Value::Int(i64::MAX));
    assert_eq!(parse("-9223372036854775808"), Value::Int(i64::MIN));
    assert_eq!(
        parse("9223372036854775808"),
        Value::Float(9223372036854775808.0)
    );
    assert_eq!(
        parse("-9223372036854775809"),
        Value::Float(-9223372036854775809.0)
    );
    assert_eq!(
        parse("18446744073709551616"),
        Value::Float(18446744073709551616.0)
    );
    assert_eq!(
        parse("123456789012345678901234567890"),
        Value::Float(1.2345678901234568e29)
    );
    assert_eq!(parse("21.5"), Value::Float(21.5));
    assert_eq!(parse("21.0"), Value::Float(21.0));
    assert_eq!(parse("-0.0"), Value::Float(-0.0));
    assert_eq!(parse("1e3"), Value::Float(1000.0));
    assert_eq!(parse("1E+3"), Value::Float(1000.0));
    assert_eq!(parse("25e-1"), Value::Float(2.5));
    assert_eq!(parse("1e-400"), Value::Float(0.0));
    assert_eq!(parse("1.7976931348623157e308"), Value::Float(f64::MAX));
    assert_eq!(parse("0.1"), Value::Float(0.1));
    assert_eq!(parse("\"GT\""), Value::from("GT"));
}

#[test]
fn parses_containers() {
    assert_eq!(parse("[]"), Value::Array(vec![]));
    assert_eq!(parse("{}"), Value::Object(Map::new()));
    assert_eq!(
        parse(" [ 1 , [ ] , { } ] "),
        Value::Array(vec![Value::Int(1), Value::Array(vec![]), obj(&[])])
    );
    assert_eq!(
        parse(r#"{"a": {"b": [true, null]}, "c": "d"}"#),
        obj(&[
            (
                "a",
                obj(&[("b", Value::Array(vec![Value::Bool(true), Value::Null]))])
            ),
            ("c", Value::from("d"))
        ])
    );
}

#[test]
fn duplicate_keys_last_wins_at_first_position() {
    assert_eq!(
        parse(r#"{"a":1,"b":2,"a":3}"#),
        obj(&[("a", Value::Int(3)), ("b", Value::Int(2))])
    );
    // Escaped and unescaped spellings of the same key are the same key.
    assert_eq!(parse(r#"{"a":1,"\u0061":2}"#), obj(&[("a", Value::Int(2))]));
    // Large objects take the hashed path.
    let mut doc = String::from("{");
    for i in 0..40 {
        doc.push_str(&format!("\"k{}\":{i},", i % 30));
    }
    doc.push_str("\"k3\":\"last\"}");
    let v = parse(&doc);
    let Value::Object(map) = &v else {
        panic!("not an object")
    };
    assert_eq!(map.len(), 30);
    assert_eq!(map.0[0], (Str::from("k0"), Value::Int(30)));
    assert_eq!(map.0[3], (Str::from("k3"), Value::from("last")));
    assert_eq!(map.0[29], (Str::from("k29"), Value::Int(29)));
}

#[test]
fn string_escapes() {
    assert_eq!(
        parse(r#""\"\\\/\b\f\n\r\t""#),
        Value::from("\"\\/\u{8}\u{c}\n\r\t")
    );
    assert_eq!(parse(r#""\u0041\u00e9\u20AC""#), Value::from("Aé€"));
    assert_eq!(parse(r#""\ud83d\ude00""#), Value::from("😀"));
    assert_eq!(parse(r#""a\u0000b""#), Value::from("a\0b"));
    assert_eq!(parse("\"héllo wörld 😀\""), Value::from("héllo wörld 😀"));
    assert_eq!(parse("\"\u{7f}\""), Value::from("\u{7f}"));
    // Long strings cross the 8-byte scanning chunks.
    let long = "abcdefghijklmnopqrstuvwxyz0123456789".repeat(3);
    assert_eq!(
        parse(&format!("\"{long}\\n{long}\"")),
        Value::from(format!("{long}\n{long}").as_str())
    );
}

#[test]
fn error_kinds() {
    rejects(b"", 0, msg::EOF);
    rejects(b"   ", 3, msg::EOF);
    rejects(b"[1, 2", 5, msg::EOF);
    rejects(b"\"abc", 4, msg::EOF);
    rejects(b"}", 0, msg::EXPECTED_VALUE);
    rejects(b"[1,,2]", 3, msg::EXPECTED_VALUE);
    rejects(b"NaN", 0, msg::EXPECTED_VALUE);
    rejects(b"\xEF\xBB\xBF{}", 0, msg::EXPECTED_VALUE);
    rejects(b"'a'", 0, msg::EXPECTED_VALUE);
    rejects(b"tru", 3, msg::EOF);
    rejects(b"trUe", 0, msg::INVALID_LITERAL);
    rejects(b"nul", 3, msg::EOF);
    rejects(b"[nulL]", 1, msg::INVALID_LITERAL);
    rejects(b"{\"a\" 1}", 5, msg::EXPECTED_COLON);
    rejects(b"{\"a\"", 4, msg::EOF);
    rejects(b"{1:2}", 1, msg::EXPECTED_KEY);
    rejects(b"{\"a\":1 \"b\":2}", 7, msg::EXPECTED_OBJ_SEP);
    rejects(b"[1 2]", 3, msg::EXPECTED_ARR_SEP);
    rejects(b"{\"a\":1,}", 7, msg::TRAILING_COMMA_OBJ);
    rejects(b"[1, ]", 4, msg::TRAILING_COMMA_ARR);
    rejects(b"\"\\x\"", 1, msg::INVALID_ESCAPE);
    rejects(b"\"\\", 2, msg::EOF);
    rejects(b"\"\\u12G4\"", 5, msg::INVALID_UNICODE_ESCAPE);
    rejects(b"\"\\u12", 5, msg::EOF);
    rejects(b"\"\\ud800\"", 1, msg::LONE_SURROGATE);
    rejects(b"\"\\ud800\\u0041\"", 1, msg::LONE_SURROGATE);
    rejects(b"\"\\ud800\\ud800\"", 1, msg::LONE_SURROGATE);
    rejects(b"\"\\udc00\"", 1, msg::LONE_SURROGATE);
    rejects(b"\"x\\ude00\\ud83d\"", 2, msg::LONE_SURROGATE);
    rejects(b"\"a\x01b\"", 2, msg::CONTROL_CHAR);
    rejects(b"\"tab\there\"", 4, msg::CONTROL_CHAR);
    rejects(b"\"new\nline\"", 4, msg::CONTROL_CHAR);
    rejects(b"\"\xff\"", 1, msg::INVALID_UTF8);
    rejects(b"\"abcdefghij\xc3\"", 11, msg::INVALID_UTF8);
    rejects(b"\"\xed\xa0\x80\"", 1, msg::INVALID_UTF8); // encoded surrogate
    rejects(b"\"\xc0\xaf\"", 1, msg::INVALID_UTF8); // overlong
    rejects(b"{\"k\xff\":1}", 3, msg::INVALID_UTF8);
    rejects(b"01", 0, msg::LEADING_ZERO);
    rejects(b"-012", 0, msg::LEADING_ZERO);
    rejects(b"1.", 2, msg::EOF);
    rejects(b"[1.]", 1, msg::INVALID_NUMBER);
    rejects(b"[1.e5]", 1, msg::INVALID_NUMBER);
    rejects(b"[1e]", 1, msg::INVALID_NUMBER);
    rejects(b"[1e+]", 1, msg::INVALID_NUMBER);
    rejects(b"[-]", 1, msg::INVALID_NUMBER);
    rejects(b"-", 1, msg::EOF);
    rejects(b"[-a]", 1, msg::INVALID_NUMBER);
    rejects(b".5", 0, msg::EXPECTED_VALUE);
    rejects(b"+1", 0, msg::EXPECTED_VALUE);
    rejects(b"1e400", 0, msg::NUMBER_RANGE);
    rejects(b"[-1.5e309]", 1, msg::NUMBER_RANGE);
    rejects(
        format!("[{}]", "9".repeat(400)).as_bytes(),
        1,
        msg::NUMBER_RANGE,
    );
    rejects(b"1 2", 2, msg::TRAILING);
    rejects(b"{} x", 3, msg::TRAILING);
    rejects(b"nullx", 4, msg::TRAILING);
    rejects(b"1\x00", 1, msg::TRAILING);
}

#[test]
fn nesting_limit() {
    let ok = format!("{}{}", "[".repeat(128), "]".repeat(128));
    assert!(parse_value(ok.as_bytes()).is_ok());
    let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
    rejects(deep.as_bytes(), 128, msg::TOO_DEEP);
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(129), "}".repeat(129));
    rejects(deep_obj.as_bytes(), 128 * 5, msg::TOO_DEEP);
    // Far too deep input is an error, not a stack overflow.
    let huge = "[".repeat(1_000_000);
    rejects(huge.as_bytes(), 128, msg::TOO_DEEP);
    // The projection counts depth identically, whether it skips or descends.
    let p = Projection::new(&paths(&["a.a.a", "b"]));
    assert!(decode(&p, &deep_obj).is_err());
    let ok_obj = format!("{}1{}", "{\"a\":".repeat(128), "}".repeat(128));
    assert!(decode(&p, &ok_obj).is_ok());
    let skipped = format!("{{\"x\":{}{}}}", "[".repeat(128), "]".repeat(128));
    assert_eq!(
        decode(&p, &skipped).map_err(|e| e.message),
        Err(msg::TOO_DEEP)
    );
}

#[test]
fn error_display() {
    let e = parse_value(br#"{"id":123,"ts"  1}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid JSON at byte 16: expected ':' after object key"
    );
    assert_eq!(e.offset, 16);
}

#[test]
fn writes_compact_json() {
    let v = obj(&[
        ("a", Value::Int(-7)),
        ("gone", Value::Missing),
        ("f", Value::Float(21.0)),
        ("g", Value::Float(0.1)),
        ("h", Value::Float(1e21)),
        ("nan", Value::Float(f64::NAN)),
        ("inf", Value::Float(f64::NEG_INFINITY)),
        (
            "arr",
            Value::Array(vec![Value::Missing, Value::Null, Value::Bool(true)]),
        ),
        (
            "s",
            Value::from("q\"b\\n\n\t\r\u{8}\u{c}\u{1}\u{1f}\u{7f}é😀/"),
        ),
        ("last", Value::Missing),
    ]);
    assert_eq!(
        to_string(&v),
        r#"{"a":-7,"f":21.0,"g":0.1,"h":1e21,"nan":null,"inf":null,"arr":[null,null,true],"s":"q\"b\\n\n\t\r\b\f\u0001\u001f"#.to_owned()
            + "\u{7f}é😀/\"}"
    );
    assert_eq!(to_string(&Value::Missing), "null");
    assert_eq!(to_string(&obj(&[("x", Value::Missing)])), "{}");
    assert_eq!(to_string(&Value::Int(i64::MIN)), "-9223372036854775808");
    assert_eq!(v.to_string(), to_string(&v));
    let mut out = b"x=".to_vec();
    write_str(&mut out, "a\"b");
    assert_eq!(out, br#"x="a\"b""#);
}

#[test]
fn written_json_reparses() {
    let v = obj(&[
        ("f", Value::Float(21.0)),
        ("e", Value::Float(-1.5e-300)),
        ("s", Value::from("\u{0}\u{1f}\"\\😀")),
        ("n", Value::Array(vec![obj(&[]), Value::Array(vec![])])),
    ]);
    assert_eq!(parse(&to_string(&v)), v);
}

#[test]
fn projection_basics() {
    let p = Projection::new(&paths(&[
        "country",
        "ts",
        "missing",
        "nested.x",
        "nested.y.z",
        "country.sub",
    ]));
    let doc = r#"{"id":123,"ts":1732147200123,"country":"GT","nested":{"y":{"z":[1]},"x":2.5},"w":{"a":[{}]}}"#;
    assert_eq!(
        decode(&p, doc).unwrap(),
        [
            Value::from("GT"),
            Value::Int(1732147200123),
            Value::Missing,
            Value::Float(2.5),
            Value::Array(vec![Value::Int(1)]),
            Value::Missing,
        ]
    );
    // Slots from a previous call never leak into the next one.
    let mut out = vec![Value::Null; p.len()];
    p.decode(doc.as_bytes(), &mut out).unwrap();
    p.decode(br#"{"nested":5}"#, &mut out).unwrap();
    assert!(out.iter().all(|v| !v.exists()));
    assert_eq!(p.len(), 6);
    assert!(!p.is_empty());
    assert_eq!(p.paths()[3], parse_path("nested.x"));
}

#[test]
fn projection_prefix_and_whole_paths() {
    let doc = r#"{"a":{"b":{"c":1},"d":2},"e":"x"}"#;
    let p = Projection::new(&paths(&["a.b.c", "a", "a.d", "a.b", "a"]));
    let a = parse(doc).get_path(&parse_path("a")).clone();
    assert_eq!(
        decode(&p, doc).unwrap(),
        [
            Value::Int(1),
            a.clone(),
            Value::Int(2),
            obj(&[("c", Value::Int(1))]),
            a
        ]
    );
    let p = Projection::new(&paths(&["e", "", "a.d"]));
    assert_eq!(
        decode(&p, doc).unwrap(),
        [Value::from("x"), parse(doc), Value::Int(2)]
    );
    let p = Projection::new(&[]);
    assert_eq!(decode(&p, doc).unwrap(), Vec::<Value>::new());
    assert!(decode(&p, "{").is_err());
}

#[test]
fn projection_duplicate_keys_last_wins() {
    let p = Projection::new(&paths(&["a.b", "a.c", "k"]));
    assert_eq!(
        decode(&p, r#"{"a":{"b":1},"k":1,"a":{"c":2},"k":2}"#).unwrap(),
        [Value::Missing, Value::Int(2), Value::Int(2)]
    );
    assert_eq!(
        decode(&p, r#"{"a":{"b":1},"a":5}"#).unwrap(),
        [Value::Missing, Value::Missing, Value::Missing]
    );
    assert_eq!(
        decode(&p, r#"{"a":{"b":1,"b":3}}"#).unwrap(),
        [Value::Int(3), Value::Missing, Value::Missing]
    );
}

/// Slots reused from one document to the next keep nothing of the earlier
/// one: with few slots (set lazily, strings overwritten in place) and with
/// more than 64 (cleared up front).
#[test]
fn projection_reused_slots_forget_the_previous_document() {
    for extra in [0, 70] {
        let mut names = vec!["s".to_string(), "n".to_string(), "o.t".to_string()];
        names.extend((0..extra).map(|i| format!("f{i}")));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let p = Projection::new(&paths(&names));
        let mut out = vec![Value::Missing; p.len()];
        let docs = [
            r#"{"s":"a long string that does not fit inline","n":1,"o":{"t":"x"},"f3":true}"#,
            r#"{"s":"short","n":2.5,"s":"sh\u00e9","f5":[1]}"#,
            r#"{"n":3,"o":{"t":"y\n"}}"#,
            r#"{"s":"broken"#,
            r#"{"s":7,"n":"str"}"#,
        ];
        for doc in docs {
            let reused = p.decode(doc.as_bytes(), &mut out).map(|()| out.clone());
            assert_eq!(reused, decode(&p, doc), "{doc} with {} slots", p.len());
        }
        assert_eq!(out[0], Value::Int(7));
        assert_eq!(out[1], Value::from("str"));
        assert!(out[2..].iter().all(|v| *v == Value::Missing));
    }
}

#[test]
fn projection_escaped_and_unicode_keys() {
    let p = Projection::new(&paths(&[
        "country",
        "é😀",
        "a\"b",
        "longer_than_eight_bytes",
    ]));
    let doc = r#"{"c\u006funtry":"GT","\u00e9\ud83d\ude00":1,"a\"b":2,"longer_than_eight_bytez":0,"longer_than_eight_bytes":3}"#;
    assert_eq!(
        decode(&p, doc).unwrap(),
        [
            Value::from("GT"),
            Value::Int(1),
            Value::Int(2),
            Value::Int(3)
        ]
    );
    // Keys near the end of the input (no full word left to read).
    let p = Projection::new(&paths(&["b"]));
    assert_eq!(decode(&p, r#"{"b":1}"#).unwrap(), [Value::Int(1)]);
    assert_eq!(decode(&p, r#"{"bb":1}"#).unwrap(), [Value::Missing]);
}

#[test]
fn projection_requires_an_object() {
    let p = Projection::new(&paths(&["a"]));
    let cases: &[(&str, &str)] = &[
        ("[1]", msg::FOUND_ARRAY),
        ("\"s\"", msg::FOUND_STRING),
        (" -1", msg::FOUND_NUMBER),
        ("true", msg::FOUND_BOOL),
        ("null", msg::FOUND_NULL),
        ("this is not json", msg::EXPECTED_VALUE),
        ("nothing", msg::EXPECTED_VALUE),
        ("", msg::EOF),
        ("x", msg::EXPECTED_VALUE),
    ];
    for &(doc, message) in cases {
        assert_eq!(
            decode(&p, doc).map_err(|e| e.message),
            Err(message),
            "{doc:?}"
        );
    }
    assert_eq!(
        decode(&p, "[1]").unwrap_err().to_string(),
        "invalid JSON at byte 0: expected a JSON object, found an array"
    );
}

#[test]
fn projection_validates_skipped_parts() {
    let p = Projection::new(&paths(&["a"]));
    for doc in [
        r#"{"a":1,"b":01}"#,
        r#"{"a":1,"b":"\x"}"#,
        r#"{"a":1,"b":"\ud800"}"#,
        r#"{"a":1,"b":[1,]}"#,
        r#"{"a":1,"b":1e999}"#,
        r#"{"a":1,"b":tru}"#,
        r#"{"a":1,"b":{"c" 1}}"#,
        r#"{"a":1} x"#,
        r#"{"a":1,}"#,
    ] {
        assert!(decode(&p, doc).is_err(), "{doc}");
        assert!(parse_value(doc.as_bytes()).is_err(), "{doc}");
    }
    assert!(decode(&p, "{\"a\":1,\"b\":\"\x01\"}").is_err());
    assert!(decode(&p, "{\"a\":1,\"\u{ff}\":0}").is_ok());
    let mut out = vec![Value::Null];
    assert!(p.decode(b"{\"a\":1,\"b\":\"\xff\"}", &mut out).is_err());
    assert_eq!(out, [Value::Missing], "slots are cleared on error");
}

#[test]
fn projection_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Projection>();
    assert_send_sync::<JsonError>();
}

mod alloc_count {
    //! A counting allocator (per thread, so parallel tests don't interfere).

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    struct Counting;

    // The only unsafe code in the workspace: a test allocator that counts.
    #[allow(unsafe_code)]
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Number of allocations made by this thread while running `f`.
    pub(super) fn count(f: impl FnOnce()) -> usize {
        let before = ALLOCATIONS.with(Cell::get);
        f();
        ALLOCATIONS.with(Cell::get) - before
    }
}

#[test]
fn decode_does_not_allocate() {
    let doc = br#"{"id":123,"ts":1732147200123,"country":"GT","weather":"Sunny","description":"light breeze","temp_c":21.5}"#;
    let p = Projection::new(&paths(&["country", "ts"]));
    let mut out = vec![Value::Missing; p.len()];
    let n = alloc_count::count(|| {
        for _ in 0..100 {
            assert!(p.decode(doc, &mut out).is_ok());
        }
    });
    assert_eq!(n, 0, "decode allocated");
    assert_eq!(out, [Value::from("GT"), Value::Int(1732147200123)]);

    // Also with nested paths, escaped keys and short escaped strings.
    let doc = br#"{"a":{"b":"x\"y","c":[1,{"d":2}]},"k\u0065y":"\u00e9t\u00e9", "z":[true,false,null,-1.5e3]}"#;
    let p = Projection::new(&paths(&["a.b", "key", "a.c.d", "nope"]));
    let mut out = vec![Value::Missing; p.len()];
    let n = alloc_count::count(|| assert!(p.decode(doc, &mut out).is_ok()));
    assert_eq!(n, 0, "decode allocated");
    assert_eq!(
        out,
        [
            Value::from("x\"y"),
            Value::from("été"),
            Value::Missing,
            Value::Missing
        ]
    );
}

#[test]
fn projection_leaves_plain_strings_in_the_input_when_asked() {
    let p = Projection::new(&paths(&["k", "n", "e", "o.t", "late"]));
    let mut out = vec![Value::Missing; p.len()];
    let mut spans = vec![Span::default(); p.len()];
    let all = u64::MAX;
    let doc = r#"{"k":"GT","n":1,"e":"caf\u00e9","o":{"t":"x"},"late":5,"late":"y"}"#;
    let raw = p
        .decode_spans(doc.as_bytes(), &mut out, all, &mut spans)
        .unwrap();
    // `k`, `o.t` and the last `late` are plain strings; `e` has an escape.
    assert_eq!(raw, 0b11001);
    let text = |i: usize| &doc[spans[i].start..spans[i].end];
    assert_eq!((text(0), text(3), text(4)), ("GT", "x", "y"));
    assert_eq!(
        out,
        [
            Value::Missing,
            Value::Int(1),
            Value::from("café"),
            Value::Missing,
            Value::Missing
        ]
    );
    // Only the slots asked for; a later value replaces an earlier span.
    let doc = r#"{"k":"GT","k":7,"n":"s","late":"z"}"#;
    let raw = p
        .decode_spans(doc.as_bytes(), &mut out, 0b11, &mut spans)
        .unwrap();
    assert_eq!(raw, 0b10);
    assert_eq!(&doc[spans[1].start..spans[1].end], "s");
    assert_eq!(out[0], Value::Int(7));
    assert_eq!(out[4], Value::from("z"));
    // Nothing after an error.
    assert!(p
        .decode_spans(br#"{"k":"GT","n":"#, &mut out, all, &mut spans)
        .is_err());
    assert!(out.iter().all(|v| *v == Value::Missing));
    // `decode` never leaves a span.
    p.decode(br#"{"k":"GT"}"#, &mut out).unwrap();
    assert_eq!(out[0], Value::from("GT"));
}
