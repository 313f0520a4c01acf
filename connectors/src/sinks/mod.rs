//! Sinks: one folder per type, registered below (see `connectors/README.md`).

crate::registry::connectors! {
    parse_sink => SinkConfig;
    #[cfg(feature = "files")] file::FileSinkConfig,
    #[cfg(feature = "files")] stdout::StdoutSinkConfig,
    #[cfg(feature = "amqp")] amqp::AmqpSinkConfig,
    #[cfg(feature = "table")] table::TableSinkConfig,
    #[cfg(feature = "redis")] redis::RedisSinkConfig,
    #[cfg(feature = "postgres")] postgres::PostgresSinkConfig,
    #[cfg(feature = "kafka")] kafka::KafkaSinkConfig,
    #[cfg(feature = "mongodb")] mongodb::MongoSinkConfig,
    #[cfg(feature = "null")] null::NullSinkConfig,
}

#[cfg(any(feature = "redis", feature = "postgres", feature = "mongodb"))]
pub mod fence;

use sluice_engine::batch::RowKind;
use sluice_engine::json::write_value;
use sluice_engine::sink::SinkRecord;
use sluice_engine::value::{Map, Str, Value};

/// Appends one record as an NDJSON line. Upserts and inserts are the record
/// itself; deletes are the record's key fields plus `"_deleted": true`.
pub fn write_ndjson_line(out: &mut Vec<u8>, record: &SinkRecord) {
    match (record.kind, &record.value) {
        (RowKind::Delete, Value::Object(m)) => {
            let mut m = m.clone();
            m.insert("_deleted", Value::Bool(true));
            write_value(out, &Value::Object(m));
        }
        (_, v) => write_value(out, v),
    }
    out.push(b'\n');
}

/// Appends one record as a change line:
/// `{"op":"upsert","id":"GT|1732147200000","record":{...}}`.
pub fn write_change_line(out: &mut Vec<u8>, record: &SinkRecord) {
    let op = match record.kind {
        RowKind::Insert => "insert",
        RowKind::Upsert => "upsert",
        RowKind::Delete => "delete",
    };
    let mut m = Map::new();
    m.insert("op", Value::from(op));
    m.insert("id", Value::Str(Str::from(record.id.as_str())));
    m.insert("record", record.value.clone());
    write_value(out, &Value::Object(m));
    out.push(b'\n');
}
