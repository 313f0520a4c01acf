//! A `dedupe` drops repeats silently for the data but visibly for the
//! operator: `sluice_dedupe_dropped_total` on `/metrics` counts them.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn dropped_repeats_are_counted_on_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(
        &input,
        "{\"id\":1,\"ts\":1000}\n{\"id\":2,\"ts\":1001}\n{\"id\":1,\"ts\":1002}\n\
         {\"id\":1,\"ts\":1003}\n{\"ts\":1004}\n{\"id\":3,\"ts\":1005}\n",
    )
    .unwrap();
    let admin = pick_port();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"[state]
dir = "{state}"
[checkpoint]
interval = "50ms"
[admin]
address = "127.0.0.1:{admin}"
[sources.events]
type = "file"
path = "{input}"
follow = true
poll_interval = "20ms"
event_time = {{ field = "ts" }}
[transforms.unique]
type = "dedupe"
inputs = ["events"]
fields = ["id"]
within = "1h"
[sinks.out]
type = "file"
inputs = ["unique"]
path = "{output}"
"#,
            state = dir.path().join("state").display(),
            input = input.display(),
            output = dir.path().join("out.ndjson").display(),
        ),
    )
    .unwrap();
    let log = dir.path().join("sluice.log");
    let mut child = spawn_serve(&pipeline, &[], &log);
    wait_for_port(admin, &mut child, &log);
    let want = "sluice_dedupe_dropped_total{component=\"unique\",component_kind=\"transform\"} 2";
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = String::new();
    while Instant::now() < deadline {
        body = http_request(admin, "GET", "/metrics", &[], b"")
            .map(|(_, b)| b)
            .unwrap_or_default();
        if body.lines().any(|l| l == want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    terminate(&mut child);
    assert!(body.lines().any(|l| l == want), "no `{want}` in\n{body}");
    let out = std::fs::read_to_string(dir.path().join("out.ndjson")).unwrap();
    let ids: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].clone())
        .collect();
    assert_eq!(ids, vec![1, 2, 3], "{out}");
    // The event without an id is a dead letter, not a drop.
    let dead = std::fs::read_to_string(dir.path().join("state/dead_letters.ndjson")).unwrap();
    assert_eq!(dead.lines().count(), 1, "{dead}");
    assert!(dead.contains("missing_field"), "{dead}");
}
