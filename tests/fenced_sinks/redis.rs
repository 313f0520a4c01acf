//! The Redis sink as a [`Destination`]: per-country counts in a hash with a
//! `messages:total` key, per-window counts in a hash per window (chunked
//! writes, a TTL). A private server can be stopped (`SHUTDOWN NOSAVE`, its
//! append-only file keeps the data) and started again.

use std::collections::BTreeMap;

use crate::fenced_sinks::process::{Destination, Server};
use crate::fenced_sinks::Stored;
use crate::support::services::{redis_cli, redis_hash, unique, PrivateRedis};

const SINKS: &str = r#"
[sinks.counts]
type = "redis"
inputs = ["by_country"]
url = "${REDIS_URL}"
key = "${PREFIX}country:counts"
field = "{country}"
value_field = "count"
totals = "${PREFIX}messages:total"
[sinks.windows]
type = "redis"
inputs = ["per_minute"]
url = "${REDIS_URL}"
key = "${PREFIX}counts:{window_start}"
field = "{country}|{weather}"
value_field = "count"
ttl = "1h"
chunk_size = 200
"#;

pub(crate) struct Redis {
    server: Server<PrivateRedis>,
    url: String,
    prefix: String,
}

impl Redis {
    /// Keys under a prefix of `test` on `server`.
    pub(crate) fn new(test: &str, server: Server<PrivateRedis>) -> Redis {
        Redis {
            url: server.url(),
            prefix: format!("sluice-it:{}:", unique(test)),
            server,
        }
    }
}

impl Destination for Redis {
    fn name(&self) -> String {
        "redis".into()
    }

    fn sinks(&self) -> &'static str {
        SINKS
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_URL", self.url.clone()),
            ("PREFIX", self.prefix.clone()),
        ]
    }

    fn written(&self) -> i64 {
        let total = redis_cli(
            &self.url,
            &["GET", &format!("{}messages:total", self.prefix)],
        );
        total.trim().parse().unwrap_or(0)
    }

    fn stored(&self) -> Stored {
        let mut by_window = BTreeMap::new();
        let keys = redis_cli(&self.url, &["KEYS", &format!("{}counts:*", self.prefix)]);
        for key in keys.lines().filter(|k| !k.ends_with(":__epoch")) {
            let start = key.rsplit(':').next().unwrap();
            for (field, n) in redis_hash(&self.url, key) {
                let (country, weather) = field.split_once('|').unwrap();
                by_window.insert(format!("{start},{country},{weather}"), n);
            }
        }
        let total = redis_cli(
            &self.url,
            &["GET", &format!("{}messages:total", self.prefix)],
        );
        Stored {
            by_country: redis_hash(&self.url, &format!("{}country:counts", self.prefix)),
            by_window,
            total: Some(total.trim().parse().unwrap_or(i64::MIN)),
            appended: None,
        }
    }

    fn down(&mut self) {
        self.server.stop();
    }

    fn up(&mut self) {
        self.server.launch();
    }

    fn cleanup(&self) {
        if !self.server.is_shared() {
            return; // the server goes with its directory
        }
        let keys = redis_cli(&self.url, &["KEYS", &format!("{}*", self.prefix)]);
        let keys: Vec<&str> = keys.lines().collect();
        for chunk in keys.chunks(500) {
            let mut args = vec!["DEL"];
            args.extend(chunk);
            redis_cli(&self.url, &args);
        }
    }
}
