use std::sync::Arc;

use proptest::prelude::*;
use tokio::sync::mpsc;

use crate::decode::{Decoder, EventTimeSpec};
use crate::operator::FieldSet;
use crate::source::{Progress, RawBatch, RawEvent, SourceEvent, SourceOutput};
use crate::time::TimeFormat;

/// A batch of `lines` events starting at `offset`; every seventh is not JSON
/// (a dead letter), the others carry their offset.
fn batch(offset: u64, lines: usize) -> RawBatch {
    let mut buf = Vec::new();
    let mut events = Vec::new();
    for i in 0..lines as u64 {
        let start = buf.len() as u32;
        let line = if (offset + i) % 7 == 3 {
            "{not json".to_string()
        } else {
            format!(
                r#"{{"n":{},"pad":"{}"}}"#,
                offset + i,
                "x".repeat(((offset + i) % 50) as usize)
            )
        };
        buf.extend_from_slice(line.as_bytes());
        events.push(RawEvent {
            start,
            len: line.len() as u32,
            offset: offset + i,
            oversized: None,
        });
    }
    RawBatch {
        partition: 0,
        bytes: buf.len() as u64,
        buf: Arc::new(buf),
        events,
        position: (offset + lines as u64).to_be_bytes().to_vec(),
    }
}

fn output(capacity: usize) -> (SourceOutput, mpsc::Receiver<SourceEvent>) {
    let (tx, rx) = mpsc::channel(capacity);
    // Event time from the data, so that what two runs decode is comparable.
    let time = EventTimeSpec {
        field: vec!["n".into()],
        format: TimeFormat::EpochMs,
    };
    let decoder = Arc::new(Decoder::new(
        "src".into(),
        &FieldSet::All,
        Some(time),
        1 << 20,
    ));
    (
        SourceOutput::new(0, decoder, tx, Arc::new(Progress::default())),
        rx,
    )
}

/// What the processor would see of a message, comparable across runs.
fn seen(msg: SourceEvent) -> String {
    match msg {
        SourceEvent::Data {
            partition,
            batch,
            dead,
            position,
            bytes,
            events,
            ..
        } => format!(
            "{partition} {position:?} {bytes} {events} {:?} {:?} {:?}",
            batch.rows, batch.meta, dead
        ),
        other => format!("{other:?}"),
    }
}

/// Emits `sizes` as consecutive batches through a pool of `threads`, with
/// a receiver that drains concurrently; returns what it received.
fn run(threads: usize, capacity: usize, sizes: &[usize]) -> Vec<String> {
    let (out, mut rx) = output(capacity);
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(msg) = rx.blocking_recv() {
            got.push(seen(msg));
        }
        got
    });
    let mut pool = out.decode_pool(threads);
    let mut offset = 0;
    for &n in sizes {
        pool.emit(batch(offset, n)).unwrap();
        offset += n as u64;
    }
    pool.flush().unwrap();
    out.partition_done_blocking(0).unwrap();
    drop(pool);
    drop(out);
    receiver.join().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The processor receives exactly what one decoding thread sends: the
    /// same batches, rows, dead letters and positions, in order, and the
    /// message sent after `flush` comes after all of them.
    #[test]
    fn a_pool_sends_what_one_thread_sends(
        threads in 2usize..5,
        capacity in 1usize..4,
        sizes in proptest::collection::vec(0usize..40, 0..60),
    ) {
        let inline = run(1, 16, &sizes);
        prop_assert_eq!(inline.len(), sizes.len() + 1);
        prop_assert_eq!(run(threads, capacity, &sizes), inline);
    }
}

#[test]
fn flush_waits_for_every_batch_handed_over() {
    let (out, mut rx) = output(1000);
    let mut pool = out.decode_pool(3);
    for i in 0..200 {
        pool.emit(batch(i * 10, 10)).unwrap();
    }
    pool.flush().unwrap();
    let mut received = 0;
    while let Ok(msg) = rx.try_recv() {
        assert!(matches!(msg, SourceEvent::Data { .. }));
        received += 1;
    }
    assert_eq!(received, 200);
}

#[test]
fn a_closed_pipeline_ends_emitting_without_hanging() {
    let (out, rx) = output(1);
    drop(rx);
    let mut pool = out.decode_pool(2);
    let mut refused = false;
    for i in 0..100 {
        if pool.emit(batch(i, 1)).is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused || pool.flush().is_err());
}

#[test]
fn one_thread_decodes_on_the_callers_thread() {
    let (out, mut rx) = output(4);
    let mut pool = out.decode_pool(1);
    assert_eq!(pool.threads(), 0);
    pool.emit(batch(0, 3)).unwrap();
    // Inline: the message is there as soon as emit returns.
    assert!(matches!(
        rx.try_recv(),
        Ok(SourceEvent::Data { events: 3, .. })
    ));
}
