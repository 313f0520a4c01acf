//! An S3 API on loopback for the remote-state tests (issue 13): the shared
//! moto server that `tests/s3.sh` starts, a fresh bucket per test on it,
//! the environment a worker reads to reach it (object_store's `from_env`),
//! and a private `moto_server` on a free port that a test may freeze
//! (SIGSTOP) and thaw without disturbing the tests running beside it.
//!
//! moto accepts unsigned requests for what the tests do themselves
//! (create a bucket, list it); sluice signs its own with the test
//! credentials. moto keeps everything in memory: nothing is left on disk.

use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use super::services::{free_port, unique};

/// The port of the shared server (`SLUICE_S3_PORT`, as tests/s3.sh reads it).
fn shared_port() -> u16 {
    std::env::var("SLUICE_S3_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5100)
}

/// The shared S3 API (tests/s3.sh), after making sure it runs: its port.
pub fn shared_server() -> u16 {
    static START: Once = Once::new();
    START.call_once(|| {
        let status = Command::new("bash")
            .arg(super::repo().join("tests/s3.sh"))
            .stdout(Stdio::null())
            .status()
            .expect("bash tests/s3.sh");
        assert!(
            status.success(),
            "tests/s3.sh could not start an S3 API with conditional writes"
        );
    });
    shared_port()
}

/// A bucket of one test on the S3 API at 127.0.0.1:`port`.
pub struct Bucket {
    pub port: u16,
    pub name: String,
}

impl Bucket {
    /// Creates a bucket with a name no other test uses (S3 rules: lower
    /// case, digits and `-`, at most 63 characters).
    pub fn create(port: u16, test: &str) -> Bucket {
        let name: String = unique(test)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        // Keep the unique tail (pid and nanoseconds) when the test name is long.
        let name = format!("s-{}", &name[name.len().saturating_sub(60)..]);
        let (status, body) = super::http_request(port, "PUT", &format!("/{name}"), &[], b"")
            .unwrap_or_else(|e| panic!("no S3 API on 127.0.0.1:{port} ({e}): run tests/s3.sh"));
        assert_eq!(status, 200, "create bucket {name}: {body}");
        Bucket { port, name }
    }

    /// A fresh bucket on the shared server.
    pub fn shared(test: &str) -> Bucket {
        Bucket::create(shared_server(), test)
    }

    /// The `[state] remote` URL of `prefix` in this bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.name)
    }

    /// What a worker needs in its environment to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        env_for(self.port)
    }

    /// The names of every object under `prefix` (ListObjectsV2, page by page).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!(
                "/{}?list-type=2&prefix={}",
                self.name,
                percent_encode(prefix)
            );
            if let Some(t) = &token {
                path.push_str(&format!("&continuation-token={}", percent_encode(t)));
            }
            let (status, body) = super::http_request(self.port, "GET", &path, &[], b"")
                .unwrap_or_else(|e| panic!("list {}: {e}", self.name));
            assert_eq!(status, 200, "list {}: {body}", self.name);
            keys.extend(xml_values(&body, "Key"));
            token = xml_values(&body, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none() {
                return keys;
            }
        }
    }
}

/// The variables object_store's `AmazonS3Builder::from_env` reads, for the
/// S3 API at 127.0.0.1:`port` (the same as `tests/s3.sh --env`).
pub fn env_for(port: u16) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The text of every `<tag>...</tag>` in `xml`, unescaped.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let end = after.find(&close).expect("unclosed XML element");
        out.push(
            after[..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[end + close.len()..];
    }
    out
}

/// `s` with every byte outside RFC 3986's unreserved set percent-encoded.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A private `moto_server` on a free port, killed on drop. Its buckets
/// live as long as the process.
pub struct PrivateS3 {
    pub port: u16,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl PrivateS3 {
    /// Starts `moto_server` (from PATH, else where tests/s3.sh installs
    /// it) and waits until it answers.
    pub fn start() -> PrivateS3 {
        // tests/s3.sh installs moto when it is missing.
        shared_server();
        let tools =
            std::env::var("SLUICE_TOOLS").unwrap_or_else(|_| "/root/.cache/sluice-tools".into());
        let installed = std::path::Path::new(&tools).join("moto/bin/moto_server");
        let program = if installed.exists() {
            installed.into_os_string()
        } else {
            "moto_server".into()
        };
        let port = free_port();
        let log = tempfile::Builder::new()
            .prefix("sluice-private-moto-")
            .suffix(".log")
            .tempfile()
            .unwrap();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program:?}: {e} (run tests/s3.sh)"));
        let mut s3 = PrivateS3 { port, child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !s3.answers() {
            if let Some(status) = s3.child.try_wait().unwrap() {
                panic!(
                    "private moto_server exited ({status}): {}",
                    std::fs::read_to_string(s3.log.path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "private moto_server does not answer on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s3
    }

    fn answers(&self) -> bool {
        super::http_request(self.port, "GET", "/", &[], b"").is_ok_and(|(s, _)| s == 200)
    }

    /// A fresh bucket on this server.
    pub fn bucket(&self, test: &str) -> Bucket {
        Bucket::create(self.port, test)
    }

    /// SIGSTOP: the server keeps its socket (connections are accepted by
    /// the kernel) but answers nothing. Returns once the process is stopped.
    pub fn freeze(&self) {
        self.signal("STOP");
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        // The state is the field after the parenthesised command name.
        while !std::fs::read_to_string(&stat)
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('T')))
        {
            assert!(Instant::now() < deadline, "moto_server did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} moto_server failed");
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
