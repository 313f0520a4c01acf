use sluice_engine::batch::RowKind;
use sluice_engine::sink::SinkRecord;
use sluice_engine::value::{Map, Str, Value};

use super::*;

const EXAMPLE: &str = r#"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
exchange = "weather"
exchange_type = "topic"
routing_key = "counts.{country}"
"#;

fn record(fields: &[(&str, Value)]) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        m.insert(*k, v.clone());
    }
    Value::Object(m)
}

#[test]
fn example_config_parses() {
    let c: AmqpSinkConfig = toml::from_str(EXAMPLE).unwrap();
    assert_eq!(c.exchange, "weather");
    assert_eq!(c.exchange_type, Some(ExchangeType::Topic));
    assert!(c.mandatory && c.persistent);
    assert_eq!(c.format, BodyFormat::Records);
    assert_eq!(c.routing_key.as_str(), "counts.{country}");
    let e = toml::from_str::<AmqpSinkConfig>(&format!("{EXAMPLE}\nexchang = \"x\"")).unwrap_err();
    assert!(e.to_string().contains("unknown field `exchang`"), "{e}");
    let e =
        toml::from_str::<AmqpSinkConfig>("url = \"amqp://h\"\nrouting_key = \"a.{b\"").unwrap_err();
    assert!(e.to_string().contains("unclosed `{`"), "{e}");
}

#[test]
fn routing_keys_are_rendered_from_records() {
    let t = RoutingKeyTemplate::parse("counts.{country}.{w.kind}.{n}{{x}}").unwrap();
    let r = record(&[
        ("country", Value::from("GT")),
        ("n", Value::Int(3)),
        ("w", record(&[("kind", Value::from("Sunny"))])),
    ]);
    assert_eq!(t.render(&r).unwrap(), "counts.GT.Sunny.3{x}");
    let e = t
        .render(&record(&[("country", Value::from("GT"))]))
        .unwrap_err();
    assert!(e.message().contains("no field `w.kind`"), "{e}");
    assert_eq!(
        RoutingKeyTemplate::parse("plain")
            .unwrap()
            .render(&r)
            .unwrap(),
        "plain"
    );
    assert!(RoutingKeyTemplate::parse("a}").is_err());
    assert!(RoutingKeyTemplate::parse("a{}").is_err());
    let long = RoutingKeyTemplate::parse("{country}").unwrap();
    let big = record(&[("country", Value::from("x".repeat(300).as_str()))]);
    assert!(long.render(&big).unwrap_err().message().contains("255"));
}

#[test]
fn bodies_and_message_ids() {
    let r = SinkRecord {
        kind: RowKind::Upsert,
        id: Str::from("GT"),
        value: record(&[("country", Value::from("GT")), ("count", Value::Int(2))]),
        time: 0,
    };
    let mut out = Vec::new();
    encode_body(&mut out, &r, BodyFormat::Records);
    assert_eq!(out, br#"{"country":"GT","count":2}"#);
    out.clear();
    encode_body(&mut out, &r, BodyFormat::Changes);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["op"], "upsert");
    assert_eq!(v["id"], "GT");
    assert_eq!(message_id("GT|1732147200000"), "GT|1732147200000");
    let long = "k".repeat(300);
    assert_eq!(message_id(&long), message_id(&long));
    assert!(message_id(&long).len() < 255);
}
