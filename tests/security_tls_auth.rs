//! TLS and bearer tokens on sluice's listeners, through the real binary and
//! `curl`: HTTPS ingest answers 202 durably (SIGKILL, restart, every event
//! counted once), plain HTTP to a TLS port fails, renewed certificate files
//! are served without a restart (a client trusting only the new CA gets
//! in), the admin token guards everything but `/health` and `/ready`; and
//! every block of docs/operations/tls-auth.md works as written. The test CA
//! and certificates are made at test time by the `openssl` commands the
//! page shows.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::worker::{Ready, Worker, READY_TIMEOUT};
use support::*;

const DOC: &str = "docs/operations/tls-auth.md";

use support::markdown::{blocks, Block};

fn doc_blocks() -> Vec<Block> {
    blocks(&std::fs::read_to_string(repo().join(DOC)).unwrap())
}

/// Runs `command` with bash in `dir`, the `sluice` under test first on the
/// PATH.
fn shell(dir: &Path) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_sluice")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.current_dir(dir)
        .env("PATH", path)
        .env("RUST_LOG", "info");
    cmd
}

fn run(dir: &Path, command: &str) -> Output {
    shell(dir).args(["-c", command]).output().unwrap()
}

fn text_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Makes `ca.pem`, `tls.crt` and `tls.key` in `dir` with the page's
/// `openssl` commands, as written.
fn make_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let block = doc_blocks()
        .into_iter()
        .find(|b| b.info == "sh" && b.text.starts_with("openssl"))
        .expect("the page shows the openssl commands");
    for command in block.text.lines() {
        let out = run(dir, command);
        assert!(out.status.success(), "{command}:\n{}", text_of(&out));
    }
}

/// `curl -s` with `args`: (exit status 0, stdout).
fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .arg("-s")
        .args(["--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `curl` over HTTPS trusting only `ca`: the status code, or None when no
/// HTTPS exchange happened (e.g. the certificate is not trusted).
fn https_status(ca: &Path, url: &str, extra: &[&str]) -> Option<u16> {
    let ca = ca.display().to_string();
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}", "--cacert", &ca];
    args.extend(extra);
    args.push(url);
    let (ok, code) = curl(&args);
    ok.then(|| code.parse().unwrap())
}

/// How long a change may take to show.
const EVENTUALLY: Duration = Duration::from_secs(20);

/// The sluice the page's `sluice run` block starts (through bash, so not a
/// [`Worker`]), killed if the test fails half-way (no stray process keeps a
/// port).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PIPELINE: &str = r#"
[pipeline]
name = "tls_auth"

[state]
dir = "${STATE}"

[checkpoint]
interval = "50ms"

[admin]
address = "127.0.0.1:${ADMIN_PORT}"
${ADMIN_TLS:-}
auth_token_env = "ADMIN_TOKEN"

[sources.web]
type = "http"
address = "127.0.0.1:${PORT}"
tls = { cert = "${CERT}", key = "${KEY}" }

[transforms.by_country]
type = "aggregate"
inputs = ["web"]
group_by = ["country"]
aggregates = { n = "count" }

[sinks.out]
type = "file"
inputs = ["by_country"]
path = "${OUTPUT}"
format = "changes"

[sinks.counts]
type = "table"
inputs = ["by_country"]
"#;

const ADMIN_TOKEN: &str = "admin-token-1";

/// The pipeline above in a fresh directory, its certificate from the
/// page's commands in `<dir>/a/`.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    admin_port: u16,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pipeline.toml"), PIPELINE).unwrap();
        make_certificates(&dir.path().join("a"));
        std::fs::create_dir(dir.path().join("live")).unwrap();
        let s = Setup {
            dir,
            port: pick_port(),
            admin_port: pick_port(),
        };
        s.install("a");
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> PathBuf {
        self.path("sluice.log")
    }

    /// Replaces the served pair with `<set>/tls.crt` and `<set>/tls.key`,
    /// each file by a rename (as the kubelet and cert-manager do).
    fn install(&self, set: &str) {
        for file in ["tls.crt", "tls.key"] {
            let next = self.path(&format!("live/{file}.next"));
            std::fs::copy(self.path(&format!("{set}/{file}")), &next).unwrap();
            std::fs::rename(&next, self.path(&format!("live/{file}"))).unwrap();
        }
    }

    /// Starts the pipeline and waits for both listeners.
    fn start(&self, admin_tls: bool) -> Worker {
        let tls = if admin_tls {
            format!(
                "tls = {{ cert = \"{}\", key = \"{}\" }}",
                self.path("live/tls.crt").display(),
                self.path("live/tls.key").display()
            )
        } else {
            String::new()
        };
        let env = [
            ("STATE", self.path("state").display().to_string()),
            ("OUTPUT", self.path("out.ndjson").display().to_string()),
            ("PORT", self.port.to_string()),
            ("ADMIN_PORT", self.admin_port.to_string()),
            ("CERT", self.path("live/tls.crt").display().to_string()),
            ("KEY", self.path("live/tls.key").display().to_string()),
            ("ADMIN_TLS", tls),
            ("ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ];
        let mut worker = Worker::new(&self.path("pipeline.toml"), &self.log()).envs(&env);
        self.wait_listening(worker.start());
        worker
    }

    fn wait_listening(&self, worker: &mut Worker) {
        worker
            .wait_ready(&Ready::Port(self.port))
            .wait_ready(&Ready::Port(self.admin_port));
    }

    fn ingest_url(&self) -> String {
        format!("https://127.0.0.1:{}/ingest", self.port)
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        materialize_so_far(&self.path("out.ndjson"))
            .into_iter()
            .map(|(k, v)| (k, v["n"].as_u64().unwrap()))
            .collect()
    }
}

const COUNTRIES: &[&str] = &["GT", "BR", "DE"];

#[test]
fn https_ingest_is_durable_and_plain_http_to_the_tls_port_fails() {
    let s = Setup::new();
    let ca = s.path("a/ca.pem");
    let mut want = BTreeMap::<String, u64>::new();
    let mut worker = s.start(false);
    for i in 0..30 {
        let country = COUNTRIES[i % COUNTRIES.len()];
        let body = format!("{{\"country\":\"{country}\"}}");
        let status = https_status(&ca, &s.ingest_url(), &["-d", &body]);
        assert_eq!(
            status,
            Some(202),
            "HTTPS POST {i}; see {}",
            s.log().display()
        );
        *want.entry(country.to_string()).or_default() += 1;
    }
    // Plain HTTP gets no HTTP answer, and nothing of it is stored.
    let plain = http_request(
        s.port,
        "POST",
        "/ingest",
        &[("Content-Type", "application/json")],
        b"{\"country\":\"PLAIN\"}",
    );
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    let metrics = || {
        http_request(
            s.admin_port,
            "GET",
            "/metrics",
            &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            b"",
        )
        .unwrap()
        .1
    };
    worker.wait_until("the failed handshake is counted", EVENTUALLY, || {
        metrics().lines().any(|l| {
            l.starts_with("sluice_errors_total")
                && l.contains("error_type=\"tls_handshake\"")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0)
        })
    });
    // 202 means durable: kill -9 right after the last one.
    let body = "{\"country\":\"GT\"}";
    assert_eq!(https_status(&ca, &s.ingest_url(), &["-d", body]), Some(202));
    *want.get_mut("GT").unwrap() += 1;
    assert!(worker.kill(), "sluice was not running at the SIGKILL");

    s.wait_listening(worker.start());
    worker.wait_until("every accepted event counted", EVENTUALLY, || {
        s.counts() == want
    });
    assert!(worker.terminate().success());
    assert_eq!(s.counts(), want, "after SIGKILL, restart and SIGTERM");
}

#[test]
fn renewed_certificate_files_are_served_without_a_restart() {
    let s = Setup::new();
    make_certificates(&s.path("b"));
    let (old_ca, new_ca) = (s.path("a/ca.pem"), s.path("b/ca.pem"));
    let mut worker = s.start(true);
    let admin = format!("https://127.0.0.1:{}/health", s.admin_port);
    let token = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let tables = format!("https://127.0.0.1:{}/tables", s.admin_port);
    let body = ["-d", "{\"country\":\"GT\"}"];
    assert_eq!(https_status(&old_ca, &s.ingest_url(), &body), Some(202));
    assert_eq!(https_status(&old_ca, &admin, &[]), Some(200));
    assert_eq!(https_status(&old_ca, &tables, &["-H", &token]), Some(200));
    assert_eq!(https_status(&new_ca, &s.ingest_url(), &body), None);
    assert_eq!(https_status(&new_ca, &admin, &[]), None);

    s.install("b");
    worker.wait_until(
        "the HTTP source serves the new certificate",
        EVENTUALLY,
        || https_status(&new_ca, &s.ingest_url(), &body) == Some(202),
    );
    worker.wait_until(
        "the admin server serves the new certificate",
        EVENTUALLY,
        || https_status(&new_ca, &admin, &[]) == Some(200),
    );
    assert_eq!(https_status(&old_ca, &s.ingest_url(), &body), None);
    assert_eq!(https_status(&old_ca, &admin, &[]), None);
    let log = std::fs::read_to_string(s.log()).unwrap();
    assert!(log.contains("TLS certificate reloaded"), "{log}");

    // A key that does not fit: logged, and the current pair stays.
    std::fs::copy(s.path("a/tls.key"), s.path("live/tls.key")).unwrap();
    worker.wait_until("the broken pair is reported", EVENTUALLY, || {
        std::fs::read_to_string(s.log())
            .unwrap()
            .contains("cannot be used; still serving the previous one")
    });
    assert_eq!(https_status(&new_ca, &s.ingest_url(), &body), Some(202));
    assert_eq!(https_status(&new_ca, &admin, &[]), Some(200));
    assert!(worker.terminate().success());
}

#[test]
fn the_admin_token_guards_everything_but_the_probes() {
    let s = Setup::new();
    let mut worker = s.start(false);
    let get = |path: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        http_request(s.admin_port, "GET", path, &headers, b"")
            .unwrap()
            .0
    };
    let right = format!("Bearer {ADMIN_TOKEN}");
    for path in ["/metrics", "/tables", "/tables/counts", "/tables/counts/GT"] {
        assert_eq!(get(path, None), 401, "{path} without a token");
        assert_eq!(get(path, Some("Bearer wrong")), 401, "{path}, wrong token");
    }
    assert_eq!(get("/metrics", Some(&right)), 200);
    assert_eq!(get("/tables", Some(&right)), 200);
    assert_eq!(get("/health", None), 200);
    worker.wait_until("/ready to answer 200 without a token", EVENTUALLY, || {
        get("/ready", None) == 200
    });
    assert!(worker.terminate().success());
}

#[test]
fn a_missing_token_variable_or_unusable_certificate_refuses_to_start() {
    let s = Setup::new();
    // (exit status, what it wrote)
    let run_with = |env: &[(&str, String)]| {
        let mut worker = Worker::new(&s.path("pipeline.toml"), &s.log()).envs(env);
        worker.start();
        let status = worker.wait_exit(READY_TIMEOUT);
        (status, worker.log_since_start())
    };
    let mut env = vec![
        ("STATE", s.path("state").display().to_string()),
        ("OUTPUT", s.path("out.ndjson").display().to_string()),
        ("PORT", pick_port().to_string()),
        ("ADMIN_PORT", pick_port().to_string()),
        ("CERT", s.path("live/tls.crt").display().to_string()),
        ("KEY", s.path("live/tls.key").display().to_string()),
    ];
    let (status, text) = run_with(&env);
    assert!(!status.success());
    assert!(text.contains("`ADMIN_TOKEN`"), "{text}");

    env.push(("ADMIN_TOKEN", ADMIN_TOKEN.into()));
    make_certificates(&s.path("b"));
    std::fs::copy(s.path("b/tls.key"), s.path("live/tls.key")).unwrap();
    let (status, text) = run_with(&env);
    assert!(!status.success());
    assert!(text.contains("do not go together"), "{text}");
}

/// Runs every block of the page: the openssl commands, the pipelines
/// (`sluice validate`), the run and curl commands with their outputs, the
/// Prometheus configuration (`promtool check config`).
#[test]
fn the_tls_auth_page_works_as_written() {
    let blocks = doc_blocks();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let log = dir.join("sluice.log");
    let mut server: Option<Running> = None;
    let mut i = 0;
    while i < blocks.len() {
        let b = &blocks[i];
        let at = format!("{DOC}:{}", b.line);
        let expected = blocks
            .get(i + 1)
            .filter(|n| n.info == "text")
            .map(|n| n.text.trim_end().to_string());
        match b.info.as_str() {
            "toml" => check_pipeline(dir, &b.text, &at),
            "sh" if b.text.contains("sluice run") => {
                assert!(server.is_none(), "{at}: a second sluice run");
                for port in [8443, 9443] {
                    assert!(
                        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
                        "{at}: port {port} is in use: stop whatever listens there"
                    );
                }
                let stderr = std::fs::File::create(&log).unwrap();
                let mut child = shell(dir)
                    .args(["-c", b.text.trim()])
                    .stdout(Stdio::null())
                    .stderr(stderr)
                    .spawn()
                    .unwrap();
                wait_for_port(8443, &mut child, &log);
                wait_for_port(9443, &mut child, &log);
                server = Some(Running(child));
            }
            "sh" => {
                let deadline = Instant::now() + Duration::from_secs(10);
                for command in b.text.lines() {
                    loop {
                        let out = run(dir, command);
                        let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
                        let done =
                            out.status.success() && expected.as_ref().is_none_or(|e| *e == text);
                        if done {
                            break;
                        }
                        // Results appear with the next checkpoint: retry.
                        assert!(
                            Instant::now() < deadline,
                            "{at}: `{command}` printed {text:?} ({}), expected {expected:?}; see {}",
                            out.status,
                            log.display()
                        );
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            "sh,fails" => {
                for command in b.text.lines() {
                    let out = run(dir, command);
                    assert!(!out.status.success(), "{at}: `{command}` succeeded");
                }
            }
            "yaml" if b.text.starts_with("scrape_configs") => {
                std::fs::write(dir.join("prometheus.yml"), &b.text).unwrap();
                std::fs::copy(dir.join("ca.pem"), dir.join("sluice-ca.pem")).unwrap();
                std::fs::write(dir.join("sluice-admin-token"), "admin-s3cret\n").unwrap();
                let out = run(dir, "promtool check config prometheus.yml");
                assert!(out.status.success(), "{at}: {}", text_of(&out));
            }
            "yaml" => {
                // The ServiceMonitor excerpt is what the shipped one says
                // (comments aside).
                let shipped = std::fs::read_to_string(
                    repo().join("deploy/k8s/overlays/production/servicemonitor.yaml"),
                )
                .unwrap();
                let excerpt: Vec<&str> = b.text.lines().skip(1).map(str::trim).collect();
                let shipped: Vec<&str> = shipped
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.starts_with('#'))
                    .collect();
                assert!(
                    shipped.windows(excerpt.len()).any(|w| w == excerpt),
                    "{at}: not in servicemonitor.yaml"
                );
            }
            "text" => {}
            other => panic!("{at}: unexpected block `{other}`"),
        }
        i += 1;
    }
    let mut server = server.expect("the page starts sluice");
    assert!(terminate(&mut server.0).success());
}

#[test]
fn the_http_source_page_tls_example_validates() {
    let page = "docs/connectors/http.md";
    let text = std::fs::read_to_string(repo().join(page)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let examples: Vec<Block> = blocks(&text)
        .into_iter()
        .filter(|b| b.info == "toml" && b.text.contains("tls ="))
        .collect();
    assert_eq!(examples.len(), 1, "{page}: one TLS example");
    for b in examples {
        check_pipeline(dir.path(), &b.text, &format!("{page}:{}", b.line));
    }
}

/// `sluice validate` on a pipeline block; a fragment gets a name and a sink.
fn check_pipeline(dir: &Path, text: &str, at: &str) {
    let mut pipeline = text.to_string();
    if !pipeline.contains("[pipeline]") {
        pipeline.push_str(
            "\n[pipeline]\nname = \"fragment\"\n\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"reports\"]\n",
        );
    }
    let path = dir.join("check.toml");
    std::fs::write(&path, pipeline).unwrap();
    let out = sluice().arg("validate").arg(&path).output().unwrap();
    assert!(out.status.success(), "{at}: {}", text_of(&out));
    if text.contains("[pipeline]") {
        std::fs::write(dir.join("pipeline.toml"), text).unwrap();
    }
}
