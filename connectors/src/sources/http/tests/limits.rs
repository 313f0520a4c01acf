//! Connection limits: the listen queue at `max_connections`, header and
//! body read timeouts, the cap on buffered body bytes, and their options.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_engine::time::HumanDuration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{collect, post, start, HttpSourceConfig};

async fn connect(port: u16) -> tokio::net::TcpStream {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => return s,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("cannot connect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Reads until the server closes the connection (or `limit` passes: then
/// None). Returns what the server sent.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()), // EOF or reset
        Err(_) => None,
    }
}

#[tokio::test]
async fn unfinished_headers_are_closed_after_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = HttpSourceConfig {
        header_read_timeout: HumanDuration::from_millis(300),
        ..HttpSourceConfig::default()
    };
    let mut h = start(config, dir.path(), None, false);
    let mut slow = Vec::new();
    for i in 0..60 {
        let mut s = connect(h.port).await;
        if i % 3 != 0 {
            // a third send nothing at all; the others stop mid-headers
            s.write_all(b"POST /ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
                .await
                .unwrap();
        }
        slow.push(s);
    }
    let started = tokio::time::Instant::now();
    for (i, s) in slow.iter_mut().enumerate() {
        let left = Duration::from_secs(10).saturating_sub(started.elapsed());
        assert!(
            read_until_closed(s, left).await.is_some(),
            "connection {i} with unfinished headers is still open after {:?}",
            started.elapsed()
        );
    }
    let r = post(h.port, "{\"ok\":1}").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(collect(&mut h, 1).await.0, vec![0]);
    h.shutdown.send(true).unwrap();
    h.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn connections_over_max_connections_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let config = HttpSourceConfig {
        max_connections: 4,
        header_read_timeout: HumanDuration::from_millis(30_000),
        ..HttpSourceConfig::default()
    };
    let mut h = start(config, dir.path(), None, false);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = connect(h.port).await;
        s.write_all(b"POST /ingest HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    // a fifth, complete request is not served while four are open...
    let body = b"{\"fifth\":1}";
    let mut fifth = connect(h.port).await;
    fifth
        .write_all(
            format!(
                "POST /ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    fifth.write_all(body).await.unwrap();
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(700), fifth.read(&mut first)).await;
    // (a timeout leaves `fifth` untouched: nothing was read)
    assert!(
        early.is_err(),
        "the fifth connection was served while max_connections = 4 were open: {early:?}"
    );
    // ... and is served once one of them closes
    drop(held.pop());
    let reply = read_until_closed(&mut fifth, Duration::from_secs(10))
        .await
        .expect("the fifth request is answered once a slot is free");
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    assert_eq!(collect(&mut h, 1).await.0, vec![0]);
    drop(held);
    h.shutdown.send(true).unwrap();
    h.task.await.unwrap().unwrap();
}

/// Clients beyond `max_connections` wait in the listen queue: hundreds of
/// them connect at once without a dropped SYN (which the kernel would
/// retry only after a second). With tokio's default backlog of 128 most of
/// these connects time out.
#[tokio::test]
async fn hundreds_of_clients_queue_while_the_server_is_at_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let config = HttpSourceConfig {
        max_connections: 1,
        header_read_timeout: HumanDuration::from_millis(30_000),
        ..HttpSourceConfig::default()
    };
    let h = start(config, dir.path(), None, false);
    let held = connect(h.port).await;
    let mut queued = Vec::new();
    for i in 0..500 {
        let attempt = tokio::net::TcpStream::connect(("127.0.0.1", h.port));
        match tokio::time::timeout(Duration::from_millis(500), attempt).await {
            Ok(Ok(s)) => queued.push(s),
            other => panic!("client {i} could not connect while the server was at its cap: {other:?}"),
        }
    }
    drop((held, queued));
    h.shutdown.send(true).unwrap();
    h.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn half_sent_bodies_time_out_and_buffered_bytes_stay_under_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let body_bytes = 256 << 10;
    let config = HttpSourceConfig {
        max_body_bytes: body_bytes,
        max_buffered_bytes: 4 * body_bytes,
        body_read_timeout: HumanDuration::from_millis(500),
        ..HttpSourceConfig::default()
    };
    let mut h = start(config, dir.path(), None, false);
    // ten clients each announce a full body and send half of it
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut s = connect(h.port).await;
        let head = format!(
            "POST /ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {body_bytes}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b' '; body_bytes / 2]).await.unwrap();
        slow.push(s);
    }
    let mut statuses = BTreeMap::<String, usize>::new();
    let started = tokio::time::Instant::now();
    for s in &mut slow {
        let left = Duration::from_secs(10).saturating_sub(started.elapsed());
        let reply = read_until_closed(s, left)
            .await
            .expect("a half-sent body is answered and closed, not kept forever");
        let status = reply.get(9..12).unwrap_or("none").to_string();
        *statuses.entry(status).or_default() += 1;
    }
    // four bodies fit in max_buffered_bytes and timed out; the others were
    // refused at once
    assert_eq!(
        statuses,
        BTreeMap::from([("408".to_string(), 4), ("503".to_string(), 6)])
    );
    let r = post(h.port, "{\"after\":1}").await;
    assert_eq!(r.status, 202, "the budget is free again: {:?}", r.body);
    assert_eq!(collect(&mut h, 1).await.0, vec![0]);
    h.shutdown.send(true).unwrap();
    h.task.await.unwrap().unwrap();
}

#[test]
fn limits_parse_and_are_checked() {
    let c: HttpSourceConfig = toml::from_str(
        "header_read_timeout = \"2s\"\nbody_read_timeout = \"1m\"\nmax_connections = 100\nmax_buffered_bytes = 20971520",
    )
    .unwrap();
    assert_eq!(c.header_read_timeout, HumanDuration::from_millis(2_000));
    assert_eq!(c.body_read_timeout, HumanDuration::from_millis(60_000));
    assert_eq!((c.max_connections, c.max_buffered_bytes), (100, 20 << 20));
    let d = HttpSourceConfig::default();
    assert_eq!(d.header_read_timeout, HumanDuration::from_millis(10_000));
    assert_eq!(d.body_read_timeout, HumanDuration::from_millis(60_000));
    assert_eq!((d.max_connections, d.max_buffered_bytes), (512, 64 << 20));
    assert!(d.check_limits().is_ok());
    for (toml, want) in [
        ("header_read_timeout = \"0s\"", "positive duration"),
        ("body_read_timeout = 0", "positive duration"),
        ("max_connections = 0", "at least 1"),
        ("max_buffered_bytes = 0", "at least 1"),
    ] {
        let e = toml::from_str::<HttpSourceConfig>(toml)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{toml}: {e}");
    }
    let small: HttpSourceConfig = toml::from_str("max_buffered_bytes = 1000").unwrap();
    let e = small.check_limits().unwrap_err();
    assert!(e.contains("smaller than max_body_bytes"), "{e}");
}
