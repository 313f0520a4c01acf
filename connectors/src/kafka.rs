//! What the Kafka source and sink share: the `options` table of extra
//! librdkafka properties (with the ones sluice manages refused), building a
//! client configuration, and closing clients off the async runtime.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// Extra librdkafka properties (`"fetch.max.bytes" = 1048576`); values may
/// be strings, integers, floats or booleans and are passed on as text.
pub type Options = BTreeMap<String, String>;

/// Deserializes an `options` table, refusing the properties in `reserved`
/// (`(property, what to use instead)`): sluice sets those itself.
pub fn deserialize_options<'de, D: Deserializer<'de>>(
    deserializer: D,
    reserved: &'static [(&'static str, &'static str)],
) -> Result<Options, D::Error> {
    deserializer.deserialize_map(OptionsVisitor { reserved })
}

struct OptionsVisitor {
    reserved: &'static [(&'static str, &'static str)],
}

impl<'de> Visitor<'de> for OptionsVisitor {
    type Value = Options;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table of librdkafka properties")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Options, A::Error> {
        let mut out = Options::new();
        while let Some(key) = map.next_key::<String>()? {
            if let Some((_, instead)) = self.reserved.iter().find(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!(
                    "option `{key}` is managed by sluice; {instead}"
                )));
            }
            let value = map.next_value::<Scalar>()?;
            out.insert(key, value.0);
        }
        Ok(out)
    }
}

/// A TOML scalar, as text.
struct Scalar(String);

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A client configuration: `bootstrap.servers`, then sluice's own
/// settings, then the user's `options` (which may override the former).
pub fn client_config(
    brokers: &[String],
    own: &[(&str, String)],
    options: &Options,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers.join(","));
    for (k, v) in own {
        config.set(*k, v.as_str());
    }
    for (k, v) in options {
        config.set(k.as_str(), v.as_str());
    }
    config
}

/// The host name (`HOSTNAME`, else /etc/hostname): in a StatefulSet, the
/// pod name, stable across restarts.
pub fn host_name() -> Option<String> {
    let from_env = std::env::var("HOSTNAME").ok();
    let name = from_env.or_else(|| std::fs::read_to_string("/etc/hostname").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Drops `client` on a thread of its own and waits at most `timeout` for
/// it: closing a librdkafka client can block for a long time when brokers
/// are unreachable (rust-rdkafka #509, #611). Returns false on timeout (the
/// thread is left to finish on its own). Call it from a blocking context.
pub fn close_with_timeout<T: Send + 'static>(client: T, timeout: Duration, what: &str) -> bool {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            drop(client);
            let _ = tx.send(());
        });
    if spawned.is_err() {
        tracing::warn!(
            client = what,
            "cannot start a thread to close the Kafka client"
        );
        return false;
    }
    match rx.recv_timeout(timeout) {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                client = what,
                ?timeout,
                "closing the Kafka client timed out; leaving it behind"
            );
            false
        }
    }
}

/// A short description of a client error, with librdkafka's code name.
pub fn describe(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => format!("{error} ({code:?})"),
        None => error.to_string(),
    }
}

/// Rate limit for client error logs: librdkafka reports every failed
/// reconnect (several per second while brokers are down); the 1st, 2nd,
/// 4th, 8th... are logged, with the running total.
#[derive(Debug, Default)]
pub struct ErrorLog {
    count: AtomicU64,
}

impl ErrorLog {
    /// Counts one error; Some(total) when it should be logged.
    pub fn should_log(&self) -> Option<u64> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        n.is_power_of_two().then_some(n)
    }
}
