//! The status page in a real browser: sluice runs with an HTTP source and
//! the admin server, events are posted, and headless Chromium loads `GET /`.
//! The rendered DOM must show the graph's components with the numbers of
//! `/status` (so the page's JavaScript ran), and those numbers must move
//! while events flow. A screenshot is kept in `target/status-page.png`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::worker::{Ready, Worker};
use support::*;

/// A running sluice (killed on drop, before its directory goes).
struct Running {
    worker: Worker,
    admin: u16,
    ingest: u16,
    dir: tempfile::TempDir,
}

fn start() -> Running {
    start_with("", &[])
}

/// Starts the pipeline with `admin_extra` added to its `[admin]` table and
/// `env` set.
fn start_with(admin_extra: &str, env: &[(&str, String)]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (pick_port(), pick_port());
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[pipeline]
name = "shop"
[state]
dir = "{state}"
[checkpoint]
interval = "200ms"
[admin]
address = "127.0.0.1:{admin}"
{admin_extra}
[sources.orders]
type = "http"
address = "127.0.0.1:{ingest}"
event_time = {{ field = "ts", max_disorder = "1s" }}
[transforms.paid]
type = "filter"
inputs = ["orders"]
condition = "status == 'paid'"
[transforms.per_country]
type = "aggregate"
inputs = ["paid"]
group_by = ["country"]
aggregates = {{ n = "count" }}
[sinks.totals]
type = "table"
inputs = ["per_country"]
[sinks.archive]
type = "file"
inputs = ["per_country"]
path = "{out}"
"#,
            state = dir.path().join("state").display(),
            out = dir.path().join("out.ndjson").display()
        ),
    )
    .unwrap();
    let mut worker = Worker::new(&pipeline, &dir.path().join("log")).envs(env);
    worker
        .start()
        .wait_ready(&Ready::Port(admin))
        .wait_ready(&Ready::Port(ingest));
    Running {
        worker,
        admin,
        ingest,
        dir,
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Posts `n` paid orders; returns how many were accepted.
fn post_orders(ingest: u16, n: usize) -> u64 {
    let ts = now_ms();
    let body: String = (0..n)
        .map(|i| {
            format!(
                "{{\"ts\":{ts},\"country\":\"{}\",\"status\":\"paid\"}}\n",
                ["GT", "MX", "CR"][i % 3]
            )
        })
        .collect();
    let (status, reply) = http_request(
        ingest,
        "POST",
        "/ingest",
        &[("Content-Type", "application/x-ndjson")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 202, "{reply}");
    n as u64
}

fn status(admin: u16) -> serde_json::Value {
    let (code, body) = http_request(admin, "GET", "/status", &[], b"").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn node<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node `{name}` in {s}"))
}

/// Polls `/status` until `done` holds (at most 20 s); returns that status.
fn wait_status(
    r: &mut Running,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let admin = r.admin;
    let mut last = serde_json::Value::Null;
    r.worker.wait_until(what, Duration::from_secs(20), || {
        last = status(admin);
        done(&last)
    });
    last
}

fn chromium() -> String {
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "chromium is not installed (tests/run.sh installs Debian's `chromium`; or `apt-get install -y chromium`)"
    );
    "chromium".into()
}

/// Runs headless Chromium on the status page with `args` (after the
/// common ones); returns stdout.
fn browse(admin: u16, profile: &Path, args: &[&str]) -> String {
    browse_url(&format!("http://127.0.0.1:{admin}/"), profile, args)
}

fn browse_url(url: &str, profile: &Path, args: &[&str]) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn dump_dom(r: &Running) -> String {
    browse(r.admin, &r.dir.path().join("chromium"), &["--dump-dom"])
}

/// The text of `<... data-metric="key">TEXT<` inside the box of `node`
/// (or, with `node` None, anywhere in the page).
fn shown(dom: &str, node: Option<&str>, key: &str) -> String {
    let scope = match node {
        Some(name) => {
            let marker = format!("data-node=\"{name}\"");
            let start = dom
                .find(&marker)
                .unwrap_or_else(|| panic!("the page shows no box for `{name}`:\n{dom}"));
            let rest = &dom[start + marker.len()..];
            let end = rest.find("data-node=\"").unwrap_or(rest.len());
            &rest[..end]
        }
        None => dom,
    };
    let marker = format!("data-metric=\"{key}\">");
    let start = scope
        .find(&marker)
        .unwrap_or_else(|| panic!("no visible `{key}` for {node:?} in the page:\n{dom}"))
        + marker.len();
    scope[start..].split('<').next().unwrap().to_string()
}

fn number(text: &str) -> f64 {
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("`{text}` is not a number"))
}

fn artefact_path() -> PathBuf {
    // target/<profile>/sluice -> target/status-page.png
    Path::new(env!("CARGO_BIN_EXE_sluice"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("status-page.png")
}

#[test]
fn status_page_renders_the_graph_and_live_numbers_in_a_browser() {
    let mut r = start();
    assert_eq!(post_orders(r.ingest, 250), 250);
    // one event without its event time: a dead letter of `orders`
    let (code, _) =
        http_request(r.ingest, "POST", "/ingest", &[], b"{\"country\":\"GT\"}").unwrap();
    assert_eq!(code, 202);
    let first = wait_status(
        &mut r,
        "251 events, a checkpoint and records in `totals`",
        |s| {
            node(s, "orders")["metrics"]["events_total"] == 251.0
                && s["checkpoint"]["epoch"].as_f64() >= Some(1.0)
                && node(s, "totals")["metrics"]["events_total"].as_f64() > Some(0.0)
                && s["dead_letter"]["total"] == 1.0
        },
    );
    assert_eq!(first["pipeline"], "shop");
    let kinds: Vec<_> = first["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            format!(
                "{} {} {} {}",
                n["name"].as_str().unwrap(),
                n["kind"].as_str().unwrap(),
                n["type"].as_str().unwrap(),
                n["column"]
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "orders source http 0",
            "paid transform filter 1",
            "per_country transform aggregate 2",
            "archive sink file 3",
            "totals sink table 3",
        ]
    );
    assert!(first["checkpoint"]["last_duration_seconds"].as_f64() > Some(0.0));
    assert!(first["checkpoint"]["size_bytes"].as_f64() > Some(0.0));
    assert_eq!(
        node(&first, "orders")["metrics"]["dead_letters"]["missing_field"],
        1.0
    );

    // The page, rendered by the browser: every component, with the numbers
    // of /status.
    let dom = dump_dom(&r);
    for name in ["orders", "paid", "per_country", "totals", "archive"] {
        assert!(
            dom.contains(&format!("data-node=\"{name}\"")),
            "no `{name}`:\n{dom}"
        );
    }
    assert!(
        dom.contains("<div class=\"pipeline\" id=\"pipeline\">shop</div>"),
        "{dom}"
    );
    assert!(dom.contains(">ready</div>"), "{dom}");
    assert_eq!(shown(&dom, Some("orders"), "events_total"), "251");
    assert_eq!(shown(&dom, Some("orders"), "dead_letters"), "1");
    assert!(dom.contains("missing_field 1"), "{dom}");
    assert_eq!(shown(&dom, None, "dead_letters_total"), "1");
    assert!(number(&shown(&dom, None, "epoch")) >= 1.0, "{dom}");
    assert!(
        shown(&dom, None, "last_duration_seconds").ends_with(" ms"),
        "{dom}"
    );
    assert!(shown(&dom, None, "size_bytes").ends_with(" B"), "{dom}");
    assert!(number(&shown(&dom, Some("totals"), "events_total")) > 0.0);
    assert_eq!(shown(&dom, Some("per_country"), "state_keys"), "3");

    // Idle: once the first posts leave the rate window, the rate is 0.
    wait_status(&mut r, "the event rate to fall to 0", |s| {
        node(s, "orders")["metrics"]["events_per_second"] == 0.0
    });
    // Events flow: the rates and the totals move, in /status and on the page.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flow = {
        let (stop, sent, ingest) = (stop.clone(), sent.clone(), r.ingest);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                sent.fetch_add(post_orders(ingest, 20), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let flowing = wait_status(&mut r, "a positive event rate", |s| {
        node(s, "orders")["metrics"]["events_per_second"].as_f64() > Some(0.0)
    });
    assert!(node(&flowing, "orders")["metrics"]["events_total"].as_f64() > Some(251.0));
    let dom = dump_dom(&r);
    let png = artefact_path();
    let _ = std::fs::remove_file(&png);
    browse(
        r.admin,
        &r.dir.path().join("chromium"),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
        ],
    );
    stop.store(true, Ordering::SeqCst);
    flow.join().unwrap();

    let rate = number(&shown(&dom, Some("orders"), "events_per_second"));
    assert!(rate > 0.0, "events/s on the page: {rate}");
    let total = number(&shown(&dom, Some("orders"), "events_total"));
    assert!(total > 251.0, "the page's total did not move: {total}");
    assert!(dom.contains("class=\"edge flowing\""), "{dom}");

    let sent = 251 + sent.load(Ordering::SeqCst);
    wait_status(&mut r, "every posted event counted", |s| {
        node(s, "orders")["metrics"]["events_total"] == sent as f64
    });

    let image = std::fs::read(&png).unwrap();
    assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(image[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(image[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 900));
    println!("status page screenshot: {}", png.display());
}

/// The page loads nothing from elsewhere: every `src`/`href` is a path on
/// the admin server, and the stylesheet imports nothing.
#[test]
fn status_page_is_self_contained() {
    let r = start();
    let (code, html) = http_request(r.admin, "GET", "/", &[], b"").unwrap();
    assert_eq!(code, 200);
    let mut refs = 0;
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let target = &html[i + attr.len()..];
            assert!(
                target.starts_with('/'),
                "external reference: {}",
                &target[..40.min(target.len())]
            );
            let path = target.split('"').next().unwrap();
            let (code, body) = http_request(r.admin, "GET", path, &[], b"").unwrap();
            assert_eq!(code, 200, "{path}");
            assert!(!body.is_empty(), "{path}");
            if path.ends_with(".css") {
                assert!(
                    !body.contains("@import") && !body.contains("url("),
                    "{body}"
                );
            }
            refs += 1;
        }
    }
    assert_eq!(refs, 2, "expected the stylesheet and the script:\n{html}");
}

/// With `[admin] auth_token_env`, the page's files stay open (they hold no
/// data), `/status` needs the token, and the page opened as `/#token=...`
/// sends it and shows the numbers.
#[test]
fn status_page_sends_the_admin_token_from_its_url_fragment() {
    let var = "SLUICE_STATUS_PAGE_TEST_TOKEN";
    let mut r = start_with(
        &format!("auth_token_env = \"{var}\""),
        &[(var, "s3cret-page".to_string())],
    );
    let posted = post_orders(r.ingest, 40);
    let admin = r.admin;
    let get =
        |path: &str, auth: &[(&str, &str)]| http_request(admin, "GET", path, auth, b"").unwrap().0;
    assert_eq!(get("/", &[]), 200);
    assert_eq!(get("/assets/status.js", &[]), 200);
    assert_eq!(get("/status", &[]), 401);
    assert_eq!(get("/metrics", &[]), 401);
    assert_eq!(
        get("/status", &[("Authorization", "Bearer s3cret-page")]),
        200
    );
    // The page fetches /status with the token from its fragment.
    let url = format!("http://127.0.0.1:{admin}/#token=s3cret-page");
    let profile = r.dir.path().join("chromium-token");
    r.worker.wait_until(
        &format!("the page to show the {posted} events"),
        Duration::from_secs(30),
        || {
            let dom = browse_url(&url, &profile, &["--dump-dom"]);
            number(&shown(&dom, Some("orders"), "events_total")) as u64 >= posted
        },
    );
    // Without the token the page cannot read /status.
    let dom = browse_url(
        &format!("http://127.0.0.1:{}/", r.admin),
        &r.dir.path().join("chromium-none"),
        &["--dump-dom"],
    );
    assert!(
        !dom.contains("data-metric=\"events_total\""),
        "the page showed data without the token:\n{dom}"
    );
}
