//! The file source on a directory: files read in name order as one stream,
//! new files picked up in follow mode, position kept across restarts.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

fn lines(range: std::ops::Range<usize>) -> String {
    range
        .map(|i| format!("{{\"i\":{i},\"k\":\"{}\"}}\n", i % 4))
        .collect()
}

#[test]
fn directory_in_name_order_with_new_files_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("part-001.ndjson"), lines(0..400)).unwrap();
    std::fs::write(input.join("part-002.ndjson"), lines(400..800)).unwrap();
    std::fs::write(input.join("ignored.txt"), "not json\n").unwrap();
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[state]
dir = "{state}"
[checkpoint]
interval = "50ms"
[sources.parts]
type = "file"
path = "{input}"
suffix = ".ndjson"
follow = true
poll_interval = "20ms"
[transforms.counts]
type = "aggregate"
inputs = ["parts"]
group_by = ["k"]
aggregates = {{ n = "count", last_i = {{ fn = "max", field = "i" }} }}
[sinks.out]
type = "file"
inputs = ["counts"]
path = "{out}"
format = "changes"
"#,
            state = dir.path().join("state").display(),
            input = input.display(),
            out = dir.path().join("out.ndjson").display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out.ndjson");
    let total = |t: &std::collections::BTreeMap<String, serde_json::Value>| -> i64 {
        t.values().map(|v| v["n"].as_i64().unwrap()).sum()
    };
    let wait_total = |want: i64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if total(&materialize_so_far(&out)) == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "expected {want} events counted, have {}",
            total(&materialize_so_far(&out))
        );
    };
    let mut child = sluice()
        .arg("run")
        .arg(&pipeline)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_total(800);
    std::fs::write(input.join("part-003.ndjson"), lines(800..1000)).unwrap();
    wait_total(1000);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::fs::write(input.join("part-004.ndjson"), lines(1000..1200)).unwrap();
    let mut child = sluice()
        .arg("run")
        .arg(&pipeline)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_total(1200);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let table = materialize(&out);
    for k in 0..4 {
        assert_eq!(table[&k.to_string()]["n"], 300, "key {k}");
    }
    assert_eq!(table["3"]["last_i"], 1199);
}
