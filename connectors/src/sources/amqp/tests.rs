use super::tracker::decode_ids;
use super::*;

const EXAMPLE: &str = r#"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
queue = "orders"
declare = true
exchange = "shop"
routing_key = "order.#"
prefetch = 10000
"#;

#[test]
fn example_config_parses() {
    let c: AmqpSourceConfig = toml::from_str(EXAMPLE).unwrap();
    assert_eq!(c.queue, "orders");
    assert_eq!(c.prefetch.get(), 10_000);
    assert_eq!(c.exchange.as_deref(), Some("shop"));
    assert_eq!(c.max_batch, 1024);
    assert!(c.consumer_tag.is_none());
    let minimal: AmqpSourceConfig = toml::from_str("url = \"amqp://h\"\nqueue = \"q\"").unwrap();
    assert!(minimal.declare);
    assert_eq!(minimal.routing_key, "");
}

#[test]
fn config_mistakes_are_reported() {
    let e = toml::from_str::<AmqpSourceConfig>("url = \"amqp://h\"\nqueue = \"q\"\nprefech = 5")
        .unwrap_err();
    assert!(e.to_string().contains("unknown field `prefech`"), "{e}");
    let e = toml::from_str::<AmqpSourceConfig>("url = \"amqp://h\"\nqueue = \"q\"\nprefetch = 0")
        .unwrap_err();
    assert!(e.to_string().contains("nonzero"), "{e}");
    let e = toml::from_str::<AmqpSourceConfig>("url = \"kafka://h\"\nqueue = \"q\"").unwrap_err();
    assert!(e.to_string().contains("invalid AMQP URL"), "{e}");
}

fn parts<'a>(message_id: Option<&'a str>, body: &'a [u8]) -> MessageParts<'a> {
    MessageParts {
        message_id,
        exchange: "",
        routing_key: "q",
        timestamp: None,
        headers: b"",
        body,
    }
}

#[test]
fn dedup_ids_are_stable_and_63_bit() {
    // Stored in checkpoints: these values must never change.
    let a = dedup_id(&parts(Some("order-1"), b"{}"));
    assert_eq!(a, dedup_id(&parts(Some("order-1"), b"{}")));
    assert_ne!(a, dedup_id(&parts(Some("order-2"), b"{}")));
    let c = dedup_id(&parts(None, b"{\"x\":1}"));
    assert_ne!(c, dedup_id(&parts(None, b"{\"x\":2}")));
    let mut other_key = parts(None, b"{\"x\":1}");
    other_key.routing_key = "r";
    assert_ne!(c, dedup_id(&other_key));
    let mut stamped = parts(None, b"{\"x\":1}");
    stamped.timestamp = Some(1);
    assert_ne!(c, dedup_id(&stamped));
    assert!(a <= i64::MAX as u64 && c <= i64::MAX as u64);
    // version 1 positions: the message_id alone (and the content without one)
    let legacy = legacy_dedup_id(&parts(Some("order-1"), b"{}"));
    assert_eq!(
        legacy, 0x0896_eccc_c50a_deff,
        "legacy hash changed: {legacy:#x}"
    );
    assert_eq!(
        legacy,
        legacy_dedup_id(&parts(Some("order-1"), b"{\"other\":1}"))
    );
    assert_eq!(c, legacy_dedup_id(&parts(None, b"{\"x\":1}")));
}

#[test]
fn publishes_sharing_a_message_id_are_distinct_messages() {
    let first = dedup_id(&parts(Some("order-1"), b"{\"n\":1}"));
    let second = dedup_id(&parts(Some("order-1"), b"{\"n\":2}"));
    assert_ne!(first, second);
    // first was checkpointed and acked, but the crash came before the next
    // checkpoint; second was delivered and never checkpointed
    let mut t = Tracker::restore(None, 1).unwrap();
    t.new_channel(u64::MAX);
    t.on_delivery(1, first, false);
    let checkpointed = commit_of(&mut t);
    t.on_delivery(2, second, false);
    let mut t = Tracker::restore(Some(&checkpointed), 2).unwrap();
    t.new_channel(u64::MAX);
    assert_eq!(
        t.on_delivery(1, second, true),
        Verdict::Process,
        "the redelivered second publish is not the first one"
    );
}

#[test]
fn version_1_positions_still_skip_their_redeliveries() {
    let legacy = legacy_dedup_id(&parts(Some("order-1"), b"{}"));
    let content = dedup_id(&parts(Some("order-1"), b"{}"));
    let mut v1 = vec![1u8];
    v1.extend_from_slice(&9u64.to_be_bytes());
    v1.extend_from_slice(&3u64.to_be_bytes());
    v1.extend_from_slice(&1u32.to_be_bytes());
    v1.extend_from_slice(&legacy.to_be_bytes());
    let mut t = Tracker::restore(Some(&v1), 2).unwrap();
    t.new_channel(u64::MAX);
    assert!(t.needs_legacy_ids());
    assert_eq!(
        t.on_delivery_with_legacy(1, content, Some(legacy), true),
        Verdict::Skip
    );
    assert!(!t.needs_legacy_ids());
    assert_eq!(
        t.on_delivery_with_legacy(2, content, Some(legacy), true),
        Verdict::Process
    );
    let position = commit_of(&mut t);
    assert_eq!(position[0], 2, "new positions are version 2");
    // the skipped one leaves the position once its ack is confirmed
    let plan = t.on_commit(&position).unwrap();
    assert_eq!(plan.messages, 2);
    t.confirmed(plan.tag);
    assert_eq!(t.live_len(), 0);
}

fn commit_of(t: &mut Tracker) -> Vec<u8> {
    t.seal().expect("something to emit")
}

#[test]
fn acks_only_after_commit_and_up_to_the_covered_tag() {
    let mut t = Tracker::restore(None, 7).unwrap();
    t.new_channel(1_000);
    assert_eq!(t.on_delivery(1, 11, false), Verdict::Process);
    assert_eq!(t.on_delivery(2, 12, false), Verdict::Process);
    let p1 = commit_of(&mut t);
    assert_eq!(decode_ids(&p1).unwrap().len(), 2);
    t.on_delivery(3, 13, false);
    let p2 = commit_of(&mut t);
    // the checkpoint of the first batch: ack tag 2, not 3
    assert_eq!(
        t.on_commit(&p1),
        Some(AckPlan {
            tag: 2,
            messages: 2
        })
    );
    assert_eq!(t.live_len(), 3, "acked but not confirmed: still tracked");
    t.confirmed(2);
    assert_eq!(t.live_len(), 1);
    assert_eq!(
        t.on_commit(&p2),
        Some(AckPlan {
            tag: 3,
            messages: 1
        })
    );
    // a repeated commit acks nothing twice
    assert_eq!(t.on_commit(&p2), None);
    t.confirmed(3);
    assert_eq!(t.live_len(), 0);
    // the pruned set is emitted once, then nothing
    let p3 = t.seal().expect("pruned position");
    assert!(decode_ids(&p3).unwrap().is_empty());
    assert_eq!(t.seal(), None);
}

#[test]
fn a_crash_before_the_ack_skips_exactly_the_checkpointed_redeliveries() {
    let mut t = Tracker::restore(None, 1).unwrap();
    t.new_channel(0);
    for tag in 1..=3 {
        t.on_delivery(tag, 100 + tag, false);
    }
    let checkpointed = commit_of(&mut t);
    t.on_delivery(4, 104, false);
    let _not_checkpointed = commit_of(&mut t);
    // crash: restart from the checkpoint holding 101..=103
    let mut t = Tracker::restore(Some(&checkpointed), 2).unwrap();
    assert_eq!(t.orphans_len(), 3);
    t.new_channel(60_000);
    assert_eq!(t.on_delivery(1, 101, true), Verdict::Skip);
    assert_eq!(t.on_delivery(2, 102, true), Verdict::Skip);
    assert_eq!(t.on_delivery(3, 103, true), Verdict::Skip);
    assert_eq!(
        t.on_delivery(4, 104, true),
        Verdict::Process,
        "never checkpointed"
    );
    assert_eq!(t.on_delivery(5, 105, false), Verdict::Process);
    let p = commit_of(&mut t);
    assert_eq!(
        t.on_commit(&p),
        Some(AckPlan {
            tag: 5,
            messages: 5
        })
    );
    t.confirmed(5);
    assert_eq!(t.live_len(), 0);
    assert_eq!(t.orphans_len(), 0);
}

#[test]
fn only_redeliveries_are_skipped() {
    let mut t = Tracker::restore(None, 1).unwrap();
    t.new_channel(0);
    t.on_delivery(1, 42, false);
    let p = commit_of(&mut t);
    let mut t = Tracker::restore(Some(&p), 2).unwrap();
    t.new_channel(0);
    // same id, not flagged redelivered: a new publish with a reused id
    assert_eq!(t.on_delivery(1, 42, false), Verdict::Process);
    assert_eq!(t.on_delivery(2, 42, true), Verdict::Skip);
    assert_eq!(
        t.on_delivery(3, 42, true),
        Verdict::Process,
        "only one was processed"
    );
}

#[test]
fn identical_unlabeled_messages_are_counted_as_a_multiset() {
    let mut t = Tracker::restore(None, 1).unwrap();
    t.new_channel(0);
    t.on_delivery(1, 9, false);
    t.on_delivery(2, 9, false);
    let p = commit_of(&mut t);
    t.on_delivery(3, 9, false); // delivered, not checkpointed
    let mut t = Tracker::restore(Some(&p), 2).unwrap();
    t.new_channel(0);
    let verdicts: Vec<_> = (1..=3).map(|tag| t.on_delivery(tag, 9, true)).collect();
    assert_eq!(verdicts, [Verdict::Skip, Verdict::Skip, Verdict::Process]);
}

#[test]
fn a_lost_channel_never_acks_its_tags_and_its_messages_become_orphans() {
    let mut t = Tracker::restore(None, 1).unwrap();
    t.new_channel(0);
    t.on_delivery(7, 70, false);
    t.on_delivery(8, 80, false);
    let p_old = commit_of(&mut t);
    t.channel_lost();
    t.new_channel(10_000);
    // the checkpoint of the old channel's batch completes after the reconnect
    assert_eq!(
        t.on_commit(&p_old),
        None,
        "tags of a dead channel are never acked"
    );
    // the broker redelivers them on the new channel, with new tags
    assert_eq!(t.on_delivery(1, 70, true), Verdict::Skip);
    assert_eq!(t.on_delivery(2, 80, true), Verdict::Skip);
    assert_eq!(t.on_delivery(3, 90, false), Verdict::Process);
    let p = commit_of(&mut t);
    assert_eq!(decode_ids(&p).unwrap().len(), 3);
    assert_eq!(
        t.on_commit(&p),
        Some(AckPlan {
            tag: 3,
            messages: 3
        })
    );
    t.confirmed(3);
    assert_eq!(t.live_len(), 0);
}

#[test]
fn unconfirmed_acks_survive_a_lost_channel() {
    let mut t = Tracker::restore(None, 1).unwrap();
    t.new_channel(0);
    t.on_delivery(1, 5, false);
    let p = commit_of(&mut t);
    assert!(t.on_commit(&p).is_some());
    // the ack may or may not have reached the broker
    t.channel_lost();
    assert_eq!(t.orphans_len(), 1);
    t.new_channel(0);
    assert_eq!(t.on_delivery(1, 5, true), Verdict::Skip);
}

#[test]
fn an_unemitted_batch_is_forgotten_when_the_channel_is_lost() {
    let mut t = Tracker::restore(None, 1).unwrap();
    t.new_channel(0);
    t.on_delivery(1, 5, false);
    t.channel_lost();
    assert_eq!(t.live_len(), 0);
    t.new_channel(0);
    assert_eq!(t.on_delivery(1, 5, true), Verdict::Process);
}

#[test]
fn orphans_expire_after_the_redelivery_window() {
    let mut t = Tracker::restore(None, 1).unwrap();
    t.new_channel(0);
    t.on_delivery(1, 5, false);
    t.on_delivery(2, 6, false);
    let p = commit_of(&mut t);
    let mut t = Tracker::restore(Some(&p), 2).unwrap();
    assert_eq!(
        t.expire_orphans(u64::MAX),
        0,
        "no channel yet: keep waiting"
    );
    t.new_channel(1_000);
    assert_eq!(t.on_delivery(1, 5, true), Verdict::Skip);
    assert_eq!(t.expire_orphans(999), 0);
    assert_eq!(t.expire_orphans(1_000), 1, "6 was never redelivered");
    assert_eq!(t.live_len(), 1, "5 waits for its ack");
    assert_eq!(t.on_delivery(2, 6, true), Verdict::Process);
}

#[test]
fn positions_of_other_runs_and_garbage_are_rejected() {
    let mut a = Tracker::restore(None, 1).unwrap();
    a.new_channel(0);
    a.on_delivery(1, 5, false);
    let p = commit_of(&mut a);
    let mut b = Tracker::restore(None, 2).unwrap();
    b.new_channel(0);
    b.on_delivery(1, 6, false);
    b.seal();
    assert_eq!(b.on_commit(&p), None, "a position of another process");
    assert!(Tracker::restore(Some(b"nope"), 1).is_err());
    let mut bad = p.clone();
    bad.pop();
    assert!(Tracker::restore(Some(&bad), 1).is_err());
    assert!(Tracker::restore(Some(&p), 1).is_ok());
}

/// A position holding `ids` (written by a tracker that processed them).
fn position_of(ids: &[u64], instance: u64) -> Vec<u8> {
    let mut t = Tracker::restore(None, instance).unwrap();
    t.new_channel(0);
    for (tag, &id) in ids.iter().enumerate() {
        t.on_delivery(tag as u64 + 1, id, false);
    }
    commit_of(&mut t)
}

fn sorted_ids(position: &[u8]) -> Vec<u64> {
    let mut ids = decode_ids(position).unwrap();
    ids.sort_unstable();
    ids
}

#[test]
fn a_rescale_gives_every_worker_the_released_workers_unacknowledged_messages() {
    // Worker A held 1, 2 and a publish of content 7; worker B held 3 and
    // another publish of content 7; the new worker's directory held 5.
    let a = position_of(&[1, 2, 7], 1);
    let b = position_of(&[3, 7], 2);
    let mine = position_of(&[5], 3);
    let merged = tracker::merge_positions(Some(&mine), &[&a, &b]).unwrap();
    assert_eq!(sorted_ids(&merged), vec![1, 2, 3, 5, 7, 7]);
    // A worker restoring it skips each redelivery once, whoever read it.
    let mut t = Tracker::restore(Some(&merged), 4).unwrap();
    t.new_channel(60_000);
    for (tag, id) in [(1, 3), (2, 7), (3, 7), (4, 1), (5, 5)] {
        assert_eq!(t.on_delivery(tag, id, true), Verdict::Skip, "{id}");
    }
    assert_eq!(t.on_delivery(6, 7, true), Verdict::Process, "held twice only");
    assert_eq!(t.on_delivery(7, 9, true), Verdict::Process, "never held");
    // With no position of its own.
    let fresh = tracker::merge_positions(None, &[&b]).unwrap();
    assert_eq!(sorted_ids(&fresh), vec![3, 7]);
    assert!(tracker::merge_positions(None, &[b"junk"]).is_err());
}
