//! The Redis/Valkey sink: results as hash fields or string keys, exactly
//! once. Each checkpoint epoch goes to the server in one pipelined round
//! trip of Lua script calls (chunks of `chunk_size` records); the script
//! stores beside every value the fence (generation and epoch) it was
//! written with, in a companion key `<key>:__epoch`, and skips a write whose
//! fence is older than the stored one. Since results are absolute values
//! keyed by (group key, window), re-delivering an epoch after a crash
//! rewrites the same values, and an older epoch replayed late can never
//! overwrite a newer one. A `totals` key moves by the difference of each
//! applied write, inside the same script, so it stays the exact sum.
//!
//! Deletes (`RowKind::Delete`) remove the field or key and keep its fence,
//! so a stale upsert cannot bring it back. Connection failures, timeouts
//! and `LOADING`/`BUSY`/`OOM`/`READONLY` are retried (the engine backs off;
//! the next try reconnects and resolves the host name again). A record the
//! server refuses (`WRONGTYPE`: the key holds another type) or that lacks a
//! template field goes to the dead letters; other script errors (e.g. a
//! `totals` key that is not a number) stop the pipeline with the reason.
//!
//! ```toml
//! [sinks.country_counts]
//! type = "redis"
//! inputs = ["by_country"]
//! url = "${REDIS_URL:-redis://127.0.0.1:6379}"
//! mode = "hash"
//! key = "country:counts"
//! field = "{country}"
//! value_field = "count"
//! totals = "messages:total"
//!
//! [sinks.per_minute]
//! type = "redis"
//! inputs = ["by_country_minute"]
//! url = "${REDIS_URL:-redis://127.0.0.1:6379}"
//! key = "country:counts:{window_start}"
//! field = "{country}"
//! value_field = "count"
//! ttl = "2h"
//! ```

use sluice_engine::connector::{ConnectorContext, ConnectorError};

use crate::sinks::fence::Writer;

mod config;
mod fence;
mod sink;
mod template;

pub use config::{RedisMode, RedisSinkConfig};
pub use fence::{FENCE_SUFFIX, GENERATION_KEY, OWNERS_KEY, SCRIPT as FENCE_SCRIPT};
pub use sink::RedisSink;
pub use template::{RenderError, Template, TemplateError};

#[cfg(test)]
mod tests;

impl sluice_engine::connector::SinkConnector for RedisSinkConfig {
    fn validate(&self) -> Result<(), ConnectorError> {
        RedisSinkConfig::validate(self)
    }

    fn build(&self, ctx: &ConnectorContext<'_>) -> Box<dyn sluice_engine::sink::Sink> {
        Box::new(RedisSink::new(ctx.name, self.clone()).with_writer(Writer::of(ctx)))
    }
}
