//! Epoch fencing in Redis: the Lua script every write goes through and the
//! pure parts around it (building one `EVALSHA` per chunk, reading its
//! per-record statuses, classifying errors), so they can be tested without
//! a server. The fence value and its rule are in [`crate::sinks::fence`];
//! the generation comes from `INCR sluice:generation`.

/// The fencing script (see the comments in `fence.lua`).
pub const SCRIPT: &str = include_str!("fence.lua");

/// Where generations come from (one counter shared by all pipelines).
pub const GENERATION_KEY: &str = "sluice:generation";

/// A hash recording, for each generation drawn by a worker of a
/// multi-worker run, which writer drew it: field = the generation, value =
/// the [`crate::sinks::fence::Writer`] as JSON.
pub const OWNERS_KEY: &str = "sluice:generation:owners";

/// Draws a generation and records who drew it, atomically: `KEYS[1]` the
/// generation counter, `KEYS[2]` the owners hash, `ARGV[1]` the writer.
pub(super) const DRAW_SCRIPT: &str = "local g = redis.call('INCR', KEYS[1])\n\
redis.call('HSET', KEYS[2], tostring(g), ARGV[1])\n\
return g";

/// Suffix of the key holding the fences of a key's values.
pub const FENCE_SUFFIX: &str = ":__epoch";

pub(super) use crate::sinks::fence::fence;

/// One record's write, rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Write {
    /// Index of the record in the epoch (for rejections).
    pub index: usize,
    pub key: String,
    /// Hash field (empty in string mode).
    pub field: String,
    /// The value (empty for deletes).
    pub value: String,
    pub delete: bool,
}

/// What the script did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Status {
    Written,
    /// A newer fence was already stored: left alone.
    Stale,
    /// The server refused this record (e.g. `WRONGTYPE`).
    Failed(String),
}

/// Settings shared by all chunks of an epoch.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChunkArgs<'a> {
    pub hash: bool,
    pub fence: u64,
    pub ttl_ms: u64,
    pub totals: Option<&'a str>,
}

/// `EVALSHA sha numkeys KEYS... ARGV...` for one chunk of writes.
pub(super) fn chunk_command(sha: &str, args: ChunkArgs<'_>, writes: &[Write]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    let nkeys = writes.len() * 2 + usize::from(args.totals.is_some());
    cmd.arg(sha).arg(nkeys);
    if let Some(t) = args.totals {
        cmd.arg(t);
    }
    for w in writes {
        cmd.arg(&w.key).arg(fence_key(&w.key));
    }
    cmd.arg(if args.hash { "hash" } else { "string" })
        .arg(args.fence)
        .arg(args.ttl_ms)
        .arg(if args.totals.is_some() { "1" } else { "0" });
    for w in writes {
        cmd.arg(if w.delete { "d" } else { "u" })
            .arg(&w.field)
            .arg(&w.value);
    }
    cmd
}

/// A `SCAN MATCH` pattern for the fence keys of a key template: each
/// `{field}` becomes `*`, glob characters of the text are escaped.
pub(super) fn fence_glob(template: &str) -> String {
    let mut out = String::new();
    let mut in_field = false;
    for c in template.chars() {
        match (in_field, c) {
            (false, '{') => {
                in_field = true;
                out.push('*');
            }
            (true, '}') => in_field = false,
            (true, _) => {}
            (false, '*' | '?' | '[' | ']' | '\\') => {
                out.push('\\');
                out.push(c);
            }
            (false, _) => out.push(c),
        }
    }
    out.push_str(FENCE_SUFFIX);
    out
}

/// The key holding the fences of `key`'s values.
pub(super) fn fence_key(key: &str) -> String {
    let mut k = String::with_capacity(key.len() + FENCE_SUFFIX.len());
    k.push_str(key);
    k.push_str(FENCE_SUFFIX);
    k
}

/// Reads the script's reply for a chunk of `n` writes.
pub(super) fn parse_reply(reply: &redis::Value, n: usize) -> Result<Vec<Status>, String> {
    let redis::Value::Array(items) = reply else {
        return Err(format!(
            "unexpected reply from the fencing script: {reply:?}"
        ));
    };
    if items.len() != n {
        return Err(format!(
            "the fencing script answered {} statuses for {n} records",
            items.len()
        ));
    }
    items
        .iter()
        .map(|v| match v {
            redis::Value::Int(1) => Ok(Status::Written),
            redis::Value::Int(0) => Ok(Status::Stale),
            redis::Value::BulkString(b) => Ok(Status::Failed(String::from_utf8_lossy(b).into())),
            redis::Value::SimpleString(s) => Ok(Status::Failed(s.clone())),
            other => Err(format!(
                "unexpected status from the fencing script: {other:?}"
            )),
        })
        .collect()
}

/// Whether a server error code is transient (the whole epoch is retried).
pub(super) fn transient_code(code: &str) -> bool {
    matches!(
        code,
        "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN" | "OOM"
    )
}

/// The error code (first word) of a server error text.
pub(super) fn error_code(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or("")
}
