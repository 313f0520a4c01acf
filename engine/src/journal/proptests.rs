//! Model-based test: a random sequence of appends, reads, truncations,
//! reopens and torn writes must agree with a plain `Vec` of events.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    /// Read everything from (first retained + n % retained).
    Read(u64),
    /// Commit up to (first retained + n % (retained + 1)).
    Truncate(u64),
    Reopen,
    /// Reopen after a crash that tore this many bytes off the last record.
    TearLast(u8),
    /// An append on a disk with this many bytes free: it fails unless it
    /// fits, and then leaves nothing behind.
    AppendOnFullDisk(Vec<Vec<u8>>, u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6).prop_map(Op::Append),
        2 => any::<u64>().prop_map(Op::Read),
        1 => any::<u64>().prop_map(Op::Truncate),
        1 => Just(Op::Reopen),
        // at most a header's worth, so only the last record is hit
        1 => (1u8..=8).prop_map(Op::TearLast),
        1 => (prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6), 0u16..300)
            .prop_map(|(e, b)| Op::AppendOnFullDisk(e, b)),
    ]
}

fn options() -> JournalOptions {
    JournalOptions {
        segment_bytes: 120,
        fsync: false,
        ..JournalOptions::default()
    }
}

fn read_from(j: &Journal, from: u64) -> Vec<Vec<u8>> {
    let mut r = j.reader(from);
    let mut out = Vec::new();
    loop {
        let b = r.try_next_batch(4, 50).expect("read");
        if b.events.is_empty() {
            return out;
        }
        for e in &b.events {
            assert_eq!(e.offset, from + out.len() as u64);
            let s = e.start as usize;
            out.push(b.buf[s..s + e.len as usize].to_vec());
        }
    }
}

/// Removes the last `n` bytes of the newest non-empty segment, returning
/// whether it hit a record (which the model then forgets).
fn tear(dir: &std::path::Path, n: u64) -> bool {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    let Some(last) = names.last() else {
        return false;
    };
    let len = std::fs::metadata(last).expect("stat").len();
    if len == 0 {
        return false;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open");
    f.set_len(len.saturating_sub(n)).expect("truncate");
    true
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn journal_agrees_with_a_vec(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        // model: every event ever appended (index = sequence number), and
        // the first sequence number the journal must still hold
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut must_keep = 0u64;
        let mut j = Some(Journal::open(dir.path(), options()).expect("open"));
        for op in ops {
            let journal = j.as_ref().expect("open journal");
            match op {
                Op::Append(events) => {
                    let range = rt.block_on(journal.append(events.clone())).expect("append");
                    prop_assert_eq!(range.clone(), model.len() as u64..(model.len() + events.len()) as u64);
                    model.extend(events);
                }
                Op::AppendOnFullDisk(events, budget) => {
                    *lock(&journal.shared().fault) = Some(budget.into());
                    let result = rt.block_on(journal.append(events.clone()));
                    *lock(&journal.shared().fault) = None;
                    match result {
                        Ok(range) => {
                            prop_assert_eq!(range, model.len() as u64..(model.len() + events.len()) as u64);
                            model.extend(events);
                        }
                        Err(e) => prop_assert!(matches!(e, JournalError::WriteFailed(_)), "{}", e),
                    }
                }
                Op::Read(n) => {
                    let first = journal.first_seq();
                    prop_assert!(first <= must_keep);
                    let retained = model.len() as u64 - first;
                    let from = first + if retained == 0 { 0 } else { n % retained };
                    prop_assert_eq!(read_from(journal, from), model[from as usize..].to_vec());
                }
                Op::Truncate(n) => {
                    let first = journal.first_seq();
                    let seq = first + n % (model.len() as u64 - first + 1);
                    journal.truncate_before(seq).expect("truncate");
                    must_keep = must_keep.max(seq);
                    prop_assert!(journal.first_seq() <= must_keep);
                    let stats = journal.stats();
                    prop_assert!(stats.committed_seq >= seq);
                    prop_assert_eq!(stats.backlog, model.len() as u64 - stats.committed_seq);
                }
                Op::Reopen => {
                    drop(j.take());
                    j = Some(Journal::open(dir.path(), options()).expect("reopen"));
                }
                Op::TearLast(n) => {
                    drop(j.take());
                    // a torn record was never acknowledged: the model drops
                    // it (only when it is still retained and not committed)
                    let reopened_before = Journal::open(dir.path(), options()).expect("open");
                    let first_of_last = segment_first_of_last(dir.path());
                    let last_count = reopened_before.next_seq() - first_of_last;
                    drop(reopened_before);
                    if last_count > 0 && (model.len() as u64) > must_keep && tear(dir.path(), n.into()) {
                        model.pop();
                    }
                    j = Some(Journal::open(dir.path(), options()).expect("reopen after tear"));
                }
            }
            let journal = j.as_ref().expect("open journal");
            prop_assert_eq!(journal.next_seq(), model.len() as u64);
        }
        let journal = j.as_ref().expect("open journal");
        let first = journal.first_seq();
        prop_assert_eq!(read_from(journal, first), model[first as usize..].to_vec());
    }
}

fn segment_first_of_last(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| {
            segment::parse_segment_name(&e.expect("entry").file_name().to_string_lossy())
        })
        .max()
        .unwrap_or(0)
}
