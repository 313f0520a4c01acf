//! TLS for sluice's own listeners (the HTTP source, the admin server): a
//! certificate chain and its private key read from PEM files, and read
//! again when the files change, so that a renewed certificate (cert-manager,
//! a rotated Kubernetes Secret) is served without a restart.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

/// How often the certificate and key files are read again to see whether
/// they changed.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// `tls = { cert = "...", key = "..." }`: serve HTTPS with this certificate.
///
/// ```toml
/// tls = { cert = "/etc/sluice/tls/tls.crt", key = "/etc/sluice/tls/tls.key" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate first, then any intermediate
    /// certificates. Read again every few seconds: when it changes, new
    /// connections get the new certificate.
    pub cert: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1/RSA or
    /// SEC1/EC). Read again together with `cert`.
    pub key: PathBuf,
}

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the TLS {what} file {}: {source}", path.display())]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    #[error("{}: no PEM certificate in it ({detail})", path.display())]
    /// The certificate file holds no PEM certificate.
    Certificate {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    #[error("{}: no usable PEM private key in it, PKCS#8, PKCS#1 or SEC1 expected ({detail})", path.display())]
    /// The key file holds no usable private key.
    Key {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    #[error("the TLS certificate {} and key {} do not go together: {detail}", cert.display(), key.display())]
    /// The key does not belong to the certificate.
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        detail: String,
    },
}

/// Accepts TLS connections with the certificate of a [`TlsConfig`], watching
/// its files: every [`RELOAD_POLL`] they are read again, and a changed pair
/// serves every handshake from then on. A changed pair that cannot be used
/// (unparsable, or a key that does not match the certificate, e.g. while
/// only one of the two files has been replaced) is logged as an error and
/// the previous pair is kept. Cloning shares the certificate; the watching
/// stops once every clone is dropped.
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    #[cfg(test)]
    current: Arc<Current>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

impl TlsAcceptor {
    /// Loads the certificate and key, failing if they cannot be used, and
    /// starts watching the files. `listener` names the listener in logs.
    /// Must be called inside a tokio runtime.
    pub fn new(config: &TlsConfig, listener: &str) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = Files::read(config)?;
        let key = files.certified_key(config, &provider)?;
        let current = Arc::new(Current {
            key: RwLock::new(Arc::new(key)),
            polls: AtomicU64::new(0),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair {
                cert: config.cert.clone(),
                key: config.key.clone(),
                detail: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio::spawn(watch(
            Arc::downgrade(&current),
            config.clone(),
            files,
            provider,
            listener.to_string(),
        ));
        Ok(TlsAcceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            #[cfg(test)]
            current,
        })
    }

    /// Times the files were read again so far.
    #[cfg(test)]
    fn polls(&self) -> u64 {
        self.current.polls.load(Ordering::SeqCst)
    }

    /// Runs the TLS handshake on an accepted connection, giving up after
    /// `timeout` (a client that connects and sends nothing must not hold
    /// the connection forever).
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        timeout: Duration,
    ) -> io::Result<tokio_rustls::server::TlsStream<S>> {
        match tokio::time::timeout(timeout, self.acceptor.accept(stream)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake not completed in time",
            )),
        }
    }
}

/// The pair in use, handed to every handshake.
#[derive(Debug)]
struct Current {
    key: RwLock<Arc<CertifiedKey>>,
    /// Times the files were read again (tests wait on it).
    polls: AtomicU64,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.key
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// The bytes of both files, as last read.
#[derive(PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Files {
    fn read(config: &TlsConfig) -> Result<Files, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(Files {
            cert: read("certificate", &config.cert)?,
            key: read("key", &config.key)?,
        })
    }

    fn certified_key(
        &self,
        config: &TlsConfig,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Certificate {
                path: config.cert.clone(),
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Certificate {
                path: config.cert.clone(),
                detail: "no `BEGIN CERTIFICATE` section".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| TlsError::Key {
            path: config.key.clone(),
            detail: e.to_string(),
        })?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Pair {
            cert: config.cert.clone(),
            key: config.key.clone(),
            detail: e.to_string(),
        })
    }
}

/// Reads the files every [`RELOAD_POLL`] while the acceptor lives.
async fn watch(
    current: Weak<Current>,
    config: TlsConfig,
    mut in_use: Files,
    provider: Arc<CryptoProvider>,
    listener: String,
) {
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(RELOAD_POLL).await;
        let Some(current) = current.upgrade() else {
            return;
        };
        poll(
            &current,
            &config,
            &mut in_use,
            &provider,
            &listener,
            &mut last_error,
        )
        .await;
        current.polls.fetch_add(1, Ordering::SeqCst);
    }
}

/// One look at the files: swaps in a changed pair that works, logs one
/// that does not (once per distinct error).
async fn poll(
    current: &Current,
    config: &TlsConfig,
    in_use: &mut Files,
    provider: &CryptoProvider,
    listener: &str,
    last_error: &mut Option<String>,
) {
    let read = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Files::read(&config)).await
    };
    let loaded = match read {
        Ok(Ok(files)) if files == *in_use => {
            *last_error = None;
            return;
        }
        Ok(Ok(files)) => files
            .certified_key(config, provider)
            .map(|key| (files, key)),
        Ok(Err(e)) => Err(e),
        Err(_) => return, // the runtime is shutting down
    };
    match loaded {
        Ok((files, key)) => {
            *current.key.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
            *in_use = files;
            *last_error = None;
            tracing::info!(listener = %listener, cert = %config.cert.display(), "TLS certificate reloaded");
        }
        Err(e) => {
            let message = e.to_string();
            if last_error.as_deref() != Some(message.as_str()) {
                tracing::error!(listener = %listener, error = %message, "TLS certificate or key changed but cannot be used; still serving the previous one");
                *last_error = Some(message);
            }
        }
    }
}

#[cfg(test)]
mod tests;
