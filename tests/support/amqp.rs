//! RabbitMQ for the AMQP tests: the shared broker on 127.0.0.1:5672
//! (started by `tests/rabbitmq.sh`), a private node a test may stop and
//! start without disturbing tests running in parallel, and a small lapin
//! client to publish, inspect and drain queues.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::services::free_port;

/// The shared broker's URL (`AMQP_URL` overrides), after making sure it runs.
pub fn shared_broker() -> String {
    static START: Once = Once::new();
    START.call_once(|| {
        let status = Command::new("bash")
            .arg(super::repo().join("tests/rabbitmq.sh"))
            .stdout(Stdio::null())
            .status()
            .expect("bash tests/rabbitmq.sh");
        assert!(
            status.success(),
            "tests/rabbitmq.sh could not start RabbitMQ"
        );
    });
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A runtime for the test's own client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A test client: one connection, one channel with publisher confirms.
pub struct Client {
    pub conn: Connection,
    pub channel: Channel,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Client { conn, channel }
    }

    /// Declares a durable queue (and binds it to `exchange` with `key`).
    pub async fn durable_queue(&self, queue: &str, bind: Option<(&str, &str)>) {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .unwrap();
        if let Some((exchange, key)) = bind {
            self.channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
    }

    pub async fn delete_queue(&self, queue: &str) {
        let _ = self
            .channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }

    /// Publishes persistent messages to the default exchange (routing key =
    /// queue), `(message_id, body)`, and waits for every confirm.
    pub async fn publish(&self, queue: &str, messages: &[(Option<String>, Vec<u8>)]) {
        for chunk in messages.chunks(20_000) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for (id, body) in chunk {
                let mut props = BasicProperties::default().with_delivery_mode(2);
                if let Some(id) = id {
                    props = props.with_message_id(id.as_str().into());
                }
                let c = self
                    .channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        body,
                        props,
                    )
                    .await
                    .unwrap();
                confirms.push(c);
            }
            for c in confirms {
                assert!(
                    c.await.unwrap().is_ack(),
                    "the broker nacked a test message"
                );
            }
        }
    }

    /// (ready messages, consumers) of a queue.
    pub async fn depth(&self, queue: &str) -> (u32, u32) {
        let ch = self.conn.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .unwrap();
        let _ = ch.close(200, "ok".into()).await;
        (q.message_count(), q.consumer_count())
    }

    /// Consumes (and acks) everything in `queue` until it stays quiet for `idle`.
    pub async fn drain(&self, queue: &str, idle: Duration) -> Vec<Delivery> {
        let ch = self.conn.create_channel().await.unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "test-drain".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Ok(Some(Ok(d))) = tokio::time::timeout(idle, consumer.next()).await {
            d.ack(BasicAckOptions::default()).await.unwrap();
            out.push(d);
        }
        let _ = ch.close(200, "ok".into()).await;
        out
    }
}

/// Deletes the test's queues and exchanges when dropped (also when the test
/// fails).
pub struct Cleanup {
    pub url: String,
    pub queues: Vec<String>,
    pub exchanges: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let rt = rt();
        rt.block_on(async {
            let Ok(conn) = Connection::connect(&self.url, ConnectionProperties::default()).await
            else {
                return;
            };
            for q in &self.queues {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
            }
            for e in &self.exchanges {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .exchange_delete(e.as_str().into(), Default::default())
                        .await;
                }
            }
            let _ = conn.close(200, "ok".into()).await;
        });
    }
}

/// Lines of an NDJSON file as `(message_id, body)` messages; the id is
/// `<prefix><line number>`.
pub fn lines_as_messages(path: &std::path::Path, prefix: &str) -> Vec<(Option<String>, Vec<u8>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| (Some(format!("{prefix}{i}")), l.as_bytes().to_vec()))
        .collect()
}

fn port() -> u16 {
    loop {
        let p = free_port();
        // RabbitMQ's CLI tools take ports 35672-35682 for themselves.
        if !(35_600..=35_700).contains(&p) {
            return p;
        }
    }
}

/// A private RabbitMQ node (own name, ports, data directory and Erlang
/// cookie, loopback only); stopped on drop.
pub struct PrivateRabbit {
    pub port: u16,
    dist_port: u16,
    node: String,
    dir: tempfile::TempDir,
}

impl PrivateRabbit {
    pub fn start() -> PrivateRabbit {
        let _ = shared_broker(); // makes sure RabbitMQ is installed
        let port = port();
        let r = PrivateRabbit {
            port,
            dist_port: self::port(),
            node: format!("sluice-test-{port}@localhost"),
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(r.dir.path().join("rabbitmq.conf"), "").unwrap();
        std::fs::write(r.dir.path().join("enabled_plugins"), "[].").unwrap();
        let status = r
            .command("rabbitmq-server")
            .arg("-detached")
            .status()
            .unwrap();
        assert!(status.success(), "cannot start a private RabbitMQ node");
        let pid = r.dir.path().join("pid");
        let status = r
            .command("rabbitmqctl")
            .args(["-q", "wait", "--timeout", "60"])
            .arg(&pid)
            .status()
            .unwrap();
        assert!(status.success(), "the private RabbitMQ node did not start");
        r.wait_port(true);
        r
    }

    /// By host name, so that reconnects resolve it again.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@localhost:{}/%2f", self.port)
    }

    fn bin(name: &str) -> PathBuf {
        let private = PathBuf::from("/usr/lib/rabbitmq/bin").join(name);
        if private.exists() {
            private
        } else {
            PathBuf::from(name)
        }
    }

    fn command(&self, tool: &str) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(Self::bin(tool));
        c.env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .stdout(Stdio::null());
        c
    }

    fn ctl(&self, args: &[&str]) {
        let status = self.command("rabbitmqctl").args(args).status().unwrap();
        assert!(status.success(), "rabbitmqctl {args:?} failed");
    }

    fn wait_port(&self, open: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() != open {
            assert!(
                Instant::now() < deadline,
                "the private RabbitMQ port did not change"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the broker application (connections are closed, the port
    /// closes); durable queues and persistent messages are kept.
    pub fn stop_app(&self) {
        self.ctl(&["-q", "stop_app"]);
        self.wait_port(false);
    }

    pub fn start_app(&self) {
        self.ctl(&["-q", "start_app"]);
        self.wait_port(true);
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = self
            .command("rabbitmqctl")
            .args(["-q", "stop"])
            .stderr(Stdio::null())
            .status();
    }
}
