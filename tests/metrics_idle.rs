//! An idle pipeline is healthy: with nothing left to checkpoint, sluice
//! keeps `sluice_checkpoint_last_success_timestamp_seconds` current, so
//! `SluiceCheckpointStale` does not fire on a quiet pipeline (issue 14).

mod support;

use std::time::{Duration, Instant};

use support::*;

const PIPELINE: &str = r#"
[pipeline]
name = "idle"

[state]
dir = "${STATE}"

[checkpoint]
interval = "100ms"

[admin]
address = "127.0.0.1:${ADMIN_PORT}"

[sources.web]
type = "http"
address = "127.0.0.1:${PORT}"

[transforms.counts]
type = "aggregate"
inputs = ["web"]
aggregates = { n = "count" }

[sinks.out]
type = "stdout"
inputs = ["counts"]
"#;

fn last_success(admin: u16) -> Option<f64> {
    let (_, body) = http_request(admin, "GET", "/metrics", &[], b"").ok()?;
    body.lines()
        .find(|l| l.starts_with("sluice_checkpoint_last_success_timestamp_seconds{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn an_idle_pipeline_keeps_its_last_checkpoint_time_current() {
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
    let (status, _) = http_request(port, "POST", "/ingest", &[], br#"{"a":1}"#).unwrap();
    assert_eq!(status, 202);
    // Wait for the one checkpoint the event causes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(t) = last_success(admin).filter(|&t| t > 0.0) {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Idle from here on: the time must still move forward.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = last_success(admin).unwrap_or(0.0);
        if now >= first + 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last-success time stayed at {first} while idle; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(terminate(&mut child).success());
}
