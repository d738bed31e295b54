//! The butler with a real stream server on a Unix socket, driven by a raw client.

use std::sync::Arc;
use std::time::Duration;

use logdog_butler::{Butler, ButlerConfig};
use logdog_outputs::MemoryOutput;
use logdog_streamserver::StreamServer;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Opens a stream the way any LogDog client does: magic, uvarint length, JSON flags.
async fn open(path: &std::path::Path, json: &str) -> UnixStream {
    let mut conn = UnixStream::connect(path).await.unwrap();
    let mut hello = b"BTLR1\x1e".to_vec();
    let mut n = json.len();
    while n >= 0x80 {
        hello.push((n as u8) | 0x80);
        n >>= 7;
    }
    hello.push(n as u8);
    hello.extend_from_slice(json.as_bytes());
    conn.write_all(&hello).await.unwrap();
    conn
}

#[tokio::test]
async fn server_streams_are_captured_and_refusals_counted() {
    let out = MemoryOutput::default();
    let butler = Butler::spawn(ButlerConfig::default(), Arc::new(out.clone())).unwrap();
    let server = StreamServer::bind_private()
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(300));
    let path = server.path().to_path_buf();
    let stats = server.stats();
    butler.add_stream_server(server).await.unwrap();

    let mut first = open(&path, r#"{"name":"dup","type":"text"}"#).await;
    first.write_all(b"first\n").await.unwrap();
    // Make sure `dup` is registered before the duplicate arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !butler.streams().await.contains(&"dup".to_string()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream never registered"
        );
        tokio::task::yield_now().await;
    }
    let mut second = open(&path, r#"{"name":"dup"}"#).await;
    let _ = second.write_all(b"second\n").await;
    drop(second);
    // A closed namespace refuses new streams too.
    assert_eq!(
        butler.drain_namespace("ns", std::future::ready(())).await,
        Ok(())
    );
    drop(open(&path, r#"{"name":"ns/x"}"#).await);
    // A client that says nothing is dropped after the handshake timeout.
    let silent = UnixStream::connect(&path).await.unwrap();
    first.write_all(b"still here\n").await.unwrap();
    drop(first);

    butler.activate().await;
    let report = tokio::time::timeout(Duration::from_secs(60), butler.wait())
        .await
        .unwrap()
        .unwrap();
    drop(silent);
    assert_eq!(out.stream_bytes("dup").unwrap(), b"first\nstill here\n");
    assert_eq!(report.rejected.get("duplicate_name"), Some(&1));
    assert_eq!(report.rejected.get("namespace_closed"), Some(&1));
    let rejected = stats.rejected();
    assert_eq!(rejected.get("duplicate_name"), Some(&1));
    assert_eq!(rejected.get("namespace_closed"), Some(&1));
    assert_eq!(rejected.get("timeout"), Some(&1));
    // The socket and its private directory are gone.
    assert!(!path.exists());
    assert!(!path.parent().unwrap().exists());
}

/// Reads the verdict line a client asked for.
async fn verdict(conn: &mut UnixStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match conn.read(&mut byte).await.unwrap() {
            0 => break,
            _ => line.push(byte[0]),
        }
    }
    String::from_utf8(line).unwrap()
}

#[tokio::test]
async fn streams_beyond_max_streams_are_refused_until_one_ends() {
    let out = MemoryOutput::default();
    let cfg = ButlerConfig {
        max_streams: 1,
        ..Default::default()
    };
    let butler = Butler::spawn(cfg, Arc::new(out.clone())).unwrap();
    let server = StreamServer::bind_private().unwrap();
    let path = server.path().to_path_buf();
    let stats = server.stats();
    butler.add_stream_server(server).await.unwrap();

    let mut first = open(&path, r#"{"name":"first/a","verdict":true}"#).await;
    assert_eq!(verdict(&mut first).await, "accepted\n");
    let mut over = open(&path, r#"{"name":"over","verdict":true}"#).await;
    let line = verdict(&mut over).await;
    assert!(
        line.starts_with("refused: ") && line.contains("1 streams already open"),
        "{line:?}"
    );
    drop(over);

    // Once the open stream has ended, there is room again.
    first.write_all(b"a\n").await.unwrap();
    drop(first);
    let drained = tokio::time::timeout(
        Duration::from_secs(60),
        butler.drain_namespace("first", std::future::pending()),
    )
    .await
    .unwrap();
    assert_eq!(drained, Ok(()));
    let mut next = open(&path, r#"{"name":"next","verdict":true}"#).await;
    assert_eq!(verdict(&mut next).await, "accepted\n");
    next.write_all(b"next\n").await.unwrap();
    drop(next);

    butler.activate().await;
    let report = tokio::time::timeout(Duration::from_secs(60), butler.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.stream_bytes("first/a").unwrap(), b"a\n");
    assert_eq!(out.stream_bytes("next").unwrap(), b"next\n");
    assert!(out.stream_bytes("over").is_none());
    assert_eq!(report.rejected.get("too_many_streams"), Some(&1));
    assert_eq!(stats.rejected().get("too_many_streams"), Some(&1));
    assert_eq!(report.refused_streams.len(), 1);
    assert_eq!(report.refused_streams[0].name, "over");
}
