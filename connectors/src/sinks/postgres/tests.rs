//! Unit tests: config, SQL building, rows; and the sink against a real
//! PostgreSQL (`POSTGRES_URL`, default postgres://postgres@127.0.0.1:5432/test;
//! `tests/services.sh` starts one).

use std::collections::BTreeMap;
use std::path::Path;

use sluice_engine::batch::RowKind;
use sluice_engine::config::SourceText;
use sluice_engine::sink::{Sink, SinkError, SinkRecord};
use sluice_engine::value::{Map, Str, Value};

use super::rows::{json_array, Layout};
use super::sql::{self, TableName};
use super::*;

fn rec(kind: RowKind, id: &str, fields: &[(&str, Value)]) -> SinkRecord {
    let mut m = Map::new();
    for (k, v) in fields {
        m.insert(*k, v.clone());
    }
    SinkRecord {
        kind,
        id: Str::from(id),
        value: Value::Object(m),
        time: 0,
    }
}

fn s(v: &str) -> Value {
    Value::Str(Str::from(v))
}

/// The ```toml block of the module documentation, parsed and validated.
#[test]
fn doc_example_parses_and_validates() {
    let src = include_str!("mod.rs");
    let mut text = String::new();
    let mut inside = false;
    for line in src.lines().filter_map(|l| l.strip_prefix("//!")) {
        let line = line.strip_prefix(' ').unwrap_or(line);
        if line.starts_with("```toml") {
            inside = true;
        } else if line.starts_with("```") {
            inside = false;
        } else if inside {
            text.push_str(line);
            text.push('\n');
        }
    }
    let text = SourceText::interpolate(Path::new("example.toml"), text, |_| None).unwrap();
    let doc: toml::Table = toml::from_str(&text.text).unwrap();
    let mut modes = Vec::new();
    for v in doc["sinks"].as_table().unwrap().values() {
        let mut t = v.as_table().unwrap().clone();
        t.remove("type");
        t.remove("inputs");
        let c: PostgresSinkConfig = t.try_into().unwrap();
        c.validate().unwrap();
        modes.push(c.mode);
    }
    assert_eq!(modes, [PostgresMode::Upsert, PostgresMode::Append]);
}

#[test]
fn config_mistakes_are_explained() {
    let check = |body: &str| -> String {
        let c: PostgresSinkConfig = toml::from_str(&format!(
            "url = \"postgres://u@h/db\"\ntable = \"t\"\n{body}"
        ))
        .unwrap();
        c.validate().unwrap_err().into()
    };
    assert!(check("").contains("needs `key`"));
    assert!(check("mode = \"append\"\nkey = [\"a\"]").contains("only applies"));
    assert!(check("key = [\"a\"]\ncolumns = { b = \"b\" }").contains("not in `columns`"));
    assert!(check("key = [\"a\"]\ntls_ca_file = \"x.pem\"").contains("tls = \"require\""));
    assert!(check("key = [\"a\"]\ncolumn_types = { a = \"text\" }").contains("create_table"));
    let c: PostgresSinkConfig =
        toml::from_str("url = \"postgres://u@h/db\"\ntable = \"a.b.c\"\nkey = [\"k\"]").unwrap();
    assert!(c.validate().unwrap_err().message().contains("`table`"));
    let e =
        toml::from_str::<PostgresSinkConfig>("url = \"x\"\ntable = \"t\"\nbatch = 3").unwrap_err();
    assert!(e.to_string().contains("unknown field `batch`"), "{e}");
    let e = toml::from_str::<PostgresSinkConfig>("url = \"x\"\ntable = \"t\"\ntls = \"prefer\"")
        .unwrap_err();
    assert!(e.to_string().contains("unknown variant `prefer`"), "{e}");
}

#[test]
fn sql_is_quoted_batched_and_fenced() {
    let t = TableName::parse("public.Counts").unwrap();
    assert_eq!(t.quoted(), "\"public\".\"Counts\"");
    assert_eq!(sql::ident("a\"b"), "\"a\"\"b\"");
    assert!(TableName::parse("a..b").is_err() && TableName::parse("").is_err());
    let cols = vec![
        "country".to_string(),
        "window_start".to_string(),
        "count".to_string(),
    ];
    let key = vec!["country".to_string(), "window_start".to_string()];
    assert_eq!(
        sql::upsert(&t, &cols, &key),
        "INSERT INTO \"public\".\"Counts\" AS cur (\"country\", \"window_start\", \"count\", \"sluice_epoch\") \
         SELECT r.\"country\", r.\"window_start\", r.\"count\", $2::bigint \
         FROM json_populate_recordset(NULL::\"public\".\"Counts\", $1::text::json) AS r \
         ON CONFLICT (\"country\", \"window_start\") DO UPDATE SET \"count\" = EXCLUDED.\"count\", \
         \"sluice_epoch\" = EXCLUDED.\"sluice_epoch\" WHERE cur.\"sluice_epoch\" <= EXCLUDED.\"sluice_epoch\""
    );
    assert_eq!(
        sql::delete(&t, &key),
        "DELETE FROM \"public\".\"Counts\" AS cur USING json_populate_recordset(NULL::\"public\".\"Counts\", $1::text::json) AS r \
         WHERE cur.\"country\" = r.\"country\" AND cur.\"window_start\" = r.\"window_start\" AND cur.\"sluice_epoch\" <= $2::bigint"
    );
    let t = TableName::parse("events").unwrap();
    assert_eq!(
        sql::append(&t, &["event_id".into(), "sender".into()], "event_id"),
        "INSERT INTO \"events\" (\"event_id\", \"sender\") SELECT r.\"event_id\", r.\"sender\" \
         FROM json_populate_recordset(NULL::\"events\", $1::text::json) AS r ON CONFLICT (\"event_id\") DO NOTHING"
    );
    assert_eq!(
        sql::create_table(&t, &[("k".into(), "TEXT".into()), ("n".into(), "BIGINT".into())], &["k".into()], true),
        "CREATE TABLE IF NOT EXISTS \"events\" (\"k\" TEXT NOT NULL, \"n\" BIGINT, \"sluice_epoch\" BIGINT NOT NULL, PRIMARY KEY (\"k\"))"
    );
}

#[test]
fn types_are_inferred_from_values() {
    let t = |vs: &[Value]| sql::infer_type(vs);
    assert_eq!(t(&[Value::Int(1), Value::Null]), "BIGINT");
    assert_eq!(t(&[Value::Int(1), Value::Float(1.5)]), "DOUBLE PRECISION");
    assert_eq!(t(&[Value::Bool(true)]), "BOOLEAN");
    assert_eq!(t(&[Value::Object(Map::new())]), "JSONB");
    assert_eq!(t(&[s("x"), Value::Int(1)]), "TEXT");
    assert_eq!(t(&[]), "TEXT");
}

#[test]
fn rows_dedup_by_key_and_reject_missing_keys() {
    let layout = Layout::new(PostgresMode::Upsert, &["country".into()], "event_id", None);
    let records = vec![
        rec(
            RowKind::Upsert,
            "GT",
            &[
                ("country", s("GT")),
                ("count", Value::Int(1)),
                ("extra", Value::Int(0)),
            ],
        ),
        rec(
            RowKind::Upsert,
            "MX",
            &[("country", s("MX")), ("count", Value::Int(2))],
        ),
        rec(RowKind::Upsert, "?", &[("count", Value::Int(3))]),
        rec(
            RowKind::Upsert,
            "GT",
            &[("country", s("GT")), ("count", Value::Int(4))],
        ),
        rec(RowKind::Delete, "MX", &[("country", s("MX"))]),
    ];
    let table = ["country", "count", "sluice_epoch"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    let rows = layout.rows(&records, Some(&table));
    assert_eq!(rows.columns, ["country", "count"]);
    assert_eq!(rows.unknown_fields.iter().collect::<Vec<_>>(), ["extra"]);
    assert_eq!(rows.rejected.len(), 1);
    assert_eq!(rows.rejected[0].0, 2);
    assert_eq!(json_array(&rows.upserts), r#"[{"country":"GT","count":4}]"#);
    assert_eq!(rows.upserts[0].index, 3);
    assert_eq!(json_array(&rows.deletes), r#"[{"country":"MX"}]"#);

    let mut cols = BTreeMap::new();
    cols.insert("who".to_string(), "sender.name".to_string());
    let append = Layout::new(PostgresMode::Append, &[], "event_id", Some(&cols));
    let mut sender = Map::new();
    sender.insert("name", s("haimeng"));
    let ev = rec(
        RowKind::Insert,
        "http:0:17",
        &[("sender", Value::Object(sender))],
    );
    let rows = append.rows(&[ev.clone(), ev], None);
    assert_eq!(rows.columns, ["event_id", "who"]);
    assert_eq!(
        json_array(&rows.upserts),
        r#"[{"event_id":"http:0:17","who":"haimeng"},{"event_id":"http:0:17","who":"haimeng"}]"#
    );
}

// ---- against a real server -------------------------------------------------

fn pg_url() -> String {
    std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn server() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {} ({e}): run tests/services.sh", pg_url()));
    tokio::spawn(conn);
    client
}

fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000);
    format!("sluice_t_{test}_{}_{nanos}", std::process::id())
}

fn config(body: &str) -> PostgresSinkConfig {
    let c: PostgresSinkConfig = toml::from_str(&format!("url = \"{}\"\n{body}", pg_url())).unwrap();
    c.validate().unwrap();
    c
}

async fn counts(db: &tokio_postgres::Client, table: &str) -> Vec<(String, i64)> {
    db.query(
        &format!("SELECT country, count FROM {table} ORDER BY country"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test]
async fn upsert_fences_epochs_and_isolates_bad_rows() {
    let db = server().await;
    let table = unique("upsert");
    let body =
        format!("table = \"{table}\"\nkey = [\"country\"]\ncreate_table = true\nbatch_size = 2");
    let mut sink = PostgresSink::new("pg", config(&body));
    sink.restore(None).await.unwrap();
    let up = |c: &str, n: Value| rec(RowKind::Upsert, c, &[("country", s(c)), ("count", n)]);
    let out = sink
        .write(
            2,
            &[
                up("GT", Value::Int(5)),
                up("MX", Value::Int(2)),
                up("BR", Value::Int(1)),
            ],
        )
        .await
        .unwrap();
    assert!(out.rejected.is_empty());
    let progress = out.progress.unwrap();
    // a late replay of epoch 1 changes nothing; a bad value is isolated
    let out = sink
        .write(
            1,
            &[
                up("GT", Value::Int(3)),
                up("US", s("lots")),
                up("FR", Value::Int(7)),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        out.rejected.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [1],
        "{:?}",
        out.rejected
    );
    assert!(out.rejected[0].1.contains("bigint"), "{:?}", out.rejected);
    assert_eq!(
        counts(&db, &table).await,
        [
            ("BR".into(), 1),
            ("FR".into(), 7),
            ("GT".into(), 5),
            ("MX".into(), 2)
        ]
    );
    // same generation after a restart (from the progress): epoch 3 updates
    // and deletes
    let mut again = PostgresSink::new("pg", config(&body));
    again.restore(Some(&progress)).await.unwrap();
    let del = rec(RowKind::Delete, "BR", &[("country", s("BR"))]);
    again
        .write(3, &[up("GT", Value::Int(6)), del])
        .await
        .unwrap();
    assert_eq!(
        counts(&db, &table).await,
        [("FR".into(), 7), ("GT".into(), 6), ("MX".into(), 2)]
    );
    // a fresh start (state wiped: epochs restart at 1) supersedes old rows
    let mut fresh = PostgresSink::new("pg", config(&body));
    fresh.restore(None).await.unwrap();
    fresh.write(1, &[up("GT", Value::Int(1))]).await.unwrap();
    assert_eq!(counts(&db, &table).await[1], ("GT".into(), 1));
    db.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn append_deduplicates_replayed_events() {
    let db = server().await;
    let table = unique("append");
    let body = format!("table = \"{table}\"\nmode = \"append\"\ncreate_table = true\ncolumn_types = {{ attrs = \"jsonb\" }}");
    let mut sink = PostgresSink::new("pg", config(&body));
    sink.restore(None).await.unwrap();
    let mut attrs = Map::new();
    attrs.insert("k", Value::Int(1));
    let ev = |i: i64| {
        rec(
            RowKind::Insert,
            &format!("http:0:{i}"),
            &[
                ("sender", s("x")),
                ("priority", Value::Int(i)),
                ("attrs", Value::Object(attrs.clone())),
            ],
        )
    };
    let epoch: Vec<SinkRecord> = (0..5).map(ev).collect();
    sink.write(1, &epoch).await.unwrap();
    sink.write(1, &epoch).await.unwrap(); // re-delivery after a crash
    sink.write(2, &[ev(4), ev(5)]).await.unwrap();
    let n: i64 = db
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 6);
    let k: i64 = db
        .query_one(
            &format!("SELECT (attrs->>'k')::bigint FROM {table} WHERE event_id = 'http:0:3'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(k, 1);
    db.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn missing_table_is_fatal_and_unreachable_server_retryable() {
    let mut sink = PostgresSink::new(
        "pg",
        config(&format!("table = \"{}\"\nkey = [\"k\"]", unique("missing"))),
    );
    sink.restore(None).await.unwrap();
    match sink
        .write(1, &[rec(RowKind::Upsert, "a", &[("k", s("a"))])])
        .await
    {
        Err(SinkError::Fatal(e)) => assert!(e.contains("does not exist"), "{e}"),
        other => panic!("expected fatal, got {other:?}"),
    }
    let c: PostgresSinkConfig = toml::from_str(
        "url = \"postgres://postgres@127.0.0.1:1/test\"\ntable = \"t\"\nmode = \"append\"\nconnect_timeout = \"500ms\"",
    )
    .unwrap();
    match PostgresSink::new("down", c).restore(None).await {
        Err(SinkError::Retryable(e)) => assert!(e.contains("cannot connect"), "{e}"),
        other => panic!("expected retryable, got {other:?}"),
    }
}

#[tokio::test]
async fn tls_require_verifies_the_server_certificate() {
    // Debian's PostgreSQL serves the snakeoil certificate (CN=localhost)
    let cert = Path::new("/etc/ssl/certs/ssl-cert-snakeoil.pem");
    if !cert.exists() || std::env::var("POSTGRES_URL").is_ok() {
        eprintln!("skipped: needs the local Debian PostgreSQL with its snakeoil certificate");
        return;
    }
    let table = unique("tls");
    let body = |host: &str, ca: &str| {
        format!(
            "url = \"postgres://postgres@{host}:5432/test?hostaddr=127.0.0.1\"\ntable = \"{table}\"\nmode = \"append\"\ncreate_table = true\ntls = \"require\"\nconnect_timeout = \"2s\"{ca}"
        )
    };
    let trusted: PostgresSinkConfig = toml::from_str(&body(
        "localhost",
        &format!("\ntls_ca_file = \"{}\"", cert.display()),
    ))
    .unwrap();
    let mut sink = PostgresSink::new("tls", trusted);
    sink.restore(None).await.unwrap();
    sink.write(1, &[rec(RowKind::Insert, "e1", &[("a", Value::Int(1))])])
        .await
        .unwrap();
    // the certificate names localhost, not this address
    let untrusted: PostgresSinkConfig = toml::from_str(&body("127.0.0.1", "")).unwrap();
    match PostgresSink::new("tls", untrusted).restore(None).await {
        Err(SinkError::Fatal(e)) => assert!(e.contains("certificate"), "{e}"),
        other => panic!("expected a certificate error, got {other:?}"),
    }
    server()
        .await
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}
