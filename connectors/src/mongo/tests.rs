//! Tests of the pure command builders, reply parsers and error classes.

use mongodb::bson::{doc, Bson};
use sluice_engine::value::{Map, Value};

use super::commands::*;
use super::{redact, validate_uri, value_to_bson, ErrorClass, OpError, WriteOp};

#[test]
fn write_commands_group_statements_and_map_indices_back() {
    let ops = vec![
        WriteOp::FencedUpsert {
            id: "a".into(),
            doc: doc! {"_id": "a", "sluice_epoch": 5_i64},
            fence: 5,
        },
        WriteOp::Insert {
            doc: doc! {"_id": "e1"},
        },
        WriteOp::FencedDelete {
            id: "b".into(),
            fence: 5,
        },
        WriteOp::FencedUpsert {
            id: "c".into(),
            doc: doc! {"_id": "c", "sluice_epoch": 5_i64},
            fence: 5,
        },
    ];
    let cmds = write_commands("totals", &ops);
    assert_eq!(cmds.len(), 3);
    let (update, ui) = &cmds[0];
    assert_eq!(ui, &vec![0, 3]);
    assert_eq!(update.get_str("update").unwrap(), "totals");
    assert!(!update.get_bool("ordered").unwrap());
    let first = update.get_array("updates").unwrap()[0]
        .as_document()
        .unwrap();
    assert_eq!(
        first.get_document("q").unwrap(),
        &doc! {"_id": "a", "$or": [{"sluice_epoch": {"$lte": 5_i64}}, {"sluice_epoch": {"$exists": false}}]}
    );
    assert!(first.get_bool("upsert").unwrap());
    assert_eq!(
        first.get_document("u").unwrap(),
        &doc! {"_id": "a", "sluice_epoch": 5_i64}
    );
    assert_eq!(cmds[1].0.get_str("delete").unwrap(), "totals");
    assert_eq!(cmds[1].1, vec![2]);
    assert_eq!(cmds[2].0.get_str("insert").unwrap(), "totals");
    assert_eq!(cmds[2].1, vec![1]);
    assert!(write_commands("t", &[]).is_empty());
}

#[test]
fn write_replies_are_parsed() {
    let reply = doc! {
        "ok": 1.0, "n": 1_i32,
        "writeErrors": [
            {"index": 1_i32, "code": 11000_i32, "errmsg": "E11000 duplicate key error"},
        ],
    };
    assert_eq!(
        parse_write_reply(&reply, &[0, 3]).unwrap(),
        vec![OpError {
            index: 3,
            code: 11000,
            message: "E11000 duplicate key error".into()
        }]
    );
    assert!(parse_write_reply(&doc! {"ok": 1.0, "n": 2_i32}, &[0, 1])
        .unwrap()
        .is_empty());
    let wce = doc! {"ok": 1.0, "writeConcernError": {"code": 64_i32, "errmsg": "waiting for replication timed out"}};
    let e = parse_write_reply(&wce, &[0]).unwrap_err();
    assert_eq!(e.class, ErrorClass::Retryable);
    let bad = doc! {"ok": 1.0, "writeErrors": [{"index": 9_i32, "code": 2_i32}]};
    assert_eq!(
        parse_write_reply(&bad, &[0]).unwrap_err().class,
        ErrorClass::Fatal
    );
}

#[test]
fn generations_and_tokens() {
    let cmd = generation_command("totals");
    assert_eq!(cmd.get_str("findAndModify").unwrap(), "sluice_generations");
    assert!(cmd.get_bool("new").unwrap() && cmd.get_bool("upsert").unwrap());
    assert_eq!(
        parse_generation(&doc! {"ok": 1.0, "value": {"_id": "totals", "generation": 3_i64}}),
        Some(3)
    );
    assert_eq!(
        parse_generation(&doc! {"ok": 1.0, "value": {"_id": "totals", "generation": 4_i32}}),
        Some(4)
    );
    assert_eq!(
        parse_generation(&doc! {"ok": 1.0, "value": Bson::Null}),
        None
    );
    let token = Bson::Document(doc! {"_data": "82ABC"});
    assert_eq!(token_from_bytes(&token_bytes(&token)), Some(token));
    assert_eq!(token_from_bytes(b"nope"), None);
}

#[test]
fn errors_are_classified() {
    assert_eq!(
        classify(286, "ChangeStreamHistoryLost", &[]),
        ErrorClass::HistoryLost
    );
    assert_eq!(
        classify(280, "Resume of change stream was not possible, as the resume point may no longer be in the oplog.", &[]),
        ErrorClass::HistoryLost
    );
    assert_eq!(
        classify(
            136,
            "CappedPositionLost: resume point may no longer be in the oplog",
            &[]
        ),
        ErrorClass::HistoryLost
    );
    assert_eq!(
        classify(280, "ChangeStreamFatalError: something else", &[]),
        ErrorClass::Fatal
    );
    for code in [6, 7, 89, 91, 189, 10107, 11600, 11602, 13435, 64] {
        assert_eq!(classify(code, "", &[]), ErrorClass::Retryable, "{code}");
    }
    assert_eq!(
        classify(1234, "x", &["RetryableWriteError"]),
        ErrorClass::Retryable
    );
    for code in [13, 18, 2, 10334, 121] {
        assert_eq!(classify(code, "", &[]), ErrorClass::Fatal, "{code}");
    }
}

#[test]
fn uris_are_checked_and_redacted() {
    validate_uri("mongodb://localhost:27017").unwrap();
    assert!(validate_uri("mongodb+srv://x.example.net")
        .unwrap_err()
        .message()
        .contains("not supported"));
    assert!(!validate_uri("postgres://u:pw@h/db")
        .unwrap_err()
        .message()
        .contains("pw"));
    assert_eq!(redact("mongodb://u:pw@h:1/db"), "mongodb://***@h:1/db");
    assert_eq!(redact("mongodb://h:1"), "mongodb://h:1");
}

#[test]
fn values_become_bson() {
    let mut inner = Map::new();
    inner.insert("x", Value::Float(1.5));
    inner.insert("gone", Value::Missing);
    let mut m = Map::new();
    m.insert("n", Value::Int(7));
    m.insert("s", Value::from("t"));
    m.insert(
        "l",
        Value::Array(vec![Value::Bool(true), Value::Null, Value::Missing]),
    );
    m.insert("o", Value::Object(inner));
    assert_eq!(
        value_to_bson(&Value::Object(m)),
        Some(Bson::Document(
            doc! {"n": 7_i64, "s": "t", "l": [true, Bson::Null, Bson::Null], "o": {"x": 1.5}}
        ))
    );
    assert_eq!(value_to_bson(&Value::Missing), None);
}

#[tokio::test]
async fn driver_errors_without_a_server_are_retryable() {
    use super::{DriverClient, FullDocument, MongoClient, WatchSpec};
    let client = DriverClient::new(
        "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200&connectTimeoutMS=200",
    );
    let ops = [WriteOp::Insert {
        doc: doc! {"_id": "x"},
    }];
    let e = client.bulk_write("d", "c", &ops).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Retryable, "{e}");
    let spec = WatchSpec {
        database: "d".into(),
        collection: None,
        full_document: FullDocument::Default,
        resume_after: Some(token_bytes(&Bson::Document(doc! {"_data": "82AB"}))),
        start_at: None,
        batch_size: 10,
        max_await: std::time::Duration::from_millis(100),
    };
    let e = client.watch(&spec).await.err().unwrap();
    assert_eq!(e.class, ErrorClass::Retryable, "{e}");
    let bad = DriverClient::new("mongodb://h/?connectTimeoutMS=soon");
    let e = bad.next_generation("d", "c").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(e.message.contains("invalid uri"), "{e}");
}
