//! End to end: `logdog_butler --output gelf+…://` running a real command, received by a GELF
//! receiver written from the specification (UDP and TCP) and by two third-party receivers:
//! graygelf's server, installed by `npm ci --prefix tests/gelf-receiver` (UDP: chunked, gzip
//! and zlib), and rsyslog from the distribution's packages (TCP: NUL-delimited frames, as
//! Graylog's GELF TCP input reads them, each parsed as JSON by rsyslog's `mmjsonparse`).
//! Without them the third-party tests are skipped loudly, and fail when `CI` is set.

mod common;
#[path = "../outputs/tests/gelf_decoder/mod.rs"]
mod gelf_decoder;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Guarded, run_butler, tempdir};
use gelf_decoder::{Message, Receiver};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// The command the butler runs: three stdout lines (one a JSON object, one long enough to be
/// chunked even compressed), one stderr line, one more stdout line after it.
const SCRIPT: &str = r#"echo hello
echo '{"user":"u1","n":2,"bad key!":"v","_id":7}'
head -c 3000 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo
echo oops >&2
echo bye"#;

fn butler_args(output: &str) -> Vec<String> {
    [
        "--project",
        "proj",
        "--prefix",
        "e2e/gelf",
        "--gelf-host",
        "e2e-host",
        "--tag",
        "team=core",
        "--output",
        output,
        "run",
        // The five messages of the command's lines only.
        "--no-run-record",
        "--no-summary",
        "--no-echo",
        "--stdout",
        "name=stdout,tag=kind=out",
        "--",
        "sh",
        "-c",
        SCRIPT,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Checks the five messages of [`SCRIPT`], in any order.
fn check(messages: Vec<Message>, started: f64, ended: f64) {
    let mut by: Vec<(String, u64, Message)> = messages
        .into_iter()
        .map(|m| {
            let stream = m["_stream"].as_str().unwrap_or_default().to_owned();
            let line = m["_line"].as_u64().unwrap_or_default();
            (stream, line, m)
        })
        .collect();
    by.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let keys: Vec<(&str, u64)> = by.iter().map(|(s, l, _)| (s.as_str(), *l)).collect();
    assert_eq!(
        keys,
        [
            ("stderr", 1),
            ("stdout", 1),
            ("stdout", 2),
            ("stdout", 3),
            ("stdout", 4)
        ]
    );
    for (stream, _, m) in &by {
        assert_eq!(m["version"], "1.1", "{m:?}");
        assert_eq!(m["host"], "e2e-host", "{m:?}");
        assert_eq!(m["_project"], "proj", "{m:?}");
        assert_eq!(m["_prefix"], "e2e/gelf", "{m:?}");
        assert_eq!(m["_tag_team"], "core", "{m:?}");
        let ts = m["timestamp"].as_f64().unwrap_or_default();
        assert!(
            ts >= started - 1.0 && ts <= ended + 1.0,
            "{ts} not in {started}..{ended}"
        );
        if stream == "stdout" {
            assert_eq!(m["level"], 6, "{m:?}");
            assert_eq!(m["_tag_kind"], "out", "{m:?}");
        } else {
            assert_eq!(m["level"], 3, "{m:?}");
            assert!(!m.contains_key("_tag_kind"), "{m:?}");
        }
        assert!(!m.contains_key("_id"), "{m:?}");
    }
    let short = |i: usize| {
        by[i].2["short_message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(short(0), "oops");
    assert_eq!(short(1), "hello");
    assert_eq!(short(2), r#"{"user":"u1","n":2,"bad key!":"v","_id":7}"#);
    let json_line = &by[2].2;
    assert_eq!(json_line["_user"], "u1");
    assert_eq!(json_line["_n"], 2);
    assert_eq!(json_line["_bad_key_"], "v");
    assert_eq!(json_line["__id"], 7);
    let long = short(3);
    assert_eq!(long.len(), 6000);
    assert!(long.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(short(4), "bye");
}

fn run_to(output: &str) -> (f64, f64) {
    let tmp = tempdir();
    let started = now();
    let r = run_butler(tmp.path(), &butler_args(output));
    let ended = now();
    r.assert_code(0);
    (started, ended)
}

#[test]
fn udp_to_the_spec_receiver() {
    for query in [
        "",
        "?chunk-size=200",
        "?compress=zlib&chunk-size=300",
        "?compress=none",
    ] {
        let rx = Receiver::udp();
        let (started, ended) = run_to(&format!("gelf+udp://{}{query}", rx.addr));
        let mut got = rx.take(5, WAIT);
        let chunk_size: u64 = query
            .split("chunk-size=")
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1420);
        for m in &mut got {
            let max = m
                .remove("__datagram_max")
                .and_then(|v| v.as_u64())
                .unwrap_or_default();
            assert!(max <= chunk_size, "{query}: a datagram of {max} bytes");
        }
        check(got, started, ended);
        assert!(rx.more(Duration::from_millis(300)).is_none(), "{query}");
    }
}

#[test]
fn tcp_to_the_spec_receiver() {
    let rx = Receiver::tcp();
    let (started, ended) = run_to(&format!("gelf+tcp://{}", rx.addr));
    check(rx.take(5, WAIT), started, ended);
}

/// A TLS receiver on a free port, with a certificate for `localhost` from `pki`: every
/// NUL-terminated message it reads is parsed and sent on.
fn tls_receiver(pki: &common::pki::Pki) -> (String, mpsc::Receiver<Result<Message, String>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::Read;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .expect("certificate file")
        .map(|c| c.expect("a certificate"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.key).expect("key file");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config"),
    );
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("localhost:{}", l.local_addr().expect("addr").port());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for tcp in l.incoming() {
            let Ok(tcp) = tcp else { return };
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                return;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 65_536];
            loop {
                match tls.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        for f in gelf_decoder::split_frames(&mut buf) {
                            if tx.send(gelf_decoder::parse(&f)).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    });
    (addr, rx)
}

#[test]
fn tls_to_the_spec_receiver() {
    let tmp = tempdir();
    let pki = common::pki::Pki::new(tmp.path(), "gelf");
    let (addr, rx) = tls_receiver(&pki);
    let started = now();
    let mut args = vec!["--ca-cert".to_owned(), pki.ca.display().to_string()];
    args.extend(butler_args(&format!("gelf+tls://{addr}")));
    let r = run_butler(tmp.path(), &args);
    let ended = now();
    r.assert_code(0);
    let got: Vec<Message> = (0..5)
        .map(|i| match rx.recv_timeout(WAIT) {
            Ok(Ok(m)) => m,
            other => panic!("message {i}: {other:?}"),
        })
        .collect();
    check(got, started, ended);
}

#[test]
fn tls_needs_a_trusted_certificate() {
    let tmp = tempdir();
    let pki = common::pki::Pki::new(tmp.path(), "gelf");
    let (addr, rx) = tls_receiver(&pki);
    // Without --ca-cert the test CA is not trusted: nothing arrives, and the butler says the
    // lines were not delivered.
    let mut args = vec!["--flush-timeout".to_owned(), "40s".to_owned()];
    args.extend(butler_args(&format!("gelf+tls://{addr}")));
    let r = run_butler(tmp.path(), &args);
    assert!(rx.try_recv().is_err());
    let err = r.stderr_str();
    assert!(
        err.contains("GELF receiver") && err.contains("unreachable"),
        "{err}"
    );
}

#[test]
fn bad_gelf_outputs_are_usage_errors() {
    let tmp = tempdir();
    for (spec, says) in [
        ("gelf+udp://127.0.0.1:1?chunk-size=10", "from 64 to 65507"),
        (
            "gelf+udp://127.0.0.1:1?compress=brotli",
            "unknown compression",
        ),
        ("gelf+tcp://127.0.0.1:1?compress=gzip", "takes no options"),
        ("gelf+udp://nohost", "expected gelf+udp://HOST:PORT"),
    ] {
        let r = run_butler(tmp.path(), &["--output", spec, "run", "--", "true"]);
        assert_eq!(r.code(), 2, "{spec}: {}", r.stderr_str());
        assert!(r.stderr_str().contains(says), "{spec}: {}", r.stderr_str());
    }
    // --ca-cert with no output over TLS is a mistake, not silently ignored.
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, b"not used").unwrap_or_else(|e| panic!("{}: {e}", ca.display()));
    let ca = ca.display().to_string();
    for spec in ["gelf+udp://127.0.0.1:1", "gelf+tcp://127.0.0.1:1"] {
        let r = run_butler(
            tmp.path(),
            &["--output", spec, "--ca-cert", &ca, "run", "--", "true"],
        );
        assert_eq!(r.code(), 2, "{spec}: {}", r.stderr_str());
        assert!(
            r.stderr_str()
                .contains("--ca-cert is for an output over TLS"),
            "{spec}: {}",
            r.stderr_str()
        );
    }
}

const NPM_INSTALL: &str = "`npm ci --prefix tests/gelf-receiver`";

/// The third-party receiver's directory.
fn receiver_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/gelf-receiver")
}

/// Skips loudly, or fails under CI.
fn skip(why: &str, install: &str) {
    let msg = format!("third-party GELF receiver test: {why}; install it with {install}");
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: the receiver is required)");
    }
    common::skipped(&msg);
}

#[test]
fn udp_to_graygelf() {
    let dir = receiver_dir();
    if !dir.join("node_modules/graygelf/server.js").is_file() {
        return skip(
            "tests/gelf-receiver/node_modules/graygelf is not installed",
            NPM_INSTALL,
        );
    }
    if Command::new("node").arg("--version").output().is_err() {
        return skip("node is not on PATH", NPM_INSTALL);
    }
    for query in ["?chunk-size=300", "?compress=zlib&chunk-size=200", ""] {
        // A UDP port that is free now; the receiver binds it.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free UDP port: {e}"));
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("receiver.js"))
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut g = Guarded::spawn(&mut cmd);
        let stdout = g.child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("receiver silent: {e}"));
        assert_eq!(first, format!("{{\"listening\":{port}}}"));
        let (started, ended) = run_to(&format!("gelf+udp://127.0.0.1:{port}{query}"));
        let got: Vec<Message> = (0..5)
            .map(|i| {
                let line = rx
                    .recv_timeout(WAIT)
                    .unwrap_or_else(|e| panic!("{query}: message {i}: {e}"));
                match serde_json::from_str::<Value>(&line) {
                    Ok(Value::Object(m)) => m,
                    other => panic!("{query}: not an object: {line}: {other:?}"),
                }
            })
            .collect();
        check(got, started, ended);
        drop(g.child.stdin.take());
        let status = g.wait();
        assert!(status.success(), "receiver: {status}");
    }
}

/// rsyslogd, from the distribution's `rsyslog` package.
fn rsyslogd() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]);
    candidates.map(|d| d.join("rsyslogd")).find(|p| p.is_file())
}

/// rsyslog as a GELF TCP receiver: `imtcp` splits the stream at NUL bytes (GELF's TCP
/// framing), `mmjsonparse` parses each message as JSON, and the parsed fields are written as
/// one JSON line per message to `received.jsonl`; anything that is not a JSON object goes to
/// `rejected.txt` as received.
fn rsyslog_config(dir: &std::path::Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"global(workDirectory="{d}" maxMessageSize="1m" parser.escapeControlCharactersOnReceive="off")
module(load="imtcp")
module(load="mmjsonparse")
template(name="fields" type="string" string="%$!all-json%\n")
template(name="raw" type="string" string="%rawmsg%\n")
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="gelf" AddtlFrameDelimiter="0")
ruleset(name="gelf") {{
  action(type="mmjsonparse" cookie="" useRawMsg="on")
  if $parsesuccess == "OK" then {{
    action(type="omfile" file="{d}/received.jsonl" template="fields")
  }} else {{
    action(type="omfile" file="{d}/rejected.txt" template="raw")
  }}
}}
"#
    )
}

#[test]
fn tcp_to_rsyslog() {
    const APT_INSTALL: &str = "`apt-get install rsyslog`";
    let Some(rsyslogd) = rsyslogd() else {
        return skip("rsyslogd is not installed", APT_INSTALL);
    };
    let tmp = tempdir();
    let dir = tmp.path().join("rsyslog");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let port = common::free_port();
    let conf = dir.join("gelf.conf");
    std::fs::write(&conf, rsyslog_config(&dir, port))
        .unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
    let mut cmd = Command::new(&rsyslogd);
    cmd.arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let _receiver = Guarded::spawn(&mut cmd);
    // Listening once it accepts a connection (that connection sends nothing).
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "rsyslogd never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (started, ended) = run_to(&format!("gelf+tcp://127.0.0.1:{port}"));
    let received = dir.join("received.jsonl");
    let deadline = std::time::Instant::now() + WAIT;
    let lines = loop {
        let text = std::fs::read_to_string(&received).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= 5 {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rsyslog received {} message(s) of 5: {text}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let got: Vec<Message> = lines
        .iter()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => m,
            other => panic!("not an object: {line}: {other:?}"),
        })
        .collect();
    check(got, started, ended);
    let rejected = std::fs::read_to_string(dir.join("rejected.txt")).unwrap_or_default();
    assert!(rejected.is_empty(), "rsyslog could not parse: {rejected}");
}
