//! The stream server's wire protocol, tested from the outside.
//!
//! The client here is written from the LogDog reference (§1 wire protocol, §2 names and tags,
//! §11 sharp edges), byte by byte: the magic, the uvarint header length and the JSON header are
//! built by hand, never with the crate's own encoder. It talks to a real [`StreamServer`] over a
//! real Unix socket. On the receiving side a collector task takes every [`NewStream`] off the
//! channel and reads its payload to EOF, so each test can check descriptor and payload.
//!
//! Synchronisation never uses sleeps: a client knows the server has finished with its
//! connection when its own read returns EOF (the server never writes a byte back, reference
//! §1.4), and the server counts a rejection before it closes the connection.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logdog_proto::logpb::LogStreamDescriptor;
use logdog_streamserver::{NewStream, ServerStats, StreamServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

mod common;

use common::{MAGIC, connect, raise_nofile_limit, uvarint, wait_closed};

/// Overall limit for one test: a hang fails instead of blocking the suite.
const LIMIT: Duration = Duration::from_secs(60);

/// `logpb.StreamType` values (reference §3.1).
const TEXT: i32 = 0;
const BINARY: i32 = 1;
const DATAGRAM: i32 = 2;

/// Default content types by stream type (reference §1.2).
const TEXT_CT: &str = "text/plain; charset=utf-8";
const BINARY_CT: &str = "application/octet-stream";
const DATAGRAM_CT: &str = "application/x-logdog-datagram";

/// Largest header length the server accepts (reference §1.2).
const ONE_MIB: u64 = 1_048_576;

// ---------------------------------------------------------------------------------------------
// The wire, by hand.

/// Magic, header length, header.
fn frame(header: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(uvarint(header.len() as u64));
    out.extend_from_slice(header);
    out
}

/// A whole connection's bytes: handshake with a JSON header, then the payload.
fn stream_bytes(json: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = frame(json.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Magic followed by a bare header length: all the server needs to refuse an oversized header.
fn declared_length_only(len: u64) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(uvarint(len));
    out
}

/// Deterministic pseudo-random bytes, different for every seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The descriptor the server should produce (prefix empty, reference §1.2).
fn desc(
    name: &str,
    stream_type: i32,
    content_type: &str,
    timestamp: Option<(i64, i32)>,
    tags: &[(&str, &str)],
) -> LogStreamDescriptor {
    LogStreamDescriptor {
        prefix: String::new(),
        name: name.to_string(),
        stream_type,
        content_type: content_type.to_string(),
        timestamp: timestamp.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn hand_written_uvarint_matches_go() {
    assert_eq!(uvarint(0), [0x00]);
    assert_eq!(uvarint(1), [0x01]);
    assert_eq!(uvarint(127), [0x7F]);
    assert_eq!(uvarint(128), [0x80, 0x01]);
    assert_eq!(uvarint(300), [0xAC, 0x02]);
    assert_eq!(uvarint(ONE_MIB), [0x80, 0x80, 0x40]);
    assert_eq!(uvarint(ONE_MIB + 1), [0x81, 0x80, 0x40]);
    assert_eq!(uvarint(1 << 40), [0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
    let mut max = vec![0xFF; 9];
    max.push(0x01);
    assert_eq!(uvarint(u64::MAX), max);
    assert_eq!(&MAGIC, b"BTLR1\x1E");
}

// ---------------------------------------------------------------------------------------------
// Harness: a running server and a collector.

/// A stream as the butler side saw it.
#[derive(Debug)]
struct Received {
    desc: LogStreamDescriptor,
    payload: Vec<u8>,
}

struct Running {
    path: PathBuf,
    stats: ServerStats,
    shutdown: Option<oneshot::Sender<()>>,
    run: JoinHandle<()>,
    received: mpsc::UnboundedReceiver<Received>,
}

impl Running {
    /// Runs `server` until [`stop`](Self::stop).
    fn start(server: StreamServer) -> Self {
        let (tx, rx) = oneshot::channel();
        let mut running = Self::start_with_shutdown(server, async {
            let _ = rx.await;
        });
        running.shutdown = Some(tx);
        running
    }

    /// Runs `server` with the given shutdown future.
    fn start_with_shutdown(
        server: StreamServer,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let path = server.path().to_owned();
        let stats = server.stats();
        let (tx, rx) = mpsc::channel(8);
        let (out, received) = mpsc::unbounded_channel();
        tokio::spawn(collect(rx, out));
        let run = tokio::spawn(server.run(tx, shutdown));
        Self {
            path,
            stats,
            shutdown: None,
            run,
            received,
        }
    }

    /// The next stream read to EOF.
    async fn next(&mut self) -> Received {
        tokio::time::timeout(LIMIT, self.received.recv())
            .await
            .expect("timed out waiting for a stream")
            .expect("collector ended")
    }

    /// Fires shutdown, waits for `run` to return, and returns every stream not yet taken with
    /// [`next`](Self::next).
    async fn stop(mut self) -> Vec<Received> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(LIMIT, &mut self.run)
            .await
            .expect("run did not return after shutdown")
            .expect("run panicked");
        // Once `run` has returned every sender is gone, so the channel ends when the last
        // reader has reached EOF.
        let mut rest = Vec::new();
        while let Some(r) = tokio::time::timeout(LIMIT, self.received.recv())
            .await
            .expect("timed out draining streams")
        {
            rest.push(r);
        }
        rest
    }
}

/// The butler's side: takes each stream off the channel and reads it to EOF.
async fn collect(mut rx: mpsc::Receiver<NewStream>, out: mpsc::UnboundedSender<Received>) {
    while let Some(NewStream {
        desc, mut reader, ..
    }) = rx.recv().await
    {
        let out = out.clone();
        tokio::spawn(async move {
            let mut payload = Vec::new();
            reader
                .read_to_end(&mut payload)
                .await
                .expect("reading a stream's payload");
            let _ = out.send(Received { desc, payload });
        });
    }
}

/// Runs a test body under [`LIMIT`].
async fn within<F: Future>(body: F) -> F::Output {
    tokio::time::timeout(LIMIT, body)
        .await
        .expect("test timed out")
}

// ---------------------------------------------------------------------------------------------
// Client side.

/// Opens one stream: writes everything, half-closes, and waits until the server has read it
/// all and closed.
async fn open_stream(path: &Path, bytes: &[u8]) {
    let mut c = connect(path).await;
    c.write_all(bytes).await.expect("writing a stream");
    c.shutdown().await.expect("half-closing a stream");
    wait_closed(&mut c).await;
}

/// Sends bytes the server must refuse and waits until it has closed the connection (and so
/// counted the rejection). `half_close` ends the client's side after the bytes; otherwise the
/// server must decide from what it got, with the connection still open.
async fn send_rejected(path: &Path, bytes: &[u8], half_close: bool) {
    let mut c = connect(path).await;
    match c.write_all(bytes).await {
        Ok(()) => {}
        // The server may already have closed: that is the point.
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
        Err(e) => panic!("writing a rejected handshake: {e}"),
    }
    if half_close {
        let _ = c.shutdown().await;
    }
    wait_closed(&mut c).await;
}

// ---------------------------------------------------------------------------------------------
// Valid handshakes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_streams_of_every_type_arrive_intact() {
    within(async {
        let mut server = Running::start(StreamServer::bind_private().unwrap());

        let mut datagrams = Vec::new();
        for d in [&b"hello"[..], b"", &[0xAB; 300]] {
            datagrams.extend(uvarint(d.len() as u64));
            datagrams.extend_from_slice(d);
        }
        let cases: Vec<(String, Vec<u8>, LogStreamDescriptor)> = vec![
            (
                r#"{"name":"plain/text","type":"text"}"#.into(),
                b"line one\nline two\r\nno newline".to_vec(),
                desc("plain/text", TEXT, TEXT_CT, None, &[]),
            ),
            (
                r#"{"name":"plain/binary","type":"binary"}"#.into(),
                (0..=255u8).cycle().take(70_000).collect(),
                desc("plain/binary", BINARY, BINARY_CT, None, &[]),
            ),
            (
                r#"{"name":"plain/datagram","type":"datagram"}"#.into(),
                datagrams,
                desc("plain/datagram", DATAGRAM, DATAGRAM_CT, None, &[]),
            ),
            // The Go client: name, contentType, timestamp (RFC 3339 UTC), tags; no type for
            // text (reference §1.2, "What real clients send").
            (
                concat!(
                    r#"{"name":"go/client/stdout","contentType":"text/plain; charset=utf-8","#,
                    r#""timestamp":"2024-05-06T07:08:09.123456789Z","#,
                    r#""tags":{"buildbucket.id":"8771","step/name":"compile: all"}}"#
                )
                .into(),
                b"[go] hello\n".to_vec(),
                desc(
                    "go/client/stdout",
                    TEXT,
                    TEXT_CT,
                    Some((1_714_979_289, 123_456_789)),
                    &[("buildbucket.id", "8771"), ("step/name", "compile: all")],
                ),
            ),
            // The Go client, binary, with a timestamp in another zone: normalised to UTC.
            (
                concat!(
                    r#"{"name":"go/client/blob","contentType":"application/x-tar","type":"binary","#,
                    r#""timestamp":"2022-01-01T00:30:00+01:00"}"#
                )
                .into(),
                noise(7, 5000),
                desc(
                    "go/client/blob",
                    BINARY,
                    "application/x-tar",
                    Some((1_640_993_400, 0)),
                    &[],
                ),
            ),
            // The Python client: sorted keys, `json.dumps` spacing, always a type, never a
            // timestamp (so the descriptor has none).
            (
                r#"{"contentType": "text/x-python", "name": "py/client", "tags": {"a": "1", "z": ""}, "type": "text"}"#
                    .into(),
                b"[py] hello\n".to_vec(),
                desc("py/client", TEXT, "text/x-python", None, &[("a", "1"), ("z", "")]),
            ),
            (
                r#"{"name": "py/datagrams", "type": "datagram"}"#.into(),
                [uvarint(3), b"abc".to_vec()].concat(),
                desc("py/datagrams", DATAGRAM, DATAGRAM_CT, None, &[]),
            ),
            // Go's zero time means "unset".
            (
                r#"{"name":"zero/time","timestamp":"0001-01-01T00:00:00Z"}"#.into(),
                b"z".to_vec(),
                desc("zero/time", TEXT, TEXT_CT, None, &[]),
            ),
            // A stream that carries no payload at all still arrives.
            (
                r#"{"name":"empty/payload","type":"binary"}"#.into(),
                Vec::new(),
                desc("empty/payload", BINARY, BINARY_CT, None, &[]),
            ),
        ];
        let n = cases.len() as u64;
        for (json, payload, want) in cases {
            open_stream(&server.path, &stream_bytes(&json, &payload)).await;
            let got = server.next().await;
            assert_eq!(got.desc, want, "descriptor for {json}");
            assert_eq!(got.payload, payload, "payload for {json}");
        }
        let stats = server.stats.clone();
        assert!(server.stop().await.is_empty());
        assert_eq!(stats.accepted(), n);
        assert_eq!(stats.streams(), n);
        assert_eq!(stats.rejected_total(), 0, "{:?}", stats.rejected());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_headers_are_accepted_like_go() {
    within(async {
        let mut server = Running::start(StreamServer::bind_private().unwrap());

        let mut cases: Vec<(Vec<u8>, Vec<u8>, LogStreamDescriptor)> = vec![
            // Keys match case-insensitively (reference §1.2, §11.10).
            (
                br#"{"NAME":"upper/case","TYPE":"binary","CONTENTTYPE":"application/x-upper"}"#
                    .to_vec(),
                b"UPPER".to_vec(),
                desc("upper/case", BINARY, "application/x-upper", None, &[]),
            ),
            (
                br#"{"Name":"mixed/case","Type":"datagram","ContentType":"x/y","TimeStamp":"2024-05-06T07:08:09Z","TAGS":{"Key":"Value"}}"#
                    .to_vec(),
                b"mixed".to_vec(),
                desc(
                    "mixed/case",
                    DATAGRAM,
                    "x/y",
                    Some((1_714_979_289, 0)),
                    &[("Key", "Value")],
                ),
            ),
            // Keys removed in 2019 and keys never heard of are ignored.
            (
                concat!(
                    r#"{"name":"retired/keys","ioKeepAlive":true,"tee":"stdout","timeout":"10s","#,
                    r#""binaryFileExtension":"txt","somethingNew":{"nested":[1,2,{"x":null}]},"n":5}"#
                )
                .as_bytes()
                .to_vec(),
                b"retired".to_vec(),
                desc("retired/keys", TEXT, TEXT_CT, None, &[]),
            ),
            // No type: text, with the text default content type.
            (
                br#"{"name":"no/type"}"#.to_vec(),
                b"t\n".to_vec(),
                desc("no/type", TEXT, TEXT_CT, None, &[]),
            ),
            // Binary without a content type gets the binary default.
            (
                br#"{"name":"no/content/type","type":"binary"}"#.to_vec(),
                b"b".to_vec(),
                desc("no/content/type", BINARY, BINARY_CT, None, &[]),
            ),
            // An empty tags object is the same as none.
            (
                br#"{"name":"empty/tags","tags":{}}"#.to_vec(),
                b"e".to_vec(),
                desc("empty/tags", TEXT, TEXT_CT, None, &[]),
            ),
            // Whitespace around the object, inside the frame.
            (
                b" \t\n{ \"name\" : \"white/space\" ,\r\n \"type\" : \"binary\" }  \n\t\r ".to_vec(),
                b"ws".to_vec(),
                desc("white/space", BINARY, BINARY_CT, None, &[]),
            ),
            // JSON escapes are decoded.
            (
                br#"{"n\u0061me":"esc\u0061ped/n\u0061me","tags":{"k":"tab\there \"quoted\" \u00e9\ud83d\ude00"}}"#
                    .to_vec(),
                b"esc".to_vec(),
                desc(
                    "escaped/name",
                    TEXT,
                    TEXT_CT,
                    None,
                    &[("k", "tab\there \"quoted\" \u{e9}\u{1F600}")],
                ),
            ),
            // The full name alphabet, and the reference's valid examples.
            (
                br#"{"name":"a:_-./Z9/file:_tmp_x.txt","tags":{"a:_-./b":"v"}}"#.to_vec(),
                b"alpha".to_vec(),
                desc("a:_-./Z9/file:_tmp_x.txt", TEXT, TEXT_CT, None, &[("a:_-./b", "v")]),
            ),
        ];
        let header_cases = cases.len();

        // A payload that looks like JSON must not be eaten by the header decoder.
        let json_payload = br#"{"name":"not/the/header"}  more"#.to_vec();
        cases.push((
            br#"{"name":"json/looking/payload","type":"binary"}"#.to_vec(),
            json_payload.clone(),
            desc("json/looking/payload", BINARY, BINARY_CT, None, &[]),
        ));

        // A header of exactly 1 MiB (the limit is inclusive), padded with whitespace.
        let mut big = br#"{"name":"exactly/one/mib","tags":{"pad":""}}"#.to_vec();
        big.resize(ONE_MIB as usize, b' ');
        cases.push((big, b"after a big header".to_vec(), desc("exactly/one/mib", TEXT, TEXT_CT, None, &[("pad", "")])));

        for (i, (header, payload, want)) in cases.iter().enumerate() {
            let mut bytes = frame(header);
            bytes.extend_from_slice(payload);
            open_stream(&server.path, &bytes).await;
            let got = server.next().await;
            assert_eq!(&got.desc, want, "case {i}");
            assert_eq!(&got.payload, payload, "case {i}");
        }
        assert!(header_cases > 0);

        // The same handshake delivered one byte per write: the server must reassemble it.
        let bytes = stream_bytes(
            r#"{"name":"byte/by/byte","type":"binary","tags":{"k":"v"}}"#,
            b"\x00\x01payload",
        );
        let mut c = connect(&server.path).await;
        for b in &bytes {
            c.write_all(std::slice::from_ref(b)).await.unwrap();
            c.flush().await.unwrap();
        }
        c.shutdown().await.unwrap();
        wait_closed(&mut c).await;
        let got = server.next().await;
        assert_eq!(got.desc, desc("byte/by/byte", BINARY, BINARY_CT, None, &[("k", "v")]));
        assert_eq!(got.payload, b"\x00\x01payload");

        let stats = server.stats.clone();
        assert!(server.stop().await.is_empty());
        assert_eq!(stats.streams(), cases.len() as u64 + 1);
        assert_eq!(stats.rejected_total(), 0, "{:?}", stats.rejected());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Rejections.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_counted_and_the_server_keeps_serving() {
    within(async {
        let mut server = Running::start(StreamServer::bind_private().unwrap());

        let mut magic_then_partial_header = declared_length_only(50);
        magic_then_partial_header.extend_from_slice(br#"{"name":"#);
        let mut overflow = MAGIC.to_vec();
        overflow.extend([0xFF; 10]);
        let mut too_large = declared_length_only(ONE_MIB + 1);
        too_large.extend_from_slice(br#"{"name":"too/large"}"#);
        let mut bad_magic = stream_bytes(r#"{"name":"bad/magic"}"#, b"x");
        bad_magic[4] = b'2';
        let mut bad_separator = stream_bytes(r#"{"name":"bad/magic"}"#, b"x");
        bad_separator[5] = 0x1F;
        let long_tag_key = format!(r#"{{"name":"n","tags":{{"{}":"v"}}}}"#, "k".repeat(65));

        // (what, bytes, half-close after writing, kind)
        let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
            ("bad magic: BTLR2", bad_magic, false, "bad_magic"),
            (
                "bad magic: wrong separator",
                bad_separator,
                false,
                "bad_magic",
            ),
            (
                "bad magic: HTTP",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                false,
                "bad_magic",
            ),
            ("header of 1 MiB + 1", too_large, false, "header_too_large"),
            (
                "header of 2^40 bytes",
                declared_length_only(1 << 40),
                false,
                "header_too_large",
            ),
            (
                "header of u64::MAX bytes",
                declared_length_only(u64::MAX),
                false,
                "header_too_large",
            ),
            ("overflowing varint", overflow, false, "header_too_large"),
            ("not JSON", frame(b"not json at all"), false, "bad_header"),
            (
                "JSON array",
                frame(br#"["name","foo/bar"]"#),
                false,
                "bad_header",
            ),
            ("JSON string", frame(br#""foo/bar""#), false, "bad_header"),
            ("empty header", frame(b""), false, "bad_header"),
            (
                "name not a string",
                frame(br#"{"name":5}"#),
                false,
                "bad_header",
            ),
            (
                "name _foo",
                frame(br#"{"name":"_foo"}"#),
                false,
                "invalid_name_or_tag",
            ),
            (
                "name foo//bar",
                frame(br#"{"name":"foo//bar"}"#),
                false,
                "invalid_name_or_tag",
            ),
            (
                "name /foo",
                frame(br#"{"name":"/foo"}"#),
                false,
                "invalid_name_or_tag",
            ),
            (
                "name foo/",
                frame(br#"{"name":"foo/"}"#),
                false,
                "invalid_name_or_tag",
            ),
            (
                "name foo/_bar",
                frame(br#"{"name":"foo/_bar"}"#),
                false,
                "invalid_name_or_tag",
            ),
            (
                "name foo^bar",
                frame(br#"{"name":"foo^bar"}"#),
                false,
                "invalid_name_or_tag",
            ),
            (
                "name with +",
                frame(br#"{"name":"foo/+/bar"}"#),
                false,
                "invalid_name_or_tag",
            ),
            (
                "non-ASCII name",
                frame("{\"name\":\"caf\u{e9}\"}".as_bytes()),
                false,
                "invalid_name_or_tag",
            ),
            (
                "empty name",
                frame(br#"{"name":""}"#),
                false,
                "invalid_name_or_tag",
            ),
            (
                "name too long",
                frame(format!(r#"{{"name":"{}"}}"#, "a".repeat(4097)).as_bytes()),
                false,
                "invalid_name_or_tag",
            ),
            (
                "missing name",
                frame(br#"{"type":"text","contentType":"text/plain"}"#),
                false,
                "invalid_name_or_tag",
            ),
            (
                "invalid tag key",
                frame(br#"{"name":"ok","tags":{"_bad":"v"}}"#),
                false,
                "invalid_name_or_tag",
            ),
            (
                "tag key with a space",
                frame(br#"{"name":"ok","tags":{"bad key":"v"}}"#),
                false,
                "invalid_name_or_tag",
            ),
            (
                "tag key over 64 bytes",
                frame(long_tag_key.as_bytes()),
                false,
                "invalid_name_or_tag",
            ),
            (
                "type TEXT",
                frame(br#"{"name":"ok","type":"TEXT"}"#),
                false,
                "bad_header",
            ),
            (
                "type Binary",
                frame(br#"{"name":"ok","type":"Binary"}"#),
                false,
                "bad_header",
            ),
            (
                "type unknown",
                frame(br#"{"name":"ok","type":"video"}"#),
                false,
                "bad_header",
            ),
            (
                "bad timestamp",
                frame(br#"{"name":"ok","timestamp":"yesterday"}"#),
                false,
                "bad_header",
            ),
            (
                "timestamp month 13",
                frame(br#"{"name":"ok","timestamp":"2024-13-01T00:00:00Z"}"#),
                false,
                "bad_header",
            ),
            (
                "timestamp without zone",
                frame(br#"{"name":"ok","timestamp":"2024-01-01T00:00:00"}"#),
                false,
                "bad_header",
            ),
            ("closed before any byte", Vec::new(), true, "truncated"),
            (
                "closed inside the magic",
                b"BTL".to_vec(),
                true,
                "truncated",
            ),
            ("closed after the magic", MAGIC.to_vec(), true, "truncated"),
            (
                "closed inside the varint",
                [&MAGIC[..], &[0x80]].concat(),
                true,
                "truncated",
            ),
            (
                "closed inside the header",
                magic_then_partial_header,
                true,
                "truncated",
            ),
        ];

        let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
        for (i, (what, bytes, half_close, kind)) in cases.iter().enumerate() {
            send_rejected(&server.path, bytes, *half_close).await;
            *expected.entry(kind).or_default() += 1;
            assert_eq!(server.stats.rejected(), expected, "after {what}");
            assert_eq!(
                server.stats.rejected_total(),
                expected.values().sum::<u64>(),
                "after {what}"
            );

            // The server still serves: a valid stream right after arrives intact.
            let name = format!("after/rejection/{i}");
            let payload = noise(i as u64, 3000 + i);
            let json = format!(r#"{{"name":"{name}","type":"binary"}}"#);
            open_stream(&server.path, &stream_bytes(&json, &payload)).await;
            let got = server.next().await;
            assert_eq!(
                got.desc,
                desc(&name, BINARY, BINARY_CT, None, &[]),
                "after {what}"
            );
            assert_eq!(got.payload, payload, "after {what}");
        }

        let stats = server.stats.clone();
        assert!(server.stop().await.is_empty());
        let n = cases.len() as u64;
        assert_eq!(stats.accepted(), 2 * n);
        assert_eq!(stats.streams(), n);
        assert_eq!(stats.rejected_total(), n);
        assert_eq!(stats.rejected(), expected);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Load.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_streams_arrive_intact() {
    const N: usize = 1000;
    // Both ends of every connection live in this process, plus some slack.
    raise_nofile_limit(2 * N as u64 + 256);
    within(async {
        let mut server = Running::start(StreamServer::bind_private().unwrap());
        let payload = |i: usize| noise(1_000_000 + i as u64, 10 * 1024 + i % 512);
        let name = |i: usize| format!("concurrent/stream-{i:04}");

        // Every client connects first, and only when all N connections are open at once does
        // any of them write.
        let all_open = Arc::new(tokio::sync::Barrier::new(N));
        let mut clients = JoinSet::new();
        for i in 0..N {
            let path = server.path.clone();
            let all_open = all_open.clone();
            let json = format!(
                r#"{{"name":"{}","type":"binary","tags":{{"index":"{i}"}}}}"#,
                name(i)
            );
            let bytes = stream_bytes(&json, &payload(i));
            clients.spawn(async move {
                let mut c = connect(&path).await;
                all_open.wait().await;
                c.write_all(&bytes).await.expect("write");
                c.shutdown().await.expect("half-close");
                wait_closed(&mut c).await;
            });
        }

        let mut got: HashMap<String, Received> = HashMap::new();
        for _ in 0..N {
            let r = server.next().await;
            let prev = got.insert(r.desc.name.clone(), r);
            assert!(prev.is_none(), "stream delivered twice");
        }
        while let Some(res) = clients.join_next().await {
            res.expect("client task");
        }
        for i in 0..N {
            let r = got
                .get(&name(i))
                .unwrap_or_else(|| panic!("stream {i} missing"));
            let index = i.to_string();
            assert_eq!(
                r.desc,
                desc(&name(i), BINARY, BINARY_CT, None, &[("index", &index)])
            );
            assert!(r.payload == payload(i), "payload of stream {i} differs");
        }

        let stats = server.stats.clone();
        assert!(server.stop().await.is_empty());
        assert_eq!(stats.accepted(), N as u64);
        assert_eq!(stats.streams(), N as u64);
        assert_eq!(stats.rejected_total(), 0, "{:?}", stats.rejected());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Handshake timeout.

const SHORT_TIMEOUT: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    within(async {
        let server = StreamServer::bind_private()
            .unwrap()
            .with_handshake_timeout(SHORT_TIMEOUT);
        let mut server = Running::start(server);

        // Says nothing at all.
        let start = Instant::now();
        let mut silent = connect(&server.path).await;
        wait_closed(&mut silent).await;
        assert!(
            start.elapsed() >= SHORT_TIMEOUT,
            "dropped after {:?}, before the timeout",
            start.elapsed()
        );
        assert_eq!(server.stats.rejected(), BTreeMap::from([("timeout", 1)]));

        // Starts the handshake, then stalls.
        let start = Instant::now();
        let mut stalled = connect(&server.path).await;
        stalled.write_all(&MAGIC).await.unwrap();
        stalled.write_all(&[0x85]).await.unwrap();
        wait_closed(&mut stalled).await;
        assert!(start.elapsed() >= SHORT_TIMEOUT);
        assert_eq!(server.stats.rejected(), BTreeMap::from([("timeout", 2)]));
        assert_eq!(server.stats.rejected_total(), 2);

        // A prompt client is not affected.
        open_stream(&server.path, &stream_bytes(r#"{"name":"prompt"}"#, b"ok\n")).await;
        let got = server.next().await;
        assert_eq!(got.desc.name, "prompt");
        assert_eq!(got.payload, b"ok\n");

        let stats = server.stats.clone();
        assert!(server.stop().await.is_empty());
        assert_eq!(stats.accepted(), 3);
        assert_eq!(stats.streams(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_does_not_hold_shutdown() {
    within(async {
        let server = StreamServer::bind_private()
            .unwrap()
            .with_handshake_timeout(SHORT_TIMEOUT);
        let mut server = Running::start(server);

        // Connected, and kept open for the whole test, but never a byte.
        let mut silent = connect(&server.path).await;
        // Connections are accepted in order: once this later stream has arrived, the silent
        // one has been accepted and its handshake is pending.
        open_stream(&server.path, &stream_bytes(r#"{"name":"marker"}"#, b"m")).await;
        assert_eq!(server.next().await.desc.name, "marker");
        assert_eq!(server.stats.accepted(), 2);

        let stats = server.stats.clone();
        let start = Instant::now();
        assert!(server.stop().await.is_empty());
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "run took {took:?} to return after shutdown with a {SHORT_TIMEOUT:?} handshake timeout"
        );
        assert_eq!(stats.rejected(), BTreeMap::from([("timeout", 1)]));
        // The silent client is closed on, not left dangling.
        wait_closed(&mut silent).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Pending handshakes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pending_table_evicts_the_oldest_handshake_for_a_new_connection() {
    const MAX: usize = 3;
    within(async {
        // Silent clients must hold their places for the whole test, never time out.
        let server = StreamServer::bind_private()
            .unwrap()
            .with_handshake_timeout(Duration::from_secs(3600))
            .with_max_pending_handshakes(MAX);
        let path = server.path().to_owned();
        let stats = server.stats();
        // Take streams straight off the channel: a stream arrives here as soon as its
        // handshake is over, and the server has left the pending table by then.
        let (tx, mut rx) = mpsc::channel(8);
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(server.run(tx, async move {
            let _ = stopped.await;
        }));

        // A stream that is open before the flood and stays open through it.
        let mut open = connect(&path).await;
        open.write_all(&stream_bytes(r#"{"name":"established"}"#, b"before\n"))
            .await
            .unwrap();
        let NewStream {
            desc, mut reader, ..
        } = rx.recv().await.expect("the established stream");
        assert_eq!(desc.name, "established");

        // Fill the table with clients that connect and never speak.
        let mut silent = Vec::new();
        for _ in 0..MAX {
            silent.push(connect(&path).await);
        }
        // Connections are accepted in order: each real stream below finds the table full and
        // evicts the oldest silent client, which is closed without a byte, and counted.
        for (i, oldest) in [0usize, 1].into_iter().enumerate() {
            let name = format!("real-{i}");
            let mut c = connect(&path).await;
            c.write_all(&stream_bytes(&format!(r#"{{"name":"{name}"}}"#), b"real\n"))
                .await
                .unwrap();
            c.shutdown().await.unwrap();
            wait_closed(&mut silent[oldest]).await;
            assert_eq!(
                stats.rejected(),
                BTreeMap::from([("evicted", i as u64 + 1)])
            );
            let NewStream {
                desc, mut reader, ..
            } = rx.recv().await.expect("the real stream");
            assert_eq!(desc.name, name);
            let mut payload = Vec::new();
            reader.read_to_end(&mut payload).await.unwrap();
            assert_eq!(payload, b"real\n");
            // Fill the table again.
            silent.push(connect(&path).await);
        }

        // The established stream never noticed.
        open.write_all(b"after\n").await.unwrap();
        open.shutdown().await.unwrap();
        let mut payload = Vec::new();
        reader.read_to_end(&mut payload).await.unwrap();
        assert_eq!(payload, b"before\nafter\n");
        drop(reader);
        wait_closed(&mut open).await;

        // The silent clients still pending end on their own, as truncated handshakes.
        for mut c in silent.drain(2..) {
            c.shutdown().await.unwrap();
            wait_closed(&mut c).await;
        }
        stop.send(()).unwrap();
        run.await.unwrap();
        assert!(rx.recv().await.is_none());
        assert_eq!(stats.accepted(), 3 + MAX as u64 + 2);
        assert_eq!(stats.streams(), 3);
        assert_eq!(
            stats.rejected(),
            BTreeMap::from([("evicted", 2), ("truncated", MAX as u64)])
        );
    })
    .await;
}

#[test]
fn the_pending_handshake_limit_has_a_sane_default() {
    assert_eq!(logdog_streamserver::DEFAULT_MAX_PENDING_HANDSHAKES, 4096);
    assert_eq!(logdog_streamserver::EVICTED, "evicted");
}

// ---------------------------------------------------------------------------------------------
// Shutdown.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_queued_when_shutdown_fires_are_delivered() {
    within(async {
        const N: usize = 64;
        let server = StreamServer::bind_private().unwrap();
        let path = server.path().to_owned();
        let stats = server.stats();

        // `connect` succeeds into the listen backlog even before `run` is called. Each client
        // writes its whole stream and closes: from its point of view, the stream was sent.
        let mut expected = BTreeMap::new();
        for i in 0..N {
            let name = format!("queued/{i}");
            let payload = noise(500 + i as u64, 2000 + i);
            let json = format!(r#"{{"name":"{name}","type":"binary"}}"#);
            let mut c = std::os::unix::net::UnixStream::connect(&path).expect("connect");
            c.write_all(&stream_bytes(&json, &payload)).expect("write");
            drop(c);
            expected.insert(name, payload);
        }

        // Shutdown has already fired when `run` starts.
        let server = Running::start_with_shutdown(server, std::future::ready(()));
        let got = server.stop().await;
        let got: BTreeMap<String, Vec<u8>> =
            got.into_iter().map(|r| (r.desc.name, r.payload)).collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "streams delivered"
        );
        assert!(got == expected, "payloads differ");
        assert_eq!(stats.accepted(), N as u64);
        assert_eq!(stats.streams(), N as u64);
        assert_eq!(stats.rejected_total(), 0, "{:?}", stats.rejected());
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "socket left behind"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_queued_behind_a_running_server_are_delivered_at_shutdown() {
    within(async {
        const N: usize = 32;
        let server = StreamServer::bind_private().unwrap();
        let path = server.path().to_owned();
        let (fire, fired) = oneshot::channel::<()>();
        let mut server = Running::start_with_shutdown(server, async {
            let _ = fired.await;
        });

        // The server is running and has served a stream, so its accept loop is live.
        open_stream(&path, &stream_bytes(r#"{"name":"first"}"#, b"1")).await;
        assert_eq!(server.next().await.desc.name, "first");

        // Queue N complete streams with blocking connects and fire shutdown straight away,
        // without waiting for the server to accept them.
        let mut expected = BTreeMap::new();
        for i in 0..N {
            let name = format!("late/{i}");
            let payload = noise(900 + i as u64, 1000 + i);
            let json = format!(r#"{{"name":"{name}"}}"#);
            let mut c = std::os::unix::net::UnixStream::connect(&path).expect("connect");
            c.write_all(&stream_bytes(&json, &payload)).expect("write");
            expected.insert(name, payload);
        }
        fire.send(()).unwrap();
        let stats = server.stats.clone();
        let got: BTreeMap<String, Vec<u8>> = server
            .stop()
            .await
            .into_iter()
            .map(|r| (r.desc.name, r.payload))
            .collect();
        assert_eq!(
            got.len(),
            N,
            "streams delivered: {:?}",
            got.keys().collect::<Vec<_>>()
        );
        assert!(got == expected, "payloads differ");
        assert_eq!(stats.accepted(), N as u64 + 1);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The socket on disk.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_private_makes_a_private_directory_and_cleans_up() {
    within(async {
        let server = StreamServer::bind_private().unwrap();
        let path = server.path().to_owned();
        let dir = path.parent().expect("socket has a directory").to_owned();
        assert!(path.is_absolute(), "{}", path.display());
        assert_eq!(server.address(), format!("unix:{}", path.display()));

        let dir_meta = std::fs::metadata(&dir).unwrap();
        assert!(dir_meta.is_dir());
        assert_eq!(
            dir_meta.permissions().mode() & 0o7777,
            0o700,
            "mode of {}",
            dir.display()
        );
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_socket()
        );

        let mut server = Running::start(server);
        open_stream(&path, &stream_bytes(r#"{"name":"private"}"#, b"p")).await;
        assert_eq!(server.next().await.payload, b"p");
        assert!(server.stop().await.is_empty());

        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "socket left behind"
        );
        assert!(
            std::fs::symlink_metadata(&dir).is_err(),
            "directory left behind"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_refuses_what_is_not_a_stale_socket() {
    within(async {
        let tmp = tempfile::tempdir().unwrap();

        // A regular file is refused and left alone.
        let file = tmp.path().join("precious.txt");
        std::fs::write(&file, b"do not delete").unwrap();
        assert!(StreamServer::bind(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"do not delete");

        // So is a directory.
        let sub = tmp.path().join("subdir");
        std::fs::create_dir(&sub).unwrap();
        assert!(StreamServer::bind(&sub).is_err());
        assert!(sub.is_dir());

        // So is a live socket, which keeps working.
        let live_path = tmp.path().join("live.sock");
        let live = std::os::unix::net::UnixListener::bind(&live_path).unwrap();
        assert!(StreamServer::bind(&live_path).is_err());
        assert!(
            std::fs::symlink_metadata(&live_path)
                .unwrap()
                .file_type()
                .is_socket()
        );
        std::os::unix::net::UnixStream::connect(&live_path).expect("live socket still works");
        drop(live);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_replaces_a_stale_socket_and_removes_it_at_shutdown() {
    within(async {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("stale.sock");
        // A server that died without cleaning up: the socket file stays, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_socket()
        );
        assert!(std::os::unix::net::UnixStream::connect(&path).is_err());

        let server = StreamServer::bind(&path).expect("a stale socket is replaced");
        assert_eq!(server.path(), path);
        assert_eq!(server.address(), format!("unix:{}", path.display()));
        let mut server = Running::start(server);
        open_stream(
            &path,
            &stream_bytes(r#"{"name":"fresh","type":"binary"}"#, b"new"),
        )
        .await;
        let got = server.next().await;
        assert_eq!(got.desc.name, "fresh");
        assert_eq!(got.payload, b"new");
        assert!(server.stop().await.is_empty());
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "socket left behind"
        );
        assert!(tmp.path().is_dir(), "only the socket is removed");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Connection limit and verdicts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_connection_limit_wait_in_the_queue_and_arrive() {
    within(async {
        let server = StreamServer::bind_private()
            .unwrap()
            .with_max_connections(2);
        let path = server.path().to_owned();
        let stats = server.stats();
        let (tx, mut rx) = mpsc::channel(8);
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(server.run(tx, async move {
            let _ = stopped.await;
        }));
        // Two streams held open take both connections.
        let mut held = Vec::new();
        for i in 0..2 {
            let mut c = connect(&path).await;
            c.write_all(&stream_bytes(&format!(r#"{{"name":"held-{i}"}}"#), b"x"))
                .await
                .unwrap();
            let ns = rx.recv().await.expect("a held stream");
            held.push((c, ns));
        }
        // A third client's connect succeeds (it is queued) and it sends its whole stream.
        let mut waiting = connect(&path).await;
        waiting
            .write_all(&stream_bytes(
                r#"{"name":"waiting"}"#,
                b"queued, not lost\n",
            ))
            .await
            .unwrap();
        waiting.shutdown().await.unwrap();
        // It cannot have been accepted while both connections are held.
        assert!(rx.try_recv().is_err(), "a third connection was accepted");
        assert_eq!(stats.accepted(), 2);
        // One held stream ends: the waiting one is accepted and arrives whole.
        let (mut c, ns) = held.remove(0);
        c.shutdown().await.unwrap();
        drop(ns);
        wait_closed(&mut c).await;
        let NewStream {
            desc, mut reader, ..
        } = rx.recv().await.expect("the waiting stream");
        assert_eq!(desc.name, "waiting");
        let mut payload = Vec::new();
        reader.read_to_end(&mut payload).await.unwrap();
        assert_eq!(payload, b"queued, not lost\n");
        drop(reader);
        wait_closed(&mut waiting).await;
        drop(held);
        stop.send(()).unwrap();
        run.await.unwrap();
        assert_eq!(stats.accepted(), 3);
        assert_eq!(stats.rejected_total(), 0);
    })
    .await;
}

#[test]
fn the_connection_limit_leaves_room_for_other_files() {
    use nix::sys::resource::{Resource, getrlimit};
    let want = || {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        usize::try_from(soft.saturating_sub(logdog_streamserver::FD_RESERVE))
            .unwrap()
            .max(logdog_streamserver::MIN_CONNECTIONS)
    };
    // Another test in this process may raise the limit meanwhile.
    let before = want();
    let got = logdog_streamserver::default_max_connections();
    assert!(got == before || got == want(), "{got}, want {before}");
}

/// Reads the server's answer until it closes: a verdict line, or nothing.
async fn read_answer(conn: &mut UnixStream) -> Vec<u8> {
    let mut answer = Vec::new();
    match conn.read_to_end(&mut answer).await {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading from the server: {e}"),
    }
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_that_ask_get_a_verdict() {
    use logdog_proto::handshake::Verdict;
    within(async {
        let server = StreamServer::bind_private().unwrap();
        let path = server.path().to_owned();
        let (tx, mut rx) = mpsc::channel(8);
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(server.run(tx, async move {
            let _ = stopped.await;
        }));

        // A header refused by the server itself: a client that asked is told why.
        let mut bad = connect(&path).await;
        bad.write_all(&frame(br#"{"name":"_bad","verdict":true}"#))
            .await
            .unwrap();
        let answer = read_answer(&mut bad).await;
        let line = String::from_utf8_lossy(&answer);
        assert!(
            line.starts_with("refused: ") && line.ends_with('\n'),
            "{line:?}"
        );
        assert!(line.contains("_bad"), "{line:?}");

        // A stream the butler side takes: its verdict sender says so.
        let mut asked = connect(&path).await;
        asked
            .write_all(&stream_bytes(r#"{"name":"asked","VERDICT":true}"#, b"data"))
            .await
            .unwrap();
        asked.shutdown().await.unwrap();
        let ns = rx.recv().await.expect("the stream that asked");
        assert_eq!(ns.desc.name, "asked");
        ns.verdict
            .expect("a verdict was asked for")
            .send(&Verdict::Accepted);
        drop(ns.reader);
        assert_eq!(read_answer(&mut asked).await, b"accepted\n");

        // A LogDog client (no flag) gets nothing back, as before.
        let mut plain = connect(&path).await;
        plain
            .write_all(&stream_bytes(r#"{"name":"plain"}"#, b"data"))
            .await
            .unwrap();
        plain.shutdown().await.unwrap();
        let ns = rx.recv().await.expect("the plain stream");
        assert!(ns.verdict.is_none());
        drop(ns);
        wait_closed(&mut plain).await;

        stop.send(()).unwrap();
        run.await.unwrap();
    })
    .await;
}
