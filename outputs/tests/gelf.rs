//! The GELF output against a receiver written from the specification: round trips over UDP
//! (every compression, chunked and not) and TCP, joined pieces, truncation, drops; and golden
//! byte files for the encodings (`UPDATE_GOLDEN=1` rewrites them).

mod gelf_decoder;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gelf_decoder::{Dechunker, Message, Receiver, decompress, parse, split_frames};
use logdog_outputs::gelf::encoding::{self, Compression};
use logdog_outputs::gelf::message::{self, StreamFields};
use logdog_outputs::gelf::session::Backoff;
use logdog_outputs::gelf::{self, GelfConfig, GelfOutput, GelfTransport};
use logdog_outputs::{Delivery, Output};
use logdog_proto::logpb::{self, StreamType};
use logdog_proto::{Bundle, BundleEntry, Content, Descriptor, Entry};
use proptest::prelude::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn desc(name: &str, ty: StreamType, tags: &[(&str, &str)]) -> Arc<Descriptor> {
    Arc::new(Descriptor::new(logpb::LogStreamDescriptor {
        name: name.into(),
        stream_type: ty as i32,
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 500_000_000,
        }),
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }))
}

fn entry(sequence: u64, offset_ms: i32, content: Content) -> Entry {
    Entry {
        time_offset: prost_types::Duration {
            seconds: 0,
            nanos: offset_ms * 1_000_000,
        },
        prefix_index: 0,
        stream_index: 0,
        sequence,
        content,
    }
}

fn text(s: &str) -> Content {
    Content::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn bundle(entries: Vec<BundleEntry>) -> Bundle {
    Bundle {
        timestamp: Default::default(),
        project: "proj".into(),
        prefix: "job/1".into(),
        entries,
    }
}

fn config(t: GelfTransport, addr: &str) -> GelfConfig {
    let mut c = GelfConfig::new(t, addr);
    c.host = Some("test-host".into());
    c
}

/// Drops the receiver's bookkeeping field.
fn clean(mut m: Message) -> Message {
    m.remove("__datagram_max");
    m
}

#[tokio::test]
async fn udp_round_trip_every_compression() {
    for (compression, chunk_size) in [
        (Compression::Gzip, 1420),
        (Compression::Zlib, 1420),
        (Compression::None, 1420),
        (Compression::Gzip, 64),
        (Compression::None, 100),
    ] {
        let rx = Receiver::udp();
        let mut c = config(GelfTransport::Udp, &rx.addr);
        c.compression = compression;
        c.chunk_size = chunk_size;
        let out = GelfOutput::new(c).unwrap();
        assert_eq!(out.delivery(), Delivery::BestEffort);
        let long = "x".repeat(3000);
        let out_d = desc("stdout", StreamType::Text, &[("team", "a b")]);
        let err_d = desc("stderr", StreamType::Text, &[]);
        let b = bundle(vec![
            BundleEntry {
                desc: out_d.clone(),
                terminal_index: None,
                logs: vec![entry(
                    0,
                    250,
                    text(&format!("hello\r\n{{\"user\":\"u1\",\"n\":2}}\n{long}\n")),
                )],
            },
            BundleEntry {
                desc: err_d,
                terminal_index: Some(0),
                logs: vec![entry(4, 1, text("oops\n"))],
            },
        ]);
        out.send(b.clone()).await.unwrap();
        let got: Vec<Message> = rx.take(4, WAIT).into_iter().map(clean).collect();
        let base = json!({"version": "1.1", "host": "test-host", "_project": "proj",
            "_prefix": "job/1"});
        let with = |extra: Value| {
            let mut m = base.as_object().unwrap().clone();
            m.extend(extra.as_object().unwrap().clone());
            Value::Object(m)
        };
        assert_eq!(
            got.into_iter().map(Value::Object).collect::<Vec<_>>(),
            vec![
                with(
                    json!({"short_message": "hello", "timestamp": 1_700_000_000.75,
                    "level": 6, "_stream": "stdout", "_line": 1, "_tag_team": "a b"})
                ),
                with(json!({"short_message": "{\"user\":\"u1\",\"n\":2}",
                    "timestamp": 1_700_000_000.75, "level": 6, "_stream": "stdout",
                    "_line": 2, "_tag_team": "a b", "_user": "u1", "_n": 2})),
                with(json!({"short_message": long, "timestamp": 1_700_000_000.75,
                    "level": 6, "_stream": "stdout", "_line": 3, "_tag_team": "a b"})),
                with(
                    json!({"short_message": "oops", "timestamp": 1_700_000_000.501,
                    "level": 3, "_stream": "stderr", "_line": 5})
                ),
            ],
            "{compression} {chunk_size}"
        );
        let s = out.stats();
        assert_eq!((s.sent_bundles, s.sent_entries), (1, 2));
        assert_eq!(s.sent_bytes, b.payload_bytes() as u64);
        assert_eq!(s.failed_bytes, 0);
        out.close().await.unwrap();
    }
}

#[tokio::test]
async fn datagrams_stay_within_the_chunk_size() {
    let rx = Receiver::udp();
    let mut c = config(GelfTransport::Udp, &rx.addr);
    c.compression = Compression::None;
    c.chunk_size = 200;
    let out = GelfOutput::new(c).unwrap();
    let line = "y".repeat(5000);
    out.send(bundle(vec![BundleEntry {
        desc: desc("out", StreamType::Text, &[]),
        terminal_index: None,
        logs: vec![entry(0, 0, text(&format!("{line}\n")))],
    }]))
    .await
    .unwrap();
    let m = rx.take(1, WAIT).remove(0);
    assert_eq!(m["short_message"], line.as_str());
    let max = m["__datagram_max"].as_u64().unwrap();
    assert!(max <= 200 && max > 150, "{max}");
}

#[tokio::test]
async fn joins_pieces_across_bundles_and_skips_binary() {
    let rx = Receiver::udp();
    let out = GelfOutput::new(config(GelfTransport::Udp, &rx.addr)).unwrap();
    let t = desc("out", StreamType::Text, &[("gelf.level", "2")]);
    let d = desc("dg", StreamType::Datagram, &[]);
    let bin = desc("bin", StreamType::Binary, &[]);
    let frag = |data: &'static [u8], index, last| Content::Datagram {
        data: Bytes::from_static(data),
        partial: Some(logpb::datagram::Partial {
            index,
            size: 6,
            last,
        }),
    };
    out.send(bundle(vec![
        BundleEntry {
            desc: t.clone(),
            terminal_index: None,
            logs: vec![entry(0, 0, text("one\n\ntw"))],
        },
        BundleEntry {
            desc: d.clone(),
            terminal_index: None,
            logs: vec![
                entry(
                    0,
                    0,
                    Content::Datagram {
                        data: Bytes::from_static(b"{\"k\":1}"),
                        partial: None,
                    },
                ),
                entry(1, 0, frag(b"abc", 0, false)),
            ],
        },
        BundleEntry {
            desc: bin,
            terminal_index: Some(0),
            logs: vec![entry(0, 0, Content::Binary(Bytes::from_static(b"\0\x01")))],
        },
    ]))
    .await
    .unwrap();
    out.send(bundle(vec![
        BundleEntry {
            desc: t,
            terminal_index: Some(3),
            logs: vec![entry(2, 10, text("o\nend"))],
        },
        BundleEntry {
            desc: d,
            terminal_index: Some(2),
            logs: vec![entry(1, 0, frag(b"def", 1, true))],
        },
    ]))
    .await
    .unwrap();
    let mut got: HashMap<(String, u64), Message> = HashMap::new();
    for m in rx.take(5, WAIT) {
        let key = (
            m["_stream"].as_str().unwrap().to_owned(),
            m["_line"].as_u64().unwrap(),
        );
        got.insert(key, m);
    }
    let short = |s: &str, n: u64| got[&(s.to_owned(), n)]["short_message"].clone();
    assert_eq!(short("out", 1), "one");
    assert_eq!(short("out", 3), "two");
    assert_eq!(short("out", 4), "end");
    assert_eq!(short("dg", 1), "{\"k\":1}");
    assert_eq!(got[&("dg".to_owned(), 1)]["_k"], 1);
    assert_eq!(short("dg", 2), "abcdef");
    assert_eq!(got[&("out".to_owned(), 1)]["level"], 2);
    // The piece "tw" keeps the time of its first part.
    assert_eq!(got[&("out".to_owned(), 3)]["timestamp"], 1_700_000_000.5);
    assert!(rx.more(Duration::from_millis(200)).is_none());
    let g = out.gelf_stats();
    assert_eq!((g.messages_sent, g.empty_lines, g.binary_bytes), (5, 1, 2));
}

#[tokio::test]
async fn tcp_round_trip() {
    let rx = Receiver::tcp();
    let out = GelfOutput::new(config(GelfTransport::Tcp, &rx.addr)).unwrap();
    assert_eq!(out.delivery(), Delivery::Acknowledged);
    let lines: String = (0..3000).map(|i| format!("line {i} \u{e9}\0x\n")).collect();
    out.send(bundle(vec![BundleEntry {
        desc: desc("stderr", StreamType::Text, &[]),
        terminal_index: Some(2999),
        logs: vec![entry(0, 0, text(&lines))],
    }]))
    .await
    .unwrap();
    let got = rx.take(3000, WAIT);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["short_message"], format!("line {i} \u{e9}\0x"));
        assert_eq!(m["_line"], i as u64 + 1);
        assert_eq!(m["level"], 3);
    }
    out.close().await.unwrap();
}

#[tokio::test]
async fn very_long_lines_go_out_in_pieces() {
    let rx = Receiver::tcp();
    let out = GelfOutput::new(config(GelfTransport::Tcp, &rx.addr)).unwrap();
    let piece = "z".repeat(gelf::MAX_HELD_BYTES / 2);
    let d = desc("out", StreamType::Text, &[]);
    for (i, last) in [(0, false), (1, false), (2, false), (3, true)] {
        let body = if last {
            "end\n".to_owned()
        } else {
            piece.clone()
        };
        out.send(bundle(vec![BundleEntry {
            desc: d.clone(),
            terminal_index: last.then_some(i),
            logs: vec![entry(0, 0, text(&body))],
        }]))
        .await
        .unwrap();
    }
    let got = rx.take(2, WAIT);
    let lens: Vec<usize> = got
        .iter()
        .map(|m| m["short_message"].as_str().unwrap().len())
        .collect();
    // Two halves make a piece of MAX_HELD_BYTES; the third half and "end" the rest.
    assert_eq!(lens, [piece.len() * 2, piece.len() + 3]);
    assert!(got.iter().all(|m| m["_line"] == 1));
    out.close().await.unwrap();
}

#[tokio::test]
async fn tcp_receiver_down_is_counted() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let out = GelfOutput::with_backoff(
        config(GelfTransport::Tcp, &addr),
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
            give_up_after: Duration::from_millis(100),
        },
    )
    .unwrap();
    let b = bundle(vec![BundleEntry {
        desc: desc("out", StreamType::Text, &[]),
        terminal_index: None,
        logs: vec![entry(0, 0, text("a\nb\n"))],
    }]);
    assert!(out.send(b).await.is_err());
    let s = out.stats();
    assert_eq!((s.failed_bundles, s.failed_bytes, s.sent_bytes), (1, 4, 0));
    assert_eq!(out.gelf_stats().messages_dropped, 2);
}

#[tokio::test]
async fn udp_refused_is_counted_not_failed() {
    // Nobody listens: the kernel reports refusals on the connected socket.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    drop(sock);
    let out = GelfOutput::new(config(GelfTransport::Udp, &addr)).unwrap();
    for _ in 0..3 {
        out.send(bundle(vec![BundleEntry {
            desc: desc("out", StreamType::Text, &[]),
            terminal_index: None,
            logs: vec![entry(0, 0, text("a\n"))],
        }]))
        .await
        .unwrap();
    }
    let s = out.stats();
    let g = out.gelf_stats();
    assert_eq!(g.messages_sent + g.messages_dropped, 3);
    assert!(g.messages_dropped >= 1, "{g:?}");
    assert_eq!(s.failed_bytes, 2 * g.messages_dropped);
}

// Golden byte files: the exact bytes of fixed messages.

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/gelf")
}

fn check_golden(name: &str, bytes: &[u8]) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    let want = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(want == bytes, "{name} differs from {}", path.display());
}

fn golden_message(line: &str) -> serde_json::Map<String, Value> {
    let fields = StreamFields::new(
        "golden-host",
        "proj",
        "job/1",
        "stderr",
        [("team".to_owned(), "core".to_owned())].into(),
    );
    message::build(&fields, line.as_bytes(), 42, 1_700_000_000.25)
}

#[test]
fn golden_bytes() {
    let id = *b"GELFTEST";
    let small = golden_message(r#"{"user":"u1","n":2} done"#);
    let json_line = golden_message(r#"{"user":"u1","n":2}"#);
    let mut frame = Vec::new();
    encoding::encode_stream(&json_line, &mut frame);
    check_golden("tcp-frame.bin", &frame);
    let p = encoding::encode_packet(&small, Compression::None, 1420, id).unwrap();
    check_golden("udp-none.bin", &p.datagrams.concat());
    let p = encoding::encode_packet(&json_line, Compression::Gzip, 1420, id).unwrap();
    check_golden("udp-gzip.bin", &p.datagrams.concat());
    let p = encoding::encode_packet(&json_line, Compression::Zlib, 1420, id).unwrap();
    check_golden("udp-zlib.bin", &p.datagrams.concat());
    let p = encoding::encode_packet(&small, Compression::None, 100, id).unwrap();
    assert_eq!(p.datagrams.len(), 3);
    let mut all = Vec::new();
    for d in &p.datagrams {
        all.extend_from_slice(&(d.len() as u16).to_be_bytes());
        all.extend_from_slice(d);
    }
    check_golden("udp-chunked-100.bin", &all);
    // And the golden files decode to the messages.
    let mut d = Dechunker::default();
    let mut whole = None;
    for dg in &p.datagrams {
        whole = d.push(dg).unwrap();
    }
    assert_eq!(parse(&decompress(&whole.unwrap()).unwrap()).unwrap(), small);
    let mut buf = frame.clone();
    assert_eq!(parse(&split_frames(&mut buf)[0]).unwrap(), json_line);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn packets_round_trip(
        line in "\\PC{1,3000}",
        c in prop_oneof![Just(Compression::Gzip), Just(Compression::Zlib), Just(Compression::None)],
        chunk_size in 64usize..3000,
        id in any::<[u8; 8]>(),
    ) {
        let m = golden_message(&line);
        let p = encoding::encode_packet(&m, c, chunk_size, id).unwrap();
        prop_assert!(p.datagrams.len() <= 128);
        prop_assert!(p.datagrams.iter().all(|d| d.len() <= chunk_size));
        let mut d = Dechunker::default();
        let mut whole = None;
        for dg in p.datagrams.iter().rev() {
            whole = d.push(dg).unwrap();
        }
        let back = parse(&decompress(&whole.unwrap()).unwrap()).unwrap();
        if p.truncated {
            prop_assert_eq!(&back["_truncated"], &Value::from(line.len()));
            prop_assert!(line.starts_with(back["short_message"].as_str().unwrap()));
        } else {
            prop_assert_eq!(back, m);
        }
    }
}
