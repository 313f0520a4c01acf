//! Change-stream source tests: decoding, positions and the run loop on the
//! in-memory fake; a real-server round trip only when `MONGODB_URI` is set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use sluice_engine::decode::Decoder;
use sluice_engine::operator::FieldSet;
use sluice_engine::source::{Source, SourceContext, SourceError, SourceEvent, SourceOutput};
use tokio::sync::{mpsc, watch};

use super::{decode_change, decode_position, encode_position, MongoSource, MongoSourceConfig};
use crate::mongo::commands::token_from_bytes;
use crate::mongo::fake::{change_event, FakeMongo};
use crate::mongo::{ErrorClass, FullDocument, MongoError};

const NS: (&str, &str) = ("shop", "orders");

fn json(change: &super::Change) -> serde_json::Value {
    serde_json::from_slice(change.json.as_ref().unwrap()).unwrap()
}

#[test]
fn decodes_insert_with_relaxed_extended_json() {
    let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
    let full = doc! {
        "_id": oid, "product": "kibble", "qty": 3_i32, "price": 12.5,
        "at": DateTime::from_millis(1_700_000_000_000),
    };
    let c = decode_change(&change_event(
        1,
        "insert",
        NS,
        Bson::ObjectId(oid),
        Some(full),
        None,
    ))
    .unwrap();
    assert_eq!(c.op, "insert");
    assert_eq!(c.cluster_secs, Some(1_700_000_001));
    assert_eq!(
        json(&c),
        serde_json::json!({
            "_id": {"$oid": "65a1b2c3d4e5f60718293a4b"},
            "product": "kibble", "qty": 3, "price": 12.5,
            "at": {"$date": "2023-11-14T22:13:20Z"},
            "_op": "insert", "_ns": "shop.orders"
        })
    );
}

#[test]
fn decodes_update_with_and_without_post_image() {
    let upd = doc! { "updatedFields": { "qty": 4_i32 }, "removedFields": ["note"] };
    let c = decode_change(&change_event(
        2,
        "update",
        NS,
        Bson::String("o1".into()),
        None,
        Some(upd.clone()),
    ))
    .unwrap();
    assert_eq!(
        json(&c),
        serde_json::json!({"_id": "o1", "_updated": {"qty": 4}, "_removed": ["note"], "_op": "update", "_ns": "shop.orders"})
    );
    let full = doc! { "_id": "o1", "qty": 4_i32 };
    let c = decode_change(&change_event(
        2,
        "update",
        NS,
        Bson::String("o1".into()),
        Some(full),
        Some(upd),
    ))
    .unwrap();
    assert_eq!(
        json(&c),
        serde_json::json!({"_id": "o1", "qty": 4, "_op": "update", "_ns": "shop.orders"})
    );
    // update_lookup on a document deleted meanwhile: fullDocument is null.
    let mut e = change_event(3, "update", NS, Bson::String("o2".into()), None, None);
    e.insert("fullDocument", Bson::Null);
    assert_eq!(
        json(&decode_change(&e).unwrap()),
        serde_json::json!({"_id": "o2", "_op": "update", "_ns": "shop.orders"})
    );
}

#[test]
fn decodes_replace_delete_and_non_crud_events() {
    let c = decode_change(&change_event(
        4,
        "replace",
        NS,
        Bson::Int64(7),
        Some(doc! {"_id": 7_i64, "a": true}),
        None,
    ))
    .unwrap();
    assert_eq!(
        json(&c),
        serde_json::json!({"_id": 7, "a": true, "_op": "replace", "_ns": "shop.orders"})
    );
    let c = decode_change(&change_event(5, "delete", NS, Bson::Int64(7), None, None)).unwrap();
    assert_eq!(
        json(&c),
        serde_json::json!({"_id": 7, "_op": "delete", "_ns": "shop.orders"})
    );
    let mut drop = change_event(6, "drop", NS, Bson::Null, None, None);
    drop.remove("documentKey");
    let c = decode_change(&drop).unwrap();
    assert!(c.json.is_none() && !c.invalidate);
    let c = decode_change(&doc! { "_id": {"_data": "x"}, "operationType": "invalidate" }).unwrap();
    assert!(c.invalidate && c.json.is_none());
    assert!(decode_change(&doc! { "operationType": "insert" }).is_err());
}

#[test]
fn positions_round_trip_through_bytes() {
    let token = Bson::Document(doc! { "_data": "8263ABCDEF000000012B022C0100296E5A1004" });
    let bytes = encode_position(42, &token);
    let (seq, token_bytes) = decode_position(&bytes).unwrap();
    assert_eq!(seq, 42);
    assert_eq!(token_from_bytes(&token_bytes), Some(token));
    assert_eq!(decode_position(b""), None);
    assert_eq!(decode_position(&[1, 0, 0]), None);
    assert_eq!(decode_position(&[2; 20]), None, "unknown version");
    let mut garbage = bytes[..9].to_vec();
    garbage.extend_from_slice(b"not bson");
    assert_eq!(decode_position(&garbage), None);
}

#[test]
fn config_parses_and_validates() {
    let c: MongoSourceConfig = toml::from_str(
        "uri = \"mongodb://localhost:27017/?replicaSet=rs0\"\ndatabase = \"shop\"\ncollection = \"orders\"\nfull_document = \"update_lookup\"\nstart_at_operation_time = \"2026-11-21T10:00:00Z\"",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.full_document, FullDocument::UpdateLookup);
    assert_eq!(c.start_at().unwrap(), Some((1_795_255_200, 0)));
    let mut c2 = c.clone();
    c2.start_at_operation_time = Some("1795255200".into());
    assert_eq!(c2.start_at().unwrap(), Some((1_795_255_200, 0)));
    c2.start_at_operation_time = Some("yesterday".into());
    assert!(c2
        .validate()
        .unwrap_err()
        .message()
        .contains("start_at_operation_time"));
    c2.start_at_operation_time = None;
    c2.uri = "mongodb+srv://cluster0.example.net".into();
    assert!(c2.validate().unwrap_err().message().contains("mongodb+srv"));
    let e = toml::from_str::<MongoSourceConfig>(
        "uri = \"mongodb://h\"\ndatabase = \"d\"\nfull_document = \"lookup\"",
    )
    .unwrap_err();
    assert!(e.to_string().contains("update_lookup"), "{e}");
    let e = toml::from_str::<MongoSourceConfig>(
        "uri = \"mongodb://h\"\ndatabase = \"d\"\ncolection = \"x\"",
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `colection`"), "{e}");
}

struct Running {
    events: mpsc::Receiver<SourceEvent>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), SourceError>>,
    _dir: tempfile::TempDir,
}

fn config(collection: Option<&str>) -> MongoSourceConfig {
    MongoSourceConfig {
        uri: std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:1".into()),
        database: "shop".into(),
        collection: collection.map(String::from),
        full_document: FullDocument::UpdateLookup,
        start_at_operation_time: None,
        batch_size: 2,
        max_await: sluice_engine::time::HumanDuration::from_millis(200),
    }
}

fn start<S: Source>(source: S, restored: BTreeMap<u32, Vec<u8>>, bounded: bool) -> Running {
    let (tx, events) = mpsc::channel(64);
    let decoder = Arc::new(Decoder::new(Arc::from("m"), &FieldSet::All, None, 1 << 20));
    let (_commits, commit_rx) = mpsc::unbounded_channel();
    let (stop, shutdown) = watch::channel(false);
    let dir = tempfile::tempdir().unwrap();
    let ctx = SourceContext {
        name: Arc::from("m"),
        pipeline: Arc::from("test"),
        state_dir: dir.path().to_path_buf(),
        restored,
        bounded,
        accept_empty_state: false,
        restored_remotely: false,
        shutdown,
        commits: commit_rx,
        output: SourceOutput::new(0, decoder, tx, Arc::default()),
    };
    let task = tokio::spawn(Box::new(source).run(ctx));
    Running {
        events,
        stop,
        task,
        _dir: dir,
    }
}

/// Rows (as JSON text), offsets and the last position of a finished run.
async fn drain(
    mut r: Running,
) -> (
    Vec<String>,
    Vec<u64>,
    Option<Vec<u8>>,
    Result<(), SourceError>,
) {
    let (mut rows, mut offsets, mut position) = (Vec::new(), Vec::new(), None);
    while let Some(ev) = r.events.recv().await {
        if let SourceEvent::Data {
            batch, position: p, ..
        } = ev
        {
            for (row, meta) in batch.rows.iter().zip(&batch.meta) {
                rows.push(row.to_string());
                offsets.push(meta.offset);
            }
            position = Some(p);
        }
    }
    let _ = r.stop.send(true);
    (rows, offsets, position, r.task.await.unwrap())
}

fn insert(n: u32, coll: &str, id: &str) -> Document {
    change_event(
        n,
        "insert",
        ("shop", coll),
        Bson::String(id.into()),
        Some(doc! {"_id": id, "n": n as i64}),
        None,
    )
}

#[tokio::test]
async fn resumes_after_the_checkpointed_token() {
    let fake = FakeMongo::default();
    fake.push_event(insert(1, "orders", "a"));
    let mut cfg = config(Some("orders"));
    cfg.start_at_operation_time = Some("1700000001".into());
    let run = start(
        MongoSource::with_client(cfg.clone(), fake.clone()),
        BTreeMap::new(),
        true,
    );
    fake.push_event(insert(2, "other", "x"));
    fake.push_event(insert(3, "orders", "b"));
    fake.push_event(insert(4, "orders", "c"));
    let (rows, offsets, position, result) = drain(run).await;
    result.unwrap();
    assert_eq!(fake.state().watches[0].start_at, Some((1_700_000_001, 0)));
    assert!(
        rows[0].contains("\"_id\":\"a\"") && rows[0].contains("\"_ns\":\"shop.orders\""),
        "{rows:?}"
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(offsets, vec![1, 2, 3]);
    let position = position.unwrap();
    assert_eq!(decode_position(&position).unwrap().0, 3);

    // Restart from the checkpointed position: only newer events, same
    // sequence numbering; the start time is ignored once a token exists.
    fake.push_event(insert(5, "orders", "d"));
    let restored = BTreeMap::from([(0, position)]);
    let (rows, offsets, _, result) = drain(start(
        MongoSource::with_client(cfg, fake.clone()),
        restored,
        true,
    ))
    .await;
    result.unwrap();
    assert_eq!(offsets, vec![4]);
    assert!(rows[0].contains("\"_id\":\"d\""));
    let w = &fake.state().watches[1];
    assert!(w.resume_after.is_some() && w.start_at.is_none());
}

#[tokio::test]
async fn watches_a_whole_database_and_reopens_after_retryable_errors() {
    let fake = FakeMongo::default();
    fake.push_event(insert(1, "orders", "a"));
    fake.push_event(insert(2, "payments", "p"));
    fake.state().watch_failures.push_back(MongoError::new(
        ErrorClass::Retryable,
        Some(91),
        "shutdown in progress",
    ));
    fake.state().read_failures.push_back(MongoError::new(
        ErrorClass::Retryable,
        Some(10107),
        "not primary",
    ));
    let mut cfg = config(None);
    cfg.start_at_operation_time = Some("1700000000".into());
    let (rows, offsets, _, result) = drain(start(
        MongoSource::with_client(cfg, fake.clone()),
        BTreeMap::new(),
        true,
    ))
    .await;
    result.unwrap();
    assert_eq!(offsets, vec![1, 2]);
    assert!(rows[1].contains("shop.payments"));
    assert_eq!(
        fake.state().watches.len(),
        3,
        "failed watch, failed read, success"
    );
}

#[tokio::test]
async fn lost_history_stops_with_a_plain_error() {
    let fake = FakeMongo::default();
    fake.push_event(insert(1, "orders", "a"));
    fake.push_event(insert(2, "orders", "b"));
    let token = fake.state().events[0].get("_id").cloned().unwrap();
    fake.state().first_kept = 2; // both fell off the oplog
    let restored = BTreeMap::from([(0, encode_position(1, &token))]);
    let (rows, _, _, result) = drain(start(
        MongoSource::with_client(config(Some("orders")), fake.clone()),
        restored,
        true,
    ))
    .await;
    assert!(rows.is_empty());
    let msg = result.unwrap_err().to_string();
    for needle in [
        "no longer in the oplog",
        "clear the pipeline's state",
        "start_at_operation_time",
        "sluice replay",
        "resume point may no longer be in the oplog",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in: {msg}");
    }
}

#[tokio::test]
async fn invalidate_and_corrupt_positions_stop_the_source() {
    let fake = FakeMongo::default();
    let mut cfg = config(Some("orders"));
    cfg.start_at_operation_time = Some("0".into());
    fake.push_event(insert(1, "orders", "a"));
    fake.push_event(doc! { "_id": {"_data": "ff"}, "operationType": "invalidate", "ns": {"db": "shop", "coll": "orders"} });
    let (rows, _, position, result) = drain(start(
        MongoSource::with_client(cfg.clone(), fake.clone()),
        BTreeMap::new(),
        true,
    ))
    .await;
    assert_eq!(rows.len(), 1, "events before the invalidate are emitted");
    assert!(position.is_some());
    assert!(result.unwrap_err().to_string().contains("invalidated"));
    let restored = BTreeMap::from([(0, b"garbage".to_vec())]);
    let (_, _, _, result) = drain(start(MongoSource::with_client(cfg, fake), restored, true)).await;
    assert!(result
        .unwrap_err()
        .to_string()
        .contains("not a change-stream resume token"));
}

/// Real server: insert, read the change, restart from the position.
/// Runs only when MONGODB_URI names a replica set (change streams need one).
#[tokio::test]
async fn driver_change_stream_round_trip() {
    let Ok(uri) = std::env::var("MONGODB_URI") else {
        eprintln!("skipped: MONGODB_URI is not set (no MongoDB server in this environment)");
        return;
    };
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let coll = client
        .database("sluice_test")
        .collection::<Document>("source_round_trip");
    coll.drop().await.unwrap();
    let mut cfg = config(Some("source_round_trip"));
    cfg.uri = uri.clone();
    cfg.database = "sluice_test".into();
    let run = start(MongoSource::new(cfg.clone()), BTreeMap::new(), false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    coll.insert_one(doc! {"_id": "a", "n": 1}).await.unwrap();
    let mut r = run;
    let position = loop {
        match tokio::time::timeout(Duration::from_secs(10), r.events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            SourceEvent::Data {
                batch, position, ..
            } if !batch.rows.is_empty() => {
                assert!(batch.rows[0].to_string().contains("\"_op\":\"insert\""));
                break position;
            }
            _ => {}
        }
    };
    let _ = r.stop.send(true);
    drop(r.events);
    let _ = r.task.await;
    coll.insert_one(doc! {"_id": "b", "n": 2}).await.unwrap();
    let (rows, _, _, result) = drain(start(
        MongoSource::new(cfg),
        BTreeMap::from([(0, position)]),
        true,
    ))
    .await;
    result.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].contains("\"_id\":\"b\""));
}

/// A change stream has no end: stopping it at shutdown must not report its
/// partition as finished, which would move the watermark to the end of
/// time and close every open window in the final checkpoint.
#[tokio::test]
async fn a_shutdown_is_not_the_end_of_the_stream() {
    let fake = FakeMongo::default();
    fake.push_event(insert(1, "orders", "a"));
    let mut cfg = config(Some("orders"));
    cfg.start_at_operation_time = Some("1700000001".into());
    let mut r = start(
        MongoSource::with_client(cfg, fake.clone()),
        BTreeMap::new(),
        false,
    );
    let mut rows = 0;
    while rows < 1 {
        match tokio::time::timeout(std::time::Duration::from_secs(10), r.events.recv()).await {
            Ok(Some(SourceEvent::Data { batch, .. })) => rows += batch.len(),
            Ok(Some(_)) => {}
            other => panic!("no data: {other:?}"),
        }
    }
    r.stop.send(true).unwrap();
    let mut after = Vec::new();
    while let Some(ev) = r.events.recv().await {
        after.push(ev);
    }
    r.task.await.unwrap().unwrap();
    assert!(
        !after
            .iter()
            .any(|ev| matches!(ev, SourceEvent::PartitionDone { .. })),
        "reported as finished at shutdown: {after:?}"
    );
}
