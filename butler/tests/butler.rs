//! Butler actor tests, through its handle, with the memory output.

use std::sync::Arc;
use std::time::Duration;

use logdog_butler::{Butler, ButlerConfig, ButlerError, StreamSource};
use logdog_outputs::MemoryOutput;
use logdog_proto::{StreamType, logpb};

fn desc(name: &str, kind: StreamType) -> logpb::LogStreamDescriptor {
    logpb::LogStreamDescriptor {
        name: name.into(),
        stream_type: kind as i32,
        ..Default::default()
    }
}

fn source(name: &str, kind: StreamType, data: &[u8]) -> StreamSource {
    StreamSource {
        reader: Box::new(std::io::Cursor::new(data.to_vec())),
        desc: desc(name, kind),
        tee: None,
    }
}

fn start(cfg: ButlerConfig) -> (Butler, MemoryOutput) {
    let out = MemoryOutput::new(64 * 1024);
    let butler = Butler::spawn(cfg, Arc::new(out.clone())).unwrap();
    (butler, out)
}

#[tokio::test]
async fn streams_run_to_the_end_with_terminal_entries() {
    let (butler, out) = start(ButlerConfig::default());
    let mut expected = Vec::new();
    for i in 0..256 {
        let data = format!("stream {i}\n").repeat(i % 7);
        butler
            .add_stream(source(&format!("s/{i}"), StreamType::Text, data.as_bytes()))
            .await
            .unwrap();
        expected.push((format!("s/{i}"), data));
    }
    butler.activate().await;
    let report = butler.wait().await.unwrap();
    assert_eq!(report.streams.len(), 256);
    for (name, data) in expected {
        let got = out.stream_bytes(&name).unwrap_or_default();
        assert_eq!(got, data.as_bytes(), "{name}");
        let entries = out.entries(&name);
        let last = entries.last().map_or(u64::MAX, |e| e.stream_index);
        assert_eq!(out.terminal_index(&name), Some(last), "{name}");
        assert_eq!(report.streams[&name].bytes_read, data.len() as u64);
    }
    // An empty stream is announced too, with a terminal entry and no logs.
    assert_eq!(out.terminal_index("s/0"), Some(u64::MAX));
}

#[tokio::test]
async fn names_are_never_reused_and_listed_sorted() {
    let (butler, _out) = start(ButlerConfig::default());
    butler
        .add_stream(source("b", StreamType::Text, b"x\n"))
        .await
        .unwrap();
    butler
        .add_stream(source("a", StreamType::Binary, b"x"))
        .await
        .unwrap();
    let dup = butler
        .add_stream(source("b", StreamType::Text, b"y\n"))
        .await;
    assert!(matches!(dup, Err(ButlerError::Duplicate(n)) if n == "b"));
    assert_eq!(butler.streams().await, ["a", "b"]);
    butler.activate().await;
    butler.wait().await.unwrap();
    // After the butler has finished it takes no more streams.
    let late = butler.add_stream(source("c", StreamType::Text, b"")).await;
    assert!(matches!(late, Err(ButlerError::Stopped)));
}

#[tokio::test]
async fn invalid_descriptors_and_config_are_refused() {
    let (butler, _out) = start(ButlerConfig::default());
    for name in ["", "_x", "a//b", "a b"] {
        let res = butler.add_stream(source(name, StreamType::Text, b"")).await;
        assert!(
            matches!(res, Err(ButlerError::Config(_))),
            "{name:?}: {res:?}"
        );
    }
    // Refused streams leave no trace.
    assert!(butler.streams().await.is_empty());
    let bad = ButlerConfig {
        global_tags: [("bad key".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    assert!(Butler::spawn(bad, Arc::new(MemoryOutput::default())).is_err());
}

#[tokio::test]
async fn global_tags_merge_and_stream_tags_win() {
    let cfg = ButlerConfig {
        global_tags: [
            ("k".to_string(), "global".to_string()),
            ("g".to_string(), "1".to_string()),
        ]
        .into(),
        ..Default::default()
    };
    let (butler, out) = start(cfg);
    let mut src = source("t", StreamType::Datagram, b"\x02hi");
    src.desc.tags.insert("k".into(), "mine".into());
    butler.add_stream(src).await.unwrap();
    butler.activate().await;
    butler.wait().await.unwrap();
    let d = out.descriptor("t").unwrap();
    assert_eq!(d.tags["k"], "mine");
    assert_eq!(d.tags["g"], "1");
    assert_eq!(d.content_type, "application/x-logdog-datagram");
    assert_eq!(out.datagrams("t").unwrap(), [b"hi".to_vec()]);
}

#[tokio::test(start_paused = true)]
async fn wait_returns_only_after_activation_and_every_stream_ended() {
    let (butler, out) = start(ButlerConfig::default());
    let (mut writer, reader) = tokio::io::duplex(1024);
    butler
        .add_stream(StreamSource {
            reader: Box::new(reader),
            desc: desc("live", StreamType::Text),
            tee: None,
        })
        .await
        .unwrap();
    // Not activated: wait does not return (paused time jumps straight to the timeout).
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), butler.wait())
            .await
            .is_err()
    );
    butler.activate().await;
    // Activated, but the stream is still open.
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), butler.wait())
            .await
            .is_err()
    );
    tokio::io::AsyncWriteExt::write_all(&mut writer, b"last words\n")
        .await
        .unwrap();
    drop(writer);
    let report = butler.wait().await.unwrap();
    assert_eq!(out.stream_bytes("live").unwrap(), b"last words\n");
    assert_eq!(report.streams["live"].entries, 1);
}
