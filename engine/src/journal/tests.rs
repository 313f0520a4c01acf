use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn opts(segment_bytes: u64) -> JournalOptions {
    JournalOptions {
        segment_bytes,
        ..JournalOptions::default()
    }
}

fn event(i: u64) -> Vec<u8> {
    format!(
        "{{\"id\":{i},\"pad\":\"{}\"}}",
        "x".repeat((i % 7) as usize)
    )
    .into_bytes()
}

/// Every record from `from` to the end, as (seq, payload).
fn read_all(j: &Journal, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut r = j.reader(from);
    let mut out = Vec::new();
    loop {
        let b = r.try_next_batch(3, 64).unwrap();
        if b.events.is_empty() {
            assert_eq!(b.next_seq, j.next_seq());
            return out;
        }
        for e in &b.events {
            let s = e.start as usize;
            out.push((e.offset, b.buf[s..s + e.len as usize].to_vec()));
        }
        assert_eq!(b.next_seq, out.last().unwrap().0 + 1);
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn round_trip_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), opts(200)).unwrap();
    let mut next = 0;
    for n in [1u64, 5, 17, 2, 40] {
        let events: Vec<Vec<u8>> = (next..next + n).map(event).collect();
        assert_eq!(j.append(events).await.unwrap(), next..next + n);
        next += n;
    }
    let mut batch = AppendBatch::new();
    batch.push(&event(next));
    batch.push(&event(next + 1));
    assert_eq!(j.append_batch(batch).await.unwrap(), next..next + 2);
    next += 2;
    let want: Vec<(u64, Vec<u8>)> = (0..next).map(|i| (i, event(i))).collect();
    assert_eq!(read_all(&j, 0), want);
    assert_eq!(read_all(&j, 33), want[33..]);
    let stats = j.stats();
    assert!(stats.segments > 5, "{stats:?}");
    assert_eq!(stats.segments, segment_files(dir.path()).len());
    assert_eq!((stats.first_seq, stats.next_seq), (0, next));
    drop(j);
    let j = Journal::open(dir.path(), opts(200)).unwrap();
    assert_eq!(j.next_seq(), next);
    assert_eq!(read_all(&j, 0), want);
    assert_eq!(j.append(vec![event(next)]).await.unwrap(), next..next + 1);
}

#[tokio::test]
async fn a_record_larger_than_a_segment_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), opts(64)).unwrap();
    let big = vec![b'a'; 500];
    j.append(vec![b"{}".to_vec(), big.clone(), b"{}".to_vec()])
        .await
        .unwrap();
    assert_eq!(
        read_all(&j, 0),
        vec![(0, b"{}".to_vec()), (1, big), (2, b"{}".to_vec())]
    );
    assert_eq!(j.stats().segments, 3);
}

#[tokio::test]
async fn recovery_cuts_a_torn_tail_and_keeps_every_record_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), opts(1000)).unwrap();
    j.append((0..30).map(event).collect()).await.unwrap();
    let before = j.stats();
    drop(j);
    let last = dir.path().join(segment_files(dir.path()).pop().unwrap());
    let len = std::fs::metadata(&last).unwrap().len();
    // cut the last record in the middle of its payload
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let j = Journal::open(dir.path(), opts(1000)).unwrap();
    assert_eq!(j.next_seq(), 29);
    let want: Vec<(u64, Vec<u8>)> = (0..29).map(|i| (i, event(i))).collect();
    assert_eq!(read_all(&j, 0), want);
    assert!(j.stats().bytes < before.bytes);
    // appends continue right after the last good record
    assert_eq!(j.append(vec![event(99)]).await.unwrap(), 29..30);
    assert_eq!(read_all(&j, 29), vec![(29, event(99))]);
    drop(j);

    // garbage after the last record (a torn header, a zero-filled tail)
    for tail in [&[1u8, 2, 3][..], &[0u8; 64][..]] {
        let mut bytes = std::fs::read(&last).unwrap();
        bytes.extend_from_slice(tail);
        std::fs::write(&last, &bytes).unwrap();
        let j = Journal::open(dir.path(), opts(1000)).unwrap();
        assert_eq!(j.next_seq(), 30);
        assert_eq!(read_all(&j, 29), vec![(29, event(99))]);
    }
}

#[tokio::test]
async fn damage_before_the_last_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), opts(100)).unwrap();
    j.append((0..20).map(event).collect()).await.unwrap();
    drop(j);
    let first = dir.path().join(&segment_files(dir.path())[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&first, &bytes).unwrap();
    match Journal::open(dir.path(), opts(100)) {
        Err(JournalError::Corrupt { reason, .. }) => assert_eq!(reason, "checksum mismatch"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a damaged journal"),
    }
    // a missing middle segment is a gap, also an error
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), opts(100)).unwrap();
    j.append((0..20).map(event).collect()).await.unwrap();
    drop(j);
    std::fs::remove_file(dir.path().join(&segment_files(dir.path())[1])).unwrap();
    let err = Journal::open(dir.path(), opts(100)).err().unwrap();
    assert!(err.to_string().contains("ends at sequence"), "{err}");
}

#[tokio::test]
async fn retained_segments_survive_commits_for_replay() {
    let dir = tempfile::tempdir().unwrap();
    let o = JournalOptions {
        segment_bytes: 100,
        retain_segments: 2,
        ..JournalOptions::default()
    };
    let j = Journal::open(dir.path(), o).unwrap();
    j.append((0..40).map(event).collect()).await.unwrap();
    let firsts: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|n| segment::parse_segment_name(n).unwrap())
        .collect();
    assert!(firsts.len() >= 5, "{firsts:?}");
    // everything committed: all but the active segment could go; the two
    // newest committed ones stay and can still be read
    j.truncate_before(40).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 3);
    let oldest_kept = firsts[firsts.len() - 3];
    assert_eq!(j.first_seq(), oldest_kept);
    let want: Vec<(u64, Vec<u8>)> = (oldest_kept..40).map(|i| (i, event(i))).collect();
    assert_eq!(read_all(&j, oldest_kept), want);
}

#[tokio::test]
async fn truncate_before_deletes_only_fully_committed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), opts(100)).unwrap();
    j.append((0..40).map(event).collect()).await.unwrap();
    let firsts: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|n| segment::parse_segment_name(n).unwrap())
        .collect();
    assert!(firsts.len() >= 4, "{firsts:?}");
    // a position inside the third segment: the first two go
    let cut = firsts[2] + 1;
    assert_eq!(j.truncate_before(cut).unwrap(), 2);
    assert_eq!(j.first_seq(), firsts[2]);
    assert_eq!(segment_files(dir.path()).len(), firsts.len() - 2);
    assert_eq!(j.stats().committed_seq, cut);
    assert_eq!(j.backlog(), 40 - cut);
    let want: Vec<(u64, Vec<u8>)> = (firsts[2]..40).map(|i| (i, event(i))).collect();
    assert_eq!(read_all(&j, firsts[2]), want);
    assert!(matches!(
        j.reader(0).try_next_batch(10, 1000),
        Err(JournalError::Truncated { seq: 0, .. })
    ));
    // everything committed: only the active segment stays
    j.truncate_before(40).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(j.stats().backlog, 0);
    drop(j);
    let j = Journal::open(dir.path(), opts(100)).unwrap();
    assert_eq!(j.first_seq(), *firsts.last().unwrap());
    assert_eq!(j.next_seq(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_fsyncs_and_get_gapless_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let tasks = 64;
    let per_task = 10;
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let j = j.clone();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut ranges = Vec::new();
            for k in 0..per_task {
                let n = 1 + (t + k) % 3;
                let events = (0..n).map(|i| format!("{{\"t\":{t},\"i\":{i}}}").into_bytes());
                ranges.push(j.append(events.collect()).await.unwrap());
            }
            ranges
        }));
    }
    let mut ranges = Vec::new();
    for h in handles {
        ranges.extend(h.await.unwrap());
    }
    let appends = ranges.len() as u64;
    ranges.sort_by_key(|r| r.start);
    let mut next = 0;
    for r in &ranges {
        assert_eq!(r.start, next, "ranges must be gapless and disjoint");
        assert!(r.end > r.start);
        next = r.end;
    }
    let stats = j.stats();
    eprintln!("{appends} appends, {} fsyncs", stats.fsyncs);
    assert_eq!(stats.next_seq, next);
    assert_eq!(stats.fsyncs, stats.group_commits, "no segment rolls here");
    assert!(
        stats.fsyncs < appends,
        "{} fsyncs for {appends} appends: group commit did not share them",
        stats.fsyncs
    );
    let seqs: BTreeSet<u64> = read_all(&j, 0).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs.len() as u64, next);
}

#[tokio::test]
async fn readers_wait_for_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let mut r = j.reader(0);
    let waiting = tokio::time::timeout(Duration::from_millis(50), r.next_batch(10, 1000)).await;
    assert!(waiting.is_err(), "nothing to read yet");
    let j2 = j.clone();
    let reader = tokio::spawn(async move { r.next_batch(10, 1000).await.unwrap() });
    j2.append(vec![event(0), event(1)]).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.events.len(), 2);
    assert_eq!(b.next_seq, 2);
}

#[tokio::test]
async fn batches_respect_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    j.append(vec![
        vec![b'a'; 10],
        vec![b'b'; 10],
        vec![b'c'; 100],
        vec![b'd'; 1],
    ])
    .await
    .unwrap();
    let mut r = j.reader(0);
    let b = r.next_batch(100, 25).await.unwrap();
    assert_eq!(b.events.len(), 2, "the 100-byte record does not fit");
    let b = r.next_batch(100, 25).await.unwrap();
    assert_eq!(b.events.len(), 1, "but it is returned alone");
    assert_eq!(b.events[0].len, 100);
    let b = r.next_batch(1, 25).await.unwrap();
    assert_eq!((b.events[0].offset, b.next_seq), (3, 4));
}

#[tokio::test]
async fn the_backlog_limit_refuses_appends_until_commits() {
    let dir = tempfile::tempdir().unwrap();
    let o = JournalOptions {
        max_backlog_events: Some(10),
        ..JournalOptions::default()
    };
    let j = Journal::open(dir.path(), o).unwrap();
    j.append((0..8).map(event).collect()).await.unwrap();
    let err = j.append((0..5).map(event).collect()).await.unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Backlog {
                backlog: 8,
                limit: 10
            }
        ),
        "{err}"
    );
    assert_eq!(j.next_seq(), 8, "nothing was written");
    j.truncate_before(8).unwrap();
    assert_eq!(j.append((0..5).map(event).collect()).await.unwrap(), 8..13);
}

#[tokio::test]
async fn a_directory_is_opened_by_one_journal_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert!(matches!(
        Journal::open(dir.path(), JournalOptions::default()),
        Err(JournalError::Locked(_))
    ));
    drop(j);
    Journal::open(dir.path(), JournalOptions::default()).unwrap();
}

#[tokio::test]
async fn without_fsync_appends_resolve_after_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let o = JournalOptions {
        fsync: false,
        segment_bytes: 100,
        ..JournalOptions::default()
    };
    let j = Journal::open(dir.path(), o.clone()).unwrap();
    j.append((0..20).map(event).collect()).await.unwrap();
    assert_eq!(j.stats().fsyncs, 0);
    drop(j);
    let j = Journal::open(dir.path(), o).unwrap();
    assert_eq!(read_all(&j, 0).len(), 20);
}

/// Flips one byte of a file.
fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x10;
    std::fs::write(path, &bytes).unwrap();
}

/// Byte offset of record `k` in a segment holding `event(first)..`.
fn record_offset(first: u64, k: u64) -> usize {
    (first..first + k)
        .map(|i| segment::HEADER + event(i).len())
        .sum()
}

#[tokio::test]
async fn damage_in_the_middle_of_the_last_segment_is_an_error_not_a_torn_tail() {
    // a flipped bit in a payload, and in a length field: both followed by
    // valid, acknowledged records
    for (what, at) in [("payload", segment::HEADER + 3), ("length", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), opts(1 << 20)).unwrap();
        j.append((0..40).map(event).collect()).await.unwrap();
        drop(j);
        let last = dir.path().join(segment_files(dir.path()).pop().unwrap());
        flip(&last, record_offset(0, 11) + at);
        match Journal::open(dir.path(), opts(1 << 20)) {
            Err(JournalError::Corrupt { offset, reason, .. }) => {
                assert_eq!(offset, record_offset(0, 11) as u64, "{what}");
                assert!(
                    reason.contains("followed by a valid record"),
                    "{what}: {reason}"
                );
            }
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok(j) => panic!(
                "{what}: opened, keeping {} of 40 acknowledged records",
                j.next_seq()
            ),
        }
        // the file was left alone: nothing was cut off
        assert_eq!(
            std::fs::metadata(&last).unwrap().len(),
            record_offset(0, 40) as u64
        );
    }
}

#[tokio::test]
async fn a_deleted_newest_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), opts(100)).unwrap();
    j.append((0..20).map(event).collect()).await.unwrap();
    j.truncate_before(5).unwrap();
    drop(j);
    let files = segment_files(dir.path());
    assert!(files.len() > 2, "{files:?}");
    std::fs::remove_file(dir.path().join(files.last().unwrap())).unwrap();
    let err = Journal::open(dir.path(), opts(100)).err().expect("opened");
    assert!(
        matches!(err, JournalError::Corrupt { .. }) && err.to_string().contains("HEAD"),
        "{err}"
    );
}

#[tokio::test]
async fn a_journal_whose_segments_were_all_deleted_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), opts(1 << 20)).unwrap();
    j.append((0..5).map(event).collect()).await.unwrap();
    drop(j);
    for f in segment_files(dir.path()) {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let err = Journal::open(dir.path(), opts(1 << 20))
        .err()
        .expect("opened");
    assert!(err.to_string().contains("no segment files left"), "{err}");
    // HEAD gone too: the LOCK file still shows a journal was there
    std::fs::remove_file(dir.path().join(segment::HEAD)).unwrap();
    let err = Journal::open(dir.path(), opts(1 << 20))
        .err()
        .expect("opened");
    assert!(err.to_string().contains("LOCK"), "{err}");
    // a new directory is a fresh journal
    let fresh = dir.path().join("new");
    assert_eq!(Journal::open(&fresh, opts(1 << 20)).unwrap().next_seq(), 0);
}

#[tokio::test]
async fn a_failed_append_leaves_nothing_behind_and_later_appends_continue() {
    // small segments: the failed append rolls over several before the
    // disk is full
    for budget in [0usize, 30, 150, 400] {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), opts(100)).unwrap();
        j.append((0..10).map(event).collect()).await.unwrap();
        let files_before = segment_files(dir.path());
        *lock(&j.shared().fault) = Some(budget);
        let err = j
            .append((100..130).map(event).collect())
            .await
            .expect_err("the disk is full");
        assert!(matches!(err, JournalError::WriteFailed(_)), "{err}");
        *lock(&j.shared().fault) = None;
        assert_eq!(j.next_seq(), 10);
        assert_eq!(segment_files(dir.path()), files_before, "budget {budget}");
        // later appends continue right after the last acknowledged record
        assert_eq!(
            j.append((10..15).map(event).collect()).await.unwrap(),
            10..15
        );
        let want: Vec<(u64, Vec<u8>)> = (0..15).map(|i| (i, event(i))).collect();
        assert_eq!(read_all(&j, 0), want, "budget {budget}");
        drop(j);
        // and a restart sees none of the failed append's events
        let j = Journal::open(dir.path(), opts(100)).unwrap();
        assert_eq!(read_all(&j, 0), want, "budget {budget}");
        assert_eq!(j.append(vec![event(15)]).await.unwrap(), 15..16);
    }
}

#[tokio::test]
async fn readers_that_keep_up_read_from_memory_committed_records_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), opts(1 << 20)).unwrap();
    let events: Vec<Vec<u8>> = (0..10).map(event).collect();
    j.append(events.clone()).await.unwrap();
    // Damage record 5's payload on disk: only a read of the file sees it.
    let segment = dir.path().join(&segment_files(dir.path())[0]);
    flip(&segment, record_offset(0, 5) + segment::HEADER + 1);
    let read: Vec<Vec<u8>> = read_all(&j, 0).into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        read, events,
        "records just written come from memory, as written"
    );
    // Once committed, records are read from the files (their segment may
    // be gone), and their checksum is checked.
    j.truncate_before(6).unwrap();
    match j.reader(0).try_next_batch(100, 1 << 20) {
        Err(JournalError::Corrupt { reason, .. }) => assert_eq!(reason, "checksum mismatch"),
        other => panic!("the damaged record was not checked: {other:?}"),
    }
    let rest: Vec<Vec<u8>> = read_all(&j, 6).into_iter().map(|(_, e)| e).collect();
    assert_eq!(rest, events[6..]);
}

#[tokio::test]
async fn a_reader_behind_the_memory_tail_reads_the_files_then_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(
        dir.path(),
        JournalOptions {
            segment_bytes: 4 << 20,
            fsync: false,
            ..JournalOptions::default()
        },
    )
    .unwrap();
    // More than the tail holds, in groups of 1 MiB: the first ones are
    // only on file when the reader starts.
    let payload = |i: u64| format!("{i:08}{}", "p".repeat(8 << 10)).into_bytes();
    let per_group = 128;
    for g in 0..12 {
        j.append((g * per_group..(g + 1) * per_group).map(payload).collect())
            .await
            .unwrap();
    }
    let mut r = j.reader(0);
    let mut next = 0;
    loop {
        let b = r.try_next_batch(1000, 3 << 20).unwrap();
        if b.events.is_empty() {
            break;
        }
        for e in &b.events {
            assert_eq!(e.offset, next);
            let s = e.start as usize;
            assert_eq!(b.buf[s..s + e.len as usize], payload(next)[..]);
            next += 1;
        }
    }
    assert_eq!(next, 12 * per_group);
}
