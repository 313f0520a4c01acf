//! Talking to RabbitMQ (AMQP 0-9-1, through lapin), shared by the AMQP
//! source and sink: checking broker URLs when the pipeline is loaded,
//! connecting with a time limit, telling errors worth retrying (broker down,
//! connection forced closed) from mistakes to fix (bad credentials, a
//! missing queue), and reconnect backoff with jitter.
//!
//! Every (re)connect goes through [`connect`], which hands the URL to lapin:
//! the host name is resolved again each time, so a broker that moved (a
//! restarted pod with a new address) is found.

use std::str::FromStr;
use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};
use serde::{Deserialize, Deserializer};
use sluice_engine::error::Invalid;
use sluice_engine::sink::backoff_delay;

/// What went wrong talking to the broker, sorted by what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AmqpError {
    /// Retrying cannot help: bad credentials or vhost, a missing queue or
    /// exchange, a declaration that conflicts with the existing one.
    #[error("{context}: {message}")]
    Fatal { context: String, message: String },
    /// The broker is unreachable, restarting, or dropped the connection:
    /// reconnect with backoff.
    #[error("{context}: {message}")]
    Retry { context: String, message: String },
}

impl AmqpError {
    pub fn is_fatal(&self) -> bool {
        matches!(self, AmqpError::Fatal { .. })
    }
}

/// Sorts a lapin error: channel or connection refusals that mean "fix the
/// configuration" are fatal, everything else (I/O, forced closes, missed
/// heartbeats, timeouts) is retried.
pub fn classify(context: impl Into<String>, error: &lapin::Error) -> AmqpError {
    let context = context.into();
    let message = error.to_string();
    let fatal = match error.kind() {
        ErrorKind::ProtocolError(e) => matches!(
            e.kind(),
            AMQPErrorKind::Soft(
                AMQPSoftError::ACCESSREFUSED
                    | AMQPSoftError::NOTFOUND
                    | AMQPSoftError::PRECONDITIONFAILED
            ) | AMQPErrorKind::Hard(
                AMQPHardError::NOTALLOWED
                    | AMQPHardError::INVALIDPATH
                    | AMQPHardError::NOTIMPLEMENTED
                    | AMQPHardError::COMMANDINVALID
                    | AMQPHardError::SYNTAXERROR
            )
        ),
        ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => true,
        _ => false,
    };
    if fatal {
        AmqpError::Fatal { context, message }
    } else {
        AmqpError::Retry { context, message }
    }
}

/// Parses a broker URL (`amqp://` or `amqps://`), with a readable error.
pub fn parse_url(url: &str) -> Result<AMQPUri, Invalid> {
    AMQPUri::from_str(url).map_err(|e| {
        Invalid::new(format!(
            "invalid AMQP URL ({e}); expected e.g. \"amqp://guest:guest@127.0.0.1:5672/%2f\" \
             (the vhost is URL-encoded: %2f is the default vhost `/`)"
        ))
    })
}

/// Serde helper: a broker URL, checked when the pipeline file is loaded.
pub fn deserialize_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?;
    parse_url(&url).map_err(serde::de::Error::custom)?;
    Ok(url)
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match parse_url(url) {
        Ok(u) => {
            let scheme = match u.scheme {
                lapin::uri::AMQPScheme::AMQP => "amqp",
                lapin::uri::AMQPScheme::AMQPS => "amqps",
            };
            let vhost = if u.vhost == "/" { "%2f" } else { &u.vhost };
            format!(
                "{scheme}://{}@{}:{}/{vhost}",
                u.authority.userinfo.username, u.authority.host, u.authority.port
            )
        }
        Err(_) => "<invalid url>".to_string(),
    }
}

/// Opens a connection (resolving the host name again), giving up after
/// `timeout`. `name` is shown in RabbitMQ's management UI.
pub async fn connect(url: &str, name: &str, timeout: Duration) -> Result<Connection, AmqpError> {
    let context = format!("cannot connect to {}", redact(url));
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    match tokio::time::timeout(timeout, Connection::connect(url, props)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(classify(context, &e)),
        Err(_) => Err(AmqpError::Retry {
            context,
            message: format!("no answer within {timeout:?}"),
        }),
    }
}

/// Runs one broker operation with a time limit, classifying its error.
pub async fn call<T>(
    what: &str,
    timeout: Duration,
    fut: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, AmqpError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(what, &e)),
        Err(_) => Err(AmqpError::Retry {
            context: what.to_string(),
            message: format!("no answer within {timeout:?}"),
        }),
    }
}

/// Exponential reconnect backoff with jitter: `initial * 2^attempt`, capped
/// at `max`, each delay scaled by a random factor in `[0.5, 1.0]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x2545_f491_4f6c_dd1d, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            seed: seed | 1,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let delay = backoff_delay(self.attempt, self.initial, self.max, jitter);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Back to the initial delay (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms (ids are stored in
/// checkpoints, so the hash must never change).
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Length-prefixed, so that field boundaries cannot shift.
    pub fn field(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

/// Default for the `connect_timeout` options.
pub fn default_connect_timeout() -> sluice_engine::time::HumanDuration {
    sluice_engine::time::HumanDuration::from_millis(10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(parse_url("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(parse_url("amqps://u:p@rabbit.example:5671/prod").is_ok());
        let e = parse_url("http://x").unwrap_err();
        assert!(e.message().contains("invalid AMQP URL"), "{e}");
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest@127.0.0.1:5672/%2f"
        );
        assert!(!redact("amqps://u:p4ss@h/v").contains("p4ss"));
    }

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
        assert!(b.next_delay() >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
