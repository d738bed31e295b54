//! End-to-end tests of the client against a minimal stream server on a Unix socket.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logdog_client::{Client, ClientError, StreamOptions, concat};
use logdog_proto::handshake::{MAGIC, parse_header};
use logdog_proto::logpb::LogStreamDescriptor;
use logdog_proto::{MAX_DATAGRAM_SIZE, StreamType};

/// A stream server that records every connection's descriptor and payload.
struct Server {
    _dir: tempfile::TempDir,
    address: String,
    streams: Receiver<(LogStreamDescriptor, Vec<u8>)>,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let tx = tx.clone();
                thread::spawn(move || {
                    let _ = tx.send(read_stream(conn));
                });
            }
        });
        Server {
            address: format!("unix:{}", path.display()),
            _dir: dir,
            streams: rx,
        }
    }

    fn client(&self, namespace: Option<&str>) -> Client {
        Client::new(&self.address, namespace).unwrap()
    }

    /// The next finished stream (its writer has closed).
    fn next(&self) -> (LogStreamDescriptor, Vec<u8>) {
        self.streams
            .recv_timeout(Duration::from_secs(10))
            .expect("no stream arrived")
    }
}

fn read_uvarint(r: &mut impl Read) -> io::Result<Option<u64>> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8];
        if r.read(&mut b)? == 0 {
            if shift == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        v |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(Some(v));
        }
    }
    Err(io::Error::other("varint overflow"))
}

fn read_stream(mut conn: UnixStream) -> (LogStreamDescriptor, Vec<u8>) {
    let mut magic = [0u8; 6];
    conn.read_exact(&mut magic).unwrap();
    assert_eq!(&magic, MAGIC);
    let len = read_uvarint(&mut conn).unwrap().unwrap();
    let mut header = vec![0u8; len as usize];
    conn.read_exact(&mut header).unwrap();
    let desc = parse_header(&header).unwrap();
    let mut payload = Vec::new();
    conn.read_to_end(&mut payload).unwrap();
    (desc, payload)
}

fn datagrams(mut payload: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(len) = read_uvarint(&mut payload).unwrap() {
        let (d, rest) = payload.split_at(len as usize);
        out.push(d.to_vec());
        payload = rest;
    }
    out
}

fn secs_since_epoch(ts: &prost_types::Timestamp) -> f64 {
    ts.seconds as f64 + f64::from(ts.nanos) / 1e9
}

#[test]
fn text_stream_defaults() {
    let server = Server::start();
    let client = server.client(None);
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut s = client.open_text("a/b", &StreamOptions::new()).unwrap();
    assert_eq!(s.name(), "a/b");
    s.write_all(b"line 1\nline 2\n").unwrap();
    s.flush().unwrap();
    s.close().unwrap();
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    let (desc, payload) = server.next();
    assert_eq!(desc.name, "a/b");
    assert_eq!(desc.stream_type, StreamType::Text as i32);
    assert_eq!(desc.content_type, "text/plain; charset=utf-8");
    assert!(desc.tags.is_empty());
    let ts = secs_since_epoch(desc.timestamp.as_ref().expect("no timestamp"));
    assert!(
        ts >= before - 1e-3 && ts <= after + 1e-3,
        "{before} <= {ts} <= {after}"
    );
    assert_eq!(payload, b"line 1\nline 2\n");
}

#[test]
fn binary_stream_with_options() {
    let server = Server::start();
    let client = server.client(None);
    let when = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    let opts = StreamOptions::new()
        .content_type("image/png")
        .tag("k1", "v1")
        .tag("a/b", "")
        .timestamp(when);
    let mut s = client.open_binary("bin", &opts).unwrap();
    s.write_all(&[0, 1, 2, 255]).unwrap();
    drop(s); // Drop closes too.

    let (desc, payload) = server.next();
    assert_eq!(desc.stream_type, StreamType::Binary as i32);
    assert_eq!(desc.content_type, "image/png");
    let want: BTreeMap<_, _> = [("k1", "v1"), ("a/b", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(desc.tags, want);
    let ts = desc.timestamp.unwrap();
    assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_789));
    assert_eq!(payload, [0, 1, 2, 255]);
}

#[test]
fn binary_default_content_type_and_tag_map_replaces() {
    let server = Server::start();
    let client = server.client(None);
    let opts = StreamOptions::new()
        .tag("gone", "x")
        .tags([("k", "v")])
        .content_type("");
    client.open_binary("b", &opts).unwrap().close().unwrap();
    let (desc, payload) = server.next();
    assert_eq!(desc.content_type, "application/octet-stream");
    assert_eq!(desc.tags.len(), 1);
    assert_eq!(desc.tags["k"], "v");
    assert!(payload.is_empty());
}

#[test]
fn datagram_framing() {
    let server = Server::start();
    let client = server.client(None);
    let big: Vec<u8> = (0..70 * 1024).map(|i| (i % 251) as u8).collect();
    let mut s = client.open_datagram("dg", &StreamOptions::new()).unwrap();
    assert_eq!(s.name(), "dg");
    s.write_datagram(b"first").unwrap();
    s.write_datagram(b"").unwrap();
    s.write_datagram(&big).unwrap();
    s.write_datagram(b"last").unwrap();
    s.close().unwrap();

    let (desc, payload) = server.next();
    assert_eq!(desc.stream_type, StreamType::Datagram as i32);
    assert_eq!(desc.content_type, "application/x-logdog-datagram");
    let got = datagrams(&payload);
    assert_eq!(
        got,
        vec![b"first".to_vec(), Vec::new(), big, b"last".to_vec()]
    );
    // Exact framing: 1-byte lengths for the small ones, 3 bytes for 70 KiB.
    assert_eq!(payload.len(), (1 + 5) + 1 + (3 + 70 * 1024) + (1 + 4));
}

#[test]
fn oversized_datagram_is_refused_and_stream_stays_usable() {
    let server = Server::start();
    let client = server.client(None);
    let mut s = client
        .open_datagram("dg", &StreamOptions::new().content_type("x/y"))
        .unwrap();
    let err = s
        .write_datagram(&vec![0u8; MAX_DATAGRAM_SIZE + 1])
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    s.write_datagram(b"ok").unwrap();
    s.close().unwrap();
    let (desc, payload) = server.next();
    assert_eq!(desc.content_type, "x/y");
    assert_eq!(datagrams(&payload), vec![b"ok".to_vec()]);
}

#[test]
fn namespace_prefixing() {
    assert_eq!(concat(&["ns/", "a"]), "ns/a");
    assert_eq!(concat(&["ns", "/a/"]), "ns/a");
    assert_eq!(concat(&["", "a"]), "a");
    assert_eq!(concat(&["/", "//a//b//"]), "a//b");

    let server = Server::start();
    for (ns, name) in [("ns/", "a"), ("ns", "/a/"), ("/ns/", "a")] {
        let client = server.client(Some(ns));
        assert_eq!(client.full_name(name), "ns/a");
        let s = client.open_text(name, &StreamOptions::new()).unwrap();
        assert_eq!(s.name(), "ns/a");
        s.close().unwrap();
        assert_eq!(server.next().0.name, "ns/a");
    }
}

#[test]
fn invalid_descriptors_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let client = Client::new(&format!("unix:{}", path.display()), Some("ns")).unwrap();

    let err = client.open_text("_bad", &StreamOptions::new()).unwrap_err();
    assert!(
        matches!(err, ClientError::InvalidDescriptor { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            r#"attempting to connect stream "ns/_bad": invalid stream descriptor: invalid stream name "ns/_bad": "#
        ),
        "{msg}"
    );
    for name in ["a b", "x//y", "é"] {
        assert!(
            client.open_binary(name, &StreamOptions::new()).is_err(),
            "{name:?}"
        );
        assert!(
            client.open_datagram(name, &StreamOptions::new()).is_err(),
            "{name:?}"
        );
    }
    let bad_tag = StreamOptions::new().tag("bad key", "v");
    let err = client.open_text("ok", &bad_tag).unwrap_err();
    assert!(err.to_string().contains("invalid tag key"), "{err}");
    let long_value = StreamOptions::new().tag("k", "v".repeat(4097));
    assert!(client.open_text("ok", &long_value).is_err());
    // Within each tag's limits, over the collector's limits together.
    let twenty = StreamOptions::new().tags((0..20).map(|i| (format!("k{i}"), "v".repeat(4000))));
    let err = client.open_text("ok", &twenty).unwrap_err();
    assert!(err.to_string().contains("more than 32768 bytes"), "{err}");
    let long_type = StreamOptions::new().content_type("c".repeat(1025));
    let err = client.open_binary("ok", &long_type).unwrap_err();
    assert!(err.to_string().contains("invalid content type"), "{err}");
    let ancient = StreamOptions::new().timestamp(UNIX_EPOCH - Duration::from_secs(70_000_000_000));
    let err = client.open_text("ok", &ancient).unwrap_err();
    assert!(err.to_string().contains("invalid timestamp"), "{err}");

    match listener.accept() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("a connection was made: {other:?}"),
    }
}

#[test]
fn pre_epoch_timestamp_round_trips() {
    let server = Server::start();
    let when = UNIX_EPOCH - Duration::new(10, 250_000_000);
    let opts = StreamOptions::new().timestamp(when);
    server
        .client(None)
        .open_text("old", &opts)
        .unwrap()
        .close()
        .unwrap();
    let ts = server.next().0.timestamp.unwrap();
    assert_eq!((ts.seconds, ts.nanos), (-11, 750_000_000));
}

#[test]
fn null_address_discards_without_a_server() {
    for address in ["null", "null:whatever"] {
        let client = Client::new(address, Some("ns")).unwrap();
        let mut s = client.open_text("a", &StreamOptions::new()).unwrap();
        assert_eq!(s.name(), "ns/a");
        s.write_all(b"into the void\n").unwrap();
        s.close().unwrap();
        let mut d = client.open_datagram("d", &StreamOptions::new()).unwrap();
        d.write_datagram(b"x").unwrap();
        assert!(d.write_datagram(&vec![0; MAX_DATAGRAM_SIZE + 1]).is_err());
        d.close().unwrap();
        // Names are still validated.
        assert!(client.open_binary("_x", &StreamOptions::new()).is_err());
        let out = client
            .open_binary("b", &StreamOptions::new())
            .unwrap()
            .into_stdio();
        let status = std::process::Command::new("sh")
            .args(["-c", "printf hi"])
            .stdout(out)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[test]
fn bad_addresses() {
    let err = Client::new("tcp:localhost:80", None).unwrap_err();
    assert_eq!(err.to_string(), "no protocol registered for [tcp]");
    assert!(matches!(Client::new("", None), Err(ClientError::NoProtocol(p)) if p.is_empty()));
    assert!(matches!(
        Client::new("unix:", None),
        Err(ClientError::BadAddress { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let err = Client::new(&format!("unix:{}", file.display()), None).unwrap_err();
    assert!(matches!(err, ClientError::NotASocket { .. }), "{err:?}");
    assert!(err.to_string().contains("is not a Unix socket"), "{err}");
    let err = Client::new(&format!("unix:{}", dir.path().display()), None).unwrap_err();
    assert!(matches!(err, ClientError::NotASocket { .. }), "{err:?}");

    let missing = dir.path().join("missing");
    let err = Client::new(&format!("unix:{}", missing.display()), None).unwrap_err();
    assert!(
        matches!(err, ClientError::SocketUnavailable { .. }),
        "{err:?}"
    );
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::NotFound);
}

#[test]
fn server_gone_after_client_made_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sock");
    let listener = UnixListener::bind(&path).unwrap();
    let client = Client::new(&format!("unix:{}", path.display()), None).unwrap();
    drop(listener);
    let err = client.open_text("a", &StreamOptions::new()).unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(r#"attempting to connect stream "a": "#),
        "{err}"
    );
}

#[test]
fn into_stdio_as_child_stdout() {
    let server = Server::start();
    let client = server.client(Some("proc"));
    let out = client.open_text("stdout", &StreamOptions::new()).unwrap();
    let status = std::process::Command::new("sh")
        .args(["-c", "printf hi"])
        .stdout(out.into_stdio())
        .status()
        .unwrap();
    assert!(status.success());
    let (desc, payload) = server.next();
    assert_eq!(desc.name, "proc/stdout");
    assert_eq!(payload, b"hi");
}

#[test]
fn from_lookup_reads_the_bootstrap_environment() {
    let lookup = |vars: Vec<(&'static str, String)>| {
        move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    };
    assert!(matches!(
        Client::from_lookup(lookup(vec![])),
        Err(ClientError::NotBootstrapped)
    ));

    let server = Server::start();
    let client = Client::from_lookup(lookup(vec![
        ("LOGDOG_STREAM_SERVER_PATH", server.address.clone()),
        ("LOGDOG_NAMESPACE", "steps/1/".into()),
        ("LOGDOG_STREAM_PROJECT", "proj".into()),
        ("LOGDOG_STREAM_PREFIX", "pre/fix".into()),
        ("LOGDOG_COORDINATOR_HOST", "file:///tmp/logs".into()),
    ]))
    .unwrap();
    assert_eq!(client.address(), server.address);
    assert_eq!(client.namespace(), "steps/1/");
    assert_eq!(client.project(), Some("proj"));
    assert_eq!(client.prefix(), Some("pre/fix"));
    assert_eq!(client.coordinator_host(), Some("file:///tmp/logs"));
    client
        .open_text("out", &StreamOptions::new())
        .unwrap()
        .close()
        .unwrap();
    assert_eq!(server.next().0.name, "steps/1/out");

    let client = Client::from_lookup(lookup(vec![
        ("LOGDOG_STREAM_SERVER_PATH", "null".into()),
        ("LOGDOG_STREAM_PROJECT", String::new()),
    ]))
    .unwrap();
    assert_eq!(client.project(), None);
    assert_eq!(client.namespace(), "");
    assert_eq!(Client::new("null", None).unwrap().project(), None);

    for (var, value) in [
        ("LOGDOG_STREAM_PROJECT", "Bad"),
        ("LOGDOG_STREAM_PREFIX", "_bad"),
        ("LOGDOG_NAMESPACE", "a b"),
    ] {
        let err = Client::from_lookup(lookup(vec![
            ("LOGDOG_STREAM_SERVER_PATH", "null".into()),
            (var, value.into()),
        ]))
        .unwrap_err();
        assert!(matches!(err, ClientError::InvalidEnvironment { var: v, .. } if v == var));
    }
    let err = Client::from_lookup(lookup(vec![("LOGDOG_STREAM_SERVER_PATH", "bogus".into())]))
        .unwrap_err();
    assert!(matches!(err, ClientError::NoProtocol(_)));
}

#[test]
fn rejected_stream_shows_up_as_a_failed_write() {
    // A server that reads the handshake and hangs up, as the butler does on rejection.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sock");
    let listener = UnixListener::bind(&path).unwrap();
    let client = Client::new(&format!("unix:{}", path.display()), None).unwrap();
    let mut s = client.open_binary("dup", &StreamOptions::new()).unwrap();
    let (conn, _) = listener.accept().unwrap();
    drop(conn);
    let chunk = vec![0u8; 64 * 1024];
    let err = (0..1000)
        .find_map(|_| s.write_all(&chunk).err())
        .expect("writes kept succeeding");
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ),
        "{err:?}"
    );
    s.close().unwrap();
}

/// A server that does not give verdicts (like LogDog's) ignores the request: the stream is
/// delivered as usual and `finish` reports that nothing was said.
#[test]
fn a_verdict_asked_of_a_server_that_gives_none_is_none() {
    let server = Server::start();
    let client = server.client(None);
    let mut s = client
        .open_text("asks", &StreamOptions::new().verdict())
        .unwrap();
    s.write_all(b"line\n").unwrap();
    assert_eq!(s.finish().unwrap(), None);
    let (desc, payload) = server.next();
    assert_eq!(desc.name, "asks");
    assert_eq!(payload, b"line\n");

    let mut d = client
        .open_datagram("asks-too", &StreamOptions::new().verdict())
        .unwrap();
    d.write_datagram(b"dg").unwrap();
    assert_eq!(d.finish().unwrap(), None);
    let (_, payload) = server.next();
    assert_eq!(datagrams(&payload), [b"dg".to_vec()]);
}
