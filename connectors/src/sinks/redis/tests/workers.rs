//! The sink as one of several workers against a real Redis: disjoint keys,
//! start checks over a worker's own values, zombies fenced, new generations
//! when ownership changes.

use super::*;
use crate::sinks::fence::{driven::Driver, Progress, Writer};
use sluice_engine::cluster::WorkerId;
/// Writer `worker` of `workers` of pipeline `pipeline`, sink `counts`.
fn writer(pipeline: &str, worker: u32, workers: u32) -> Writer {
    Writer {
        pipeline: pipeline.into(),
        sink: "counts".into(),
        worker,
        workers,
    }
}

/// A hash sink on `<p>counts`, field = country, as `writer`.
fn worker_sink(p: &str, writer: Writer) -> RedisSink {
    RedisSink::new(
        "counts",
        sink_config(&format!(
            "url = \"{}\"\nkey = \"{p}counts\"\nfield = \"{{country}}\"\nvalue_field = \"count\"",
            redis_url()
        )),
    )
    .with_writer(writer)
}

fn country(c: &str, n: i64) -> SinkRecord {
    record(
        RowKind::Upsert,
        &[("country", s(c)), ("count", Value::Int(n))],
    )
}

async fn hash(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<(String, i64)> {
    let all: std::collections::BTreeMap<String, i64> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap();
    all.into_iter().collect()
}

/// Starts a sink as a pipeline does (start check, then restore) and
/// writes one epoch; returns the start check's finding, the new progress
/// and the fenced count.
async fn start_and_write(
    mut sink: RedisSink,
    restored_epoch: u64,
    progress: Option<&[u8]>,
    epoch: u64,
    records: &[SinkRecord],
) -> (Option<String>, Vec<u8>, u64) {
    let found = sink.earlier_output(restored_epoch, progress).await.unwrap();
    sink.restore(progress).await.unwrap();
    let out = sink.write(epoch, records).await.unwrap();
    (found, out.progress.unwrap(), out.fenced)
}

#[tokio::test]
async fn two_workers_write_disjoint_keys_in_turns_and_restart_from_their_progress() {
    let mut conn = server().await;
    let p = prefix("workers");
    let pipeline = format!("{p}pipeline");
    let (w0, w1) = (writer(&pipeline, 0, 2), writer(&pipeline, 1, 2));
    // both start from empty state, one after the other
    let (found, p0, fenced) =
        start_and_write(worker_sink(&p, w0.clone()), 0, None, 1, &[country("GT", 1)]).await;
    assert_eq!((found, fenced), (None, 0));
    let (found, p1, fenced) =
        start_and_write(worker_sink(&p, w1.clone()), 0, None, 1, &[country("MX", 2)]).await;
    assert_eq!(found, None, "worker 0's values are not worker 1's");
    assert_eq!(fenced, 0);
    let (g0, g1) = (
        Progress::decode(&p0).unwrap().generation,
        Progress::decode(&p1).unwrap().generation,
    );
    assert!(g1 > g0);
    // restarts from their progress, in turns: worker 0 sees a newer
    // generation (worker 1's) but must not refuse
    let mut progress = (p0, p1);
    for epoch in 2..=4 {
        let (found, np0, fenced) = start_and_write(
            worker_sink(&p, w0.clone()),
            epoch - 1,
            Some(&progress.0),
            epoch,
            &[country("GT", epoch as i64 * 10)],
        )
        .await;
        assert_eq!((found, fenced), (None, 0), "worker 0, epoch {epoch}");
        let (found, np1, fenced) = start_and_write(
            worker_sink(&p, w1.clone()),
            epoch - 1,
            Some(&progress.1),
            epoch,
            &[country("MX", epoch as i64 * 100)],
        )
        .await;
        assert_eq!((found, fenced), (None, 0), "worker 1, epoch {epoch}");
        assert_eq!(np0, progress.0, "worker 0 keeps its generation");
        assert_eq!(np1, progress.1, "worker 1 keeps its generation");
        progress = (np0, np1);
    }
    assert_eq!(
        hash(&mut conn, &format!("{p}counts")).await,
        [("GT".into(), 40), ("MX".into(), 400)]
    );
    // who drew the generations is recorded
    let owner: String = redis::cmd("HGET")
        .arg(OWNERS_KEY)
        .arg(g1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(Writer::from_json(&owner), Some(w1));
    cleanup(&mut conn, &p).await;
}

#[tokio::test]
async fn a_worker_from_empty_state_is_refused_only_over_its_own_values() {
    let mut conn = server().await;
    let p = prefix("empty");
    let pipeline = format!("{p}pipeline");
    // values of a single-worker run (a generation recorded for nobody)
    start_and_write(
        worker_sink(&p, Writer::single("counts")),
        0,
        None,
        1,
        &[country("BR", 7)],
    )
    .await;
    let mut w1 = worker_sink(&p, writer(&pipeline, 1, 2));
    assert_eq!(
        w1.earlier_output(0, None).await.unwrap(),
        None,
        "a single-worker run's values are another writer's"
    );
    // worker 0 writes
    start_and_write(
        worker_sink(&p, writer(&pipeline, 0, 2)),
        0,
        None,
        1,
        &[country("GT", 1)],
    )
    .await;
    let mut w1 = worker_sink(&p, writer(&pipeline, 1, 2));
    assert_eq!(w1.earlier_output(0, None).await.unwrap(), None);
    // a single-worker sink would refuse (unchanged behaviour)
    let mut single = worker_sink(&p, Writer::single("counts"));
    assert!(single.earlier_output(0, None).await.unwrap().is_some());
    // worker 1 of another pipeline writes: still not this worker's
    start_and_write(
        worker_sink(&p, writer(&format!("{pipeline}-other"), 1, 2)),
        0,
        None,
        1,
        &[country("US", 3)],
    )
    .await;
    assert_eq!(w1.earlier_output(0, None).await.unwrap(), None);
    // worker 1 writes; a worker 1 started again from empty state is refused
    w1.restore(None).await.unwrap();
    w1.write(1, &[country("MX", 2)]).await.unwrap();
    let found = worker_sink(&p, writer(&pipeline, 1, 2))
        .earlier_output(0, None)
        .await
        .unwrap()
        .expect("worker 1's own earlier values");
    assert!(found.contains("worker 1 of 2"), "{found}");
    // ...also when the worker count changed since
    assert!(worker_sink(&p, writer(&pipeline, 1, 3))
        .earlier_output(0, None)
        .await
        .unwrap()
        .is_some());
    cleanup(&mut conn, &p).await;
}

#[test]
fn a_zombie_worker_is_fenced_out_and_counted() {
    let driver = Driver::new();
    let p = prefix("zombie");
    let pipeline = format!("{p}pipeline");
    let w1 = writer(&pipeline, 1, 2);
    // worker 1 writes epoch 5 and saves its progress
    let zombie_progress = driver
        .write(
            &pipeline,
            "counts",
            Box::new(worker_sink(&p, w1.clone())),
            None,
            5,
            vec![country("GT", 10)],
        )
        .unwrap();
    // a newer incarnation of worker 1 (its state rebuilt: empty) draws a
    // new generation and writes epoch 1
    let newer = driver
        .write(
            &pipeline,
            "counts",
            Box::new(worker_sink(&p, w1.clone())),
            None,
            1,
            vec![country("GT", 20)],
        )
        .unwrap();
    assert!(
        Progress::decode(&newer).unwrap().generation
            > Progress::decode(&zombie_progress).unwrap().generation
    );
    assert_eq!(driver.fenced(&pipeline, "counts"), None);
    driver.register(&pipeline, "counts");
    assert_eq!(
        driver.fenced(&pipeline, "counts"),
        Some(0.0),
        "registered at 0"
    );
    // the old incarnation (stopped, then resumed) writes epoch 6 with its
    // old generation: its write of GT is fenced, the new key goes through
    driver.write(
        &pipeline,
        "counts",
        Box::new(worker_sink(&p, w1.clone())),
        Some(zombie_progress.clone()),
        6,
        vec![country("GT", 99), country("NEW", 1)],
    );
    assert_eq!(driver.fenced(&pipeline, "counts"), Some(1.0));
    driver.rt.block_on(async {
        let mut conn = server().await;
        assert_eq!(
            hash(&mut conn, &format!("{p}counts")).await,
            [("GT".into(), 20), ("NEW".into(), 1)]
        );
        // restarted, the old incarnation refuses to start
        let found = worker_sink(&p, w1.clone())
            .earlier_output(6, Some(&zombie_progress))
            .await
            .unwrap()
            .expect("a newer incarnation of worker 1 wrote");
        assert!(found.contains("newer than the restored state"), "{found}");
        cleanup(&mut conn, &p).await;
    });
}

#[tokio::test]
async fn a_change_of_worker_or_workers_draws_a_new_generation() {
    let mut conn = server().await;
    let p = prefix("moves");
    let pipeline = format!("{p}pipeline");
    // worker 1 of 2 draws first, worker 0 of 2 later (a higher generation)
    // and writes GT at a high epoch
    let (_, p1, _) = start_and_write(
        worker_sink(&p, writer(&pipeline, 1, 2)),
        0,
        None,
        1,
        &[country("MX", 1)],
    )
    .await;
    let (_, p0, _) = start_and_write(
        worker_sink(&p, writer(&pipeline, 0, 2)),
        0,
        None,
        900,
        &[country("GT", 5)],
    )
    .await;
    let g1 = Progress::decode(&p1).unwrap().generation;
    assert!(Progress::decode(&p0).unwrap().generation > g1);
    // the same (worker, workers) keeps its generation
    let (found, p1, _) = start_and_write(
        worker_sink(&p, writer(&pipeline, 1, 2)),
        1,
        Some(&p1),
        2,
        &[country("MX", 2)],
    )
    .await;
    assert_eq!(found, None);
    assert_eq!(Progress::decode(&p1).unwrap().generation, g1);
    // rescaled to 3 workers, GT's key group moves to worker 1, restored
    // from its progress: a new generation, above worker 0's
    let (found, moved, fenced) = start_and_write(
        worker_sink(&p, writer(&pipeline, 1, 3)),
        2,
        Some(&p1),
        3,
        &[country("GT", 6)],
    )
    .await;
    assert_eq!(
        (found, fenced),
        (None, 0),
        "the moved key group is not fenced out"
    );
    let moved = Progress::decode(&moved).unwrap();
    assert_eq!(moved.worker, WorkerId::new(1, 3).unwrap());
    assert!(moved.generation > Progress::decode(&p0).unwrap().generation);
    assert_eq!(
        hash(&mut conn, &format!("{p}counts")).await,
        [("GT".into(), 6), ("MX".into(), 2)]
    );
    // a single worker's (old, 8-byte) progress taken over by worker 0 of 2
    let (_, single, _) = start_and_write(
        worker_sink(&p, Writer::single("counts")),
        0,
        None,
        1,
        &[country("US", 1)],
    )
    .await;
    assert_eq!(single.len(), 8, "a single worker's progress is as before");
    let (_, taken, _) = start_and_write(
        worker_sink(&p, writer(&pipeline, 0, 2)),
        1,
        Some(&single),
        2,
        &[country("US", 2)],
    )
    .await;
    let taken = Progress::decode(&taken).unwrap();
    assert_eq!(taken.worker, WorkerId::new(0, 2).unwrap());
    assert!(taken.generation > Progress::decode(&single).unwrap().generation);
    cleanup(&mut conn, &p).await;
}
