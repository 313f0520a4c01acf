use super::*;
use proptest::strategy::Strategy;

fn load_str(text: &str) -> Result<Pipeline, Vec<ConfigError>> {
    let src = SourceText::plain(Path::new("p.toml"), text.to_string());
    parse(&src)
}

fn first_error(text: &str) -> ConfigError {
    load_str(text).unwrap_err().remove(0)
}

const GOOD: &str = r#"
[pipeline]
name = "weather"

[sources.weather]
type = "file"
path = "in.ndjson"
event_time = { field = "ts", max_disorder = "2s" }

[transforms.per_minute]
type = "aggregate"
inputs = ["weather"]
group_by = ["country"]
window = { type = "tumbling", size = "1m" }
aggregates = { count = "count" }

[sinks.out]
type = "file"
inputs = ["per_minute"]
path = "out.ndjson"
"#;

#[test]
fn a_good_pipeline_loads() {
    let p = load_str(GOOD).unwrap();
    assert_eq!(p.name, "weather");
    assert_eq!(p.sources.len(), 1);
    assert_eq!(
        p.sources[0]
            .event_time
            .as_ref()
            .unwrap()
            .max_disorder
            .as_millis(),
        2000
    );
    assert_eq!(p.transforms[0].inputs, vec!["weather"]);
    assert_eq!(p.state_dir(), PathBuf::from("sluice-state/weather"));
}

#[test]
fn typo_in_a_field_is_located_and_suggested() {
    let e = first_error(&GOOD.replace("path = \"in.ndjson\"", "pth = \"in.ndjson\""));
    assert_eq!((e.line, e.column), (7, 1));
    assert_eq!(e.field.as_deref(), Some("sources.weather"));
    assert_eq!(e.hint.as_deref(), Some("did you mean `path`?"));
}

#[test]
fn typo_in_a_common_field_is_suggested() {
    let e = first_error(&GOOD.replace("inputs = [\"weather\"]", "input = [\"weather\"]"));
    assert_eq!(e.hint.as_deref(), Some("did you mean `inputs`?"), "{e}");
    assert_eq!(e.line, 12);
}

#[test]
fn unknown_type_and_section() {
    let e = first_error(&GOOD.replace("type = \"aggregate\"", "type = \"agregate\""));
    assert_eq!(e.hint.as_deref(), Some("did you mean `aggregate`?"));
    assert_eq!((e.line, e.column), (11, 8));
    let e = first_error(&GOOD.replace("[sinks.out]", "[sink.out]"));
    assert!(e.message.contains("unknown section `sink`"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `sinks`?"));
    let e = first_error(&GOOD.replace(
        "type = \"file\"\npath = \"in",
        "type = \"redis\"\npath = \"in",
    ));
    let hint = e.hint.unwrap();
    assert!(
        hint.contains("`redis` is a sink type; source types are:"),
        "{hint}"
    );
}

#[test]
fn wrong_type_of_value_names_the_field() {
    let e = first_error(&GOOD.replace("group_by = [\"country\"]", "group_by = \"country\""));
    assert_eq!(e.field.as_deref(), Some("transforms.per_minute.group_by"));
    assert_eq!(e.line, 13);
    let e = first_error(&GOOD.replace("size = \"1m\"", "size = \"1 fortnight\""));
    assert!(e.message.contains("unknown unit"), "{e}");
}

#[test]
fn graph_errors_point_at_the_input() {
    let e = first_error(&GOOD.replace("inputs = [\"per_minute\"]", "inputs = [\"per_minut\"]"));
    assert_eq!((e.line, e.column), (19, 11));
    assert_eq!(e.hint.as_deref(), Some("did you mean `per_minute`?"));
    let cyclic = GOOD.replace(
        "inputs = [\"weather\"]",
        "inputs = [\"weather\", \"per_minute\"]",
    );
    let e = first_error(&cyclic);
    assert!(e.message.contains("cycle"), "{e}");
    let dangling = format!("{GOOD}\n[transforms.unused]\ntype = \"filter\"\ninputs = [\"weather\"]\ncondition = \"a == 1\"\n");
    let e = first_error(&dangling);
    assert!(e.message.contains("not read by any"), "{e}");
    assert_eq!(e.line, 22);
}

#[test]
fn windows_need_event_time() {
    let no_time = GOOD.replace(
        "event_time = { field = \"ts\", max_disorder = \"2s\" }\n",
        "",
    );
    // no event time anywhere: the window silently uses processing time only if asked
    let explicit = no_time.replace("aggregates = {", "time = \"event\"\naggregates = {");
    let e = first_error(&explicit);
    assert!(e.message.contains("provide none"), "{e}");
    assert!(
        load_str(&no_time.replace("aggregates = {", "time = \"processing\"\naggregates = {"))
            .is_ok()
    );
}

#[test]
fn bad_operator_options_are_reported() {
    let errors = all_errors(
        &GOOD.replace("[sinks.out]", "[transforms.f]\ntype = \"filter\"\ninputs = [\"weather\"]\ncondition = \"a = 1\"\n\n[sinks.out]"),
    );
    let e = errors
        .iter()
        .find(|e| e.message.contains("use `==`"))
        .unwrap_or_else(|| panic!("{errors:#?}"));
    assert!(e.message.contains("use `==`"), "{e}");
    // Located at the value of `condition`.
    assert_eq!(e.field.as_deref(), Some("transforms.f.condition"));
    assert_eq!((e.line, e.column), (20, 13));
}

fn all_errors(text: &str) -> Vec<ConfigError> {
    load_str(text).unwrap_err()
}

/// Regression: `interval = "600000000000000000m"` panicked in
/// `Duration::from_secs_f64` (validate and run).
#[test]
fn huge_durations_are_errors_at_the_value() {
    let text = format!("[checkpoint]\ninterval = \"600000000000000000m\"\n{GOOD}");
    let e = first_error(&text);
    assert!(e.message.contains("maximum is 36500d"), "{e}");
    assert_eq!((e.line, e.column), (2, 12));
    assert_eq!(e.field.as_deref(), Some("checkpoint.interval"));
    let e = first_error(&GOOD.replace("size = \"1m\"", "size = \"20000d20000d\""));
    assert!(e.message.contains("maximum is 36500d"), "{e}");
    assert_eq!(
        e.field.as_deref(),
        Some("transforms.per_minute.window.size")
    );
    let e = first_error(&GOOD.replace(
        "max_disorder = \"2s\"",
        "max_disorder = 9223372036854775807",
    ));
    assert!(e.message.contains("maximum is 36500d"), "{e}");
    assert_eq!(e.line, 8);
}

/// Regression: `interval = "0s"` was reported without a line and column.
#[test]
fn value_errors_point_at_the_value() {
    let e = first_error(&format!("[checkpoint]\ninterval = \"0s\"\n{GOOD}"));
    assert!(e.message.contains("must be positive"), "{e}");
    assert_eq!((e.line, e.column), (2, 12));
    assert_eq!(e.field.as_deref(), Some("checkpoint.interval"));
    let e = first_error(&format!("[state]\nkey_groups = 0\n{GOOD}"));
    assert_eq!((e.line, e.column), (2, 14));
    // A window size that is not a duration, and one that is zero.
    let e = first_error(&GOOD.replace("size = \"1m\"", "size = \"abc\""));
    assert_eq!((e.line, e.column), (14, 38), "{e}");
    assert_eq!(
        e.field.as_deref(),
        Some("transforms.per_minute.window.size")
    );
    let e = first_error(&GOOD.replace("size = \"1m\"", "size = \"0s\""));
    assert!(e.message.contains("must be positive"), "{e}");
    assert_eq!((e.line, e.column), (14, 38), "{e}");
    assert_eq!(
        e.field.as_deref(),
        Some("transforms.per_minute.window.size")
    );
}

/// Regression: one error per component, and graph errors only once every
/// component was valid.
#[test]
fn every_mistake_is_reported_in_one_pass() {
    let text = GOOD
        .replace(
            "path = \"in.ndjson\"",
            "pth = \"in.ndjson\"\nmax_event_bytes = \"big\"",
        )
        .replace("max_disorder = \"2s\"", "max_disorder = \"2 parsecs\"")
        .replace(
            "group_by = [\"country\"]",
            "group_by = \"country\"\nemit = \"sometimes\"",
        )
        .replace("inputs = [\"per_minute\"]", "inputs = [\"per_minut\"]")
        .replace(
            "path = \"out.ndjson\"",
            "path = \"out.ndjson\"\nfsink = true",
        );
    let errors = all_errors(&text);
    let got: Vec<(usize, &str)> = errors
        .iter()
        .map(|e| (e.line, e.message.as_str()))
        .collect();
    let lines: Vec<usize> = got.iter().map(|(l, _)| *l).collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted, "sorted by place: {got:?}");
    let has = |line: usize, needle: &str| {
        assert!(
            errors
                .iter()
                .any(|e| e.line == line && e.message.contains(needle)),
            "no error at line {line} containing {needle:?} in {got:#?}"
        )
    };
    has(7, "unknown field `pth`");
    has(8, "invalid type");
    has(9, "unknown unit");
    has(14, "invalid type");
    has(15, "unknown value `sometimes`");
    has(21, "not a source or transform");
    has(23, "unknown field `fsink`");
    assert_eq!(errors.len(), 7, "{got:#?}");
}

#[test]
fn every_bad_entry_of_a_table_is_reported() {
    let errors = all_errors(&GOOD.replace(
        "aggregates = { count = \"count\" }",
        "aggregates = { a = \"sum\", b = { fn = \"avg\" }, c = \"median\", d = \"count\" }",
    ));
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(errors.len(), 3, "{messages:#?}");
    assert!(messages[0].contains("`sum` needs a field"), "{messages:#?}");
    assert!(
        messages[1].contains("`avg` needs a `field`"),
        "{messages:#?}"
    );
    assert!(
        messages[2].contains("unknown value `median`"),
        "{messages:#?}"
    );
    let columns: Vec<usize> = errors.iter().map(|e| e.column).collect();
    assert!(columns.windows(2).all(|w| w[0] < w[1]), "{errors:#?}");
}

#[test]
fn graph_errors_come_with_component_errors() {
    // A broken filter still takes part in the graph: the cycle through it
    // and the unknown input of the sink are reported with its own error.
    let text = format!(
        "{GOOD}\n[transforms.f]\ntype = \"filter\"\ninputs = [\"g\"]\ncondition = \"a = 1\"\n\n\
         [transforms.g]\ntype = \"filter\"\ninputs = [\"f\"]\ncondition = \"b == 2\"\n"
    )
    .replace(
        "inputs = [\"per_minute\"]",
        "inputs = [\"per_minute\", \"nope\"]",
    );
    let errors = all_errors(&text);
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.contains("use `==`")),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m.contains("cycle")), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.contains("`nope`")),
        "{messages:?}"
    );
}

#[test]
fn a_component_with_a_bad_inputs_list_is_not_also_missing_inputs() {
    let errors = all_errors(&GOOD.replace("inputs = [\"weather\"]", "inputs = \"weather\""));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].field.as_deref(),
        Some("transforms.per_minute.inputs")
    );
}

const DEDUPE: &str = r#"
[sources.orders]
type = "file"
path = "in.ndjson"
event_time = { field = "ts" }

[transforms.unique]
type = "dedupe"
inputs = ["orders"]
fields = ["order_id"]
within = "10m"
max_keys = 1000

[sinks.out]
type = "file"
inputs = ["unique"]
path = "out.ndjson"
"#;

#[test]
fn dedupe_is_a_transform() {
    let p = load_str(DEDUPE).unwrap();
    let spec = components::transform_spec(&p.transforms[0].config).unwrap();
    assert!(spec.is_stateful());
    let e = first_error(&DEDUPE.replace("within = \"10m\"\nmax_keys = 1000\n", ""));
    assert!(e.message.contains("needs a bound"), "{e}");
    let e = first_error(&DEDUPE.replace("within = \"10m\"", "within = \"0s\""));
    assert!(e.message.contains("`within` must be positive"), "{e}");
    assert_eq!((e.line, e.column), (11, 10));
    let errors = all_errors(&DEDUPE.replace("fields =", "field ="));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].hint.as_deref(), Some("did you mean `fields`?"));
    let e = first_error(&DEDUPE.replace("type = \"dedupe\"", "type = \"dedup\""));
    assert_eq!(e.hint.as_deref(), Some("did you mean `dedupe`?"), "{e}");
}

#[test]
fn a_dedupe_within_refuses_a_mix_of_event_and_processing_time() {
    let mixed = DEDUPE.replace(
        "[transforms.unique]\ntype = \"dedupe\"\ninputs = [\"orders\"]",
        "[sources.more]\ntype = \"file\"\npath = \"more.ndjson\"\n\n\
         [transforms.unique]\ntype = \"dedupe\"\ninputs = [\"orders\", \"more\"]",
    );
    let e = first_error(&mixed);
    assert!(e.message.contains("source(s) `more` provide none"), "{e}");
    assert_eq!(e.field.as_deref(), Some("transforms.unique"));
    // Without `within`, time plays no part.
    assert!(load_str(&mixed.replace("within = \"10m\"\n", "")).is_ok());
    // Without event time anywhere, `within` is processing time.
    assert!(load_str(&DEDUPE.replace("event_time = { field = \"ts\" }\n", "")).is_ok());
}

proptest::proptest! {
    /// No text given as a duration, window size or count makes loading
    /// panic; each either loads or gives errors.
    #[test]
    fn arbitrary_values_never_panic(
        value in proptest::prop_oneof![
            "\\PC{0,30}".prop_map(|s| format!("{s:?}")),
            "[0-9.]{1,25}(ms|s|m|h|d|)".prop_map(|s| format!("\"{s}\"")),
            proptest::num::i64::ANY.prop_map(|n| n.to_string()),
            proptest::num::f64::ANY.prop_map(|f| format!("{f:?}")),
        ],
        slot in 0usize..6,
    ) {
        let text = match slot {
            0 => format!("[checkpoint]\ninterval = {value}\n{GOOD}"),
            1 => GOOD.replace("size = \"1m\"", &format!("size = {value}")),
            2 => GOOD.replace("max_disorder = \"2s\"", &format!("max_disorder = {value}")),
            3 => GOOD.replace("window = { type = \"tumbling\", size = \"1m\" }",
                &format!("window = {{ type = \"hopping\", size = \"1h\", slide = {value} }}\nallowed_lateness = {value}")),
            4 => DEDUPE.replace("within = \"10m\"", &format!("within = {value}"))
                .replace("max_keys = 1000", &format!("max_keys = {value}")),
            _ => format!("[state]\nkey_groups = {value}\n[checkpoint]\nmax_pending_epochs = {value}\n{GOOD}"),
        };
        let _ = load_str(&text);
    }
}

#[test]
fn invalid_toml_is_located() {
    let e = first_error("[sources.x\ntype = 1");
    assert!(e.message.starts_with("invalid TOML"), "{e}");
    assert_eq!(e.line, 1);
}

#[test]
fn every_example_and_golden_pipeline_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for dir in ["examples", "tests/pipelines", "bench/pipelines"] {
        let Ok(entries) = walk(&root.join(dir)) else {
            continue;
        };
        for path in entries {
            // Pipelines using a connector behind a non-default feature
            // validate only in builds that have it.
            let needs_mongodb =
                std::fs::read_to_string(&path).is_ok_and(|t| t.contains("type = \"mongodb\""));
            if needs_mongodb && !cfg!(feature = "mongodb") {
                continue;
            }
            // Paths for the file variables, placeholder URLs for services,
            // nothing for the rest (their `${X:-default}` applies).
            let env = |name: &str| match name {
                "AMQP_URL" => Some("amqp://127.0.0.1:1/%2f".to_string()),
                "POSTGRES_URL" => Some("postgres://postgres@127.0.0.1:1/test".to_string()),
                "MONGODB_URI" => Some("mongodb://127.0.0.1:1/?replicaSet=rs0".to_string()),
                n if n.ends_with("_URL") || n.ends_with("_URI") => {
                    Some("redis://127.0.0.1:1/0".to_string())
                }
                n if n.ends_with("BROKERS") => Some("127.0.0.1:1".to_string()),
                "INPUT" | "OUTPUT" | "STATE_DIR" | "DEAD_LETTERS" => {
                    Some(format!("/tmp/sluice-validate/{name}"))
                }
                n if n.starts_with("BENCH_") => Some(format!("/tmp/sluice-validate/{name}")),
                // What `sluice` sets for the worker in effect.
                "SLUICE_WORKER_ID" => Some("0".to_string()),
                _ => None,
            };
            if let Err(errors) = load(&path, env) {
                panic!("{} does not validate: {}", path.display(), errors[0]);
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "expected example pipelines, found {checked}");
}

fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    Ok(out)
}

#[test]
fn the_cluster_section_loads_and_a_misspelt_one_is_suggested() {
    let p = load_str(&format!(
        "{GOOD}\n[cluster]\nlisten = \"0.0.0.0:7070\"\npeers = \"sluice-{{worker}}.sluice-headless:7070\"\n"
    ))
    .unwrap();
    let cluster = p.cluster.expect("[cluster]");
    assert_eq!(cluster.listen, "0.0.0.0:7070");
    assert!(load_str(GOOD).unwrap().cluster.is_none());
    let e = first_error(&format!("{GOOD}\n[clustr]\nlisten = \"0.0.0.0:7070\"\n"));
    assert!(e.message.contains("unknown section `clustr`"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `cluster`?"), "{e}");
}
