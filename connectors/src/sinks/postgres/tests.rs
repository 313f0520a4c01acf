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

// ---- several workers --------------------------------------------------------

use crate::sinks::fence::{driven::Driver, Progress, Writer};
use sluice_engine::cluster::WorkerId;

/// A schema of its own for a test (the generation registry lives beside
/// the destination table), dropped by [`drop_schema`].
async fn schema(db: &tokio_postgres::Client, test: &str) -> String {
    let schema = unique(test);
    db.batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    schema
}

async fn drop_schema(db: &tokio_postgres::Client, schema: &str) {
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

fn writer(pipeline: &str, worker: u32, workers: u32) -> Writer {
    Writer {
        pipeline: pipeline.into(),
        sink: "counts".into(),
        worker,
        workers,
    }
}

fn worker_sink(schema: &str, writer: Writer) -> PostgresSink {
    let body = format!("table = \"{schema}.counts\"\nkey = [\"country\"]\ncreate_table = true");
    PostgresSink::new("counts", config(&body)).with_writer(writer)
}

fn country(c: &str, n: i64) -> SinkRecord {
    rec(
        RowKind::Upsert,
        c,
        &[("country", s(c)), ("count", Value::Int(n))],
    )
}

/// Starts a sink as a pipeline does (start check, then restore) and writes
/// one epoch; returns the start check's finding, the progress and the
/// fenced count.
async fn start_and_write(
    mut sink: PostgresSink,
    restored_epoch: u64,
    progress: Option<&[u8]>,
    epoch: u64,
    records: &[SinkRecord],
) -> (Option<String>, Vec<u8>, u64) {
    let found = sink.earlier_output(restored_epoch, progress).await.unwrap();
    sink.restore(progress).await.unwrap();
    let out = sink.write(epoch, records).await.unwrap();
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    (found, out.progress.unwrap(), out.fenced)
}

fn generation(progress: &[u8]) -> u64 {
    Progress::decode(progress).unwrap().generation
}

#[tokio::test]
async fn two_workers_share_a_table_restart_in_turns_and_refuse_only_their_own_values() {
    let db = server().await;
    let schema = schema(&db, "workers").await;
    let table = format!("{schema}.counts");
    let (w0, w1) = (writer("p", 0, 2), writer("p", 1, 2));
    let (found, p0, fenced) = start_and_write(
        worker_sink(&schema, w0.clone()),
        0,
        None,
        1,
        &[country("GT", 1)],
    )
    .await;
    assert_eq!((found, fenced), (None, 0));
    let (found, p1, fenced) = start_and_write(
        worker_sink(&schema, w1.clone()),
        0,
        None,
        1,
        &[country("MX", 2)],
    )
    .await;
    assert_eq!(found, None, "worker 0's rows are not worker 1's");
    assert_eq!(fenced, 0);
    assert!(generation(&p1) > generation(&p0));
    let mut progress = (p0, p1);
    for epoch in 2..=3 {
        let (found, np0, fenced) = start_and_write(
            worker_sink(&schema, w0.clone()),
            epoch - 1,
            Some(&progress.0),
            epoch,
            &[country("GT", epoch as i64 * 10)],
        )
        .await;
        assert_eq!((found, fenced), (None, 0), "worker 0, epoch {epoch}");
        let (found, np1, fenced) = start_and_write(
            worker_sink(&schema, w1.clone()),
            epoch - 1,
            Some(&progress.1),
            epoch,
            &[country("MX", epoch as i64 * 100)],
        )
        .await;
        assert_eq!((found, fenced), (None, 0), "worker 1, epoch {epoch}");
        assert_eq!((&np0, &np1), (&progress.0, &progress.1), "generations kept");
        progress = (np0, np1);
    }
    assert_eq!(
        counts(&db, &table).await,
        [("GT".into(), 30), ("MX".into(), 300)]
    );
    // who drew each generation is recorded beside the table
    let rows = db
        .query(
            &format!("SELECT generation, pipeline, sink, worker, workers FROM {schema}.sluice_generations ORDER BY generation"),
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<(i64, String, String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        recorded,
        [
            (
                generation(&progress.0) as i64,
                "p".into(),
                "counts".into(),
                0,
                2
            ),
            (
                generation(&progress.1) as i64,
                "p".into(),
                "counts".into(),
                1,
                2
            ),
        ]
    );
    // from empty state: worker 1 is refused over its own rows, worker 0 of
    // another pipeline is not, a single-worker sink still sees every row
    let found = worker_sink(&schema, w1.clone())
        .earlier_output(0, None)
        .await
        .unwrap()
        .expect("worker 1's own earlier rows");
    assert!(found.contains("worker 1 of 2"), "{found}");
    assert_eq!(
        worker_sink(&schema, writer("other", 0, 2))
            .earlier_output(0, None)
            .await
            .unwrap(),
        None
    );
    assert!(worker_sink(&schema, Writer::single("counts"))
        .earlier_output(0, None)
        .await
        .unwrap()
        .is_some());
    drop_schema(&db, &schema).await;
}

#[tokio::test]
async fn concurrent_workers_never_draw_the_same_generation() {
    let db = server().await;
    let schema = schema(&db, "draws").await;
    let draws = (0..4u32).map(|w| {
        let mut sink = worker_sink(&schema, writer("p", w, 4));
        async move {
            sink.restore(None).await.unwrap();
            let out = sink
                .write(1, &[country(&format!("C{w}"), 1)])
                .await
                .unwrap();
            generation(&out.progress.unwrap())
        }
    });
    let mut drawn = futures::future::join_all(draws).await;
    drawn.sort_unstable();
    drawn.dedup();
    assert_eq!(drawn.len(), 4, "{drawn:?}");
    drop_schema(&db, &schema).await;
}

#[test]
fn a_zombie_worker_is_fenced_out_and_counted_and_a_moved_key_group_is_not() {
    let driver = Driver::new();
    let db = driver.rt.block_on(server());
    let schema = driver.rt.block_on(schema(&db, "zombie"));
    let table = format!("{schema}.counts");
    let pipeline = schema.clone();
    let w1 = writer(&pipeline, 1, 2);
    let sink = |w: &Writer| Box::new(worker_sink(&schema, w.clone()));
    driver.register(&pipeline, "counts");
    let zombie = driver
        .write(
            &pipeline,
            "counts",
            sink(&w1),
            None,
            5,
            vec![country("GT", 10)],
        )
        .unwrap();
    // a newer incarnation of worker 1 (its state rebuilt) draws a new
    // generation and writes epoch 1
    let newer = driver
        .write(
            &pipeline,
            "counts",
            sink(&w1),
            None,
            1,
            vec![country("GT", 20)],
        )
        .unwrap();
    assert!(generation(&newer) > generation(&zombie));
    assert_eq!(driver.fenced(&pipeline, "counts"), Some(0.0));
    // the old incarnation, resumed, writes epoch 6: GT is fenced, NEW is
    // written
    driver.write(
        &pipeline,
        "counts",
        sink(&w1),
        Some(zombie.clone()),
        6,
        vec![country("GT", 99), country("NEW", 1)],
    );
    assert_eq!(driver.fenced(&pipeline, "counts"), Some(1.0));
    driver.rt.block_on(async {
        assert_eq!(
            counts(&db, &table).await,
            [("GT".into(), 20), ("NEW".into(), 1)]
        );
        let found = worker_sink(&schema, w1.clone())
            .earlier_output(6, Some(&zombie))
            .await
            .unwrap()
            .expect("a newer incarnation of worker 1 wrote");
        assert!(found.contains("newer than the restored state"), "{found}");
    });
    // worker 0 draws after worker 1's newer incarnation and writes MX at a
    // high epoch; rescaled to 3 workers, MX moves to worker 1, restored
    // from its progress: a new generation, not fenced out by worker 0's
    let w0 = writer(&pipeline, 0, 2);
    let p0 = driver
        .write(
            &pipeline,
            "counts",
            sink(&w0),
            None,
            900,
            vec![country("MX", 5)],
        )
        .unwrap();
    assert!(generation(&p0) > generation(&newer));
    let moved = driver
        .write(
            &pipeline,
            "counts",
            sink(&writer(&pipeline, 1, 3)),
            Some(newer.clone()),
            2,
            vec![country("MX", 6)],
        )
        .unwrap();
    let moved = Progress::decode(&moved).unwrap();
    assert_eq!(moved.worker, WorkerId::new(1, 3).unwrap());
    assert!(moved.generation > generation(&p0));
    assert_eq!(
        driver.fenced(&pipeline, "counts"),
        Some(1.0),
        "nothing more fenced"
    );
    driver.rt.block_on(async {
        assert_eq!(
            counts(&db, &table).await,
            [("GT".into(), 20), ("MX".into(), 6), ("NEW".into(), 1)]
        );
        drop_schema(&db, &schema).await;
    });
}
