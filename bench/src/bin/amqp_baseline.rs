//! The AMQP side of the W1a benchmark (`bench/amqp.sh`): a publisher that
//! loads a queue, and the hand-written consumer sluice is compared with.
//!
//! - `publish URL QUEUE INPUT.jsonl`: declares the durable queue and publishes
//!   every line as a persistent message with `message_id` = the line number,
//!   with publisher confirms.
//! - `consume URL QUEUE N OUT.csv [PREFETCH]`: the typical hand-written
//!   consumer (like the Go consumers of use case 1): for each delivery, parse
//!   the JSON, increment the country's counter, ack that one message. Stops
//!   after N messages and writes `country,count` rows sorted by country (the
//!   oracle's format). No durable state: a crash loses or doubles counts.
//! - `consume-redis URL QUEUE N REDIS_URL KEY_PREFIX [PREFETCH]` (feature
//!   `redis`, `bench/redis.sh`): the use-case-1 consumer as the teams wrote
//!   it. Per delivery: parse the JSON, `HINCRBY <prefix>country:counts
//!   <country> 1`, `INCR <prefix>messages:total` (one Redis round trip per
//!   command, no pipelining), then ack that one message. Stops after N
//!   messages. A crash between the Redis writes and the ack makes the broker
//!   redeliver messages whose increments are already in Redis: they are
//!   counted twice.
//! - `consume-postgres URL QUEUE N POSTGRES_URL TABLE upsert|append
//!   [PREFETCH]` (feature `postgres`, `bench/postgres.sh`): the same
//!   consumer writing to PostgreSQL, one statement (one round trip, in its
//!   own implicit transaction) per message, then the ack of that message.
//!   `upsert`: `INSERT INTO TABLE (country, count) VALUES ($1, 1) ON
//!   CONFLICT (country) DO UPDATE SET count = TABLE.count + 1` (TABLE needs
//!   a unique `country`); `append`: `INSERT INTO TABLE (event_id, id, ts,
//!   country, weather)` with the message's `message_id` as `event_id`, one
//!   row per message. Stops after N messages. A crash between the statement
//!   and the ack counts (or stores) the redelivered messages twice.

use std::error::Error;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Instant;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rustc_hash::FxHashMap;
use serde::Deserialize;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    country: &'a str,
}

/// The fields `consume-postgres append` stores.
#[cfg(feature = "postgres")]
#[derive(Deserialize)]
struct Row<'a> {
    id: i64,
    ts: i64,
    #[serde(borrow)]
    country: &'a str,
    #[serde(borrow)]
    weather: &'a str,
}

async fn channel(url: &str, queue: &str) -> Result<(Connection, Channel)> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, FieldTable::default())
        .await?;
    Ok((conn, ch))
}

async fn publish(url: &str, queue: &str, input: &str) -> Result<()> {
    let (_conn, ch) = channel(url, queue).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let reader = std::io::BufReader::new(std::fs::File::open(input)?);
    let started = Instant::now();
    let mut n = 0u64;
    let mut confirms = Vec::with_capacity(10_000);
    for line in reader.lines() {
        let line = line?;
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("w1-{n}").into());
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                line.as_bytes(),
                props,
            )
            .await?;
        confirms.push(c);
        n += 1;
        if confirms.len() == 10_000 {
            for c in confirms.drain(..) {
                if !c.await?.is_ack() {
                    return Err("the broker nacked a message".into());
                }
            }
        }
    }
    for c in confirms {
        if !c.await?.is_ack() {
            return Err("the broker nacked a message".into());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "published {n} messages in {secs:.2} s ({:.0}/s)",
        n as f64 / secs
    );
    Ok(())
}

async fn consume(url: &str, queue: &str, n: u64, out: &str, prefetch: u16) -> Result<()> {
    let (_conn, ch) = channel(url, queue).await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut counts: FxHashMap<String, u64> = FxHashMap::default();
    let started = Instant::now();
    let mut seen = 0u64;
    while seen < n {
        let Some(delivery) = consumer.next().await else {
            return Err("the consumer was cancelled".into());
        };
        let d = delivery?;
        if let Ok(e) = serde_json::from_slice::<Event>(&d.data) {
            match counts.get_mut(e.country) {
                Some(c) => *c += 1,
                None => {
                    counts.insert(e.country.to_string(), 1);
                }
            }
        }
        d.ack(BasicAckOptions::default()).await?;
        seen += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "consumed {seen} messages in {secs:.2} s ({:.0}/s)",
        seen as f64 / secs
    );
    let mut rows: Vec<_> = counts.into_iter().collect();
    rows.sort();
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    for (country, count) in rows {
        writeln!(f, "{country},{count}")?;
    }
    f.flush()?;
    Ok(())
}

#[cfg(feature = "redis")]
async fn consume_redis(
    url: &str,
    queue: &str,
    n: u64,
    redis_url: &str,
    prefix: &str,
    prefetch: u16,
) -> Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let hash = format!("{prefix}country:counts");
    let total = format!("{prefix}messages:total");
    let (_conn, ch) = channel(url, queue).await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "baseline-redis".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut seen = 0u64;
    let mut redelivered = 0u64;
    while seen < n {
        let Some(delivery) = consumer.next().await else {
            return Err("the consumer was cancelled".into());
        };
        let d = delivery?;
        if d.redelivered {
            redelivered += 1;
        }
        if let Ok(e) = serde_json::from_slice::<Event>(&d.data) {
            redis::cmd("HINCRBY")
                .arg(&hash)
                .arg(e.country)
                .arg(1)
                .query_async::<i64>(&mut con)
                .await?;
            redis::cmd("INCR")
                .arg(&total)
                .query_async::<i64>(&mut con)
                .await?;
        }
        d.ack(BasicAckOptions::default()).await?;
        seen += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "consumed {seen} messages ({redelivered} redelivered) into Redis in {secs:.2} s ({:.0}/s)",
        seen as f64 / secs
    );
    Ok(())
}

#[cfg(feature = "postgres")]
async fn consume_postgres(
    url: &str,
    queue: &str,
    n: u64,
    postgres_url: &str,
    table: &str,
    mode: &str,
    prefetch: u16,
) -> Result<()> {
    if table.is_empty()
        || !table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!("table name `{table}`: letters, digits and _ only").into());
    }
    let sql = match mode {
        "upsert" => format!(
            "INSERT INTO {table} (country, count) VALUES ($1, 1) \
             ON CONFLICT (country) DO UPDATE SET count = {table}.count + 1"
        ),
        "append" => format!(
            "INSERT INTO {table} (event_id, id, ts, country, weather) VALUES ($1, $2, $3, $4, $5)"
        ),
        other => return Err(format!("mode `{other}`: upsert or append").into()),
    };
    let (client, connection) = tokio_postgres::connect(postgres_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let stmt = client.prepare(&sql).await?;
    let (_conn, ch) = channel(url, queue).await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "baseline-postgres".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut seen = 0u64;
    let mut redelivered = 0u64;
    while seen < n {
        let Some(delivery) = consumer.next().await else {
            return Err("the consumer was cancelled".into());
        };
        let d = delivery?;
        if d.redelivered {
            redelivered += 1;
        }
        if mode == "upsert" {
            if let Ok(e) = serde_json::from_slice::<Event>(&d.data) {
                client.execute(&stmt, &[&e.country]).await?;
            }
        } else if let Ok(r) = serde_json::from_slice::<Row>(&d.data) {
            let message_id = d
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            client
                .execute(&stmt, &[&message_id, &r.id, &r.ts, &r.country, &r.weather])
                .await?;
        }
        d.ack(BasicAckOptions::default()).await?;
        seen += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "consumed {seen} messages ({redelivered} redelivered) into PostgreSQL ({mode}) in {secs:.2} s ({:.0}/s)",
        seen as f64 / secs
    );
    drop(client);
    let _ = driver.await;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("amqp_baseline: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match args.get(1).map(String::as_str) {
            Some("publish") if args.len() == 5 => publish(&args[2], &args[3], &args[4]).await,
            Some("consume") if args.len() == 6 || args.len() == 7 => {
                let n = args[4].parse()?;
                let prefetch = args.get(6).map_or(Ok(1000), |p| p.parse())?;
                consume(&args[2], &args[3], n, &args[5], prefetch).await
            }
            #[cfg(feature = "redis")]
            Some("consume-redis") if args.len() == 7 || args.len() == 8 => {
                let n = args[4].parse()?;
                let prefetch = args.get(7).map_or(Ok(1000), |p| p.parse())?;
                consume_redis(&args[2], &args[3], n, &args[5], &args[6], prefetch).await
            }
            #[cfg(feature = "postgres")]
            Some("consume-postgres") if args.len() == 8 || args.len() == 9 => {
                let n = args[4].parse()?;
                let prefetch = args.get(8).map_or(Ok(1000), |p| p.parse())?;
                consume_postgres(&args[2], &args[3], n, &args[5], &args[6], &args[7], prefetch).await
            }
            _ => Err("usage: amqp_baseline publish URL QUEUE INPUT.jsonl | consume URL QUEUE N OUT.csv [PREFETCH] | consume-redis URL QUEUE N REDIS_URL KEY_PREFIX [PREFETCH] (feature redis) | consume-postgres URL QUEUE N POSTGRES_URL TABLE upsert|append [PREFETCH] (feature postgres)".into()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amqp_baseline: {e}");
            ExitCode::FAILURE
        }
    }
}
