//! `/tables/<name>` of windowed results: newest window first
//! (`order=newest`, paged by offset) and only the latest window
//! (`window_start=latest`).

mod support;

use std::time::{Duration, Instant};

use support::*;

const PIPELINE: &str = r#"
[pipeline]
name = "tables_query"

[state]
dir = "${STATE}"

[checkpoint]
interval = "50ms"

[admin]
address = "127.0.0.1:${ADMIN_PORT}"

[sources.web]
type = "http"
address = "127.0.0.1:${PORT}"
event_time = { field = "ts" }

[transforms.per_minute]
type = "aggregate"
inputs = ["web"]
group_by = ["country"]
window = { type = "tumbling", size = "1m" }
emit = "updates"
aggregates = { n = "count" }

[sinks.minutes]
type = "table"
inputs = ["per_minute"]
"#;

fn get(admin: u16, path: &str) -> serde_json::Value {
    let (status, body) = http_request(admin, "GET", path, &[], b"").unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    assert!(
        body.ends_with("}\n"),
        "a JSON reply ends with a newline: {body:?}"
    );
    serde_json::from_str(&body).unwrap()
}

fn ids(page: &serde_json::Value) -> Vec<String> {
    page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn windowed_tables_read_newest_first_and_by_latest_window() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (pick_port(), pick_port());
    std::fs::write(dir.path().join("p.toml"), PIPELINE).unwrap();
    let log = dir.path().join("sluice.log");
    let env = [
        ("STATE", dir.path().join("state").display().to_string()),
        ("PORT", port.to_string()),
        ("ADMIN_PORT", admin.to_string()),
    ];
    let mut child = spawn_serve(&dir.path().join("p.toml"), &env, &log);
    wait_for_port(port, &mut child, &log);
    wait_for_port(admin, &mut child, &log);
    // Three minutes, two countries each: six rows.
    let mut body = String::new();
    for minute in 0..3i64 {
        for c in ["AR", "GT"] {
            body.push_str(&format!(
                "{{\"country\":\"{c}\",\"ts\":{}}}\n",
                1_732_147_200_000 + minute * 60_000 + 5
            ));
        }
    }
    let (status, _) = http_request(
        port,
        "POST",
        "/ingest",
        &[("Content-Type", "application/x-ndjson")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(admin, "/tables/minutes?limit=100")["rows"]
        .as_array()
        .unwrap()
        .len()
        < 6
    {
        assert!(
            Instant::now() < deadline,
            "rows missing; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let by_id = ids(&get(admin, "/tables/minutes?limit=100"));
    assert_eq!(by_id[0], "AR|1732147200000", "{by_id:?}");
    let newest = get(admin, "/tables/minutes?order=newest&limit=4");
    assert_eq!(
        ids(&newest),
        vec![
            "AR|1732147320000",
            "GT|1732147320000",
            "AR|1732147260000",
            "GT|1732147260000"
        ]
    );
    assert_eq!(newest["next"], "4");
    let rest = get(admin, "/tables/minutes?order=newest&limit=4&offset=4");
    assert_eq!(ids(&rest), vec!["AR|1732147200000", "GT|1732147200000"]);
    assert!(rest["next"].is_null());
    let latest = get(admin, "/tables/minutes?window_start=latest");
    assert_eq!(ids(&latest), vec!["AR|1732147320000", "GT|1732147320000"]);
    let (status, _) = http_request(admin, "GET", "/tables/minutes?order=oldest", &[], b"").unwrap();
    assert_eq!(status, 400);
    assert!(terminate(&mut child).success());
}
