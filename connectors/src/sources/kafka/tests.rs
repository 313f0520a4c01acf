//! Config, positions, and the source against librdkafka's in-process mock
//! cluster: offsets are committed only after a `Commit`, restored positions
//! are where partitions resume, bounded runs stop at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_engine::decode::Decoder;
use sluice_engine::operator::FieldSet;
use sluice_engine::source::{
    Commit, Source, SourceContext, SourceError, SourceEvent, SourceOutput,
};
use tokio::sync::{mpsc, watch};

use super::positions::{decode, encode, reached_end, PartitionIds, PositionError};
use super::{KafkaSource, KafkaSourceConfig, StartFrom};

const EXAMPLE: &str = r#"
brokers = ["kafka-0.kafka:9092", "kafka-1.kafka:9092"]
topics = ["message"]
group_id = "sluice-weather"
start = "earliest"
options = { "fetch.max.bytes" = 52428800, "client.id" = "sluice", "check.crcs" = true }
"#;

#[test]
fn example_config_parses() {
    let c: KafkaSourceConfig = toml::from_str(EXAMPLE).unwrap();
    assert_eq!(c.topics, vec!["message"]);
    assert_eq!(c.start, StartFrom::Earliest);
    assert_eq!(c.options["fetch.max.bytes"], "52428800");
    assert_eq!(c.options["check.crcs"], "true");
    assert_eq!(c.max_poll_records, 10_000);
    let e = toml::from_str::<KafkaSourceConfig>(&format!("{EXAMPLE}\ntopic = \"x\"")).unwrap_err();
    assert!(e.to_string().contains("unknown field `topic`"), "{e}");
    let e =
        toml::from_str::<KafkaSourceConfig>(&EXAMPLE.replace("earliest", "beginning")).unwrap_err();
    assert!(e.to_string().contains("earliest"), "{e}");
}

#[test]
fn options_managed_by_sluice_are_refused() {
    let text = EXAMPLE.replace("\"client.id\"", "\"enable.auto.commit\"");
    let e = toml::from_str::<KafkaSourceConfig>(&text).unwrap_err();
    assert!(
        e.to_string()
            .contains("`enable.auto.commit` is managed by sluice"),
        "{e}"
    );
}

#[test]
fn instance_id_defaults_to_the_host_name_and_can_be_turned_off() {
    let mut c: KafkaSourceConfig = toml::from_str(EXAMPLE).unwrap();
    assert_eq!(c.instance_id(), crate::kafka::host_name());
    c.group_instance_id = Some(String::new());
    assert_eq!(c.instance_id(), None);
    c.group_instance_id = Some("worker-0".into());
    assert_eq!(c.instance_id().as_deref(), Some("worker-0"));
}

#[test]
fn positions_round_trip() {
    let p = encode("orders.v1", 7, 123_456_789_012);
    let d = decode(&p).unwrap();
    assert_eq!(
        (d.topic.as_str(), d.partition, d.next),
        ("orders.v1", 7, 123_456_789_012)
    );
    assert_eq!(decode(b""), None);
    assert_eq!(decode(&p[..10]), None);
    let mut other = p.clone();
    other[0] = 9;
    assert_eq!(decode(&other), None);
}

#[test]
fn partition_ids_are_stable_and_never_collide() {
    let restored = BTreeMap::from([(3, encode("a", 0, 10)), (7, encode("b", 2, 5))]);
    let (mut ids, next) = PartitionIds::restore(&restored).unwrap();
    assert_eq!(ids.id("a", 0), 3);
    assert_eq!(ids.id("b", 2), 7);
    assert_eq!(next[&("a".to_string(), 0)], 10);
    // new partitions get ids after the largest restored one, once each
    assert_eq!(ids.id("a", 1), 8);
    assert_eq!(ids.id("c", 0), 9);
    assert_eq!(ids.id("a", 1), 8);

    let bad = BTreeMap::from([(0, b"\x00\x00\x00\x00\x00\x00\x00\x05file.ndjson".to_vec())]);
    assert_eq!(
        PartitionIds::restore(&bad).unwrap_err(),
        PositionError::NotKafka { id: 0 }
    );
    let dup = BTreeMap::from([(0, encode("a", 0, 1)), (1, encode("a", 0, 2))]);
    assert!(matches!(
        PartitionIds::restore(&dup),
        Err(PositionError::Duplicate { .. })
    ));
}

#[test]
fn bounded_end_detection() {
    assert!(reached_end(Some(10), None, 10));
    assert!(!reached_end(Some(9), None, 10));
    assert!(!reached_end(None, Some(0), 10)); // earliest, unread
    assert!(reached_end(None, Some(10), 10)); // earliest, low == high: empty
    assert!(reached_end(None, None, 10)); // latest, unread: nothing to read now
}

// ---- against librdkafka's mock cluster ----

struct Running {
    events: mpsc::Receiver<SourceEvent>,
    commits: mpsc::UnboundedSender<Commit>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), SourceError>>,
    _dir: tempfile::TempDir,
}

fn config(brokers: &str, topic: &str, group: &str) -> KafkaSourceConfig {
    let text = format!(
        "brokers = [\"{brokers}\"]\ntopics = [\"{topic}\"]\ngroup_id = \"{group}\"\ngroup_instance_id = \"\"\npoll_timeout = \"20ms\"\nclose_timeout = \"1s\"\noptions = {{ \"session.timeout.ms\" = 6000, \"heartbeat.interval.ms\" = 500 }}"
    );
    toml::from_str(&text).unwrap()
}

fn start(config: KafkaSourceConfig, restored: BTreeMap<u32, Vec<u8>>, bounded: bool) -> Running {
    let (tx, events) = mpsc::channel(64);
    let decoder = Arc::new(Decoder::new(Arc::from("k"), &FieldSet::All, None, 1 << 20));
    let output = SourceOutput::new(0, decoder, tx, Arc::default());
    let (commits, commit_rx) = mpsc::unbounded_channel();
    let (stop, shutdown) = watch::channel(false);
    let dir = tempfile::tempdir().unwrap();
    let ctx = SourceContext {
        name: Arc::from("k"),
        pipeline: Arc::from("test"),
        state_dir: dir.path().to_path_buf(),
        restored,
        bounded,
        accept_empty_state: false,
        restored_remotely: false,
        shutdown,
        commits: commit_rx,
        output,
    };
    let task = tokio::spawn(Box::new(KafkaSource::new(config)).run(ctx));
    Running {
        events,
        commits,
        stop,
        task,
        _dir: dir,
    }
}

/// Produces `n` events `{"i":k}` to each partition, one per request.
fn produce(brokers: &str, topic: &str, partitions: i32, n: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for p in 0..partitions {
        for k in 0..n {
            let payload = format!("{{\"p\":{p},\"i\":{k}}}");
            producer
                .send(
                    BaseRecord::<(), _>::to(topic)
                        .partition(p)
                        .payload(&payload),
                )
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Offsets committed by `group` (None where nothing was committed).
fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_range(topic, 0, partitions - 1);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

/// Receives data until `events` events arrived; returns the offsets seen
/// per engine partition and the last position per engine partition.
async fn collect(
    r: &mut Running,
    events: u64,
) -> (BTreeMap<u32, Vec<u64>>, BTreeMap<u32, Vec<u8>>, Vec<u32>) {
    let mut offsets: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut positions = BTreeMap::new();
    let mut declared = Vec::new();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while n < events {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, r.events.recv())
            .await
            .unwrap_or_else(|_| panic!("only {n} of {events} events within 30 s"))
            .expect("source alive");
        match ev {
            SourceEvent::Data {
                partition,
                batch,
                position,
                ..
            } => {
                n += batch.len() as u64;
                offsets
                    .entry(partition)
                    .or_default()
                    .extend(batch.meta.iter().map(|m| m.offset));
                positions.insert(partition, position);
            }
            SourceEvent::Partitions { partitions, .. } => declared.extend(partitions),
            _ => {}
        }
    }
    (offsets, positions, declared)
}

async fn wait_committed(brokers: &str, group: &str, topic: &str, want: Vec<Option<i64>>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let partitions = want.len() as i32;
    loop {
        let (b, g, t) = (brokers.to_string(), group.to_string(), topic.to_string());
        let got = tokio::task::spawn_blocking(move || committed(&b, &g, &t, partitions))
            .await
            .unwrap();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "committed {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_only_after_a_commit() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("t", 2, 1).unwrap();
    let b = brokers.clone();
    tokio::task::spawn_blocking(move || produce(&b, "t", 2, 10))
        .await
        .unwrap();

    let mut r = start(config(&brokers, "t", "g1"), BTreeMap::new(), false);
    let (offsets, positions, declared) = collect(&mut r, 20).await;
    assert_eq!(declared.len(), 2, "both partitions declared: {declared:?}");
    for o in offsets.values() {
        assert_eq!(o, &(0..10).collect::<Vec<u64>>());
    }
    // Everything was read, nothing committed: no checkpoint yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = brokers.clone();
    let before = tokio::task::spawn_blocking(move || committed(&b, "g1", "t", 2))
        .await
        .unwrap();
    assert_eq!(before, vec![None, None]);

    // A checkpoint covering only partition 0's first batch.
    let (&first, _) = positions.iter().next().unwrap();
    let p0 = decode(&positions[&first]).unwrap().partition;
    let mut partial = BTreeMap::new();
    partial.insert(first, encode("t", p0, 4));
    r.commits
        .send(Commit {
            epoch: 1,
            positions: partial,
        })
        .unwrap();
    let mut want = vec![None, None];
    want[p0 as usize] = Some(4);
    wait_committed(&brokers, "g1", "t", want).await;

    // The checkpoint covering everything.
    r.commits
        .send(Commit {
            epoch: 2,
            positions,
        })
        .unwrap();
    wait_committed(&brokers, "g1", "t", vec![Some(10), Some(10)]).await;
    r.stop.send(true).unwrap();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_resume_at_restored_positions_with_their_ids() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("t", 2, 1).unwrap();
    let b = brokers.clone();
    tokio::task::spawn_blocking(move || produce(&b, "t", 2, 10))
        .await
        .unwrap();

    // Partition 0 was checkpointed at offset 7 under engine id 5;
    // partition 1 has no position: it starts at `earliest`.
    let restored = BTreeMap::from([(5, encode("t", 0, 7))]);
    let mut r = start(config(&brokers, "t", "g2"), restored, false);
    let (offsets, _, declared) = collect(&mut r, 13).await;
    let mut declared = declared;
    declared.sort();
    assert_eq!(declared, vec![5, 6]);
    assert_eq!(offsets[&5], vec![7, 8, 9]);
    assert_eq!(offsets[&6], (0..10).collect::<Vec<u64>>());
    // The restored (durable) position is committed once assigned.
    wait_committed(&brokers, "g2", "t", vec![Some(7), None]).await;
    r.stop.send(true).unwrap();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_run_reads_to_the_end_then_waits_for_its_checkpoint() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("t", 2, 1).unwrap();
    let b = brokers.clone();
    tokio::task::spawn_blocking(move || produce(&b, "t", 2, 5))
        .await
        .unwrap();

    let mut r = start(config(&brokers, "t", "g3"), BTreeMap::new(), true);
    let (mut events, mut done) = (0, 0);
    let mut positions = BTreeMap::new();
    while events < 10 || done < 2 {
        match tokio::time::timeout(Duration::from_secs(20), r.events.recv()).await {
            Ok(Some(SourceEvent::PartitionDone { .. })) => done += 1,
            Ok(Some(SourceEvent::Data {
                partition,
                batch,
                position,
                ..
            })) => {
                events += batch.len();
                positions.insert(partition, position);
            }
            Ok(Some(_)) => {}
            other => panic!("{events} events, {done} partitions done, then {other:?}"),
        }
    }
    // Still running: waiting for the checkpoint of what it read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!r.task.is_finished());
    r.commits
        .send(Commit {
            epoch: 1,
            positions,
        })
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), &mut r.task)
        .await
        .expect("finishes after the commit")
        .unwrap()
        .unwrap();
    let b = brokers.clone();
    let got = tokio::task::spawn_blocking(move || committed(&b, "g3", "t", 2))
        .await
        .unwrap();
    assert_eq!(got, vec![Some(5), Some(5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_clear_error() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let r = start(config(&brokers, "nope", "g4"), BTreeMap::new(), false);
    let err = tokio::time::timeout(Duration::from_secs(30), r.task)
        .await
        .expect("fails fast")
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("topic `nope` does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_partitions_are_released_not_finished() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("t", 2, 1).unwrap();
    let b = brokers.clone();
    tokio::task::spawn_blocking(move || produce(&b, "t", 2, 3))
        .await
        .unwrap();
    let mut a = start(config(&brokers, "t", "g5"), BTreeMap::new(), false);
    let (_, _, declared) = collect(&mut a, 6).await;
    assert_eq!(declared.len(), 2);

    // A second member joins: the eager protocol revokes both partitions of
    // the first, then each member gets one.
    let mut b = start(config(&brokers, "t", "g5"), BTreeMap::new(), false);
    let mut done = Vec::new();
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.len() < 2 || again.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, a.events.recv()).await {
            Ok(Some(SourceEvent::PartitionsReleased { partitions, .. })) => done.extend(partitions),
            Ok(Some(SourceEvent::PartitionDone { partition, .. })) => {
                panic!("revoked partition {partition} reported as finished (end of input)")
            }
            Ok(Some(SourceEvent::Partitions { partitions, .. })) => again.extend(partitions),
            Ok(Some(_)) => {}
            other => panic!("no rebalance seen by the first member: {other:?} {done:?} {again:?}"),
        }
    }
    done.sort();
    assert_eq!(
        done,
        declared
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(again.len(), 1, "one partition back: {again:?}");
    // The new member has no checkpoint for its partition: it reads it from
    // `start` (earliest), not from the group's committed offsets.
    let (offsets, _, b_declared) = collect(&mut b, 3).await;
    assert_eq!(b_declared.len(), 1);
    assert_eq!(offsets.values().next().unwrap(), &vec![0, 1, 2]);
    for r in [a, b] {
        r.stop.send(true).unwrap();
        r.task.await.unwrap().unwrap();
    }
}

/// A bounded run (`--once`, replay) reads every partition of its topics to
/// the end: partitions held by another member of the group are waited for,
/// not taken for the end of the input (an empty or partial assignment once
/// ended such a run early with exit status 0 and incomplete results).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_run_waits_for_the_partitions_another_member_holds() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("t", 2, 1).unwrap();
    let b = brokers.clone();
    tokio::task::spawn_blocking(move || produce(&b, "t", 2, 5))
        .await
        .unwrap();
    // An unbounded member holds both partitions.
    let mut other = start(config(&brokers, "t", "g6"), BTreeMap::new(), false);
    collect(&mut other, 10).await;

    // The bounded member joins and gets one partition in the rebalance.
    let mut r = start(config(&brokers, "t", "g6"), BTreeMap::new(), true);
    let mut positions = BTreeMap::new();
    let mut epoch = 0;
    let mut events = 0;
    let mut receive = |ev: SourceEvent, events: &mut usize| {
        if let SourceEvent::Data {
            partition,
            batch,
            position,
            ..
        } = ev
        {
            *events += batch.len();
            positions.insert(partition, position);
            epoch += 1;
            // What the processor does once a checkpoint is durable.
            r.commits
                .send(Commit {
                    epoch,
                    positions: positions.clone(),
                })
                .unwrap();
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while events < 5 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, r.events.recv()).await {
            Ok(Some(ev)) => receive(ev, &mut events),
            other => panic!("{events} events, then {other:?}"),
        }
    }
    // Its own partition is read and checkpointed; the other one is not
    // assigned to it: it keeps running.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), r.events.recv()).await;
    if let Ok(Some(ev)) = quiet {
        receive(ev, &mut events);
    }
    assert_eq!(events, 5, "only its own partition");
    assert!(
        !r.task.is_finished(),
        "a bounded run ended with a partition unread"
    );

    // The other member leaves: the bounded run gets the partition, reads
    // it to the end and only then finishes.
    other.stop.send(true).unwrap();
    other.task.await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !r.task.is_finished() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(Duration::from_millis(100)), r.events.recv()).await {
            Ok(Some(ev)) => receive(ev, &mut events),
            Ok(None) | Err(_) => {
                assert!(Instant::now() < deadline, "not finished: {events} events");
            }
        }
    }
    r.task.await.unwrap().unwrap();
    assert_eq!(events, 10, "both partitions, each once");
}
