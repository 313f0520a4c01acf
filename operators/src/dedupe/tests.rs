use std::collections::BTreeMap;

use proptest::prelude::*;
use sluice_engine::dead_letter::ErrorType;
use sluice_engine::keys::key_group;

use super::*;
use crate::testing::{batch_of, build_ctx, rows, run_op, watermark};

fn spec(toml_text: &str) -> Result<DedupeSpec, String> {
    let c: DedupeConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    DedupeSpec::new(&c).map_err(String::from)
}

fn op(toml_text: &str) -> Box<dyn Operator> {
    spec(toml_text).unwrap().build(&build_ctx()).unwrap()
}

/// The rows that passed, as JSON.
fn passed(op: &mut dyn Operator, lines: &[&str]) -> Vec<String> {
    let (out, dead) = run_op(op, batch_of(lines));
    assert!(dead.is_empty(), "{dead:?}");
    rows(&out)
}

#[test]
fn example_config_parses() {
    let s = spec("fields = [\"order_id\"]\nwithin = \"10m\"\nmax_keys = 1000000").unwrap();
    assert_eq!(s.within, Some(600_000));
    assert_eq!(s.max_keys, Some(1_000_000));
}

#[test]
fn rejects_unbounded_and_empty_configs() {
    assert!(spec("fields = [\"id\"]")
        .unwrap_err()
        .contains("needs a bound"));
    assert!(spec("fields = []\nwithin = \"1m\"")
        .unwrap_err()
        .contains("at least one field"));
    assert!(spec("fields = [\"id\"]\nwithin = \"0s\"")
        .unwrap_err()
        .contains("positive"));
    assert!(spec("fields = [\"id\"]\nmax_keys = 0")
        .unwrap_err()
        .contains("at least 1"));
    assert!(spec("fields = [\"id\"]\nwithn = \"1m\"")
        .unwrap_err()
        .contains("unknown field"));
}

#[test]
fn first_sighting_passes_and_repeats_are_dropped() {
    let mut op = op("fields = [\"id\"]\nmax_keys = 100");
    let out = passed(
        op.as_mut(),
        &[
            r#"{"id":1,"v":"a"}"#,
            r#"{"id":2,"v":"b"}"#,
            r#"{"id":1,"v":"c"}"#,
            r#"{"id":"1","v":"d"}"#,
        ],
    );
    // `1` and `"1"` are different values.
    assert_eq!(
        out,
        vec![
            r#"{"id":1,"v":"a"}"#,
            r#"{"id":2,"v":"b"}"#,
            r#"{"id":"1","v":"d"}"#
        ]
    );
    // Across batches too.
    assert!(passed(op.as_mut(), &[r#"{"id":2,"v":"e"}"#]).is_empty());
}

#[test]
fn the_identity_is_the_combination_of_fields() {
    let mut op = op("fields = [\"p\", \"m.seq\"]\nmax_keys = 100");
    let out = passed(
        op.as_mut(),
        &[
            r#"{"p":"a","m":{"seq":1}}"#,
            r#"{"p":"b","m":{"seq":1}}"#,
            r#"{"p":"a","m":{"seq":1},"x":true}"#,
            r#"{"p":"a","m":{"seq":2}}"#,
        ],
    );
    assert_eq!(out.len(), 3);
    assert!(!out.iter().any(|r| r.contains("\"x\"")));
}

#[test]
fn events_missing_a_field_are_dead_letters() {
    let mut op = op("fields = [\"id\"]\nwithin = \"1m\"");
    let (out, dead) = run_op(op.as_mut(), batch_of(&[r#"{"v":1}"#, r#"{"id":1}"#]));
    assert_eq!(rows(&out), vec![r#"{"id":1}"#]);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_type, ErrorType::MissingField);
    assert_eq!(dead[0].reason, "key field `id` is missing");
    assert_eq!(dead[0].raw, br#"{"v":1}"#.to_vec());
}

#[test]
fn within_counts_from_the_first_sighting_in_event_time() {
    let mut op = op("fields = [\"id\"]\nwithin = 100");
    let out = passed(
        op.as_mut(),
        &[
            r#"{"id":1,"t":1000}"#,
            r#"{"id":1,"t":1099}"#, // inside [1000, 1100): dropped
            r#"{"id":1,"t":950}"#,  // earlier, still a repeat: dropped
            r#"{"id":1,"t":1100}"#, // the period ended: passes, new period
            r#"{"id":1,"t":1150}"#, // inside [1100, 1200): dropped
        ],
    );
    assert_eq!(out, vec![r#"{"id":1,"t":1000}"#, r#"{"id":1,"t":1100}"#]);
}

#[test]
fn the_watermark_forgets_identities_whose_period_ended() {
    let mut op = op("fields = [\"id\"]\nwithin = 100");
    passed(
        op.as_mut(),
        &[r#"{"id":1,"t":1000}"#, r#"{"id":2,"t":1050}"#],
    );
    assert_eq!(op.state_stats().keys, 2);
    watermark(op.as_mut(), 1099);
    assert_eq!(op.state_stats().keys, 2);
    watermark(op.as_mut(), 1100);
    assert_eq!(op.state_stats().keys, 1);
    // A late repeat of a forgotten identity passes (it would be late for a
    // window downstream too); one still remembered is dropped.
    let out = passed(
        op.as_mut(),
        &[r#"{"id":1,"t":1001}"#, r#"{"id":2,"t":1001}"#],
    );
    assert_eq!(out, vec![r#"{"id":1,"t":1001}"#]);
    watermark(op.as_mut(), i64::MAX);
    assert_eq!(op.state_stats().keys, 0);
}

#[test]
fn max_keys_forgets_the_oldest_first_sighting() {
    let mut op = op("fields = [\"id\"]\nmax_keys = 2");
    let out = passed(
        op.as_mut(),
        &[
            r#"{"id":1}"#,
            r#"{"id":2}"#,
            r#"{"id":1}"#, // still remembered: dropped (does not refresh it)
            r#"{"id":3}"#, // forgets 1
            r#"{"id":2}"#, // dropped
            r#"{"id":1}"#, // passes again, forgets 2
            r#"{"id":2}"#, // passes again
        ],
    );
    assert_eq!(
        out,
        vec![
            r#"{"id":1}"#,
            r#"{"id":2}"#,
            r#"{"id":3}"#,
            r#"{"id":1}"#,
            r#"{"id":2}"#
        ]
    );
    assert_eq!(op.state_stats().keys, 2);
}

#[test]
fn keys_from_an_upstream_key_by_are_kept() {
    let mut op = op("fields = [\"id\"]\nmax_keys = 10");
    let mut b = batch_of(&[r#"{"id":1}"#, r#"{"id":1}"#, r#"{"id":2}"#]);
    b.keys = vec![
        GroupKey::from_slice(b"a"),
        GroupKey::from_slice(b"b"),
        GroupKey::from_slice(b"c"),
    ];
    let (out, _) = run_op(op.as_mut(), b);
    assert_eq!(out[0].keys.len(), 2);
    assert_eq!(out[0].keys[0].as_slice(), b"a");
    assert_eq!(out[0].keys[1].as_slice(), b"c");
}

/// A store that applies snapshots like the checkpoint store: by key,
/// deletes and puts in order.
#[derive(Default)]
struct Store(BTreeMap<Vec<u8>, (u16, Vec<u8>)>);

impl Store {
    fn apply(&mut self, op: &mut dyn Operator) {
        let mut w = StateWriter::default();
        op.snapshot(&mut w);
        for (group, key, value) in w.entries {
            match value {
                Some(v) => {
                    if key[0] == TAG_SEEN {
                        assert_eq!(group, key_group(&key[1..], 8), "key group of the identity");
                    }
                    self.0.insert(key, (group, v));
                }
                None => {
                    self.0.remove(&key);
                }
            }
        }
    }

    fn entries(&self) -> Vec<StateEntry> {
        self.0
            .iter()
            .map(|(k, (g, v))| (*g, k.clone(), v.clone()))
            .collect()
    }
}

#[test]
fn state_signature_names_the_fields() {
    let a = spec("fields = [\"id\"]\nwithin = \"1m\"").unwrap();
    let b = spec("fields = [\"id\"]\nwithin = \"2m\"\nmax_keys = 5").unwrap();
    let c = spec("fields = [\"uuid\"]\nwithin = \"1m\"").unwrap();
    assert_eq!(a.state_signature(), b.state_signature());
    assert_ne!(a.state_signature(), c.state_signature());
}

#[test]
fn restore_rejects_foreign_keys() {
    let mut op = op("fields = [\"id\"]\nwithin = \"1m\"");
    assert!(op.restore(vec![(0, vec![9, 1], vec![1])]).is_err());
}

/// One step of a run: a batch of `(id, time)` events, then a watermark.
type Step = (Vec<(u8, i64)>, i64);

fn run_steps(
    config: &str,
    steps: &[Step],
    restart_after: Option<usize>,
) -> (Vec<String>, Vec<StateEntry>) {
    let mut store = Store::default();
    let mut op = op(config);
    let mut out = Vec::new();
    for (i, (events, wm)) in steps.iter().enumerate() {
        let lines: Vec<String> = events
            .iter()
            .map(|(id, t)| format!(r#"{{"id":{id},"t":{t}}}"#))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        out.extend(passed(op.as_mut(), &refs));
        watermark(op.as_mut(), *wm);
        if restart_after == Some(i) {
            // Checkpoint, then a new instance restores it (a crash and
            // restart right after a checkpoint).
            store.apply(op.as_mut());
            op = super::tests::op(config);
            op.restore(store.entries()).unwrap();
        }
    }
    store.apply(op.as_mut());
    (out, store.entries())
}

proptest! {
    /// A checkpoint and restart anywhere decides every event the same way,
    /// and leaves the same state, as an uninterrupted run.
    #[test]
    fn restart_anywhere_equals_an_uninterrupted_run(
        steps in proptest::collection::vec(
            (proptest::collection::vec((0u8..12, 0i64..400), 0..8), 0i64..400),
            1..12,
        ),
        restart in 0usize..12,
        bound in 0usize..3,
    ) {
        let config = ["fields = [\"id\"]\nwithin = 50", "fields = [\"id\"]\nmax_keys = 4",
            "fields = [\"id\"]\nwithin = 80\nmax_keys = 3"][bound];
        let (straight, state_a) = run_steps(config, &steps, None);
        let (restarted, state_b) = run_steps(config, &steps, Some(restart));
        prop_assert_eq!(straight, restarted);
        prop_assert_eq!(state_a, state_b);
    }

    /// Against a plain model: an event passes iff no remembered identity
    /// covers it (within only, watermark never advanced).
    #[test]
    fn agrees_with_a_model(events in proptest::collection::vec((0u8..6, 0i64..300), 0..60)) {
        let mut op = op("fields = [\"id\"]\nwithin = 40");
        let mut model: BTreeMap<u8, i64> = BTreeMap::new();
        let mut expected = Vec::new();
        for &(id, t) in &events {
            let dup = model.get(&id).is_some_and(|&first| t < first + 40);
            if !dup {
                model.insert(id, t);
                expected.push(format!(r#"{{"id":{id},"t":{t}}}"#));
            }
        }
        let lines: Vec<String> = events
            .iter()
            .map(|(id, t)| format!(r#"{{"id":{id},"t":{t}}}"#))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        prop_assert_eq!(passed(op.as_mut(), &refs), expected);
    }
}

/// Which events pass does not depend on how the input was batched: an
/// identity is forgotten for a row once the watermark in force when the row
/// arrived (its stamp) passed the end of the identity's period.
fn passed_with_batches(toml_text: &str, events: &[(i64, u8)], sizes: &[usize]) -> Vec<String> {
    use sluice_engine::runtime::watermark::{WatermarkSettings, WatermarkTracker};
    let mut op = op(toml_text);
    let mut tracker = WatermarkTracker::new(vec![WatermarkSettings {
        event_time: true,
        max_disorder_ms: 3,
        idle_timeout_ms: None,
    }]);
    let lines: Vec<String> = events
        .iter()
        .enumerate()
        .map(|(i, (t, id))| format!(r#"{{"id":{id},"n":{i},"t":{t}}}"#))
        .collect();
    let (mut out, mut at, mut k) = (Vec::new(), 0, 0);
    while at < lines.len() {
        let n = sizes[k % sizes.len()].max(1).min(lines.len() - at);
        k += 1;
        let chunk: Vec<&str> = lines[at..at + n].iter().map(String::as_str).collect();
        let mut b = batch_of(&chunk);
        tracker.observe_rows(0, 0, &mut b.meta, i64::MAX, 0);
        out.extend(passed_batch(op.as_mut(), b));
        watermark(op.as_mut(), tracker.source_watermark(0, 0));
        at += n;
    }
    out
}

fn passed_batch(op: &mut dyn Operator, b: sluice_engine::batch::Batch) -> Vec<String> {
    let (out, dead) = run_op(op, b);
    assert!(dead.is_empty(), "{dead:?}");
    rows(&out)
}

proptest! {
    #[test]
    fn decisions_do_not_depend_on_batching(
        steps in proptest::collection::vec((0i64..6, -8i64..3, 0u8..6), 1..120),
        sizes in proptest::collection::vec(1usize..30, 1..6),
        max_keys in prop_oneof![Just(""), Just("\nmax_keys = 3")],
    ) {
        let mut now = 0;
        let events: Vec<(i64, u8)> = steps
            .into_iter()
            .map(|(step, jitter, id)| {
                now += step;
                ((now + jitter).max(0), id)
            })
            .collect();
        let toml_text = format!("fields = [\"id\"]\nwithin = 10{max_keys}");
        let batched = passed_with_batches(&toml_text, &events, &sizes);
        prop_assert_eq!(&batched, &passed_with_batches(&toml_text, &events, &[1]));
        prop_assert_eq!(&batched, &passed_with_batches(&toml_text, &events, &[events.len()]));
    }
}
