//! End-to-end tests of the exchange: real HTTP/2 on loopback, real
//! inbound journals in temporary directories.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::marks::InboundCheckpoint;
use super::wire::{PartitionBatch, Record};
use super::{
    open_inbound, Delivery, ExchangeServer, InboundReader, PeerSender, PeerStatus, ReceiverOptions,
    SendError, SenderOptions,
};
use crate::journal::JournalOptions;
use crate::keys::owned_key_groups;
use crate::value::Value;

const SIGNATURE: &str = "topology-1";
const KEY_GROUPS: u16 = 16;

/// A record id as the tests count them.
type Id = (String, u32, u64);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn journal_options() -> JournalOptions {
    JournalOptions {
        fsync: false,
        segment_bytes: 64 << 10,
        ..JournalOptions::default()
    }
}

/// Opens the inbound journal and serves it on `listen`.
async fn receiver(
    dir: &Path,
    listen: &str,
    restored: InboundCheckpoint,
    options: JournalOptions,
) -> (ExchangeServer, InboundReader) {
    let dir = dir.to_path_buf();
    let (log, reader) = tokio::task::spawn_blocking(move || open_inbound(&dir, options, &restored))
        .await
        .unwrap()
        .unwrap();
    let mut opts = ReceiverOptions::new(SIGNATURE);
    opts.order_wait = Duration::from_millis(300);
    let server = ExchangeServer::start(listen, log, opts).await.unwrap();
    (server, reader)
}

/// A receiver on a new journal and a free port; keep the directory alive.
async fn fresh_receiver() -> (tempfile::TempDir, ExchangeServer, InboundReader) {
    let dir = tempfile::tempdir().unwrap();
    let (server, reader) = receiver(
        dir.path(),
        "127.0.0.1:0",
        InboundCheckpoint::default(),
        journal_options(),
    )
    .await;
    (dir, server, reader)
}

fn sender_options(worker: u32, session: u64) -> SenderOptions {
    let mut o = SenderOptions::new(SIGNATURE, worker);
    o.session = session;
    o.max_in_flight = 4;
    o.request_timeout = Duration::from_secs(5);
    o.backoff_initial = Duration::from_millis(10);
    o.backoff_max = Duration::from_millis(100);
    o
}

fn record(offset: u64) -> Record {
    let key = offset.to_be_bytes().to_vec();
    Record {
        offset,
        key_group: (offset % u64::from(KEY_GROUPS)) as u16,
        key,
        time: offset as i64 * 10,
        watermark: offset as i64 * 10 - 100,
        value: Value::Int(offset as i64),
    }
}

fn part(source: &str, partition: u32, records: Vec<Record>) -> PartitionBatch {
    let watermark = records.last().map_or(i64::MIN, |r| r.watermark);
    PartitionBatch {
        source: source.into(),
        partition,
        watermark,
        records,
        combined_from: None,
    }
}

/// Sends `offsets` of one partition in batches of `per_batch`; returns the deliveries.
async fn send_range(
    sender: &PeerSender,
    source: &str,
    partition: u32,
    offsets: std::ops::Range<u64>,
    per_batch: usize,
) -> Vec<Delivery> {
    let all: Vec<u64> = offsets.collect();
    let mut out = Vec::new();
    for chunk in all.chunks(per_batch) {
        let batch = part(
            source,
            partition,
            chunk.iter().map(|&o| record(o)).collect(),
        );
        out.push(sender.send(&[batch]).await.unwrap());
    }
    out
}

async fn acked(deliveries: Vec<Delivery>) {
    for d in deliveries {
        d.wait().await.unwrap();
    }
}

/// Reads everything journaled so far; the ids handed out, in order.
async fn drain(reader: &mut InboundReader) -> Vec<Id> {
    let mut ids = Vec::new();
    while reader.pending() > 0 {
        for d in reader.next(4).await.unwrap() {
            for r in &d.records.records {
                ids.push((d.records.source.to_string(), d.records.partition, r.offset));
            }
        }
    }
    ids
}

fn assert_once(ids: &[Id], expected: impl IntoIterator<Item = Id>) {
    let mut counts: BTreeMap<&Id, usize> = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    let expected: Vec<Id> = expected.into_iter().collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !counts.contains_key(id))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "never applied: {missing:?}");
    assert_eq!(ids.len(), expected.len());
}

/// A loopback port nothing listens on (for a moment).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_exchange_thousands_of_records_by_key_group() {
    const WORKERS: u32 = 3;
    const PER_WORKER: u64 = 3000;
    let dirs: Vec<_> = (0..WORKERS).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers = Vec::new();
    let mut readers = Vec::new();
    for dir in &dirs {
        let (s, r) = receiver(
            dir.path(),
            "127.0.0.1:0",
            InboundCheckpoint::default(),
            journal_options(),
        )
        .await;
        servers.push(s);
        readers.push(r);
    }
    let owner = |kg: u16| {
        (0..WORKERS)
            .find(|&w| owned_key_groups(w, WORKERS, KEY_GROUPS).contains(&kg))
            .unwrap()
    };
    // Every worker reads partition `w` of source "in" and sends each record
    // to the owner of its key group (itself included, over loopback).
    let mut sending = Vec::new();
    for w in 0..WORKERS {
        let peers: Vec<PeerSender> = servers
            .iter()
            .map(|s| PeerSender::new(s.local_addr().to_string(), sender_options(w, 1)))
            .collect();
        sending.push(tokio::spawn(async move {
            let mut deliveries = Vec::new();
            let offsets: Vec<u64> = (0..PER_WORKER).collect();
            for chunk in offsets.chunks(250) {
                let mut by_owner: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
                for &o in chunk {
                    let r = record(o);
                    by_owner.entry(owner(r.key_group)).or_default().push(r);
                }
                for (to, records) in by_owner {
                    let batch = part("in", w, records);
                    deliveries.push(peers[to as usize].send(&[batch]).await.unwrap());
                }
            }
            acked(deliveries).await;
        }));
    }
    within("sending", async {
        for s in sending {
            s.await.unwrap();
        }
    })
    .await;
    for (w, reader) in readers.iter_mut().enumerate() {
        let ids = within("draining", drain(reader)).await;
        let expected = (0..WORKERS).flat_map(|p| {
            (0..PER_WORKER)
                .filter(move |&o| owner(record(o).key_group) == w as u32)
                .map(move |o| ("in".to_string(), p, o))
        });
        assert_once(&ids, expected);
        // each partition arrives in offset order
        for p in 0..WORKERS {
            let offsets: Vec<u64> = ids.iter().filter(|i| i.1 == p).map(|i| i.2).collect();
            assert!(
                offsets.windows(2).all(|x| x[0] < x[1]),
                "partition {p} out of order"
            );
        }
    }
    let durable: u64 = servers
        .iter()
        .map(|s| s.stats().durable.load(Ordering::Relaxed))
        .sum();
    assert_eq!(durable, u64::from(WORKERS) * 12 * u64::from(WORKERS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_after_a_sender_crash_and_a_rebalance_are_applied_once() {
    let (_dir, server, mut reader) = fresh_receiver().await;
    let addr = server.local_addr().to_string();
    within("sending", async {
        // Worker 0 reads partition 5 and crashes with batches in flight:
        // it had released (committed) nothing past offset 1000.
        let first = PeerSender::new(addr.clone(), sender_options(0, 1));
        let deliveries = send_range(&first, "kafka", 5, 0..1000, 100).await;
        let in_flight = send_range(&first, "kafka", 5, 1000..1400, 100).await;
        acked(deliveries).await;
        drop(in_flight);
        drop(first);
        // Restarted, it replays from its last release.
        let restarted = PeerSender::new(addr.clone(), sender_options(0, 2));
        acked(send_range(&restarted, "kafka", 5, 1000..2000, 100).await).await;
        // A rebalance gives partition 5 to worker 1, which resumes at the
        // committed offset 1500 and resends what worker 0 delivered.
        let other = PeerSender::new(addr.clone(), sender_options(1, 1));
        acked(send_range(&other, "kafka", 5, 1500..2500, 70).await).await;
    })
    .await;
    let ids = within("draining", drain(&mut reader)).await;
    assert_once(&ids, (0..2500).map(|o| ("kafka".to_string(), 5, o)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_receiver_loses_nothing_and_applies_nothing_twice() {
    let (dir, server, mut reader) = fresh_receiver().await;
    let addr = server.local_addr();
    let sender = PeerSender::new(addr.to_string(), sender_options(0, 1));
    within("sending", async {
        acked(send_range(&sender, "http", 1, 0..300, 50).await).await;
        acked(send_range(&sender, "http", 0, 0..1000, 50).await).await
    })
    .await;
    let id = |d: &super::Delivered, r: &Record| ("http".to_string(), d.records.partition, r.offset);
    // The caller applies some batches (all of partition 1) and checkpoints
    // them with its state.
    let mut kept: Vec<Id> = Vec::new();
    while kept.len() < 400 {
        for d in reader.next(2).await.unwrap() {
            kept.extend(d.records.records.iter().map(|r| id(&d, r)));
        }
    }
    let checkpoint = reader.checkpoint();
    reader.commit(&checkpoint).unwrap();
    // It applies more, then crashes before the next checkpoint: that state
    // is lost with the process.
    let _lost = reader.next(3).await.unwrap();
    server.shutdown().await;
    drop(reader);

    let (server, mut reader) =
        receiver(dir.path(), &addr.to_string(), checkpoint, journal_options()).await;
    within("sending after the restart", async {
        // The live sender reconnects and goes on...
        acked(send_range(&sender, "http", 0, 1000..1500, 50).await).await;
        // ...then restarts and replays from an old release: partition 1 is
        // all before the checkpoint, only the restored marks know it.
        let replay = PeerSender::new(addr.to_string(), sender_options(0, 2));
        acked(send_range(&replay, "http", 1, 0..300, 50).await).await;
        acked(send_range(&replay, "http", 0, 200..1200, 50).await).await;
    })
    .await;
    kept.extend(within("draining", drain(&mut reader)).await);
    let expected = (0..300).map(|o| ("http".to_string(), 1, o));
    assert_once(
        &kept,
        expected.chain((0..1500).map(|o| ("http".to_string(), 0, o))),
    );
    assert!(server.stats().durable.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_backs_off_while_the_receiver_is_down_and_bounds_in_flight() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut options = sender_options(0, 1);
    options.max_in_flight = 3;
    options.backoff_initial = Duration::from_millis(20);
    options.backoff_max = Duration::from_millis(160);
    let sender = PeerSender::new(addr.clone(), options);
    let mut deliveries = send_range(&sender, "in", 0, 0..30, 10).await;
    // A fourth batch waits: three are unacknowledged.
    let last = [part("in", 0, vec![record(30)])];
    let fourth = sender.send(&last);
    tokio::pin!(fourth);
    assert!(
        tokio::time::timeout(Duration::from_millis(800), &mut fourth)
            .await
            .is_err(),
        "send did not wait for an acknowledgement"
    );
    let connects = sender.stats().connects.load(Ordering::Relaxed);
    // 800 ms of 20, 40, 80, 160, 160... ms waits: about 7 attempts, never a busy loop.
    assert!(
        (3..=12).contains(&connects),
        "{connects} connection attempts"
    );
    assert!(matches!(sender.status(), PeerStatus::Unreachable { .. }));

    let dir = tempfile::tempdir().unwrap();
    let (_server, mut reader) = receiver(
        dir.path(),
        &addr,
        InboundCheckpoint::default(),
        journal_options(),
    )
    .await;
    within("delivering once the receiver is up", async {
        deliveries.push(fourth.await.unwrap());
        acked(deliveries).await;
    })
    .await;
    assert_eq!(sender.status(), PeerStatus::Connected);
    let ids = within("draining", drain(&mut reader)).await;
    assert_eq!(
        ids,
        (0..31)
            .map(|o| ("in".to_string(), 0, o))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_topology_is_refused_and_reported() {
    let (_dir, server, mut reader) = fresh_receiver().await;
    let mut options = sender_options(1, 1);
    options.signature = "topology-2".into();
    let sender = PeerSender::new(server.local_addr().to_string(), options);
    let delivery = sender
        .send(&[part("in", 0, vec![record(0)])])
        .await
        .unwrap();
    let refused = within("refusal", delivery.wait()).await;
    let Err(SendError::Refused { reason, .. }) = refused else {
        panic!("not refused: {refused:?}")
    };
    assert!(
        reason.contains("topology-2") && reason.contains(SIGNATURE),
        "{reason}"
    );
    assert!(matches!(sender.status(), PeerStatus::Refused { .. }));
    // It never sends again.
    assert!(matches!(
        sender.send(&[part("in", 0, vec![record(1)])]).await,
        Err(SendError::Refused { .. })
    ));
    assert_eq!(server.stats().refused.load(Ordering::Relaxed), 1);
    assert_eq!(reader.pending(), 0);
    assert!(within("draining", drain(&mut reader)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watermark_is_the_minimum_over_the_senders_partitions() {
    let (_dir, server, mut reader) = fresh_receiver().await;
    let addr = server.local_addr().to_string();
    let zero = PeerSender::new(addr.clone(), sender_options(0, 1));
    let one = PeerSender::new(addr.clone(), sender_options(1, 1));
    let heartbeat = |source: &str, partition, watermark| PartitionBatch {
        source: source.into(),
        partition,
        watermark,
        records: Vec::new(),
        combined_from: None,
    };
    within("sending", async {
        // worker 0: data of kafka/0 up to watermark 1000
        acked(vec![zero
            .send(&[part("kafka", 0, (0..=110).map(record).collect())])
            .await
            .unwrap()])
        .await;
        // worker 1: idle partitions, heartbeats only
        acked(vec![one
            .send(&[heartbeat("kafka", 1, 400), heartbeat("http", 1, 700)])
            .await
            .unwrap()])
        .await;
    })
    .await;
    within("draining", drain(&mut reader)).await;
    let now = crate::time::now_ms();
    assert_eq!(reader.watermark(now, None), 400);
    within("heartbeat", async {
        acked(vec![one
            .send(&[heartbeat("kafka", 1, 2000)])
            .await
            .unwrap()])
        .await
    })
    .await;
    within("draining", drain(&mut reader)).await;
    assert_eq!(reader.watermark(now, None), 700);
    // The watermarks survive a restore.
    let saved = reader.checkpoint();
    let mut restored = super::watermarks::InboundWatermarks::restore(&saved.watermarks, now);
    assert_eq!(restored.current(now, None), 700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbound_backlog_holds_senders_back_until_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        max_backlog_events: Some(3),
        ..journal_options()
    };
    let (server, mut reader) = receiver(
        dir.path(),
        "127.0.0.1:0",
        InboundCheckpoint::default(),
        options,
    )
    .await;
    let sender = PeerSender::new(server.local_addr().to_string(), sender_options(0, 1));
    let deliveries = send_range(&sender, "in", 0, 0..40, 10).await;
    // Three batches fit; the fourth is answered 503 until a checkpoint
    // makes room.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sender.stats().acked.load(Ordering::Relaxed), 3);
    assert!(server.stats().busy.load(Ordering::Relaxed) > 0);
    let mut ids = within("draining", drain(&mut reader)).await;
    reader.commit(&reader.checkpoint()).unwrap();
    within("delivering", acked(deliveries)).await;
    ids.extend(within("draining", drain(&mut reader)).await);
    assert_once(&ids, (0..40).map(|o| ("in".to_string(), 0, o)));
}

/// Posts raw bytes to a receiver over a fresh HTTP/2 connection.
async fn post(addr: std::net::SocketAddr, body: Vec<u8>) -> hyper::StatusCode {
    use http_body_util::Full;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::post(format!("http://{addr}{}", super::server::BATCH_PATH))
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    send.send_request(request).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_s_batches_are_journaled_in_the_order_sent() {
    use super::wire::{encode, BatchHeader};
    let (_dir, server, mut reader) = fresh_receiver().await;
    let addr = server.local_addr();
    let batch = |seq: u64, offsets: std::ops::Range<u64>| {
        let header = BatchHeader {
            signature: SIGNATURE.into(),
            sender: 0,
            session: 1,
            seq,
        };
        encode(&header, &[part("in", 0, offsets.map(record).collect())])
    };
    // Batch 1 overtakes batch 0 (two requests in flight, or a retry).
    let second = tokio::spawn(post(addr, batch(1, 10..20)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(within("first", post(addr, batch(0, 0..10))).await, 200);
    assert_eq!(within("second", second).await.unwrap(), 200);
    // A retry of a batch already held is answered as done, not journaled.
    assert_eq!(within("retry", post(addr, batch(1, 10..20))).await, 200);
    // Alone, a batch whose predecessor never comes is refused for now.
    let lone = within("lone", post(addr, batch(3, 30..40))).await;
    assert_eq!(lone, 503);
    let ids = within("draining", drain(&mut reader)).await;
    assert_eq!(
        ids,
        (0..20)
            .map(|o| ("in".to_string(), 0, o))
            .collect::<Vec<_>>()
    );
}

/// A peer running a build with the previous format (version 1, bincode
/// records) is refused with 409, like another topology: the two wait
/// instead of exchanging (docs/scaling.md, "Upgrading"); damaged records
/// of this version are a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_the_previous_format_version_is_refused_with_409() {
    use super::wire::{encode, BatchHeader, MAGIC};
    let (_dir, server, _reader) = fresh_receiver().await;
    let addr = server.local_addr();
    let header = BatchHeader {
        signature: SIGNATURE.into(),
        sender: 0,
        session: 1,
        seq: 0,
    };
    let parts = vec![part("in", 0, (0..3).map(record).collect())];
    let mut v1 = Vec::new();
    v1.extend_from_slice(MAGIC);
    v1.extend_from_slice(&1u16.to_le_bytes());
    let config = bincode::config::standard();
    bincode::serde::encode_into_std_write(&header, &mut v1, config).unwrap();
    bincode::serde::encode_into_std_write(&parts, &mut v1, config).unwrap();
    assert_eq!(within("version 1", post(addr, v1)).await, 409);
    let mut damaged = encode(&header, &parts);
    damaged.push(0);
    assert_eq!(within("damaged", post(addr, damaged)).await, 400);
    assert_eq!(
        within("whole", post(addr, encode(&header, &parts))).await,
        200
    );
}

/// Partial results of the offsets `first..=last` (one per key), as a
/// sender that folds rows sends them.
fn combined(source: &str, partition: u32, first: u64, last: u64, keys: &[&str]) -> PartitionBatch {
    PartitionBatch {
        source: source.into(),
        partition,
        watermark: 0,
        records: keys
            .iter()
            .map(|k| Record {
                offset: last,
                key_group: 0,
                key: k.as_bytes().to_vec(),
                time: 0,
                watermark: i64::MIN,
                value: Value::Array(vec![Value::Int((last - first + 1) as i64)]),
            })
            .collect(),
        combined_from: Some(first),
    }
}

/// What the acknowledgements say a sender may fold from: the offsets its
/// partitions are journaled up to, also across a receiver's restart (from
/// its checkpoint and the journal after it); partial results that would
/// overlap what the receiver holds are refused (409), and a range applied
/// before is dropped whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_results_are_taken_once_and_never_over_what_is_held() {
    let (dir, server, mut reader) = fresh_receiver().await;
    let addr = server.local_addr().to_string();
    let mine = 1u32 << 20;
    let sender = PeerSender::new(addr.clone(), sender_options(1, 1));
    let marks = within("sending records", async {
        let mut last = Vec::new();
        for d in send_range(&sender, "http", mine, 0..100, 40).await {
            last = d.wait().await.unwrap();
        }
        last
    })
    .await;
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert_eq!((marks[0].partition, marks[0].next_offset), (mine, 100));
    // partial results of 100..=199 are taken; the marks move past them
    let marks = within("sending partials", async {
        let d = sender
            .send(&[combined("http", mine, 100, 199, &["a", "b"])])
            .await
            .unwrap();
        d.wait().await.unwrap()
    })
    .await;
    assert_eq!(marks[0].next_offset, 200);
    // another sender's partitions are not reported to this one
    let other = PeerSender::new(addr.clone(), sender_options(2, 1));
    let theirs = within("other sender", async {
        let d = other
            .send(&[part("http", 2 << 20, vec![record(5)])])
            .await
            .unwrap();
        d.wait().await.unwrap()
    })
    .await;
    assert!(theirs.iter().all(|m| m.partition == 2 << 20), "{theirs:?}");
    let checkpoint = {
        let delivered = within("applying", reader.next(8)).await.unwrap();
        let partials: Vec<&Record> = delivered
            .iter()
            .filter(|d| d.records.combined_from.is_some())
            .flat_map(|d| &d.records.records)
            .collect();
        assert_eq!(partials.len(), 2);
        reader.checkpoint()
    };
    reader.commit(&checkpoint).unwrap();
    server.shutdown().await;
    drop(reader);

    // The receiver restarts on its checkpoint; the sender restarts too and
    // replays from an older position.
    let (_server, mut reader) = receiver(dir.path(), &addr, checkpoint, journal_options()).await;
    let replay = PeerSender::new(addr.clone(), sender_options(1, 2));
    let refused = within("straddling partials", async {
        let d = replay
            .send(&[combined("http", mine, 150, 260, &["a"])])
            .await
            .unwrap();
        d.wait().await
    })
    .await;
    match refused {
        Err(SendError::Refused { reason, .. }) => {
            assert!(reason.contains("150..=260"), "{reason}")
        }
        other => panic!("straddling partial results were not refused: {other:?}"),
    }
    let replay = PeerSender::new(addr.clone(), sender_options(1, 3));
    let marks = within("replaying", async {
        // an old range again (dropped whole), then new records and partials
        let d = replay
            .send(&[combined("http", mine, 100, 199, &["a", "b"])])
            .await
            .unwrap();
        d.wait().await.unwrap();
        acked(send_range(&replay, "http", mine, 150..260, 50).await).await;
        let d = replay
            .send(&[combined("http", mine, 260, 300, &["c"])])
            .await
            .unwrap();
        d.wait().await.unwrap()
    })
    .await;
    assert_eq!(marks[0].next_offset, 301);
    let mut records = Vec::new();
    let mut partial_keys = Vec::new();
    while reader.pending() > 0 {
        for d in within("draining", reader.next(8)).await.unwrap() {
            if d.records.combined_from.is_some() {
                partial_keys.extend(d.records.records.iter().map(|r| r.key.clone()));
            } else {
                records.extend(d.records.records.iter().map(|r| r.offset));
            }
        }
    }
    assert_eq!(records, (200..260).collect::<Vec<_>>());
    assert_eq!(partial_keys, vec![b"c".to_vec()]);
}
