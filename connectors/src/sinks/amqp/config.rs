//! Options of the AMQP sink, and the routing key template.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sluice_engine::error::Invalid;
use sluice_engine::time::HumanDuration;
use sluice_engine::value::Value;

use crate::amqp::default_connect_timeout;

/// `type = "amqp"`: publishes each record as a persistent JSON message to
/// a RabbitMQ exchange, with publisher confirms: an epoch is acknowledged
/// only once the broker confirmed every message of it. Each message
/// carries `message_id` = the record id and a `sluice-epoch` header.
///
/// ```toml
/// [sinks.per_country]
/// type = "amqp"
/// inputs = ["by_country"]
/// url = "${AMQP_URL}"
/// exchange = "weather"
/// exchange_type = "topic"
/// routing_key = "counts.{country}"
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSinkConfig {
    /// Broker URL: `amqp://user:password@host:5672/vhost` (`%2f` is the
    /// default vhost `/`) or `amqps://`; usually `"${AMQP_URL}"`.
    #[serde(deserialize_with = "crate::amqp::deserialize_url")]
    pub url: String,
    /// The exchange to publish to. `""` (default) is the broker's default
    /// exchange, which routes by queue name: `routing_key` is then a queue.
    #[serde(default)]
    pub exchange: String,
    /// Declare `exchange` as a durable exchange of this type at start
    /// (`direct`, `topic`, `fanout` or `headers`). Unset: it must exist.
    #[serde(default)]
    pub exchange_type: Option<ExchangeType>,
    /// Routing key of each message; `{field}` (a dotted path into the
    /// record) is replaced by the record's value, e.g. `counts.{country}`.
    /// `{{` and `}}` stand for literal braces. A record lacking a field the
    /// template uses goes to the dead-letter output.
    pub routing_key: RoutingKeyTemplate,
    /// Message body: `records` (default, the record itself) or `changes`
    /// (`{"op":"upsert"|"insert"|"delete","id":...,"record":{...}}`).
    #[serde(default)]
    pub format: BodyFormat,
    /// Publish as `mandatory`: a message no queue is bound for is returned
    /// by the broker and the record goes to the dead-letter output, instead
    /// of being silently dropped.
    #[serde(default = "yes")]
    pub mandatory: bool,
    /// Persistent messages (delivery mode 2): they survive a broker restart
    /// in durable queues.
    #[serde(default = "yes")]
    pub persistent: bool,
    /// Most messages published and not yet confirmed at a time; a larger
    /// epoch is published in rounds of this size.
    #[serde(default = "default_max_unconfirmed")]
    pub max_unconfirmed: usize,
    /// Time limit for connecting and for the broker to confirm a round.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
}

/// Exchange types the sink can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeType {
    Direct,
    Topic,
    Fanout,
    Headers,
}

/// How a record becomes a message body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    #[default]
    Records,
    Changes,
}

fn yes() -> bool {
    true
}

fn default_max_unconfirmed() -> usize {
    5_000
}

/// One piece of a routing key template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A field path, split on dots.
    Field(Vec<String>),
}

/// A parsed routing key template such as `counts.{country}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingKeyTemplate {
    source: String,
    parts: Vec<Part>,
}

impl RoutingKeyTemplate {
    /// Parses `{field}` placeholders; `{{` and `}}` are literal braces.
    pub fn parse(source: &str) -> Result<Self, Invalid> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut field = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(Invalid::new(format!(
                                    "unclosed `{{` in routing key template `{source}` (write `{{{{` for a literal brace)"
                                )))
                            }
                            Some(c) => field.push(c),
                        }
                    }
                    let path: Vec<String> =
                        field.trim().split('.').map(|s| s.to_string()).collect();
                    if path.iter().any(|p| p.is_empty()) {
                        return Err(Invalid::new(format!(
                            "empty field name `{{{field}}}` in routing key template `{source}`"
                        )));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Field(path));
                }
                '}' => {
                    return Err(Invalid::new(format!(
                        "unmatched `}}` in routing key template `{source}` (write `}}}}` for a literal brace)"
                    )))
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(RoutingKeyTemplate {
            source: source.to_string(),
            parts,
        })
    }

    /// The routing key of `record`, or why it has none. Strings are used as
    /// they are, other values as JSON.
    pub fn render(&self, record: &Value) -> Result<String, Invalid> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(path) => {
                    let mut v = record;
                    for seg in path {
                        v = match v {
                            Value::Object(m) => m.get(seg.as_str()),
                            _ => None,
                        }
                        .ok_or_else(|| {
                            format!(
                                "the record has no field `{}` for routing key `{}`",
                                path.join("."),
                                self.source
                            )
                        })?;
                    }
                    match v {
                        Value::Str(s) => out.push_str(s),
                        other => out.push_str(&other.to_string()),
                    }
                }
            }
        }
        if out.len() > 255 {
            return Err(Invalid::new(format!(
                "routing key `{}...` is longer than AMQP's 255 bytes",
                out.chars().take(40).collect::<String>()
            )));
        }
        Ok(out)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl<'de> Deserialize<'de> for RoutingKeyTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RoutingKeyTemplate::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for RoutingKeyTemplate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}
