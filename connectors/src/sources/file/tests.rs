use super::source::{decode_position, encode_position};

#[test]
fn positions_round_trip() {
    let p = encode_position("part-0001.ndjson", 123_456);
    assert_eq!(
        decode_position(&p),
        Some(("part-0001.ndjson".to_string(), 123_456))
    );
    assert_eq!(decode_position(b"short"), None);
}

#[test]
fn example_config_parses() {
    let c: super::FileSourceConfig =
        toml::from_str("path = \"examples/data/weather.ndjson\"\nfollow = false").unwrap();
    assert!(!c.follow);
    assert_eq!(c.read_bytes, 1 << 20);
    let e = toml::from_str::<super::FileSourceConfig>("path = \"x\"\nfolow = true").unwrap_err();
    assert!(e.to_string().contains("unknown field `folow`"));
}

mod decode_threads {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use sluice_engine::decode::{Decoder, EventTimeSpec};
    use sluice_engine::time::TimeFormat;
    use sluice_engine::operator::FieldSet;
    use sluice_engine::source::{Source, SourceContext, SourceEvent, SourceOutput};
    use tokio::sync::{mpsc, watch};

    use super::super::{FileSource, FileSourceConfig};

    /// Reads `path` to its end with `threads` decoding threads, from
    /// `restored`; returns every message the processor would get, in order.
    async fn read(
        path: &std::path::Path,
        threads: usize,
        restored: BTreeMap<u32, Vec<u8>>,
    ) -> Vec<String> {
        let text = format!(
            "path = {:?}\nread_bytes = 4096\ndecode_threads = {threads}",
            path.display().to_string()
        );
        let config: FileSourceConfig = toml::from_str(&text).unwrap();
        config.validate().unwrap();
        let (tx, mut events) = mpsc::channel(2);
        // Event time from the data, so that what two runs decode is comparable.
        let time = EventTimeSpec {
            field: vec!["i".into()],
            format: TimeFormat::EpochMs,
        };
        let decoder = Arc::new(Decoder::new(Arc::from("f"), &FieldSet::All, Some(time), 1 << 20));
        let (_commits, commit_rx) = mpsc::unbounded_channel();
        let (_stop, shutdown) = watch::channel(false);
        let dir = tempfile::tempdir().unwrap();
        let ctx = SourceContext {
            name: Arc::from("f"),
            pipeline: Arc::from("test"),
            state_dir: dir.path().to_path_buf(),
            restored,
            bounded: true,
            accept_empty_state: false,
            restored_remotely: false,
            shutdown,
            commits: commit_rx,
            output: SourceOutput::new(0, decoder, tx, Arc::default()),
        };
        let task = tokio::spawn(Box::new(FileSource::new(config)).run(ctx));
        let mut seen = Vec::new();
        while let Some(msg) = events.recv().await {
            seen.push(match msg {
                SourceEvent::Data {
                    batch,
                    dead,
                    position,
                    events,
                    ..
                } => format!("{position:?} {events} {:?} {:?} {dead:?}", batch.rows, batch.meta),
                other => format!("{other:?}"),
            });
        }
        task.await.unwrap().unwrap();
        seen
    }

    /// Several decoding threads give the processor exactly the messages
    /// one thread gives (rows, dead letters, positions, the partition's end
    /// last), from the start and from a position in the middle.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn any_number_of_decoding_threads_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ndjson");
        let mut text = String::new();
        for i in 0..5000 {
            if i % 97 == 5 {
                text.push_str("{broken\n");
            } else {
                text.push_str(&format!("{{\"i\":{i},\"s\":\"{}\"}}\n", "y".repeat(i % 31)));
            }
        }
        std::fs::write(&path, &text).unwrap();
        let one = read(&path, 1, BTreeMap::new()).await;
        assert!(one.len() > 20, "{} messages", one.len());
        assert!(one.last().unwrap().starts_with("PartitionDone"));
        for threads in [2, 3, 5] {
            assert_eq!(read(&path, threads, BTreeMap::new()).await, one, "{threads} threads");
        }
        let middle = BTreeMap::from([(0, super::encode_position("in.ndjson", 70_001))]);
        let from_middle = read(&path, 1, middle.clone()).await;
        assert_eq!(read(&path, 4, middle).await, from_middle);
    }

    #[test]
    fn decode_threads_are_bounded() {
        for bad in [0, 17] {
            let c: FileSourceConfig =
                toml::from_str(&format!("path = \"x\"\ndecode_threads = {bad}")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("between 1 and 16"), "{e}");
        }
        let c: FileSourceConfig = toml::from_str("path = \"x\"").unwrap();
        assert!((1..=4).contains(&c.decode_threads()));
    }
}
