use sluice_engine::batch::RowKind;
use sluice_engine::operator::{OperatorSpec, StateWriter};

use crate::aggregate::{AggregateConfig, AggregateSpec};
use crate::testing::{batch_of, build_ctx, checkpoint, rows, run_op, watermark};

fn spec(extra: &str) -> AggregateSpec {
    let text = format!(
        "group_by = [\"u\"]\nwindow = {{ type = \"session\", gap = 10 }}\naggregates = {{ n = \"count\", first = {{ fn = \"first\", field = \"p\" }}, last = {{ fn = \"last\", field = \"p\" }} }}\n{extra}"
    );
    AggregateSpec::new(&toml::from_str::<AggregateConfig>(&text).unwrap()).unwrap()
}

#[test]
fn sessions_merge_and_close_after_the_gap() {
    let mut op = spec("").build(&build_ctx()).unwrap();
    run_op(
        op.as_mut(),
        batch_of(&[
            r#"{"u":"a","p":"home","t":0}"#,
            r#"{"u":"a","p":"cart","t":5}"#,
            r#"{"u":"a","p":"buy","t":30}"#,
            r#"{"u":"b","p":"home","t":2}"#,
        ]),
    );
    assert_eq!(
        rows(&watermark(op.as_mut(), 20)),
        vec![
            r#"{"u":"a","window_start":0,"window_end":15,"first":"home","last":"cart","n":2}"#,
            r#"{"u":"b","window_start":2,"window_end":12,"first":"home","last":"home","n":1}"#,
        ]
    );
    // an event bridging two sessions merges them
    let mut op = spec("emit = \"updates\"").build(&build_ctx()).unwrap();
    run_op(
        op.as_mut(),
        batch_of(&[r#"{"u":"a","p":"x","t":0}"#, r#"{"u":"a","p":"z","t":18}"#]),
    );
    assert_eq!(rows(&checkpoint(op.as_mut())).len(), 2);
    run_op(op.as_mut(), batch_of(&[r#"{"u":"a","p":"y","t":9}"#]));
    let out = checkpoint(op.as_mut());
    let kinds: Vec<RowKind> = out.iter().flat_map(|b| b.kinds.clone()).collect();
    assert_eq!(
        kinds,
        vec![RowKind::Delete, RowKind::Upsert],
        "the session at 18 is retracted"
    );
    assert_eq!(
        rows(&out)[1],
        r#"{"u":"a","window_start":0,"window_end":28,"first":"x","last":"z","n":3}"#
    );
}

#[test]
fn session_state_round_trips() {
    let s = spec("");
    let mut a = s.build(&build_ctx()).unwrap();
    run_op(a.as_mut(), batch_of(&[r#"{"u":"a","p":"x","t":0}"#]));
    let mut w = StateWriter::default();
    a.snapshot(&mut w);
    let entries: Vec<_> = w
        .entries
        .into_iter()
        .filter_map(|(kg, k, v)| v.map(|v| (kg, k, v)))
        .collect();
    let mut b = s.build(&build_ctx()).unwrap();
    b.restore(entries).unwrap();
    run_op(b.as_mut(), batch_of(&[r#"{"u":"a","p":"y","t":4}"#]));
    assert_eq!(
        rows(&watermark(b.as_mut(), 100)),
        vec![r#"{"u":"a","window_start":0,"window_end":14,"first":"x","last":"y","n":2}"#]
    );
}
