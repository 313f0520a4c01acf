use super::*;

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
    let e = first_error(
        &GOOD.replace("[sinks.out]", "[transforms.f]\ntype = \"filter\"\ninputs = [\"weather\"]\ncondition = \"a = 1\"\n\n[sinks.out]"),
    );
    assert!(e.message.contains("use `==`"), "{e}");
    assert_eq!(e.field.as_deref(), Some("transforms.f"));
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
