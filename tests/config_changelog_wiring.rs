//! `sluice validate` refuses wirings that cannot read an aggregate's
//! changelog, with the reason and where (issue 10, item 2), and accepts
//! those that can.

mod support;

use support::*;

const HEAD: &str = r#"
[pipeline]
name = "wiring"

[sources.reports]
type = "file"
path = "in.ndjson"
event_time = { field = "ts" }

[transforms.per_country]
type = "aggregate"
inputs = ["reports"]
group_by = ["country"]
aggregates = { reports = "count" }

[transforms.per_minute]
type = "aggregate"
inputs = ["reports"]
group_by = ["country"]
window = { type = "tumbling", size = "1m" }
aggregates = { reports = "count" }
"#;

fn validate(tail: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    let sinks = "\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"next\"]\n\n[sinks.rest]\ntype = \"stdout\"\ninputs = [\"per_country\", \"per_minute\"]\n";
    std::fs::write(&path, format!("{HEAD}{tail}{sinks}")).unwrap();
    let out = sluice().arg("validate").arg(&path).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn refused_wirings_say_why() {
    let cases = [
        (
            "[transforms.next]\ntype = \"aggregate\"\ninputs = [\"per_country\"]\naggregates = { first = { fn = \"first\", field = \"reports\" } }\n",
            "`first` uses `first`, which cannot",
        ),
        (
            "[transforms.next]\ntype = \"aggregate\"\ninputs = [\"per_minute\"]\nwindow = { type = \"session\", gap = \"1m\" }\naggregates = { n = \"count\" }\n",
            "a session window cannot",
        ),
        (
            "[transforms.next]\ntype = \"aggregate\"\ninputs = [\"per_country\"]\nwindow = { type = \"tumbling\", size = \"1m\" }\naggregates = { n = \"count\" }\n",
            "changelog of an all-time aggregate",
        ),
        (
            "[transforms.next]\ntype = \"key_by\"\ninputs = [\"per_country\"]\nfields = [\"country\"]\n",
            "`key_by` cannot re-key",
        ),
        (
            "[transforms.next]\ntype = \"dedupe\"\ninputs = [\"per_country\"]\nfields = [\"country\"]\nmax_keys = 10\n",
            "Put `dedupe` before the aggregate",
        ),
        (
            "[transforms.next]\ntype = \"aggregate\"\ninputs = [\"per_country\", \"reports\"]\naggregates = { n = \"count\" }\n",
            "together with other inputs",
        ),
    ];
    for (tail, reason) in cases {
        let (ok, text) = validate(tail);
        assert!(!ok, "validate accepted:\n{tail}\n{text}");
        assert!(text.contains(reason), "{reason:?} not in:\n{text}");
        assert!(text.contains("transforms.next"), "no location in:\n{text}");
    }
}

#[test]
fn retractable_wirings_are_accepted() {
    for tail in [
        "[transforms.next]\ntype = \"aggregate\"\ninputs = [\"per_country\"]\naggregates = { n = \"count\", top = { fn = \"max\", field = \"reports\" }, kinds = { fn = \"count_distinct\", field = \"reports\" } }\n",
        "[transforms.next]\ntype = \"aggregate\"\ninputs = [\"per_minute\"]\ngroup_by = [\"country\"]\nwindow = { type = \"tumbling\", size = \"5m\" }\naggregates = { reports = { fn = \"sum\", field = \"reports\" } }\n",
        "[transforms.busy]\ntype = \"filter\"\ninputs = [\"per_country\"]\ncondition = \"reports > 10\"\n\n[transforms.next]\ntype = \"aggregate\"\ninputs = [\"busy\"]\naggregates = { n = \"count\" }\n",
    ] {
        let (ok, text) = validate(tail);
        assert!(ok, "validate refused:\n{tail}\n{text}");
    }
}
