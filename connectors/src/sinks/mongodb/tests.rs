//! MongoDB sink tests: write planning, fencing, dedup and error handling on
//! the in-memory fake; a real-server round trip only when `MONGODB_URI` is
//! set.

use mongodb::bson::{doc, Document};
use sluice_engine::batch::RowKind;
use sluice_engine::sink::{Sink, SinkError, SinkRecord};
use sluice_engine::value::{Map, Str, Value};

use super::{plan_writes, MongoSink, MongoSinkConfig, MongoSinkMode};
use crate::mongo::fake::FakeMongo;
use crate::mongo::{ErrorClass, MongoError, WriteOp};
use crate::sinks::fence::{encode_progress, fence};

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

fn up(id: &str, count: i64) -> SinkRecord {
    rec(
        RowKind::Upsert,
        id,
        &[("product", Value::from(id)), ("count", Value::Int(count))],
    )
}

fn config(mode: MongoSinkMode) -> MongoSinkConfig {
    MongoSinkConfig {
        uri: std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:1".into()),
        database: "shop".into(),
        collection: "totals".into(),
        mode,
        batch_size: 2,
    }
}

#[test]
fn example_config_parses_and_validates() {
    let text = "uri = \"mongodb://app:secret@db1:27017,db2:27017/?replicaSet=rs0\"\ndatabase = \"petstore\"\ncollection = \"product_totals\"\nmode = \"upsert\"";
    let c: MongoSinkConfig = toml::from_str(text).unwrap();
    c.validate().unwrap();
    assert_eq!(c.mode, MongoSinkMode::Upsert);
    assert_eq!(c.batch_size, 1000);
    let e = toml::from_str::<MongoSinkConfig>(&format!("{text}\ncolection = \"x\"")).unwrap_err();
    assert!(e.to_string().contains("unknown field `colection`"), "{e}");
    let e =
        toml::from_str::<MongoSinkConfig>(&text.replace("\"upsert\"", "\"merge\"")).unwrap_err();
    assert!(e.to_string().contains("append"), "{e}");
    let mut bad = c.clone();
    bad.uri = "http://db:27017".into();
    assert!(bad.validate().unwrap_err().message().contains("mongodb://"));
    assert!(!bad.validate().unwrap_err().message().contains("secret"));
    bad = c.clone();
    bad.uri = "mongodb://app:secret@x/".into();
    bad.collection = "system.users".into();
    assert!(bad.validate().unwrap_err().message().contains("collection"));
}

#[test]
fn upserts_are_planned_once_per_id_with_the_fence() {
    let records = vec![
        up("kibble", 1),
        up("leash", 5),
        up("kibble", 2),
        rec(RowKind::Delete, "toy", &[("product", Value::from("toy"))]),
        SinkRecord {
            kind: RowKind::Upsert,
            id: Str::from("bad"),
            value: Value::Int(3),
            time: 0,
        },
    ];
    let plan = plan_writes(MongoSinkMode::Upsert, &records, 77);
    assert_eq!(plan.records, vec![1, 2, 3]);
    assert_eq!(
        plan.ops,
        vec![
            WriteOp::FencedUpsert {
                id: "leash".into(),
                doc: doc! {"_id": "leash", "product": "leash", "count": 5_i64, "sluice_epoch": 77_i64},
                fence: 77
            },
            WriteOp::FencedUpsert {
                id: "kibble".into(),
                doc: doc! {"_id": "kibble", "product": "kibble", "count": 2_i64, "sluice_epoch": 77_i64},
                fence: 77
            },
            WriteOp::FencedDelete {
                id: "toy".into(),
                fence: 77
            },
        ]
    );
    assert_eq!(plan.rejected.len(), 1);
    assert_eq!(plan.rejected[0].0, 4);
    assert!(plan.rejected[0].1.contains("not an object"));
    // A record's own `_id` field never contradicts the record id.
    let r = rec(
        RowKind::Insert,
        "src:0:9",
        &[("_id", Value::from("other")), ("a", Value::Int(1))],
    );
    let plan = plan_writes(MongoSinkMode::Append, &[r], 1);
    assert_eq!(
        plan.ops,
        vec![WriteOp::Insert {
            doc: doc! {"_id": "src:0:9", "a": 1_i64}
        }]
    );
}

async fn sink(
    fake: &FakeMongo,
    mode: MongoSinkMode,
    progress: Option<Vec<u8>>,
) -> MongoSink<FakeMongo> {
    let mut s = MongoSink::with_client("totals", config(mode), fake.clone());
    s.restore(progress.as_deref()).await.unwrap();
    s
}

fn count(docs: &std::collections::BTreeMap<String, Document>, id: &str) -> Option<i64> {
    docs.get(id).and_then(|d| d.get_i64("count").ok())
}

#[tokio::test]
async fn fencing_keeps_newer_values_and_redelivery_rewrites() {
    let fake = FakeMongo::default();
    let mut s = sink(&fake, MongoSinkMode::Upsert, None).await;
    let out = s
        .write(2, &[up("kibble", 10), up("leash", 1), up("toy", 4)])
        .await
        .unwrap();
    assert_eq!(
        out.progress,
        Some(encode_progress(1)),
        "generation 1 drawn on a fresh start"
    );
    assert!(out.rejected.is_empty());
    assert_eq!(fake.state().bulk_calls, 2, "batch_size 2: two bulks");
    // Epoch 2 again (redelivery after a crash): same values, no error.
    s.write(2, &[up("kibble", 10)]).await.unwrap();
    // A late epoch 1 cannot overwrite epoch 2 (fenced-out upsert -> E11000, skipped).
    let out = s.write(1, &[up("kibble", 3), up("new", 1)]).await.unwrap();
    assert!(out.rejected.is_empty());
    let docs = fake.docs("shop", "totals");
    assert_eq!(count(&docs, "kibble"), Some(10));
    assert_eq!(count(&docs, "new"), Some(1));
    assert_eq!(
        docs["kibble"].get_i64("sluice_epoch").unwrap() as u64,
        fence(1, 2).unwrap()
    );
    // Epoch 3 updates; a delete removes by _id.
    s.write(3, &[up("kibble", 11), rec(RowKind::Delete, "toy", &[])])
        .await
        .unwrap();
    let docs = fake.docs("shop", "totals");
    assert_eq!(count(&docs, "kibble"), Some(11));
    assert!(!docs.contains_key("toy"));
    // A stale delete leaves a newer document alone.
    s.write(1, &[rec(RowKind::Delete, "kibble", &[])])
        .await
        .unwrap();
    assert_eq!(count(&fake.docs("shop", "totals"), "kibble"), Some(11));
}

#[tokio::test]
async fn a_wiped_pipeline_supersedes_the_old_one_and_restores_its_generation() {
    let fake = FakeMongo::default();
    let mut old = sink(&fake, MongoSinkMode::Upsert, None).await;
    old.write(500, &[up("kibble", 50)]).await.unwrap();
    // State wiped: epochs restart at 1, but generation 2 wins.
    let mut fresh = sink(&fake, MongoSinkMode::Upsert, None).await;
    let out = fresh.write(1, &[up("kibble", 1)]).await.unwrap();
    assert_eq!(count(&fake.docs("shop", "totals"), "kibble"), Some(1));
    // A restart with progress keeps generation 2 (no new draw).
    let mut again = sink(&fake, MongoSinkMode::Upsert, out.progress.clone()).await;
    again.write(2, &[up("kibble", 2)]).await.unwrap();
    assert_eq!(count(&fake.docs("shop", "totals"), "kibble"), Some(2));
    assert_eq!(
        fake.state().generations[&("shop".into(), "totals".into())],
        2
    );
    let mut s = MongoSink::with_client("t", config(MongoSinkMode::Upsert), fake.clone());
    assert!(matches!(
        s.restore(Some(b"bad")).await,
        Err(SinkError::Fatal(_))
    ));
}

#[tokio::test]
async fn append_inserts_once_by_event_id() {
    let fake = FakeMongo::default();
    let mut s = sink(&fake, MongoSinkMode::Append, None).await;
    let ev = |id: &str, n| rec(RowKind::Insert, id, &[("n", Value::Int(n))]);
    s.write(1, &[ev("orders:0:1", 1), ev("orders:0:2", 2)])
        .await
        .unwrap();
    // Replay after a crash re-sends the same events with the same ids.
    let out = s
        .write(
            1,
            &[
                ev("orders:0:1", 1),
                ev("orders:0:2", 2),
                ev("orders:0:3", 3),
            ],
        )
        .await
        .unwrap();
    assert!(
        out.rejected.is_empty(),
        "duplicates are not errors: {:?}",
        out.rejected
    );
    let docs = fake.docs("shop", "totals");
    assert_eq!(docs.len(), 3);
    assert!(docs["orders:0:1"].get("sluice_epoch").is_none());
    assert!(
        fake.state().generations.is_empty(),
        "append mode draws no generation"
    );
}

#[tokio::test]
async fn refused_documents_are_rejected_and_failures_classified() {
    let fake = FakeMongo::default();
    let mut s = sink(&fake, MongoSinkMode::Upsert, None).await;
    fake.state().refuse.insert(
        "huge".into(),
        (10334, "BSONObj size: 17000000 is invalid".into()),
    );
    let out = s
        .write(1, &[up("a", 1), up("huge", 2), up("b", 3)])
        .await
        .unwrap();
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].0, 1);
    assert!(out.rejected[0].1.contains("10334") && out.rejected[0].1.contains("huge"));
    assert_eq!(fake.docs("shop", "totals").len(), 2);
    // A per-document step-down error: retry the epoch.
    fake.state().refuse.insert(
        "a".into(),
        (11602, "InterruptedDueToReplStateChange".into()),
    );
    assert!(matches!(
        s.write(2, &[up("a", 1)]).await,
        Err(SinkError::Retryable(_))
    ));
    fake.state().refuse.clear();
    fake.state().write_failures.push_back(MongoError::new(
        ErrorClass::Retryable,
        None,
        "connection refused",
    ));
    let e = s.write(2, &[up("a", 1)]).await.unwrap_err();
    assert!(
        matches!(&e, SinkError::Retryable(m) if m.contains("shop.totals")),
        "{e}"
    );
    fake.state().write_failures.push_back(MongoError::new(
        ErrorClass::Fatal,
        Some(13),
        "not authorized on shop",
    ));
    assert!(matches!(
        s.write(2, &[up("a", 1)]).await,
        Err(SinkError::Fatal(_))
    ));
    s.write(2, &[up("a", 1)]).await.unwrap();
}

/// Real server: fenced upserts, stale skips and append dedup through the
/// driver. Runs only when MONGODB_URI is set.
#[tokio::test]
async fn driver_upsert_and_append_round_trip() {
    let Ok(uri) = std::env::var("MONGODB_URI") else {
        eprintln!("skipped: MONGODB_URI is not set (no MongoDB server in this environment)");
        return;
    };
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let db = client.database("sluice_test");
    db.collection::<Document>("sink_round_trip")
        .drop()
        .await
        .unwrap();
    let mut c = config(MongoSinkMode::Upsert);
    c.database = "sluice_test".into();
    c.collection = "sink_round_trip".into();
    let mut s = MongoSink::new("t", c.clone());
    s.restore(None).await.unwrap();
    s.write(2, &[up("kibble", 10), up("leash", 1)])
        .await
        .unwrap();
    let out = s.write(1, &[up("kibble", 3)]).await.unwrap();
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    let coll = db.collection::<Document>("sink_round_trip");
    let d = coll
        .find_one(doc! {"_id": "kibble"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.get_i64("count").unwrap(), 10);
    s.write(3, &[rec(RowKind::Delete, "leash", &[])])
        .await
        .unwrap();
    assert!(coll
        .find_one(doc! {"_id": "leash"})
        .await
        .unwrap()
        .is_none());
    c.mode = MongoSinkMode::Append;
    c.collection = "sink_round_trip_append".into();
    db.collection::<Document>(&c.collection)
        .drop()
        .await
        .unwrap();
    let mut a = MongoSink::new("a", c.clone());
    a.restore(None).await.unwrap();
    let ev = rec(RowKind::Insert, "o:0:1", &[("n", Value::Int(1))]);
    a.write(1, std::slice::from_ref(&ev)).await.unwrap();
    let out = a.write(1, &[ev]).await.unwrap();
    assert!(out.rejected.is_empty());
    let n = db
        .collection::<Document>(&c.collection)
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(n, 1);
}

// ---- several workers --------------------------------------------------------

use crate::sinks::fence::{driven::Driver, Progress, Writer};
use sluice_engine::cluster::WorkerId;

fn writer(worker: u32, workers: u32) -> Writer {
    Writer {
        pipeline: "shop".into(),
        sink: "totals".into(),
        worker,
        workers,
    }
}

async fn worker_sink(fake: &FakeMongo, w: Writer, progress: Option<&[u8]>) -> MongoSink<FakeMongo> {
    let mut s = MongoSink::with_client("totals", config(MongoSinkMode::Upsert), fake.clone())
        .with_writer(w);
    s.restore(progress).await.unwrap();
    s
}

fn generation(progress: &Option<Vec<u8>>) -> u64 {
    Progress::decode(progress.as_deref().unwrap())
        .unwrap()
        .generation
}

#[tokio::test]
async fn workers_record_their_generations_and_draw_anew_when_ownership_changes() {
    let fake = FakeMongo::default();
    // a single worker records nothing and keeps the 8-byte progress
    let mut single = sink(&fake, MongoSinkMode::Upsert, None).await;
    let out = single.write(1, &[up("kibble", 1)]).await.unwrap();
    assert_eq!(out.progress, Some(encode_progress(1)));
    assert!(fake.state().generation_owners.is_empty());
    // worker 0 of 2 taking over the single worker's progress draws anew
    let mut w0 = worker_sink(&fake, writer(0, 2), out.progress.as_deref()).await;
    let p0 = w0.write(2, &[up("kibble", 2)]).await.unwrap().progress;
    assert_eq!(generation(&p0), 2);
    // worker 1 of 2 from empty state
    let mut w1 = worker_sink(&fake, writer(1, 2), None).await;
    let p1 = w1.write(1, &[up("leash", 1)]).await.unwrap().progress;
    assert_eq!(generation(&p1), 3);
    let owners = fake.state().generation_owners.clone();
    let owner = &owners[&("shop".to_string(), "totals/3".to_string())];
    assert_eq!(owner.get_str("pipeline").unwrap(), "shop");
    assert_eq!(owner.get_i64("generation").unwrap(), 3);
    assert_eq!(
        mongodb::bson::from_document::<Writer>(owner.clone()).unwrap(),
        writer(1, 2)
    );
    assert_eq!(owners.len(), 2);
    // restarted as the same (worker, workers): same generation
    let mut again = worker_sink(&fake, writer(1, 2), p1.as_deref()).await;
    let out = again.write(2, &[up("leash", 2)]).await.unwrap();
    assert_eq!(out.progress, p1);
    assert_eq!(out.fenced, 0);
    // as worker 1 of 3 (key groups moved): a new generation, recorded
    let mut moved = worker_sink(&fake, writer(1, 3), p1.as_deref()).await;
    let out = moved.write(3, &[up("kibble", 3)]).await.unwrap();
    let p = Progress::decode(out.progress.as_deref().unwrap()).unwrap();
    assert_eq!((p.generation, p.worker), (4, WorkerId::new(1, 3).unwrap()));
    assert_eq!(
        out.fenced, 0,
        "the moved key is written over worker 0's value"
    );
    assert_eq!(count(&fake.docs("shop", "totals"), "kibble"), Some(3));
    assert_eq!(fake.state().generation_owners.len(), 3);
}

#[test]
fn a_zombie_worker_is_fenced_out_and_counted() {
    let driver = Driver::new();
    let fake = FakeMongo::default();
    let sink = || {
        Box::new(
            MongoSink::with_client("totals", config(MongoSinkMode::Upsert), fake.clone())
                .with_writer(writer(1, 2)),
        )
    };
    driver.register("shop", "totals");
    let zombie = driver.write("shop", "totals", sink(), None, 5, vec![up("kibble", 10)]);
    let newer = driver.write("shop", "totals", sink(), None, 1, vec![up("kibble", 20)]);
    assert!(generation(&newer) > generation(&zombie));
    assert_eq!(driver.fenced("shop", "totals"), Some(0.0));
    driver.write(
        "shop",
        "totals",
        sink(),
        zombie,
        6,
        vec![up("kibble", 99), up("toy", 1)],
    );
    assert_eq!(driver.fenced("shop", "totals"), Some(1.0));
    let docs = fake.docs("shop", "totals");
    assert_eq!(
        (count(&docs, "kibble"), count(&docs, "toy")),
        (Some(20), Some(1))
    );
}
