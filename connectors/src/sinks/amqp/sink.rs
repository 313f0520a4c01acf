//! Publishing epochs to RabbitMQ with publisher confirms.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind, PublisherConfirm};
use sluice_engine::batch::RowKind;
use sluice_engine::sink::{Sink, SinkError, SinkRecord, WriteOutcome};
use sluice_engine::source::BoxFuture;

use super::config::{AmqpSinkConfig, BodyFormat, ExchangeType};
use crate::amqp::{self, call, AmqpError, Fnv};
use crate::sinks::{write_change_line, write_ndjson_line};

/// The header carrying the checkpoint epoch a message was published for.
pub const EPOCH_HEADER: &str = "sluice-epoch";
/// The header carrying the record kind (`insert`, `upsert`, `delete`).
pub const OP_HEADER: &str = "sluice-op";

/// A configured AMQP sink.
pub struct AmqpSink {
    name: String,
    config: AmqpSinkConfig,
    conn: Option<(Connection, Channel)>,
}

impl AmqpSink {
    pub fn new(name: &str, config: AmqpSinkConfig) -> Self {
        AmqpSink {
            name: name.to_string(),
            config,
            conn: None,
        }
    }

    /// The publishing channel, (re)connecting when needed.
    async fn channel(&mut self) -> Result<Channel, SinkError> {
        if let Some((conn, ch)) = &self.conn {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        self.conn = None;
        let t = self.config.connect_timeout.0;
        let conn = amqp::connect(&self.config.url, &format!("sluice sink {}", self.name), t)
            .await
            .map_err(sink_error)?;
        let ch = call("cannot open a channel", t, conn.create_channel())
            .await
            .map_err(sink_error)?;
        if let Some(kind) = self.config.exchange_type {
            let kind = match kind {
                ExchangeType::Direct => ExchangeKind::Direct,
                ExchangeType::Topic => ExchangeKind::Topic,
                ExchangeType::Fanout => ExchangeKind::Fanout,
                ExchangeType::Headers => ExchangeKind::Headers,
            };
            let options = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let what = format!(
                "cannot declare the durable exchange `{}` (an existing one must have the same type and be durable)",
                self.config.exchange
            );
            let declare = ch.exchange_declare(
                self.config.exchange.as_str().into(),
                kind,
                options,
                FieldTable::default(),
            );
            call(&what, t, declare).await.map_err(sink_error)?;
        } else if !self.config.exchange.is_empty() {
            let options = ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let what = format!(
                "exchange `{}` does not exist (create it, or set exchange_type to have sluice declare it)",
                self.config.exchange
            );
            let check = ch.exchange_declare(
                self.config.exchange.as_str().into(),
                ExchangeKind::Direct,
                options,
                FieldTable::default(),
            );
            call(&what, t, check).await.map_err(sink_error)?;
        }
        let select = ch.confirm_select(ConfirmSelectOptions::default());
        call("cannot enable publisher confirms", t, select)
            .await
            .map_err(sink_error)?;
        tracing::info!(sink = %self.name, broker = %amqp::redact(&self.config.url),
            exchange = %self.config.exchange, "connected");
        self.conn = Some((conn, ch.clone()));
        Ok(ch)
    }

    /// Publishes `records` (indices `base..`), then waits for every
    /// confirm. Unroutable records are added to `rejected`.
    async fn publish_round(
        &mut self,
        channel: &Channel,
        epoch: u64,
        base: usize,
        records: &[SinkRecord],
        rejected: &mut Vec<(usize, String)>,
    ) -> Result<(), SinkError> {
        let c = &self.config;
        let options = BasicPublishOptions {
            mandatory: c.mandatory,
            immediate: false,
        };
        let mut body = Vec::with_capacity(256);
        let mut confirms: Vec<(usize, PublisherConfirm)> = Vec::with_capacity(records.len());
        for (j, record) in records.iter().enumerate() {
            let i = base + j;
            let key = match c.routing_key.render(&record.value) {
                Ok(k) => k,
                Err(reason) => {
                    rejected.push((i, reason.into()));
                    continue;
                }
            };
            body.clear();
            encode_body(&mut body, record, c.format);
            let props = properties(record, epoch, c.persistent);
            let publish = channel.basic_publish(
                c.exchange.as_str().into(),
                key.into(),
                options,
                &body,
                props,
            );
            match publish.await {
                Ok(confirm) => confirms.push((i, confirm)),
                Err(e) => return Err(self.lost(amqp::classify("publish failed", &e))),
            }
        }
        let timeout = c.connect_timeout.0.max(Duration::from_secs(1));
        let waited = tokio::time::timeout(timeout, async {
            let mut out = Vec::with_capacity(confirms.len());
            for (i, confirm) in confirms {
                out.push((i, confirm.await));
            }
            out
        })
        .await;
        let Ok(results) = waited else {
            return Err(self.lost(AmqpError::Retry {
                context: "publisher confirms".into(),
                message: format!("the broker did not confirm within {timeout:?}"),
            }));
        };
        let mut nacked = 0;
        for (i, result) in results {
            match result {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {}
                Ok(Confirmation::Ack(Some(returned))) => rejected.push((
                    i,
                    format!(
                        "the broker could not route the message (exchange `{}`, routing key `{}`): {} {}",
                        c.exchange,
                        returned.delivery.routing_key,
                        returned.reply_code,
                        returned.reply_text
                    ),
                )),
                Ok(Confirmation::Nack(_)) => nacked += 1,
                Err(e) => return Err(self.lost(amqp::classify("publisher confirms", &e))),
            }
        }
        if nacked > 0 {
            return Err(SinkError::Retryable(format!(
                "the broker refused (nacked) {nacked} message(s) of epoch {epoch}; publishing the epoch again"
            )));
        }
        Ok(())
    }

    /// Drops the connection after a failure (the next write reconnects).
    fn lost(&mut self, e: AmqpError) -> SinkError {
        self.conn = None;
        sink_error(e)
    }
}

fn sink_error(e: AmqpError) -> SinkError {
    if e.is_fatal() {
        SinkError::Fatal(e.to_string())
    } else {
        SinkError::Retryable(e.to_string())
    }
}

/// The message body of a record (JSON, no trailing newline).
pub fn encode_body(out: &mut Vec<u8>, record: &SinkRecord, format: BodyFormat) {
    match format {
        BodyFormat::Records => write_ndjson_line(out, record),
        BodyFormat::Changes => write_change_line(out, record),
    }
    if out.last() == Some(&b'\n') {
        out.pop();
    }
}

/// The `message_id` of a record: its id, or (ids longer than AMQP's 255
/// bytes) a stable hash of it.
pub fn message_id(id: &str) -> String {
    if id.len() <= 255 {
        return id.to_string();
    }
    let mut h = Fnv::new();
    h.write(id.as_bytes());
    format!("sluice-h:{:016x}", h.0)
}

fn properties(record: &SinkRecord, epoch: u64, persistent: bool) -> BasicProperties {
    let op = match record.kind {
        RowKind::Insert => "insert",
        RowKind::Upsert => "upsert",
        RowKind::Delete => "delete",
    };
    let mut headers = FieldTable::default();
    headers.insert(
        EPOCH_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(epoch).unwrap_or(i64::MAX)),
    );
    headers.insert(OP_HEADER.into(), AMQPValue::LongString(op.into()));
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(message_id(&record.id)))
        .with_headers(headers);
    if persistent {
        props.with_delivery_mode(2)
    } else {
        props
    }
}

impl Sink for AmqpSink {
    fn restore<'a>(
        &'a mut self,
        _progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        // Connect now, so that a wrong URL, credentials or exchange stop the
        // pipeline at start rather than at the first checkpoint.
        Box::pin(async move { self.channel().await.map(|_| ()) })
    }

    fn write<'a>(
        &'a mut self,
        epoch: u64,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<WriteOutcome, SinkError>> {
        Box::pin(async move {
            let channel = self.channel().await?;
            let mut rejected = Vec::new();
            let round = self.config.max_unconfirmed.max(1);
            for (n, chunk) in records.chunks(round).enumerate() {
                self.publish_round(&channel, epoch, n * round, chunk, &mut rejected)
                    .await?;
            }
            Ok(WriteOutcome {
                progress: None,
                rejected,
                fenced: 0,
            })
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if let Some((conn, ch)) = self.conn.take() {
                let t = self.config.connect_timeout.0;
                let _ = call("closing the channel", t, ch.close(200, "done".into())).await;
                let _ = call("closing the connection", t, conn.close(200, "done".into())).await;
            }
            Ok(())
        })
    }
}
