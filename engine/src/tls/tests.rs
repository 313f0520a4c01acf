//! A test CA and server certificates made with the `openssl` command at test
//! time; a real rustls client connects over loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{TlsAcceptor, TlsConfig, TlsError, RELOAD_POLL};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `<tag>-ca.pem` and a certificate for localhost/127.0.0.1 signed by
/// it: (`<tag>.crt`, `<tag>.key`).
fn make_pair(dir: &Path, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca, ca_key) = (format!("{tag}-ca.pem"), format!("{tag}-ca.key"));
    let (crt, key, csr) = (
        format!("{tag}.crt"),
        format!("{tag}.key"),
        format!("{tag}.csr"),
    );
    let subject = format!("/CN=test CA {tag}");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout", &ca_key, "-out", &ca, "-days", "2", "-subj", &subject,
    ]);
    openssl(dir, &args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    args.extend(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
            "-out",
            &crt,
        ],
    );
    (dir.join(ca), dir.join(crt), dir.join(key))
}

/// Serves "hello" over TLS to every connection; returns the port.
async fn serve(acceptor: TlsAcceptor) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream, Duration::from_secs(5)).await {
                    let _ = tls.write_all(b"hello").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    port
}

/// Connects trusting only `ca`; what the server said.
async fn fetch(port: u16, ca: &Path) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let mut said = String::new();
    tls.read_to_string(&mut said).await?;
    Ok(said)
}

fn config(dir: &Path) -> TlsConfig {
    TlsConfig {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    }
}

fn install(from: &(PathBuf, PathBuf, PathBuf), to: &TlsConfig) {
    std::fs::copy(&from.1, &to.cert).unwrap();
    std::fs::copy(&from.2, &to.key).unwrap();
}

#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_pair(dir.path(), "a");
    let b = make_pair(dir.path(), "b");
    let mixed = TlsConfig {
        cert: a.1.clone(),
        key: b.2.clone(),
    };
    let err = TlsAcceptor::new(&mixed, "test").unwrap_err();
    assert!(matches!(err, TlsError::Pair { .. }), "{err}");
    let missing = TlsConfig {
        cert: dir.path().join("nope.crt"),
        key: a.2.clone(),
    };
    let err = TlsAcceptor::new(&missing, "test").unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    let not_pem = TlsConfig {
        cert: a.2.clone(),
        key: a.2.clone(),
    };
    let err = TlsAcceptor::new(&not_pem, "test").unwrap_err();
    assert!(matches!(err, TlsError::Certificate { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_is_served_and_a_broken_change_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_pair(dir.path(), "a");
    let b = make_pair(dir.path(), "b");
    let files = config(dir.path());
    install(&a, &files);
    let acceptor = TlsAcceptor::new(&files, "test").unwrap();
    let port = serve(acceptor.clone()).await;
    assert_eq!(fetch(port, &a.0).await.unwrap(), "hello");
    assert!(
        fetch(port, &b.0).await.is_err(),
        "CA b must not be trusted yet"
    );

    install(&b, &files);
    let deadline = Instant::now() + RELOAD_POLL * 8;
    while fetch(port, &b.0).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fetch(port, &a.0).await.is_err(),
        "the old certificate is still served"
    );

    // A half-done rotation: a new certificate whose key has not arrived.
    std::fs::copy(&a.1, &files.cert).unwrap();
    let seen = acceptor.polls();
    let deadline = Instant::now() + RELOAD_POLL * 8;
    while acceptor.polls() < seen + 2 {
        assert!(Instant::now() < deadline, "the files are not polled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fetch(port, &b.0).await.unwrap(), "hello");
    // The key arrives: the pair works again and is served.
    std::fs::copy(&a.2, &files.key).unwrap();
    let deadline = Instant::now() + RELOAD_POLL * 8;
    while fetch(port, &a.0).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the completed pair was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
