//! The protocol step by step: each test is one rule of the module docs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Action, Config, Event, Protocol, Snapshot};
use crate::batch::RowKind;
use crate::keys::GroupKey;
use crate::operator::StateWriter;
use crate::sink::SinkRecord;
use crate::state::{encode, Key, Restored, SinkAck, Write, WriteSet};
use crate::value::Value;

const GRACE: Duration = Duration::from_secs(10);

fn config(max_pending_epochs: usize) -> Config {
    Config {
        sources: vec![Arc::from("in")],
        sinks: vec![Arc::from("out"), Arc::from("dead")],
        key_groups: 8,
        signatures: vec![(Arc::from("agg"), "sig".into())],
        max_pending_epochs,
        early_checkpoint_records: 1000,
        drain_grace: GRACE,
    }
}

fn fresh(max_pending_epochs: usize) -> Protocol {
    Protocol::restore(config(max_pending_epochs), &mut Restored::default()).0
}

fn record(id: &str) -> SinkRecord {
    SinkRecord {
        kind: RowKind::Insert,
        id: id.into(),
        value: Value::Int(1),
        time: 0,
    }
}

fn batch(p: &mut Protocol, ids: &[&str], position: u8) -> Vec<Action> {
    for id in ids {
        p.record(0, record(id), None);
    }
    p.handle(Event::BatchProcessed {
        source: 0,
        partition: 0,
        position: vec![position],
    })
}

/// Runs a checkpoint up to its write and returns the write.
fn checkpoint(p: &mut Protocol) -> (u64, WriteSet) {
    assert_eq!(p.handle(Event::CheckpointDue), vec![Action::TakeSnapshot]);
    write_of(p.handle(Event::Snapshot(Snapshot::default())))
}

fn write_of(actions: Vec<Action>) -> (u64, WriteSet) {
    match <[Action; 1]>::try_from(actions) {
        Ok([Action::Write { epoch, writes }]) => (epoch, writes),
        other => panic!("expected one write, got {other:?}"),
    }
}

fn put(writes: &WriteSet, key: &Key) -> Option<Vec<u8>> {
    writes.writes.iter().rev().find_map(|w| match w {
        Write::Put(k, v) if k == key => Some(v.clone()),
        _ => None,
    })
}

fn deleted(writes: &WriteSet, key: &Key) -> bool {
    writes
        .writes
        .iter()
        .any(|w| matches!(w, Write::Delete(k) if k == key))
}

fn outbox_key(sink: &str, epoch: u64) -> Key {
    Key::Outbox {
        sink: Arc::from(sink),
        epoch,
    }
}

#[test]
fn output_and_positions_leave_only_once_the_checkpoint_is_durable() {
    let mut p = fresh(4);
    assert!(batch(&mut p, &["a", "b"], 2).is_empty());
    let (epoch, writes) = checkpoint(&mut p);
    assert_eq!(epoch, 1);
    // One write set holds the outbox, the position and the epoch.
    assert_eq!(
        put(&writes, &outbox_key("out", 1)),
        Some(encode(&vec![record("a"), record("b")]))
    );
    let position = Key::Position {
        source: Arc::from("in"),
        partition: 0,
    };
    assert_eq!(put(&writes, &position), Some(vec![2]));
    assert_eq!(put(&writes, &Key::Epoch), Some(1u64.to_be_bytes().to_vec()));
    assert_eq!(
        put(&writes, &Key::KeyGroups),
        Some(8u16.to_be_bytes().to_vec())
    );
    assert_eq!(
        put(&writes, &Key::Signature(Arc::from("agg"))),
        Some(b"sig".to_vec())
    );
    // Durable: now the sink gets the epoch and the source its position.
    let actions = p.handle(Event::WriteDone { epoch: 1 });
    assert_eq!(
        actions,
        vec![
            Action::Deliver {
                sink: 0,
                epoch: 1,
                records: Arc::new(vec![record("a"), record("b")]),
            },
            Action::Commit {
                source: 0,
                epoch: 1,
                positions: BTreeMap::from([(0, vec![2])]),
            },
        ]
    );
}

#[test]
fn one_checkpoint_is_in_flight_at_a_time() {
    let mut p = fresh(4);
    batch(&mut p, &["a"], 1);
    checkpoint(&mut p);
    batch(&mut p, &["b"], 2);
    assert!(p.in_flight());
    assert!(p.handle(Event::CheckpointDue).is_empty());
    p.handle(Event::WriteDone { epoch: 1 });
    // "b" is in the next one.
    let (epoch, writes) = checkpoint(&mut p);
    assert_eq!(epoch, 2);
    assert_eq!(
        put(&writes, &outbox_key("out", 2)),
        Some(encode(&vec![record("b")]))
    );
}

#[test]
fn an_ack_is_saved_by_the_next_checkpoint_which_deletes_the_outboxes_it_covers() {
    let mut p = fresh(4);
    for (epoch, id) in [(1, "a"), (2, "b")] {
        batch(&mut p, &[id], epoch as u8);
        checkpoint(&mut p);
        p.handle(Event::WriteDone { epoch });
    }
    assert_eq!(p.pending(0).iter().copied().collect::<Vec<_>>(), [1, 2]);
    // The sink wrote epoch 1; the ack arrives while nothing is in flight.
    p.handle(Event::SinkAcked {
        sink: 0,
        epoch: 1,
        progress: Some(vec![7]),
    });
    assert_eq!(p.pending(0).iter().copied().collect::<Vec<_>>(), [2]);
    let (_, writes) = checkpoint(&mut p);
    let ack = SinkAck {
        epoch: 1,
        progress: Some(vec![7]),
    };
    assert_eq!(
        put(&writes, &Key::Ack(Arc::from("out"))),
        Some(encode(&ack))
    );
    assert!(deleted(&writes, &outbox_key("out", 1)));
    assert!(
        !deleted(&writes, &outbox_key("out", 2)),
        "epoch 2 is not acknowledged"
    );
}

#[test]
fn an_ack_arriving_during_a_write_waits_for_the_next_checkpoint() {
    let mut p = fresh(4);
    batch(&mut p, &["a"], 1);
    checkpoint(&mut p);
    p.handle(Event::WriteDone { epoch: 1 });
    batch(&mut p, &["b"], 2);
    let (_, writes) = checkpoint(&mut p);
    assert!(!deleted(&writes, &outbox_key("out", 1)));
    p.handle(Event::SinkAcked {
        sink: 0,
        epoch: 1,
        progress: None,
    });
    p.handle(Event::WriteDone { epoch: 2 });
    let (_, writes) = checkpoint(&mut p);
    assert!(deleted(&writes, &outbox_key("out", 1)));
}

#[test]
fn input_pauses_while_a_sink_has_max_pending_epochs_unacknowledged() {
    let mut p = fresh(2);
    for epoch in 1..=2u64 {
        assert!(p.accepts_input());
        batch(&mut p, &["x"], epoch as u8);
        checkpoint(&mut p);
        p.handle(Event::WriteDone { epoch });
    }
    assert!(!p.accepts_input());
    p.handle(Event::SinkAcked {
        sink: 0,
        epoch: 1,
        progress: None,
    });
    assert!(p.accepts_input());
}

#[test]
fn a_large_outbox_starts_a_checkpoint_early() {
    let mut p = fresh(4);
    let ids: Vec<String> = (0..999).map(|i| i.to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert!(batch(&mut p, &ids, 1).is_empty());
    assert_eq!(batch(&mut p, &["last"], 2), vec![Action::TakeSnapshot]);
}

#[test]
fn upserts_of_one_key_in_an_epoch_leave_the_last() {
    let mut p = fresh(4);
    let key: GroupKey = GroupKey::from_slice(b"k");
    let upsert = |v: i64| SinkRecord {
        kind: RowKind::Upsert,
        id: "k".into(),
        value: Value::Int(v),
        time: 0,
    };
    p.record(0, upsert(1), Some(&key));
    p.record(0, record("event"), None);
    p.record(0, upsert(2), Some(&key));
    let (_, writes) = checkpoint(&mut p);
    assert_eq!(
        put(&writes, &outbox_key("out", 1)),
        Some(encode(&vec![upsert(2), record("event")]))
    );
}

#[test]
fn operator_state_and_max_event_times_go_into_the_write() {
    let mut p = fresh(4);
    batch(&mut p, &[], 1);
    assert_eq!(p.handle(Event::CheckpointDue), vec![Action::TakeSnapshot]);
    let mut changes = StateWriter::default();
    changes.put(3, b"k1".to_vec(), b"v".to_vec());
    changes.delete(3, b"k2".to_vec());
    let snapshot = Snapshot {
        state: vec![(Arc::from("agg"), changes)],
        max_times: vec![vec![(0, 42)]],
        cluster: None,
    };
    let (_, writes) = write_of(p.handle(Event::Snapshot(snapshot)));
    let state = |k: &[u8]| Key::State {
        node: Arc::from("agg"),
        group: 3,
        key: k.to_vec(),
    };
    assert_eq!(put(&writes, &state(b"k1")), Some(b"v".to_vec()));
    assert!(deleted(&writes, &state(b"k2")));
    let max_time = Key::MaxEventTime {
        source: Arc::from("in"),
        partition: 0,
    };
    assert_eq!(put(&writes, &max_time), Some(42i64.to_be_bytes().to_vec()));
}

#[test]
fn nothing_new_means_no_checkpoint_and_an_idle_report() {
    let mut p = fresh(4);
    assert_eq!(p.handle(Event::CheckpointDue), vec![Action::Idle]);
    batch(&mut p, &["a"], 1);
    checkpoint(&mut p);
    p.handle(Event::WriteDone { epoch: 1 });
    // Waiting for the sink: not idle, nothing to write either.
    assert!(p.handle(Event::CheckpointDue).is_empty());
}

#[test]
fn a_failed_write_stops_the_run_and_delivers_nothing() {
    let mut p = fresh(4);
    batch(&mut p, &["a"], 1);
    checkpoint(&mut p);
    let error = "disk full".to_string();
    let actions = p.handle(Event::WriteFailed {
        epoch: 1,
        error: error.clone(),
    });
    assert_eq!(actions, vec![Action::Fail { epoch: 1, error }]);
}

#[test]
fn restore_redelivers_the_committed_outboxes_not_acknowledged() {
    let mut restored = Restored {
        epoch: 3,
        ..Restored::default()
    };
    restored.acks.insert(
        "out".into(),
        SinkAck {
            epoch: 1,
            progress: None,
        },
    );
    restored.outbox.insert(
        "out".into(),
        vec![
            (1, vec![record("a")]),
            (2, vec![record("b")]),
            (3, vec![record("c")]),
        ],
    );
    let (mut p, actions) = Protocol::restore(config(4), &mut restored);
    assert_eq!(p.epoch(), 3);
    let redelivered: Vec<u64> = actions
        .iter()
        .map(|a| match a {
            Action::Deliver { sink: 0, epoch, .. } => *epoch,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(redelivered, [2, 3]);
    assert_eq!(p.pending(0).iter().copied().collect::<Vec<_>>(), [2, 3]);
    // Epoch 1 was acknowledged but its outbox is still stored: the next
    // acknowledgement's checkpoint deletes it with the others.
    p.handle(Event::SinkAcked {
        sink: 0,
        epoch: 3,
        progress: None,
    });
    let (epoch, writes) = checkpoint(&mut p);
    assert_eq!(epoch, 4);
    for e in 1..=3 {
        assert!(deleted(&writes, &outbox_key("out", e)), "epoch {e}");
    }
}

#[test]
fn shutdown_stops_the_sources_takes_a_final_checkpoint_and_waits_for_acks() {
    let mut p = fresh(4);
    batch(&mut p, &["a"], 1);
    assert_eq!(
        p.handle(Event::ShutdownRequested),
        vec![Action::StopSources]
    );
    let t0 = Instant::now();
    assert_eq!(
        p.handle(Event::InputFinished { now: t0 }),
        vec![Action::TakeSnapshot]
    );
    write_of(p.handle(Event::Snapshot(Snapshot::default())));
    assert!(p.handle(Event::InputFinished { now: t0 }).is_empty());
    p.handle(Event::WriteDone { epoch: 1 });
    // Waiting for the sink's ack, up to the grace.
    assert!(p.handle(Event::InputFinished { now: t0 }).is_empty());
    let almost = t0 + GRACE - Duration::from_millis(1);
    assert!(p.handle(Event::InputFinished { now: almost }).is_empty());
    assert_eq!(
        p.handle(Event::InputFinished { now: t0 + GRACE }),
        vec![Action::Finish {
            unacked: vec![(0, vec![1])]
        }]
    );
}

#[test]
fn finished_input_ends_the_run_once_every_epoch_is_acknowledged() {
    let mut p = fresh(4);
    batch(&mut p, &["a"], 1);
    let now = Instant::now();
    assert_eq!(
        p.handle(Event::InputFinished { now }),
        vec![Action::TakeSnapshot]
    );
    write_of(p.handle(Event::Snapshot(Snapshot::default())));
    p.handle(Event::WriteDone { epoch: 1 });
    // Without a shutdown there is no grace: wait as long as it takes.
    let later = now + GRACE * 10;
    assert!(p.handle(Event::InputFinished { now: later }).is_empty());
    p.handle(Event::SinkAcked {
        sink: 0,
        epoch: 1,
        progress: None,
    });
    // The ack itself is saved first.
    assert_eq!(
        p.handle(Event::InputFinished { now: later }),
        vec![Action::TakeSnapshot]
    );
    write_of(p.handle(Event::Snapshot(Snapshot::default())));
    p.handle(Event::WriteDone { epoch: 2 });
    assert_eq!(
        p.handle(Event::InputFinished { now: later }),
        vec![Action::Finish { unacked: vec![] }]
    );
}
