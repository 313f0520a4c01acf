//! Azure Blob Storage on loopback for the remote-state test on `az://`:
//! Azurite, which `tests/azurite.sh` installs and starts with the container
//! `sluice-tests` (anonymous read), and the environment a worker reads to
//! reach it (object_store's emulator settings: the well-known
//! `devstoreaccount1` account). Each test works under a prefix of its own.

use std::sync::Once;

/// The container tests/azurite.sh creates.
const CONTAINER: &str = "sluice-tests";

fn port() -> u16 {
    std::env::var("SLUICE_AZURITE_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(10000)
}

/// Makes sure Azurite runs (tests/azurite.sh, once per test binary).
fn start() {
    static START: Once = Once::new();
    START.call_once(|| {
        let status = std::process::Command::new("bash")
            .arg(super::repo().join("tests/azurite.sh"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("bash tests/azurite.sh");
        assert!(
            status.success(),
            "tests/azurite.sh could not start a Blob API with conditional creates"
        );
    });
}

/// A prefix of its own in the shared container.
pub struct Prefix {
    name: String,
}

impl Prefix {
    /// A fresh prefix made from `test`, on a running Azurite.
    pub fn new(test: &str) -> Prefix {
        start();
        Prefix {
            name: super::services::unique(test).replace('_', "-"),
        }
    }

    /// The `[state] remote` URL of this prefix.
    pub fn url(&self) -> String {
        format!("az://{CONTAINER}/{}", self.name)
    }

    /// What a worker needs in its environment to reach Azurite.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            (
                "AZURITE_BLOB_STORAGE_URL".into(),
                format!("http://127.0.0.1:{}", port()),
            ),
        ]
    }

    /// How many blobs are under this prefix (List Blobs, page by page).
    pub fn blobs(&self) -> usize {
        let mut count = 0;
        let mut marker = String::new();
        loop {
            let path = format!(
                "/devstoreaccount1/{CONTAINER}?restype=container&comp=list&prefix={}/&marker={marker}",
                self.name
            );
            let (status, body) = super::http_request(port(), "GET", &path, &[], b"")
                .unwrap_or_else(|e| panic!("listing {path}: {e}"));
            assert_eq!(status, 200, "listing {path}: {body}");
            count += body.matches("<Name>").count();
            match between(&body, "<NextMarker>", "</NextMarker>") {
                Some(next) if !next.is_empty() => marker = next.to_string(),
                _ => return count,
            }
        }
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}
