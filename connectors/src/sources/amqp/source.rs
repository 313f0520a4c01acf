//! The AMQP source at run time: connect, declare, consume into batches,
//! acknowledge at checkpoints, reconnect with backoff when the broker goes
//! away. The decisions (what to skip, what to ack) live in [`Tracker`].

use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use metrics::{Counter, Gauge};
use sluice_engine::metrics as m;
use sluice_engine::source::{
    BoxFuture, Commit, RawBatch, RawEvent, Source, SourceContext, SourceError,
};
use sluice_engine::time::now_ms;
use tokio::time::Instant;

use super::config::AmqpSourceConfig;
use super::tracker::{MessageId, Tracker, Verdict};
use crate::amqp::{self, call, AmqpError, Backoff, Fnv};
use crate::lines::OVERSIZED_KEEP;

/// How long a shutdown waits for the last checkpoint before leaving its
/// messages unacknowledged (they are then redelivered and skipped).
const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounded runs (`sluice run --once`) finish once no message arrived for
/// this long and the queue holds no ready message.
const BOUNDED_IDLE: Duration = Duration::from_millis(200);
/// ... unless other consumers are attached, then after this long.
const BOUNDED_OTHER_CONSUMERS: Duration = Duration::from_secs(10);
/// A batch buffer never grows past this (RawEvent offsets are u32).
const MAX_BATCH_BYTES: usize = 64 << 20;
/// A session shorter than this does not reset the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// A configured AMQP source.
pub struct AmqpSource {
    config: AmqpSourceConfig,
}

impl AmqpSource {
    pub fn new(config: AmqpSourceConfig) -> Self {
        AmqpSource { config }
    }
}

impl Source for AmqpSource {
    fn distribution(&self) -> sluice_engine::source::Distribution {
        sluice_engine::source::Distribution::SharedQueue
    }

    fn merge_positions(&self) -> Option<sluice_engine::source::MergePositions> {
        Some(|mine, released| super::tracker::merge_positions(mine, released).map_err(|e| e.to_string()))
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(run(self.config, ctx))
    }
}

/// What identifies a message for recognising broker redeliveries.
pub struct MessageParts<'a> {
    pub message_id: Option<&'a str>,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub timestamp: Option<u64>,
    /// The headers table, serialized (empty when absent).
    pub headers: &'a [u8],
    pub body: &'a [u8],
}

/// The 63-bit id of a message: a hash of its whole content (exchange,
/// routing key, timestamp, headers, body and `message_id`). A broker
/// redelivery has the same id as the original; two publishes that share a
/// `message_id` but differ in anything else do not. (Messages without a
/// `message_id` hash as they did in version 1 positions.)
pub fn dedup_id(p: &MessageParts<'_>) -> MessageId {
    let mut h = Fnv::new();
    h.write(b"c");
    h.field(p.exchange.as_bytes());
    h.field(p.routing_key.as_bytes());
    h.field(&p.timestamp.unwrap_or(u64::MAX).to_le_bytes());
    h.field(p.headers);
    h.field(p.body);
    if let Some(id) = p.message_id {
        h.write(b"m");
        h.field(id.as_bytes());
    }
    h.0 & (i64::MAX as u64)
}

/// The id version 1 positions used: the `message_id` alone when set.
pub fn legacy_dedup_id(p: &MessageParts<'_>) -> MessageId {
    match p.message_id {
        Some(id) => {
            let mut h = Fnv::new();
            h.write(b"m");
            h.field(id.as_bytes());
            h.0 & (i64::MAX as u64)
        }
        None => dedup_id(p),
    }
}

/// A header the broker itself adds when it redelivers (quorum queues
/// count deliveries in it): not part of the message's identity.
const BROKER_DELIVERY_COUNT: &str = "x-delivery-count";

/// The message's ids: (content id, legacy id when `legacy`).
fn delivery_ids(d: &Delivery, legacy: bool) -> (MessageId, Option<MessageId>) {
    let props = &d.properties;
    let headers = props
        .headers()
        .as_ref()
        .and_then(|h| {
            if h.contains_key(BROKER_DELIVERY_COUNT) {
                let mut own = h.inner().clone();
                own.remove(BROKER_DELIVERY_COUNT);
                serde_json::to_vec(&lapin::types::FieldTable::from(own)).ok()
            } else {
                serde_json::to_vec(h).ok()
            }
        })
        .unwrap_or_default();
    let parts = MessageParts {
        message_id: props.message_id().as_ref().map(|s| s.as_str()),
        exchange: d.exchange.as_str(),
        routing_key: d.routing_key.as_str(),
        timestamp: *props.timestamp(),
        headers: &headers,
        body: &d.data,
    };
    (dedup_id(&parts), legacy.then(|| legacy_dedup_id(&parts)))
}

struct Metrics {
    deliveries: Counter,
    redeliveries: Counter,
    duplicates: Counter,
    acks: Counter,
    reconnects: Counter,
    lag: Gauge,
}

impl Metrics {
    fn new(ctx: &SourceContext) -> Self {
        let labels = m::component_labels(&ctx.pipeline, &ctx.name, "source");
        Metrics {
            deliveries: metrics::counter!(m::SOURCE_DELIVERIES, labels.clone()),
            redeliveries: metrics::counter!(m::SOURCE_REDELIVERIES, labels.clone()),
            duplicates: metrics::counter!(m::SOURCE_DUPLICATES, labels.clone()),
            acks: metrics::counter!(m::SOURCE_ACKS, labels.clone()),
            reconnects: metrics::counter!(m::SOURCE_RECONNECTS, labels.clone()),
            lag: metrics::gauge!(m::SOURCE_LAG, labels),
        }
    }
}

/// Message bodies collected for the next batch.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    events: Vec<RawEvent>,
    bytes: u64,
    deliveries: usize,
}

impl Pending {
    fn push(&mut self, body: &[u8], id: MessageId, max_event_bytes: usize) {
        let keep = if body.len() > max_event_bytes {
            &body[..OVERSIZED_KEEP.min(body.len())]
        } else {
            body
        };
        self.events.push(RawEvent {
            start: self.buf.len() as u32,
            len: keep.len() as u32,
            offset: id,
            oversized: (body.len() > max_event_bytes).then_some(body.len() as u64),
        });
        self.buf.extend_from_slice(keep);
        self.bytes += body.len() as u64;
    }
}

async fn run(config: AmqpSourceConfig, mut ctx: SourceContext) -> Result<(), SourceError> {
    let metrics = Metrics::new(&ctx);
    let instance = now_ms() as u64 ^ (u64::from(std::process::id()) << 40);
    let mut tracker = Tracker::restore(ctx.restored.get(&0).map(Vec::as_slice), instance)
        .map_err(|e| SourceError::Config(format!("source `{}`: {e}", ctx.name)))?;
    if tracker.orphans_len() > 0 {
        tracing::info!(component = %ctx.name, messages = tracker.orphans_len(),
            "the last checkpoint holds messages that may not have been acknowledged; their redeliveries will be skipped");
    }
    // Not ready until connected.
    ctx.output.health().down("connecting to the AMQP broker");
    if ctx.output.partitions(vec![0]).await.is_err() {
        return Ok(());
    }
    let mut backoff = Backoff::new(config.reconnect_delay.0, config.reconnect_max_delay.0);
    let mut connected_before = false;
    loop {
        if *ctx.shutdown.borrow() {
            return Ok(());
        }
        let error = match Session::open(&config, &ctx.name).await {
            Ok(session) => {
                ctx.output.health().up();
                if connected_before {
                    metrics.reconnects.increment(1);
                }
                connected_before = true;
                tracing::info!(component = %ctx.name, queue = %config.queue,
                    broker = %amqp::redact(&config.url),
                    awaiting_redelivery = tracker.orphans_len(), "consuming");
                tracker
                    .new_channel(now_ms() as u64 + config.redelivery_window.0.as_millis() as u64);
                let started = Instant::now();
                let result = session.run(&config, &mut ctx, &mut tracker, &metrics).await;
                tracker.channel_lost();
                match result {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        if started.elapsed() >= STABLE_SESSION {
                            backoff.reset();
                        }
                        e
                    }
                }
            }
            Err(e) => e,
        };
        if error.is_fatal() {
            return Err(SourceError::Config(error.to_string()));
        }
        let delay = backoff.next_delay();
        ctx.output
            .health()
            .down(format!("cannot reach the AMQP broker: {error}"));
        tracing::warn!(component = %ctx.name, %error, ?delay, "broker unavailable; reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = sluice_engine::source::wait_shutdown(&mut ctx.shutdown) => return Ok(()),
        }
    }
}

/// One connection + channel + consumer.
struct Session {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    tag: String,
}

impl Session {
    async fn open(config: &AmqpSourceConfig, name: &str) -> Result<Session, AmqpError> {
        let t = config.connect_timeout.0;
        let conn = amqp::connect(&config.url, &format!("sluice source {name}"), t).await?;
        let channel = call("cannot open a channel", t, conn.create_channel()).await?;
        let q = config.queue.as_str();
        let (options, what) = if config.declare {
            let o = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            (o, format!("cannot declare the durable queue `{q}`"))
        } else {
            let o = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let what = format!(
                "queue `{q}` is not usable (declare = false: sluice only checks that it exists; create it, or set declare = true)"
            );
            (o, what)
        };
        call(
            &what,
            t,
            channel.queue_declare(q.into(), options, FieldTable::default()),
        )
        .await?;
        if let Some(exchange) = &config.exchange {
            let what = format!(
                "cannot bind queue `{q}` to exchange `{exchange}` with key `{}` (the exchange must exist)",
                config.routing_key
            );
            let bind = channel.queue_bind(
                q.into(),
                exchange.as_str().into(),
                config.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            );
            call(&what, t, bind).await?;
        }
        let qos = channel.basic_qos(config.prefetch.get(), BasicQosOptions::default());
        call("cannot set the prefetch (basic.qos)", t, qos).await?;
        let tag = config
            .consumer_tag
            .clone()
            .unwrap_or_else(|| format!("sluice-{name}"));
        let consume = channel.basic_consume(
            q.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let consumer = call(&format!("cannot consume queue `{q}`"), t, consume).await?;
        Ok(Session {
            conn,
            channel,
            consumer,
            tag,
        })
    }

    /// Ready messages and consumers of the queue (passive declare). Being a
    /// synchronous call on the consuming channel, its reply also proves that
    /// the broker processed every ack sent before it.
    async fn depth(&self, config: &AmqpSourceConfig) -> Result<(u32, u32), AmqpError> {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declare = self.channel.queue_declare(
            config.queue.as_str().into(),
            options,
            FieldTable::default(),
        );
        let q = call(
            "queue depth (passive declare)",
            config.connect_timeout.0,
            declare,
        )
        .await?;
        Ok((q.message_count(), q.consumer_count()))
    }

    async fn on_commit(
        &self,
        config: &AmqpSourceConfig,
        commit: &Commit,
        tracker: &mut Tracker,
        metrics: &Metrics,
    ) -> Result<(), AmqpError> {
        let Some(plan) = commit.positions.get(&0).and_then(|p| tracker.on_commit(p)) else {
            return Ok(());
        };
        let ack = self
            .channel
            .basic_ack(plan.tag, BasicAckOptions { multiple: true });
        call("cannot acknowledge", config.connect_timeout.0, ack).await?;
        metrics.acks.increment(plan.messages as u64);
        let (depth, _) = self.depth(config).await?;
        tracker.confirmed(plan.tag);
        metrics.lag.set(f64::from(depth));
        Ok(())
    }

    /// Hands the pending messages to the pipeline; false if it is gone.
    async fn flush(
        &self,
        ctx: &SourceContext,
        pending: &mut Pending,
        tracker: &mut Tracker,
    ) -> bool {
        let Some(position) = tracker.seal() else {
            return true;
        };
        let p = std::mem::take(pending);
        let batch = RawBatch {
            partition: 0,
            buf: std::sync::Arc::new(p.buf),
            events: p.events,
            position,
            bytes: p.bytes,
        };
        ctx.output.emit(batch).await.is_ok()
    }

    /// Consumes until the connection is lost (`Err`) or the source is done
    /// (`Ok`: bounded input drained, shutdown, or the pipeline is gone).
    async fn run(
        mut self,
        config: &AmqpSourceConfig,
        ctx: &mut SourceContext,
        tracker: &mut Tracker,
        metrics: &Metrics,
    ) -> Result<(), AmqpError> {
        let max_event_bytes = ctx.output.max_event_bytes();
        let max_batch = config.max_batch.max(1);
        let mut pending = Pending::default();
        let mut flush_at: Option<Instant> = None;
        let mut lag_tick =
            tokio::time::interval(config.lag_interval.0.max(Duration::from_millis(100)));
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_tick = tokio::time::interval(BOUNDED_IDLE / 2);
        let mut last_delivery = Instant::now();
        let mut consuming = true;
        // Set once the source is winding down: no more deliveries, wait for
        // the checkpoint of what was emitted, ack it, leave.
        let mut finishing: Option<Option<Instant>> = None;
        let far = || Instant::now() + Duration::from_secs(86_400);
        loop {
            if let Some(deadline) = finishing {
                if !consuming && tracker.has_pending_emit() {
                    flush_at = None;
                    if !self.flush(ctx, &mut pending, tracker).await {
                        return Ok(());
                    }
                }
                if !consuming && tracker.unsettled() == 0 {
                    break;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::warn!(component = %ctx.name, "stopping before the last checkpoint completed; its messages will be redelivered and skipped");
                    break;
                }
            }
            tokio::select! {
                biased;
                commit = ctx.commits.recv() => match commit {
                    Some(c) => {
                        self.on_commit(config, &c, tracker, metrics).await?;
                        // Acked messages leave the position: emit it soon, so
                        // that the next checkpoint no longer holds them (a
                        // crash before that would wait for redeliveries that
                        // never come, and could skip a byte-identical twin).
                        if tracker.has_pending_emit() && flush_at.is_none() {
                            flush_at = Some(Instant::now());
                        }
                    }
                    None => return Ok(()), // the pipeline is gone
                },
                changed = ctx.shutdown.changed(), if finishing.is_none() => {
                    if changed.is_err() || *ctx.shutdown.borrow() {
                        finishing = Some(Some(Instant::now() + FINAL_ACK_TIMEOUT));
                        self.cancel(config).await?;
                    }
                }
                delivery = self.consumer.next(), if consuming => match delivery {
                    Some(Ok(d)) => {
                        last_delivery = Instant::now();
                        metrics.deliveries.increment(1);
                        if d.redelivered {
                            metrics.redeliveries.increment(1);
                        }
                        let (id, legacy) = delivery_ids(&d, d.redelivered && tracker.needs_legacy_ids());
                        match tracker.on_delivery_with_legacy(d.delivery_tag, id, legacy, d.redelivered) {
                            Verdict::Process => pending.push(&d.data, id, max_event_bytes),
                            Verdict::Skip => metrics.duplicates.increment(1),
                        }
                        pending.deliveries += 1;
                        if pending.deliveries >= max_batch || pending.buf.len() >= MAX_BATCH_BYTES {
                            flush_at = None;
                            if !self.flush(ctx, &mut pending, tracker).await {
                                return Ok(());
                            }
                        } else if flush_at.is_none() {
                            flush_at = Some(Instant::now() + config.batch_wait.0);
                        }
                    }
                    Some(Err(e)) => {
                        self.flush(ctx, &mut pending, tracker).await;
                        return Err(amqp::classify("consuming failed", &e));
                    }
                    None if finishing.is_some() => consuming = false,
                    None => {
                        self.flush(ctx, &mut pending, tracker).await;
                        return Err(AmqpError::Retry {
                            context: format!("the broker cancelled the consumer of queue `{}`", config.queue),
                            message: "was the queue deleted?".into(),
                        });
                    }
                },
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(far)), if flush_at.is_some() => {
                    flush_at = None;
                    if !self.flush(ctx, &mut pending, tracker).await {
                        return Ok(());
                    }
                }
                _ = lag_tick.tick() => {
                    let (depth, _) = self.depth(config).await?;
                    metrics.lag.set(f64::from(depth));
                    let forgotten = tracker.expire_orphans(now_ms() as u64);
                    if forgotten > 0 {
                        tracing::info!(component = %ctx.name, messages = forgotten,
                            "stopped waiting for redeliveries of messages processed before the reconnect");
                    }
                    if tracker.has_pending_emit() && flush_at.is_none() {
                        flush_at = Some(Instant::now());
                    }
                }
                _ = idle_tick.tick(), if ctx.bounded && finishing.is_none() => {
                    if last_delivery.elapsed() >= BOUNDED_IDLE && pending.deliveries == 0 {
                        // Another consumer usually means the connection of a
                        // killed predecessor the broker has not closed yet: its
                        // unacknowledged messages are about to be requeued.
                        let (ready, consumers) = self.depth(config).await?;
                        if ready == 0 && (consumers <= 1 || last_delivery.elapsed() >= BOUNDED_OTHER_CONSUMERS) {
                            finishing = Some(None);
                            self.cancel(config).await?;
                        }
                    }
                }
            }
        }
        let t = config.connect_timeout.0;
        let _ = call(
            "closing the channel",
            t,
            self.channel.close(200, "done".into()),
        )
        .await;
        let _ = call(
            "closing the connection",
            t,
            self.conn.close(200, "done".into()),
        )
        .await;
        Ok(())
    }

    /// Stops deliveries (messages already delivered are still processed).
    async fn cancel(&self, config: &AmqpSourceConfig) -> Result<(), AmqpError> {
        let cancel = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default());
        call(
            "cannot cancel the consumer",
            config.connect_timeout.0,
            cancel,
        )
        .await
    }
}
