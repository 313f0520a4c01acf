//! The documented example, and what the sink does with records.

use std::path::Path;

use sluice_engine::batch::RowKind;
use sluice_engine::config::SourceText;
use sluice_engine::connector::{parse_sink, ConnectorContext};
use sluice_engine::sink::{SinkRecord, WriteOutcome};
use sluice_engine::value::Value;
use toml::de::DeValue;

use super::NullSinkConfig;

/// Parses `[sinks.<name>]` of a pipeline text as a null sink's options.
fn parse(text: &str) -> Result<sluice_engine::connector::SinkConfig, String> {
    let src = SourceText::interpolate(Path::new("p.toml"), text.to_string(), |_| None)
        .map_err(|e| e.to_string())?;
    let doc = src.parse().map_err(|e| e.to_string())?;
    let (_, sinks) = doc
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == "sinks")
        .expect("a [sinks] section");
    let DeValue::Table(sinks) = sinks.get_ref() else {
        panic!("[sinks] is a table")
    };
    let (name, body) = sinks.iter().next().expect("one sink");
    let mut body = body.clone();
    if let DeValue::Table(t) = body.get_mut() {
        let kind = t.remove("type").map(|v| v.into_inner());
        assert!(matches!(kind, Some(DeValue::String(k)) if k == "null"));
        t.remove("inputs");
    }
    let path = format!("sinks.{}", name.get_ref());
    parse_sink::<NullSinkConfig>("null", &src, &path, body)
        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
}

#[test]
fn the_documented_example_parses() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/connectors/null.md"),
    )
    .unwrap();
    let example = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a TOML example in docs/connectors/null.md");
    let config = parse(example).unwrap();
    assert_eq!(config.type_name(), "null");
}

#[test]
fn options_are_refused() {
    let err = parse("[sinks.d]\ntype = \"null\"\ninputs = [\"x\"]\npath = \"/tmp/x\"\n").unwrap_err();
    assert!(err.contains("unknown field `path`"), "{err}");
}

#[tokio::test]
async fn every_epoch_is_acknowledged_without_progress() {
    let config = parse("[sinks.d]\ntype = \"null\"\ninputs = [\"x\"]\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = config.build(&ConnectorContext {
        pipeline: "p",
        name: "d",
        state_dir: dir.path(),
        worker: Default::default(),
    });
    assert_eq!(sink.earlier_output(3, None).await.unwrap(), None);
    sink.restore(None).await.unwrap();
    let record = SinkRecord {
        kind: RowKind::Upsert,
        id: "k".into(),
        value: Value::from(1i64),
        time: 0,
    };
    for epoch in 1..=2 {
        let outcome = sink.write(epoch, std::slice::from_ref(&record)).await.unwrap();
        assert_eq!(outcome, WriteOutcome::default());
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing written");
}
