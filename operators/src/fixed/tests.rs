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

/// Lateness is decided per event, in the order of the partition's log,
/// never by how the input was batched (issue 10, item 1): the watermark
/// tracker stamps every row with the watermark in force when it arrived,
/// and the operator judges each row by it. Driven exactly as the processor
/// drives it (stamp, process, then advance the watermark at the end of the
/// batch), any batching must equal a per-event reference.
mod batching {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use sluice_engine::operator::{Emitter, OperatorSpec};
    use sluice_engine::runtime::watermark::{WatermarkSettings, WatermarkTracker};

    use super::spec;
    use crate::testing::{batch_of, build_ctx, checkpoint, run_op, watermark};

    /// Runs `events` (time, key, value) through `toml` in batches of the
    /// given sizes: the final value of every result id, and the offsets of
    /// the rows dead-lettered as late, with their reasons.
    pub(crate) fn drive(
        toml: &str,
        events: &[(i64, u8, i64)],
        sizes: &[usize],
        disorder: i64,
    ) -> (BTreeMap<String, String>, BTreeMap<u64, String>) {
        let run = drive_with(toml, events, sizes, disorder, false);
        (run.table, run.late)
    }

    /// What [`drive_with`] saw.
    pub(crate) struct Driven {
        pub table: BTreeMap<String, String>,
        pub late: BTreeMap<u64, String>,
        /// Every row emitted, in order.
        pub emitted: Vec<String>,
        /// Batches whose partial results the operator took.
        pub folded: usize,
    }

    /// [`drive`], and with `fold` each batch is first folded by the
    /// operator's batch combiner, as a source does where it decodes: the
    /// operator merges the partial results when it takes them for the
    /// batch's (stamped) metadata, else it processes the rows.
    pub(crate) fn drive_with(
        toml: &str,
        events: &[(i64, u8, i64)],
        sizes: &[usize],
        disorder: i64,
        fold: bool,
    ) -> Driven {
        let mut op = spec(toml).build(&build_ctx()).unwrap();
        let mut tracker = WatermarkTracker::new(vec![WatermarkSettings {
            event_time: true,
            max_disorder_ms: disorder,
            idle_timeout_ms: None,
        }]);
        let lines: Vec<String> = events
            .iter()
            .map(|(t, k, v)| format!(r#"{{"k":"{}","v":{v},"t":{t}}}"#, (b'a' + k) as char))
            .collect();
        let mut run = Driven {
            table: BTreeMap::new(),
            late: BTreeMap::new(),
            emitted: Vec::new(),
            folded: 0,
        };
        let keep = |run: &mut Driven, batches: Vec<sluice_engine::batch::Batch>| {
            for b in batches {
                for (i, row) in b.rows.iter().enumerate() {
                    let id = format!("{:?}", b.keys[i]);
                    run.emitted.push(format!("{id} {:?} {row}", b.kinds[i]));
                    if b.kinds[i] == sluice_engine::batch::RowKind::Delete {
                        run.table.remove(&id);
                    } else {
                        run.table.insert(id, row.to_string());
                    }
                }
            }
        };
        let (mut at, mut k) = (0, 0);
        while at < lines.len() {
            let n = sizes[k % sizes.len()].max(1).min(lines.len() - at);
            k += 1;
            let chunk: Vec<&str> = lines[at..at + n].iter().map(String::as_str).collect();
            let mut b = batch_of(&chunk);
            for (i, m) in b.meta.iter_mut().enumerate() {
                m.offset = (at + i) as u64;
            }
            tracker.observe_rows(0, 0, &mut b.meta, i64::MAX, 0);
            let (out, dead) = match op.batch_combiner().filter(|_| fold) {
                Some(mut combiner) => {
                    let (mut out, mut dead) = (Vec::new(), Vec::new());
                    let mut emitter = Emitter {
                        out: &mut out,
                        dead: &mut dead,
                    };
                    combiner.add_batch(&b, &mut emitter);
                    if op.takes_folded(&b.meta) {
                        run.folded += 1;
                        op.merge_folded(combiner, &mut emitter);
                        (out, dead)
                    } else {
                        run_op(op.as_mut(), b)
                    }
                }
                None => run_op(op.as_mut(), b),
            };
            keep(&mut run, out);
            for d in dead {
                run.late.insert(d.offset, d.reason);
            }
            let wm = tracker.source_watermark(0, 0);
            keep(&mut run, watermark(op.as_mut(), wm));
            at += n;
        }
        keep(&mut run, checkpoint(op.as_mut()));
        keep(&mut run, watermark(op.as_mut(), i64::MAX));
        run
    }

    /// (window start, key) -> (count, sum).
    type Windows = BTreeMap<(i64, u8), (i64, i64)>;

    /// The reference: one event at a time, the watermark being the largest
    /// earlier event time minus the disorder bound; an event is late when
    /// every window it falls in has `end + lateness <= watermark`.
    fn reference(
        events: &[(i64, u8, i64)],
        size: i64,
        slide: i64,
        lateness: i64,
        disorder: i64,
    ) -> (Windows, BTreeSet<u64>) {
        let (mut windows, mut late) = (BTreeMap::new(), BTreeSet::new());
        let mut max = i64::MIN;
        for (i, &(t, k, v)) in events.iter().enumerate() {
            let wm = max.saturating_sub(disorder);
            let starts: Vec<i64> = (t - size + 1..=t)
                .filter(|s| s.rem_euclid(slide) == 0)
                .filter(|s| s + size + lateness > wm)
                .collect();
            if starts.is_empty() {
                late.insert(i as u64);
            }
            for s in starts {
                let e = windows.entry((s, k)).or_insert((0, 0));
                e.0 += 1;
                e.1 += v;
            }
            max = max.max(t);
        }
        (windows, late)
    }

    fn config(size: i64, slide: i64, lateness: i64) -> String {
        let window = if size == slide {
            format!("{{ type = \"tumbling\", size = {size} }}")
        } else {
            format!("{{ type = \"hopping\", size = {size}, slide = {slide} }}")
        };
        format!(
            "group_by = [\"k\"]\nwindow = {window}\nallowed_lateness = {lateness}\n\
             aggregates = {{ n = \"count\", total = {{ fn = \"sum\", field = \"v\" }} }}"
        )
    }

    fn events() -> impl Strategy<Value = Vec<(i64, u8, i64)>> {
        // A clock moving forward with jitter: plenty of late and
        // almost-late events.
        proptest::collection::vec((0i64..12, -30i64..4, 0u8..2, 1i64..9), 1..120).prop_map(
            |steps| {
                let mut now = 0;
                steps
                    .into_iter()
                    .map(|(step, jitter, k, v)| {
                        now += step;
                        ((now + jitter).max(0), k, v)
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn window_results_and_late_events_do_not_depend_on_batching(
            events in events(),
            sizes in proptest::collection::vec(1usize..40, 1..8),
            window in prop_oneof![Just((10i64, 10i64)), Just((10, 5)), Just((20, 5))],
            lateness in prop_oneof![Just(0i64), Just(4), Just(15)],
            disorder in prop_oneof![Just(0i64), Just(3), Just(9)],
        ) {
            let (size, slide) = window;
            let toml = config(size, slide, lateness);
            let (table, late) = drive(&toml, &events, &sizes, disorder);
            let (one_by_one, late_one) = drive(&toml, &events, &[1], disorder);
            let (whole, late_whole) = drive(&toml, &events, &[events.len()], disorder);
            prop_assert_eq!(&table, &one_by_one);
            prop_assert_eq!(&table, &whole);
            // rows folded where they are decoded: the same rows emitted in
            // the same order, the same late events
            for toml in [toml.clone(), format!("{toml}\nemit = \"updates\"")] {
                let rows = drive_with(&toml, &events, &sizes, disorder, false);
                let folded = drive_with(&toml, &events, &sizes, disorder, true);
                prop_assert_eq!(&folded.emitted, &rows.emitted);
                prop_assert_eq!(&folded.late, &rows.late);
                prop_assert_eq!(&folded.table, &rows.table);
            }
            prop_assert_eq!(&late, &late_one);
            prop_assert_eq!(&late, &late_whole);
            let (windows, expected_late) = reference(&events, size, slide, lateness, disorder);
            prop_assert_eq!(late.keys().copied().collect::<BTreeSet<_>>(), expected_late);
            let expected: BTreeSet<String> = windows
                .iter()
                .map(|(&(s, k), &(n, total))| format!(
                    r#"{{"k":"{}","window_start":{s},"window_end":{},"n":{n},"total":{total}}}"#,
                    (b'a' + k) as char, s + size))
                .collect();
            prop_assert_eq!(table.values().cloned().collect::<BTreeSet<_>>(), expected);
        }
    }

    /// Batches without a late row are taken as partial results; a batch
    /// with one is taken row by row, and its late row is a dead letter.
    #[test]
    fn batches_without_late_rows_are_taken_as_partial_results() {
        let in_order: Vec<(i64, u8, i64)> = (0..100).map(|t| (t, (t % 3) as u8, 1)).collect();
        for (size, slide) in [(10, 10), (20, 5)] {
            let toml = config(size, slide, 0);
            let run = drive_with(&toml, &in_order, &[7], 2, true);
            assert_eq!(run.folded, 15, "every batch of 7 (and the last of 2)");
            assert!(run.late.is_empty());
            let mut late = in_order.clone();
            late.insert(50, (10, 0, 1));
            let run = drive_with(&toml, &late, &[7], 2, true);
            assert_eq!(run.folded, 14, "the batch with row 50 is taken as rows");
            assert_eq!(run.late.keys().copied().collect::<Vec<_>>(), vec![50]);
        }
    }

    proptest! {
        /// Session windows too: a session that closed for good before an
        /// event arrived cannot absorb it, even when the batch it closed in
        /// has not ended yet.
        #[test]
        fn sessions_do_not_depend_on_batching(
            events in events(),
            sizes in proptest::collection::vec(1usize..40, 1..8),
            gap in prop_oneof![Just(5i64), Just(12)],
            lateness in prop_oneof![Just(0i64), Just(4)],
            disorder in prop_oneof![Just(0i64), Just(3), Just(9)],
        ) {
            let toml = format!(
                "group_by = [\"k\"]\nwindow = {{ type = \"session\", gap = {gap} }}\n\
                 allowed_lateness = {lateness}\naggregates = {{ n = \"count\", total = {{ fn = \"sum\", field = \"v\" }} }}"
            );
            let (table, late) = drive(&toml, &events, &sizes, disorder);
            let (one_by_one, late_one) = drive(&toml, &events, &[1], disorder);
            let (whole, late_whole) = drive(&toml, &events, &[events.len()], disorder);
            prop_assert_eq!(&late, &late_one);
            prop_assert_eq!(&late, &late_whole);
            prop_assert_eq!(&table, &one_by_one);
            prop_assert_eq!(&table, &whole);
        }
    }

    #[test]
    fn the_late_reason_states_the_rule_applied() {
        let toml = config(10, 10, 5);
        // t=40 moves the watermark to 40; t=3 falls in [0,10), 10 + 5 <= 40.
        let (_, late) = drive(&toml, &[(40, 0, 1), (3, 0, 1)], &[2], 0);
        assert_eq!(
            late[&1],
            "late event: time 3 falls only in closed windows; the last one, [0, 10), \
             closed for good because its end 10 + allowed lateness 5 ms <= watermark 40"
        );
    }
}

/// An aggregate reading an aggregate's output treats it as a changelog:
/// each upstream row replaces the previous row of its key (issue 10, item 2).
mod changelog {
    use sluice_engine::batch::{Batch, RowKind};
    use sluice_engine::operator::{BuildContext, Operator, OperatorSpec, Stream};

    use super::spec;
    use crate::testing::{batch_of, build_ctx, checkpoint, rows, run_op, watermark};

    fn reading_changelog(settles_after: Option<i64>) -> BuildContext {
        BuildContext {
            input: Stream::Changelog { settles_after },
            ..build_ctx()
        }
    }

    /// Runs `events` one at a time through `upstream`, hands every change
    /// it emits (at a checkpoint after each event) to `downstream`, and
    /// returns everything `downstream` emitted.
    fn chain(
        upstream: &mut dyn Operator,
        downstream: &mut dyn Operator,
        events: &[&str],
    ) -> Vec<Batch> {
        let mut results = Vec::new();
        for e in events {
            let (out, dead) = run_op(upstream, batch_of(&[e]));
            assert!(out.is_empty() && dead.is_empty());
            for changes in checkpoint(upstream) {
                let (out, dead) = run_op(downstream, changes);
                assert!(dead.is_empty(), "{dead:?}");
                results.extend(out);
            }
            results.extend(checkpoint(downstream));
        }
        results
    }

    const PER_COUNTRY: &str = "group_by = [\"country\"]\naggregates = { n = \"count\" }";

    #[test]
    fn updates_of_an_upstream_row_are_not_counted_again() {
        let mut up = spec(PER_COUNTRY).build(&build_ctx()).unwrap();
        let mut down = spec(
            "aggregates = { countries = \"count\", total = { fn = \"sum\", field = \"n\" }, \
             top = { fn = \"max\", field = \"n\" }, low = { fn = \"min\", field = \"n\" }, \
             mean = { fn = \"avg\", field = \"n\" }, sizes = { fn = \"count_distinct\", field = \"n\" } }",
        )
        .build(&reading_changelog(None))
        .unwrap();
        let out = chain(
            up.as_mut(),
            down.as_mut(),
            &[
                r#"{"country":"GT"}"#,
                r#"{"country":"GT"}"#,
                r#"{"country":"MX"}"#,
                r#"{"country":"GT"}"#,
                r#"{"country":"MX"}"#,
            ],
        );
        // 5 events, 2 countries (GT 3, MX 2): without retraction the
        // downstream counted 5 upstream rows (n=4 with one batch boundary
        // less) and summed 1+2+1+3+2.
        assert_eq!(
            rows(&out).last().unwrap(),
            r#"{"countries":2,"low":2,"mean":2.5,"sizes":2,"top":3,"total":5}"#
        );
    }

    #[test]
    fn a_group_whose_rows_all_moved_away_is_deleted() {
        // Upstream: the latest status per order; downstream: orders per status.
        let mut up = spec(
            "group_by = [\"order\"]\naggregates = { status = { fn = \"max\", field = \"s\" } }",
        )
        .build(&build_ctx())
        .unwrap();
        let mut down = spec("group_by = [\"status\"]\naggregates = { orders = \"count\" }")
            .build(&reading_changelog(None))
            .unwrap();
        let out = chain(
            up.as_mut(),
            down.as_mut(),
            &[
                r#"{"order":1,"s":1}"#,
                r#"{"order":2,"s":1}"#,
                r#"{"order":1,"s":2}"#,
                r#"{"order":2,"s":2}"#,
            ],
        );
        let mut table = std::collections::BTreeMap::new();
        for b in &out {
            for (i, row) in b.rows.iter().enumerate() {
                match b.kinds[i] {
                    RowKind::Delete => table.remove(&b.keys[i]),
                    _ => table.insert(b.keys[i].clone(), row.to_string()),
                };
            }
        }
        let values: Vec<&String> = table.values().collect();
        assert_eq!(values, vec![r#"{"status":2,"orders":2}"#]);
    }

    #[test]
    fn a_deleted_upstream_row_is_taken_back() {
        let mut down =
            spec("aggregates = { n = \"count\", total = { fn = \"sum\", field = \"v\" } }")
                .build(&reading_changelog(None))
                .unwrap();
        let mut b = Batch::default();
        for (k, v) in [(1u8, 10), (2, 20), (1, 11)] {
            let row =
                sluice_engine::json::parse_value(format!(r#"{{"v":{v}}}"#).as_bytes()).unwrap();
            b.push_change(
                RowKind::Upsert,
                sluice_engine::keys::GroupKey::from_slice(&[k]),
                row,
                0,
            );
        }
        b.push_change(
            RowKind::Delete,
            sluice_engine::keys::GroupKey::from_slice(&[2]),
            sluice_engine::value::Value::Null,
            0,
        );
        run_op(down.as_mut(), b);
        assert_eq!(
            rows(&checkpoint(down.as_mut())),
            vec![r#"{"n":1,"total":11}"#]
        );
    }

    #[test]
    fn previous_rows_survive_a_restart() {
        let mut up = spec(PER_COUNTRY).build(&build_ctx()).unwrap();
        let mut down = spec("aggregates = { countries = \"count\" }")
            .build(&reading_changelog(None))
            .unwrap();
        chain(
            up.as_mut(),
            down.as_mut(),
            &[r#"{"country":"GT"}"#, r#"{"country":"MX"}"#],
        );
        // Snapshot both, restore into fresh instances, go on.
        let mut restored_up = spec(PER_COUNTRY).build(&build_ctx()).unwrap();
        let mut restored_down = spec("aggregates = { countries = \"count\" }")
            .build(&reading_changelog(None))
            .unwrap();
        for (from, to) in [(&mut up, &mut restored_up), (&mut down, &mut restored_down)] {
            let mut w = sluice_engine::operator::StateWriter::default();
            from.snapshot(&mut w);
            let entries = w
                .entries
                .into_iter()
                .filter_map(|(g, k, v)| v.map(|v| (g, k, v)))
                .collect();
            to.restore(entries).unwrap();
        }
        let out = chain(
            restored_up.as_mut(),
            restored_down.as_mut(),
            &[r#"{"country":"GT"}"#, r#"{"country":"GT"}"#],
        );
        assert_eq!(rows(&out).last().unwrap(), r#"{"countries":2}"#);
    }

    #[test]
    fn windows_of_windows_replace_updated_minutes() {
        let mut up = spec(
            "group_by = [\"k\"]\nwindow = { type = \"tumbling\", size = 10 }\nemit = \"updates\"\naggregates = { n = \"count\" }",
        )
        .build(&build_ctx())
        .unwrap();
        let mut down = spec(
            "group_by = [\"k\"]\nwindow = { type = \"tumbling\", size = 30 }\naggregates = { total = { fn = \"sum\", field = \"n\" }, windows = \"count\" }",
        )
        .build(&reading_changelog(Some(0)))
        .unwrap();
        let mut out = chain(
            up.as_mut(),
            down.as_mut(),
            &[
                r#"{"k":"a","t":1}"#,
                r#"{"k":"a","t":2}"#,
                r#"{"k":"a","t":15}"#,
                r#"{"k":"a","t":16}"#,
                r#"{"k":"a","t":17}"#,
            ],
        );
        for b in watermark(up.as_mut(), 30) {
            out.extend(run_op(down.as_mut(), b).0);
        }
        out.extend(watermark(down.as_mut(), 30));
        assert_eq!(
            rows(&out),
            vec![r#"{"k":"a","window_start":0,"window_end":30,"total":5,"windows":2}"#]
        );
    }
}
