use std::collections::BTreeMap;

use proptest::prelude::*;
use sluice_engine::batch::RowKind;
use sluice_engine::dead_letter::ErrorType;
use sluice_engine::operator::{OperatorSpec, StateWriter};

use crate::aggregate::{AggregateConfig, AggregateSpec};
use crate::testing::{batch_of, build_ctx, checkpoint, rows, run_op, watermark};

fn spec(toml_text: &str) -> AggregateSpec {
    AggregateSpec::new(&toml::from_str::<AggregateConfig>(toml_text).unwrap()).unwrap()
}

const TUMBLING: &str = r#"
group_by = ["k"]
window = { type = "tumbling", size = 10 }
aggregates = { n = "count", total = { fn = "sum", field = "v" } }
"#;

#[test]
fn tumbling_windows_fire_on_watermark() {
    let mut op = spec(TUMBLING).build(&build_ctx()).unwrap();
    let (out, dead) = run_op(
        op.as_mut(),
        batch_of(&[
            r#"{"k":"a","v":1,"t":1}"#,
            r#"{"k":"a","v":2,"t":9}"#,
            r#"{"k":"b","v":5,"t":3}"#,
            r#"{"k":"a","v":4,"t":12}"#,
        ]),
    );
    assert!(out.is_empty() && dead.is_empty());
    assert!(
        watermark(op.as_mut(), 9).is_empty(),
        "window [0,10) still open"
    );
    let fired = watermark(op.as_mut(), 10);
    assert_eq!(
        rows(&fired),
        vec![
            r#"{"k":"a","window_start":0,"window_end":10,"n":2,"total":3}"#,
            r#"{"k":"b","window_start":0,"window_end":10,"n":1,"total":5}"#,
        ]
    );
    assert_eq!(fired[0].kinds[0], RowKind::Upsert);
    assert_eq!(fired[0].meta[0].time, 9);
    // a late event (window closed, no lateness) is a dead letter
    let (_, dead) = run_op(op.as_mut(), batch_of(&[r#"{"k":"a","v":1,"t":5}"#]));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_type, ErrorType::Late);
    assert!(dead[0].reason.contains("late event"), "{}", dead[0].reason);
}

#[test]
fn allowed_lateness_updates_a_fired_window() {
    let mut op = spec(&format!("{TUMBLING}\nallowed_lateness = 5"))
        .build(&build_ctx())
        .unwrap();
    run_op(op.as_mut(), batch_of(&[r#"{"k":"a","v":1,"t":1}"#]));
    assert_eq!(rows(&watermark(op.as_mut(), 12)).len(), 1);
    let (_, dead) = run_op(op.as_mut(), batch_of(&[r#"{"k":"a","v":10,"t":2}"#]));
    assert!(dead.is_empty());
    assert_eq!(
        rows(&checkpoint(op.as_mut())),
        vec![r#"{"k":"a","window_start":0,"window_end":10,"n":2,"total":11}"#]
    );
    // past the lateness the window is gone and the event is late
    watermark(op.as_mut(), 15);
    let (_, dead) = run_op(op.as_mut(), batch_of(&[r#"{"k":"a","v":10,"t":2}"#]));
    assert_eq!(dead.len(), 1);
}

#[test]
fn bad_events_are_dead_letters_and_do_not_touch_state() {
    let mut op =
        spec("group_by = [\"k\"]\naggregates = { total = { fn = \"sum\", field = \"v\" } }")
            .build(&build_ctx())
            .unwrap();
    let (_, dead) = run_op(
        op.as_mut(),
        batch_of(&[
            r#"{"k":"a","v":1}"#,
            r#"{"v":1}"#,
            r#"{"k":"a","v":"x"}"#,
            r#"{"k":"a","v":2}"#,
        ]),
    );
    let kinds: Vec<_> = dead.iter().map(|d| d.error_type).collect();
    assert_eq!(kinds, vec![ErrorType::MissingField, ErrorType::WrongType]);
    assert_eq!(
        rows(&checkpoint(op.as_mut())),
        vec![r#"{"k":"a","total":3}"#]
    );
    // nothing changed since: no duplicate emission
    assert!(checkpoint(op.as_mut()).is_empty());
}

#[test]
fn hopping_windows_count_each_event_in_every_window() {
    let mut op = spec("group_by = [\"k\"]\nwindow = { type = \"hopping\", size = 10, slide = 5 }\naggregates = { n = \"count\" }")
        .build(&build_ctx())
        .unwrap();
    run_op(
        op.as_mut(),
        batch_of(&[r#"{"k":"a","t":7}"#, r#"{"k":"a","t":12}"#]),
    );
    let out = rows(&watermark(op.as_mut(), i64::MAX));
    assert_eq!(
        out,
        vec![
            r#"{"k":"a","window_start":0,"window_end":10,"n":1}"#,
            r#"{"k":"a","window_start":5,"window_end":15,"n":2}"#,
            r#"{"k":"a","window_start":10,"window_end":20,"n":1}"#,
        ]
    );
}

#[test]
fn state_survives_snapshot_and_restore() {
    let s = spec(TUMBLING);
    let mut a = s.build(&build_ctx()).unwrap();
    run_op(
        a.as_mut(),
        batch_of(&[r#"{"k":"a","v":1,"t":1}"#, r#"{"k":"b","v":2,"t":11}"#]),
    );
    watermark(a.as_mut(), 10); // fires [0,10)
    let mut w = StateWriter::default();
    a.snapshot(&mut w);
    let entries: Vec<_> = w
        .entries
        .into_iter()
        .filter_map(|(kg, k, v)| v.map(|v| (kg, k, v)))
        .collect();
    let mut b = s.build(&build_ctx()).unwrap();
    b.restore(entries).unwrap();
    // the fired window does not fire again; the open one continues
    run_op(b.as_mut(), batch_of(&[r#"{"k":"b","v":3,"t":12}"#]));
    assert_eq!(
        rows(&watermark(b.as_mut(), 20)),
        vec![r#"{"k":"b","window_start":10,"window_end":20,"n":2,"total":5}"#]
    );
}

#[test]
fn global_aggregate_without_group_by() {
    let mut op = spec("aggregates = { total = \"count\" }")
        .build(&build_ctx())
        .unwrap();
    run_op(op.as_mut(), batch_of(&[r#"{}"#, r#"{}"#]));
    assert_eq!(rows(&checkpoint(op.as_mut())), vec![r#"{"total":2}"#]);
    // end of input does not purge all-time state
    watermark(op.as_mut(), i64::MAX);
    run_op(op.as_mut(), batch_of(&[r#"{}"#]));
    assert_eq!(rows(&checkpoint(op.as_mut())), vec![r#"{"total":3}"#]);
}

proptest! {
    /// Model-based: random events through a tumbling-window count/sum, in
    /// random batches with random watermarks and snapshot/restore cycles,
    /// agree with a plain fold over the events that were not late.
    #[test]
    fn tumbling_agrees_with_a_plain_fold(
        events in proptest::collection::vec((0u8..4, 0i64..100, -50i64..50), 1..80),
        cuts in proptest::collection::vec(1usize..10, 1..20),
    ) {
        let s = spec(TUMBLING);
        let mut op = s.build(&build_ctx()).unwrap();
        let mut expected: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
        let mut results: BTreeMap<String, String> = BTreeMap::new();
        let mut store: BTreeMap<(u16, Vec<u8>), Vec<u8>> = BTreeMap::new();
        let mut wm = i64::MIN;
        let mut i = 0;
        let mut cut = cuts.iter().cycle();
        while i < events.len() {
            let n = (*cut.next().unwrap()).min(events.len() - i);
            let lines: Vec<String> = events[i..i + n]
                .iter()
                .map(|(k, t, v)| format!(r#"{{"k":"{k}","t":{t},"v":{v}}}"#))
                .collect();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let (_, dead) = run_op(op.as_mut(), batch_of(&refs));
            let mut late = 0;
            for (k, t, v) in &events[i..i + n] {
                let start = t.div_euclid(10) * 10;
                if start + 10 <= wm {
                    late += 1;
                    continue;
                }
                let e = expected.entry((k.to_string(), start)).or_default();
                e.0 += 1;
                e.1 += v;
            }
            prop_assert_eq!(dead.len(), late);
            // advance the watermark to the batch's min time, then snapshot + restore
            let min_t = events[i..i + n].iter().map(|e| e.1).min().unwrap();
            if min_t > wm {
                wm = min_t;
                for r in rows(&watermark(op.as_mut(), wm)) {
                    results.insert(r.clone(), r);
                }
            }
            // checkpoint into a model store, then continue from a restored copy
            let mut w = StateWriter::default();
            op.snapshot(&mut w);
            for (kg, k, v) in w.entries {
                match v {
                    Some(v) => { store.insert((kg, k), v); }
                    None => { store.remove(&(kg, k)); }
                }
            }
            op = s.build(&build_ctx()).unwrap();
            op.restore(store.iter().map(|((kg, k), v)| (*kg, k.clone(), v.clone())).collect()).unwrap();
            i += n;
        }
        for r in rows(&watermark(op.as_mut(), i64::MAX)) {
            results.insert(r.clone(), r);
        }
        let want: Vec<String> = expected
            .iter()
            .map(|((k, s), (n, total))| format!(r#"{{"k":"{k}","window_start":{s},"window_end":{},"n":{n},"total":{total}}}"#, s + 10))
            .collect();
        let mut got: Vec<String> = results.into_values().collect();
        got.sort();
        let mut want = want;
        want.sort();
        prop_assert_eq!(got, want);
    }
}
