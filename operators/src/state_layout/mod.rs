//! The bytes the stateful operators leave in the state store, pinned.
//!
//! Each scenario drives an operator through batches, watermarks and
//! checkpoints; after every checkpoint the net content of a model store
//! (what sled would hold under the operator's prefix) is compared with a
//! fixture captured from `main` at 4607e2f, before the operators moved onto
//! `sluice_engine::table`. State directories written by earlier builds must
//! keep restoring, so a difference here is a format change and needs a
//! migration, not a new fixture.
//!
//! A second test restores every fixture store into a fresh operator and
//! checks that it continues exactly like the uninterrupted run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sluice_engine::batch::{Batch, RowKind};
use sluice_engine::operator::{BuildContext, Operator, OperatorSpec, StateWriter, Stream};

use crate::aggregate::{AggregateConfig, AggregateSpec};
use crate::dedupe::{DedupeConfig, DedupeSpec};
use crate::testing::{batch_of, build_ctx, checkpoint, rows, run_op, watermark};

/// One step of a scenario.
enum Step {
    Rows(&'static [&'static str]),
    Watermark(i64),
    /// `on_checkpoint`, then `snapshot` into the model store.
    Checkpoint,
}

use Step::{Checkpoint, Rows, Watermark};

struct Scenario {
    name: &'static str,
    /// The operator under test: an aggregate or a dedupe config (TOML).
    config: &'static str,
    /// For an operator reading a changelog: the upstream aggregate (TOML)
    /// whose checkpoint output feeds it, and the changelog's settling time.
    upstream: Option<(&'static str, Option<i64>)>,
    steps: &'static [Step],
    /// Whether a restored run emits exactly the rows of the uninterrupted
    /// one. Sessions do not: a session emitted on close without changing
    /// after is stored as not emitted yet, so a restore emits it once more
    /// (the same upsert again, which sinks absorb).
    exact_output: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "tumbling",
        config: "group_by = [\"k\"]\nwindow = { type = \"tumbling\", size = 10 }\nallowed_lateness = 5\n\
                 aggregates = { n = \"count\", total = { fn = \"sum\", field = \"v\" }, mean = { fn = \"avg\", field = \"v\" }, \
                 low = { fn = \"min\", field = \"v\" }, first = { fn = \"first\", field = \"s\" }, last = { fn = \"last\", field = \"s\" }, \
                 kinds = { fn = \"count_distinct\", field = \"s\" } }",
        upstream: None,
        exact_output: true,
        steps: &[
            Rows(&[
                r#"{"k":"a","v":1,"s":"x","t":1}"#,
                r#"{"k":"b","v":2.5,"s":"y","t":3}"#,
                r#"{"k":"a","v":3,"s":"z","t":12}"#,
            ]),
            Checkpoint,
            Watermark(10),
            Rows(&[r#"{"k":"a","v":7,"s":"x","t":9}"#, r#"{"k":"c","v":-1,"s":"q","t":14}"#]),
            Checkpoint,
            Watermark(16),
            Checkpoint,
            Watermark(100),
            Checkpoint,
        ],
    },
    Scenario {
        name: "hopping_updates",
        config: "group_by = [\"k\"]\nwindow = { type = \"hopping\", size = 10, slide = 5 }\nemit = \"updates\"\n\
                 aggregates = { n = \"count\", top = { fn = \"max\", field = \"v\" } }",
        upstream: None,
        exact_output: true,
        steps: &[
            Rows(&[r#"{"k":1,"v":1,"t":2}"#, r#"{"k":2,"v":4,"t":7}"#]),
            Checkpoint,
            Rows(&[r#"{"k":1,"v":9,"t":8}"#]),
            Watermark(12),
            Checkpoint,
            Watermark(30),
            Rows(&[r#"{"k":2,"v":5,"t":31}"#]),
            Checkpoint,
        ],
    },
    Scenario {
        name: "all_time",
        config: "aggregates = { n = \"count\", total = { fn = \"sum\", field = \"v\" } }",
        upstream: None,
        exact_output: true,
        steps: &[
            Rows(&[r#"{"v":1}"#, r#"{"v":2}"#]),
            Checkpoint,
            Checkpoint,
            Rows(&[r#"{"v":3}"#]),
            Watermark(50),
            Checkpoint,
        ],
    },
    Scenario {
        name: "changelog_all_time",
        config: "group_by = [\"n\"]\naggregates = { countries = \"count\", total = { fn = \"sum\", field = \"n\" }, \
                 top = { fn = \"max\", field = \"n\" } }",
        upstream: Some(("group_by = [\"country\"]\naggregates = { n = \"count\" }", None)),
        exact_output: true,
        steps: &[
            Rows(&[r#"{"country":"GT"}"#, r#"{"country":"MX"}"#]),
            Checkpoint,
            Rows(&[r#"{"country":"GT"}"#]),
            Checkpoint,
            Rows(&[r#"{"country":"MX"}"#, r#"{"country":"MX"}"#]),
            Checkpoint,
        ],
    },
    Scenario {
        name: "changelog_windows",
        config: "group_by = [\"k\"]\nwindow = { type = \"tumbling\", size = 20 }\n\
                 aggregates = { total = { fn = \"sum\", field = \"n\" }, windows = \"count\" }",
        upstream: Some((
            "group_by = [\"k\"]\nwindow = { type = \"tumbling\", size = 10 }\nallowed_lateness = 5\nemit = \"updates\"\n\
             aggregates = { n = \"count\" }",
            Some(5),
        )),
        exact_output: true,
        steps: &[
            Rows(&[r#"{"k":"a","t":1}"#, r#"{"k":"a","t":12}"#, r#"{"k":"b","t":3}"#]),
            Checkpoint,
            Rows(&[r#"{"k":"a","t":4}"#]),
            Checkpoint,
            Watermark(17),
            Checkpoint,
            Watermark(45),
            Checkpoint,
        ],
    },
    Scenario {
        name: "sessions",
        config: "group_by = [\"u\"]\nwindow = { type = \"session\", gap = 10 }\nallowed_lateness = 3\n\
                 aggregates = { n = \"count\", last = { fn = \"last\", field = \"p\" } }",
        upstream: None,
        exact_output: false,
        steps: &[
            Rows(&[
                r#"{"u":"a","p":"home","t":0}"#,
                r#"{"u":"a","p":"cart","t":30}"#,
                r#"{"u":"b","p":"home","t":2}"#,
            ]),
            Checkpoint,
            Rows(&[r#"{"u":"a","p":"x","t":15}"#]),
            Checkpoint,
            Watermark(14),
            Checkpoint,
            Watermark(60),
            Checkpoint,
        ],
    },
    Scenario {
        name: "dedupe",
        config: "fields = [\"id\"]\nwithin = 100\nmax_keys = 3",
        upstream: None,
        exact_output: true,
        steps: &[
            Rows(&[
                r#"{"id":1,"t":10}"#,
                r#"{"id":2,"t":20}"#,
                r#"{"id":1,"t":30}"#,
            ]),
            Checkpoint,
            Rows(&[r#"{"id":3,"t":40}"#, r#"{"id":4,"t":50}"#]),
            Checkpoint,
            Watermark(145),
            Checkpoint,
            Checkpoint,
        ],
    },
];

/// The net content of an operator's part of the store.
type Store = BTreeMap<(u16, Vec<u8>), Vec<u8>>;

fn build(config: &str, ctx: &BuildContext) -> Box<dyn Operator> {
    if config.starts_with("fields") {
        let c: DedupeConfig = toml::from_str(config).unwrap();
        DedupeSpec::new(&c).unwrap().build(ctx).unwrap()
    } else {
        let c: AggregateConfig = toml::from_str(config).unwrap();
        AggregateSpec::new(&c).unwrap().build(ctx).unwrap()
    }
}

/// A running scenario: the operator, its upstream, and the model store.
struct Run {
    op: Box<dyn Operator>,
    upstream: Option<Box<dyn Operator>>,
    store: Store,
    /// Everything `op` emitted, as JSON rows.
    out: Vec<String>,
    /// The changelog `op` emitted: (row key, row or None for a delete).
    changes: Vec<(Vec<u8>, Option<String>)>,
}

impl Run {
    fn new(s: &Scenario) -> Run {
        let ctx = match s.upstream {
            Some((_, settles_after)) => BuildContext {
                input: Stream::Changelog { settles_after },
                ..build_ctx()
            },
            None => build_ctx(),
        };
        Run {
            op: build(s.config, &ctx),
            upstream: s.upstream.map(|(up, _)| build(up, &build_ctx())),
            store: Store::new(),
            out: Vec::new(),
            changes: Vec::new(),
        }
    }

    fn record(&mut self, out: &[Batch]) {
        self.out.extend(rows(out));
        for b in out.iter().filter(|b| b.is_keyed()) {
            for (i, row) in b.rows.iter().enumerate() {
                let row = (b.kind(i) != RowKind::Delete).then(|| row.to_string());
                self.changes.push((b.keys[i].to_vec(), row));
            }
        }
    }

    fn feed(&mut self, batches: Vec<Batch>) {
        for b in batches {
            let (out, _dead) = run_op(self.op.as_mut(), b);
            self.record(&out);
        }
    }

    /// Runs one step; a checkpoint returns the store as rendered lines.
    fn step(&mut self, step: &Step) -> Option<String> {
        match step {
            Rows(lines) => match self.upstream.as_mut() {
                Some(up) => {
                    run_op(up.as_mut(), batch_of(lines));
                    let changes = checkpoint(up.as_mut());
                    self.feed(changes);
                }
                None => self.feed(vec![batch_of(lines)]),
            },
            Watermark(wm) => {
                if let Some(up) = self.upstream.as_mut() {
                    let mut changes = watermark(up.as_mut(), *wm);
                    changes.extend(checkpoint(up.as_mut()));
                    self.feed(changes);
                }
                let out = watermark(self.op.as_mut(), *wm);
                self.record(&out);
            }
            Checkpoint => {
                let out = checkpoint(self.op.as_mut());
                self.record(&out);
                let mut w = StateWriter::default();
                self.op.snapshot(&mut w);
                for (kg, k, v) in w.entries {
                    match v {
                        Some(v) => self.store.insert((kg, k), v),
                        None => self.store.remove(&(kg, k)),
                    };
                }
                return Some(render(&self.store));
            }
        }
        None
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn render(store: &Store) -> String {
    store
        .iter()
        .map(|((kg, k), v)| format!("{kg} {} {}\n", hex(k), hex(v)))
        .collect()
}

/// The rows a sink holds after applying `changes` (upserts and deletes).
fn sink_view(changes: &[(Vec<u8>, Option<String>)]) -> BTreeMap<Vec<u8>, String> {
    let mut view = BTreeMap::new();
    for (key, row) in changes {
        match row {
            Some(row) => view.insert(key.clone(), row.clone()),
            None => view.remove(key),
        };
    }
    view
}

/// Runs a scenario straight through: the store after each checkpoint.
fn stores(s: &Scenario) -> Vec<String> {
    let mut run = Run::new(s);
    s.steps.iter().filter_map(|step| run.step(step)).collect()
}

/// The fixture file's text for a scenario.
fn fixture_text(stores: &[String]) -> String {
    let mut text = String::new();
    for (i, store) in stores.iter().enumerate() {
        let _ = writeln!(text, "@ checkpoint {}", i + 1);
        text.push_str(store);
    }
    text
}

fn fixture(name: &str) -> String {
    let path = format!("{}/src/state_layout/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The stores of a fixture file, one per checkpoint.
fn parse_fixture(text: &str) -> Vec<Store> {
    let mut stores = Vec::new();
    for line in text.lines() {
        if line.starts_with("@ ") {
            stores.push(Store::new());
            continue;
        }
        let mut parts = line.split(' ');
        let (kg, k, v) = (parts.next(), parts.next(), parts.next());
        let (Some(kg), Some(k), Some(v)) = (kg, k, v) else {
            panic!("bad fixture line {line:?}");
        };
        stores
            .last_mut()
            .expect("a line before the first `@`")
            .insert((kg.parse().unwrap(), unhex(k)), unhex(v));
    }
    stores
}

#[test]
fn operators_write_the_same_bytes_as_before_the_tables() {
    for s in SCENARIOS {
        let expected = fixture(s.name);
        let actual = fixture_text(&stores(s));
        assert!(
            actual == expected,
            "scenario `{}`: the state written differs from the fixture\n--- fixture\n{expected}\n--- now\n{actual}",
            s.name
        );
    }
}

#[test]
fn state_written_before_the_tables_restores_and_continues() {
    for s in SCENARIOS {
        let fixtures = parse_fixture(&fixture(s.name));
        // The uninterrupted run, for comparison.
        let mut straight = Run::new(s);
        // What it had emitted by each checkpoint: (rows, changes).
        let mut emitted_by = Vec::new();
        for step in s.steps {
            if straight.step(step).is_some() {
                emitted_by.push((straight.out.len(), straight.changes.len()));
            }
        }
        let checkpoints: Vec<usize> = s
            .steps
            .iter()
            .enumerate()
            .filter(|(_, st)| matches!(st, Checkpoint))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(checkpoints.len(), fixtures.len(), "scenario `{}`", s.name);
        for (c, &at) in checkpoints.iter().enumerate() {
            // Restart from the fixture store of checkpoint `c` (the
            // upstream, if any, is replayed up to there: only the operator
            // under test restores old bytes).
            let mut run = Run::new(s);
            if let Some(up) = run.upstream.as_mut() {
                for step in &s.steps[..=at] {
                    match step {
                        Rows(lines) => {
                            run_op(up.as_mut(), batch_of(lines));
                        }
                        Watermark(wm) => {
                            watermark(up.as_mut(), *wm);
                        }
                        Checkpoint => continue,
                    }
                    checkpoint(up.as_mut());
                }
            }
            let entries = fixtures[c]
                .iter()
                .map(|((kg, k), v)| (*kg, k.clone(), v.clone()))
                .collect();
            run.op
                .restore(entries)
                .unwrap_or_else(|e| panic!("scenario `{}` checkpoint {}: {e}", s.name, c + 1));
            run.store = fixtures[c].clone();
            let mut later = c + 1;
            for step in &s.steps[at + 1..] {
                if let Some(store) = run.step(step) {
                    assert_eq!(
                        store,
                        render(&fixtures[later]),
                        "scenario `{}`: restored at checkpoint {}, the store at checkpoint {} differs",
                        s.name,
                        c + 1,
                        later + 1
                    );
                    later += 1;
                }
            }
            let (rows_before, changes_before) = emitted_by[c];
            if s.exact_output {
                assert_eq!(
                    run.out,
                    straight.out[rows_before..],
                    "scenario `{}`: restored at checkpoint {}, the output differs",
                    s.name,
                    c + 1
                );
            }
            let mut changes = straight.changes[..changes_before].to_vec();
            changes.extend(run.changes);
            assert_eq!(
                sink_view(&changes),
                sink_view(&straight.changes),
                "scenario `{}`: restored at checkpoint {}, the results differ",
                s.name,
                c + 1
            );
        }
    }
}
