//! Unit tests: templates, config, the fencing rule; and the fencing script
//! and the sink against a real Redis (`REDIS_URL`, default
//! redis://127.0.0.1:6379; `tests/services.sh` starts one).

use std::path::Path;

use sluice_engine::batch::RowKind;
use sluice_engine::config::SourceText;
use sluice_engine::sink::{Sink, SinkError, SinkRecord};
use sluice_engine::value::{Map, Str, Value};

use super::fence::{self, ChunkArgs, Status, Write};
use super::*;

fn record(kind: RowKind, fields: &[(&str, Value)]) -> SinkRecord {
    let mut m = Map::new();
    for (k, v) in fields {
        m.insert(*k, v.clone());
    }
    SinkRecord {
        kind,
        id: Str::from("id"),
        value: Value::Object(m),
        time: 0,
    }
}

fn s(v: &str) -> Value {
    Value::Str(Str::from(v))
}

/// The ```toml block of the module documentation.
fn doc_example() -> String {
    let src = include_str!("mod.rs");
    let mut out = String::new();
    let mut inside = false;
    for line in src.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if doc.starts_with("```toml") {
            inside = true;
        } else if doc.starts_with("```") {
            inside = false;
        } else if inside {
            out.push_str(doc);
            out.push('\n');
        }
    }
    out
}

fn parse_config(toml_text: &str) -> Vec<RedisSinkConfig> {
    let text = SourceText::interpolate(Path::new("example.toml"), toml_text.into(), |_| None)
        .expect("interpolate");
    let doc: toml::Table = toml::from_str(&text.text).expect("toml");
    let sinks = doc["sinks"].as_table().expect("sinks table");
    sinks
        .values()
        .map(|v| {
            let mut t = v.as_table().expect("sink table").clone();
            assert_eq!(
                t.remove("type")
                    .and_then(|v| v.as_str().map(String::from))
                    .as_deref(),
                Some("redis")
            );
            t.remove("inputs");
            let c: RedisSinkConfig = t.try_into().expect("config parses");
            c.validate().expect("config is valid");
            c
        })
        .collect()
}

#[test]
fn doc_example_parses_and_validates() {
    let configs = parse_config(&doc_example());
    assert_eq!(configs.len(), 2);
    assert_eq!(configs[0].totals.as_deref(), Some("messages:total"));
    assert_eq!(configs[1].mode, RedisMode::Hash);
    assert_eq!(configs[1].ttl.map(|t| t.0.as_secs()), Some(7200));
}

#[test]
fn config_mistakes_are_explained() {
    let base = "url = \"redis://127.0.0.1\"\nkey = \"k\"\n";
    let check = |extra: &str| -> String {
        let c: RedisSinkConfig = toml::from_str(&format!("{base}{extra}")).expect("shape");
        c.validate().expect_err("invalid").into()
    };
    assert!(check("value_field = \"n\"").contains("needs `field`"));
    assert!(check("field = \"{a}\"").contains("needs `value_field`"));
    assert!(check("mode = \"string\"\nfield = \"{a}\"").contains("only applies"));
    assert!(check("mode = \"string\"\ntotals = \"t\"").contains("set `value_field`"));
    let bad = toml::from_str::<RedisSinkConfig>(&format!("{base}keyy = 1")).unwrap_err();
    assert!(bad.to_string().contains("unknown field `keyy`"), "{bad}");
    let bad = toml::from_str::<RedisSinkConfig>("url = \"redis://x\"\nkey = \"a:{b\"").unwrap_err();
    assert!(bad.to_string().contains("never closed"), "{bad}");
    let c: RedisSinkConfig =
        toml::from_str("url = \"nope://x\"\nkey = \"k\"\nmode = \"string\"").unwrap();
    assert!(c.validate().unwrap_err().message().contains("`url`"));
}

#[test]
fn templates_render_fields_paths_and_escapes() {
    let t = Template::parse("country:counts:{window_start}").unwrap();
    let r = record(
        RowKind::Upsert,
        &[("window_start", Value::Int(1_732_147_200_000))],
    );
    assert_eq!(t.render(&r.value).unwrap(), "country:counts:1732147200000");
    let t = Template::parse("{geo.country}|{ok}|{{lit}}|{f}").unwrap();
    let mut geo = Map::new();
    geo.insert("country", s("GT"));
    let r = record(
        RowKind::Upsert,
        &[
            ("geo", Value::Object(geo)),
            ("ok", Value::Bool(true)),
            ("f", Value::Float(1.5)),
        ],
    );
    assert_eq!(t.render(&r.value).unwrap(), "GT|true|{lit}|1.5");
    assert!(Template::parse("plain").unwrap().is_constant());
    let missing = Template::parse("x:{nope}")
        .unwrap()
        .render(&r.value)
        .unwrap_err();
    assert!(missing.to_string().contains("`nope`"), "{missing}");
    for bad in ["", "a{", "a}", "{}", "{ }", "a{b{c}"] {
        assert!(Template::parse(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn chunk_command_and_reply_shapes() {
    let writes = vec![
        Write {
            index: 0,
            key: "k".into(),
            field: "GT".into(),
            value: "3".into(),
            delete: false,
        },
        Write {
            index: 1,
            key: "k".into(),
            field: "MX".into(),
            value: String::new(),
            delete: true,
        },
    ];
    let args = ChunkArgs {
        hash: true,
        fence: 42,
        ttl_ms: 0,
        totals: Some("t"),
    };
    let cmd = fence::chunk_command("sha", args, &writes);
    let parts: Vec<String> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
            _ => "<other>".into(),
        })
        .collect();
    assert_eq!(
        parts,
        [
            "EVALSHA",
            "sha",
            "5",
            "t",
            "k",
            "k:__epoch",
            "k",
            "k:__epoch",
            "hash",
            "42",
            "0",
            "1",
            "u",
            "GT",
            "3",
            "d",
            "MX",
            ""
        ]
    );
    let reply = redis::Value::Array(vec![
        redis::Value::Int(1),
        redis::Value::Int(0),
        redis::Value::BulkString(b"WRONGTYPE Operation".to_vec()),
    ]);
    assert_eq!(
        fence::parse_reply(&reply, 3).unwrap(),
        [
            Status::Written,
            Status::Stale,
            Status::Failed("WRONGTYPE Operation".into())
        ]
    );
    assert!(fence::parse_reply(&reply, 2).is_err());
    assert!(fence::transient_code(fence::error_code(
        "LOADING Redis is loading"
    )));
    assert!(!fence::transient_code(fence::error_code(
        "WRONGTYPE Operation"
    )));
}

// ---- against a real server -------------------------------------------------

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A connection to the test server; fails loudly (the service tests are
/// part of the suite: `tests/services.sh` starts Redis).
async fn server() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).unwrap();
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("no Redis at {} ({e}): run tests/services.sh", redis_url()))
}

fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("sluice-test:{test}:{}:{nanos}:", std::process::id())
}

async fn run_script(
    conn: &mut redis::aio::MultiplexedConnection,
    args: ChunkArgs<'_>,
    writes: &[Write],
) -> Vec<Status> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(fence::SCRIPT)
        .query_async(conn)
        .await
        .unwrap();
    let reply: redis::Value = fence::chunk_command(&sha, args, writes)
        .query_async(conn)
        .await
        .unwrap();
    fence::parse_reply(&reply, writes.len()).unwrap()
}

fn upsert(key: &str, field: &str, value: &str) -> Write {
    Write {
        index: 0,
        key: key.into(),
        field: field.into(),
        value: value.into(),
        delete: false,
    }
}

#[tokio::test]
async fn script_keeps_the_newer_epoch_against_real_redis() {
    let mut conn = server().await;
    let p = prefix("fence");
    let key = format!("{p}counts");
    let totals = format!("{p}total");
    let at = |epoch| ChunkArgs {
        hash: true,
        fence: fence::fence(1, epoch).unwrap(),
        ttl_ms: 0,
        totals: Some(&totals),
    };
    // epoch 5 writes GT=10, then a replay of epoch 3 tries GT=7
    assert_eq!(
        run_script(&mut conn, at(5), &[upsert(&key, "GT", "10")]).await,
        [Status::Written]
    );
    assert_eq!(
        run_script(&mut conn, at(3), &[upsert(&key, "GT", "7")]).await,
        [Status::Stale]
    );
    let v: String = redis::cmd("HGET")
        .arg(&key)
        .arg("GT")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "10", "the value of epoch 5 stays");
    // re-delivery of epoch 5 is idempotent, totals too
    assert_eq!(
        run_script(
            &mut conn,
            at(5),
            &[upsert(&key, "GT", "10"), upsert(&key, "MX", "4")]
        )
        .await,
        [Status::Written, Status::Written]
    );
    let t: i64 = redis::cmd("GET")
        .arg(&totals)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(t, 14);
    // epoch 6 lowers GT and deletes MX: totals follow exactly
    let del = Write {
        delete: true,
        value: String::new(),
        ..upsert(&key, "MX", "")
    };
    assert_eq!(
        run_script(&mut conn, at(6), &[upsert(&key, "GT", "8"), del.clone()]).await,
        [Status::Written, Status::Written]
    );
    let t: i64 = redis::cmd("GET")
        .arg(&totals)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(t, 8);
    // a stale upsert cannot resurrect the deleted field
    assert_eq!(
        run_script(&mut conn, at(5), &[upsert(&key, "MX", "4")]).await,
        [Status::Stale]
    );
    let mx: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg("MX")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(mx, None);
    // a new generation supersedes any epoch of the old one
    let gen2 = ChunkArgs {
        fence: fence::fence(2, 1).unwrap(),
        ..at(1)
    };
    assert_eq!(
        run_script(&mut conn, gen2, &[upsert(&key, "GT", "1")]).await,
        [Status::Written]
    );
    // a key of the wrong type fails that record only
    let _: () = redis::cmd("SET")
        .arg(format!("{p}str"))
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let statuses = run_script(
        &mut conn,
        at(9),
        &[
            upsert(&format!("{p}str"), "a", "1"),
            upsert(&key, "BR", "2"),
        ],
    )
    .await;
    assert!(
        matches!(&statuses[0], Status::Failed(e) if e.starts_with("WRONGTYPE")),
        "{statuses:?}"
    );
    assert_eq!(statuses[1], Status::Written);
    let t: i64 = redis::cmd("GET")
        .arg(&totals)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(t, 1 + 2, "totals = GT + BR");
    cleanup(&mut conn, &p).await;
}

async fn cleanup(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    // generations the test's writers drew (their pipeline names start with the prefix)
    let owners: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(OWNERS_KEY)
        .query_async(conn)
        .await
        .unwrap_or_default();
    for (g, w) in owners {
        if w.contains(prefix) {
            let _: Result<i64, _> = redis::cmd("HDEL")
                .arg(OWNERS_KEY)
                .arg(g)
                .query_async(conn)
                .await;
        }
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(conn).await;
    }
}

fn sink_config(toml_text: &str) -> RedisSinkConfig {
    let c: RedisSinkConfig = toml::from_str(toml_text).unwrap();
    c.validate().unwrap();
    c
}

#[tokio::test]
async fn sink_writes_fences_rejects_and_reloads_the_script() {
    let mut conn = server().await;
    let p = prefix("sink");
    let config = sink_config(&format!(
        "url = \"{}\"\nkey = \"{p}counts:{{window}}\"\nfield = \"{{country}}\"\nvalue_field = \"count\"\ntotals = \"{p}total\"\nttl = \"1h\"\nchunk_size = 2",
        redis_url()
    ));
    let mut sink = RedisSink::new("test", config);
    sink.restore(None).await.unwrap();
    let rec = |c: &str, n: i64| {
        record(
            RowKind::Upsert,
            &[
                ("window", Value::Int(1)),
                ("country", s(c)),
                ("count", Value::Int(n)),
            ],
        )
    };
    let epoch1 = vec![
        rec("GT", 3),
        rec("MX", 2),
        record(
            RowKind::Upsert,
            &[("country", s("BR")), ("count", Value::Int(1))],
        ),
        rec("US", 5),
        record(
            RowKind::Upsert,
            &[
                ("window", Value::Int(1)),
                ("country", s("FR")),
                ("count", s("many")),
            ],
        ),
    ];
    // the script cache may be empty: the sink must load it on NOSCRIPT
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let out = sink.write(1, &epoch1).await.unwrap();
    let reasons: Vec<usize> = out.rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(reasons, [2, 4], "{:?}", out.rejected);
    assert!(out.rejected[0].1.contains("`window`"), "{:?}", out.rejected);
    assert!(
        out.rejected[1].1.contains("needs a number"),
        "{:?}",
        out.rejected
    );
    let progress = out.progress.clone().unwrap();
    let key = format!("{p}counts:1");
    let all: std::collections::BTreeMap<String, i64> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        all.into_iter().collect::<Vec<_>>(),
        [("GT".into(), 3), ("MX".into(), 2), ("US".into(), 5)]
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 3500, "ttl {ttl}");
    // epoch 2 in a restarted sink (same generation from the progress)
    let mut again = RedisSink::new("test", sink_config(&format!(
        "url = \"{}\"\nkey = \"{p}counts:{{window}}\"\nfield = \"{{country}}\"\nvalue_field = \"count\"\ntotals = \"{p}total\"",
        redis_url()
    )));
    again.restore(Some(&progress)).await.unwrap();
    again.write(2, &[rec("GT", 4)]).await.unwrap();
    // a late replay of epoch 1 changes nothing
    again.write(1, &epoch1).await.unwrap();
    let gt: i64 = redis::cmd("HGET")
        .arg(&key)
        .arg("GT")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(gt, 4);
    let total: i64 = redis::cmd("GET")
        .arg(format!("{p}total"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(total, 4 + 2 + 5);
    // a totals key that is not a number stops the pipeline with the reason
    let _: () = redis::cmd("SET")
        .arg(format!("{p}total"))
        .arg("abc")
        .query_async(&mut conn)
        .await
        .unwrap();
    match again.write(3, &[rec("GT", 5)]).await {
        Err(SinkError::Fatal(e)) => assert!(e.contains("not a number"), "{e}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
    cleanup(&mut conn, &p).await;
}

#[tokio::test]
async fn unreachable_server_is_retryable() {
    let config = sink_config("url = \"redis://127.0.0.1:1\"\nkey = \"k\"\nmode = \"string\"\nconnect_timeout = \"500ms\"");
    let mut sink = RedisSink::new("down", config);
    match sink.restore(None).await {
        Err(SinkError::Retryable(e)) => assert!(e.contains("cannot connect"), "{e}"),
        other => panic!("expected a retryable error, got {other:?}"),
    }
}

mod workers;
