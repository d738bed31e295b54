//! `GET /metrics`: a real collector's and a real butler's Prometheus metrics, parsed with an
//! independent parser (the `prometheus-parse` crate) and checked against what a test run
//! stored.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Scrape, Value};

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` over HTTP/1.1 on `addr`: the status line, the headers and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_string(), body.to_string())
}

/// A scrape, parsed, with each family's samples by labels.
struct Metrics {
    scrape: Scrape,
    text: String,
}

impl Metrics {
    /// Scrapes `http://addr/metrics` and parses it; every sample line must be understood.
    fn scrape(addr: &str) -> Self {
        let (head, text) = get(addr, "/metrics");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
        // The parser skips what it cannot read: count that every sample line became a sample.
        let lines = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        let parsed: usize = scrape
            .samples
            .iter()
            .map(|s| match &s.value {
                Value::Histogram(b) => b.len(),
                _ => 1,
            })
            .sum();
        assert_eq!(
            lines, parsed,
            "some sample lines were not understood:\n{text}"
        );
        for s in &scrape.samples {
            let base = s.metric.trim_end_matches("_sum").trim_end_matches("_count");
            assert!(
                scrape.docs.contains_key(base),
                "{} has no # HELP:\n{text}",
                s.metric
            );
        }
        Self { scrape, text }
    }

    /// The value of `name` with the label `label` (or none) — a counter, a gauge or an
    /// untyped sample (a histogram's `_sum` and `_count`).
    fn value(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        let s = self
            .scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} {label:?} in\n{}", self.text));
        match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn get(&self, name: &str) -> f64 {
        self.value(name, None)
    }

    /// Whether `name` has a sample with the label `label`.
    fn has(&self, name: &str, (k, v): (&str, &str)) -> bool {
        self.scrape
            .samples
            .iter()
            .any(|s| s.metric == name && s.labels.get(k) == Some(v))
    }

    /// A histogram's buckets: (upper bound, cumulative count).
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let s = self
            .scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("no {name} in\n{}", self.text));
        match &s.value {
            Value::Histogram(b) => b.iter().map(|b| (b.less_than, b.count)).collect(),
            other => panic!("{name}: {other:?}"),
        }
    }
}

const C: &str = "logdog_collector_";

fn c(m: &Metrics, name: &str) -> f64 {
    m.get(&format!("{C}{name}"))
}

fn cl(m: &Metrics, name: &str, k: &str, v: &str) -> f64 {
    m.value(&format!("{C}{name}"), Some((k, v)))
}

/// Entries and (encoded) bytes the store holds, per `logdog_collector verify`.
fn verified_entries(data: &Path) -> u64 {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_logdog_collector"))
        .args(["verify", "--data"])
        .arg(data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("verified "))
        .unwrap_or_else(|| panic!("{text}"));
    // "verified S streams, E entries, B bytes: no damage"
    let words: Vec<&str> = line.split_whitespace().collect();
    words[3].parse().unwrap()
}

/// The histogram's count and its `+Inf` bucket, which must agree, and the buckets ascend.
fn store_seconds_count(m: &Metrics) -> f64 {
    let buckets = m.buckets(&format!("{C}bundle_store_seconds"));
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
    );
    let inf = buckets.last().unwrap();
    assert!(inf.0.is_infinite());
    let count = c(m, "bundle_store_seconds_count");
    assert_eq!(inf.1, count);
    assert!(c(m, "bundle_store_seconds_sum") > 0.0 || count == 0.0);
    count
}

#[test]
fn collector_metrics_count_what_a_butler_stored_and_who_follows() {
    let tmp = tempdir();
    let d = tmp.path();
    let data = d.join("data");
    let collector = Collector::start_with(
        &data,
        "127.0.0.1:0",
        &["--http", "127.0.0.1:0", "--tail", "127.0.0.1:0"],
    );
    let http = collector.http.clone().unwrap();
    let tail = collector.tail.clone().unwrap();

    let m = Metrics::scrape(&http);
    assert_eq!(c(&m, "bundles_stored_total"), 0.0);
    assert_eq!(store_seconds_count(&m), 0.0);
    assert_eq!(c(&m, "viewer_followers_limit"), 4096.0);

    // A command that writes a known text, then waits for `go` before its last line: its
    // stream stays open meanwhile, to be followed.
    let size = write_text_file(&d.join("text"), 300_000, 0x3E7C);
    let last = "the last line\n";
    let go = d.join("go");
    let script = r#"cat "$1"; while [ ! -e "$2" ]; do sleep 0.02; done; printf 'the last line\n'"#;
    let mut cmd = butler(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "m",
            "run",
            // Bytes and entries of the command's stream alone.
            "--no-run-record",
            "--no-echo",
            "--stdout",
            "name=out",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ],
    );
    cmd.arg(d.join("text"))
        .arg(&go)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut b = Guarded::spawn(&mut cmd);
    let b_err = drain(b.child.stderr.take().unwrap());
    wait_until("the first bytes to be stored", || {
        c(&Metrics::scrape(&http), "bytes_stored_total") > 0.0
    });

    // One follower of each kind.
    let mut grpc = Command::new(env!("CARGO_BIN_EXE_logdog"));
    grpc.args([
        "--collector",
        &collector.addr,
        "tail",
        "-f",
        "default/m/+/out",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut grpc = Guarded::spawn(&mut grpc);
    let mut tail_conn = TcpStream::connect(&tail).unwrap();
    tail_conn.write_all(b"stream default/m/+/out\n").unwrap();
    let mut viewer_conn = TcpStream::connect(&http).unwrap();
    write!(
        viewer_conn,
        "GET /api/events/default/m/+/out HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    // Both connections are read until they end, so that neither stalls its server.
    let tail_read = drain(tail_conn.try_clone().unwrap());
    let viewer_read = drain(viewer_conn.try_clone().unwrap());
    wait_until("a follower of each kind", || {
        let m = Metrics::scrape(&http);
        ["grpc", "viewer", "tail"]
            .iter()
            .all(|k| cl(&m, "followers", "kind", k) == 1.0)
    });
    let m = Metrics::scrape(&http);
    // Each server's ceilings are there once it runs.
    assert_eq!(c(&m, "inflight_request_bytes_limit"), (256u64 << 20) as f64);
    assert_eq!(c(&m, "open_connections_limit"), 256.0);
    assert_eq!(c(&m, "tail_connections_limit"), 4096.0);
    // The follow's connection and the butler's; the scrape's own and the event stream's.
    assert!(cl(&m, "open_connections", "server", "grpc") >= 1.0);
    assert!(cl(&m, "open_connections", "server", "viewer") >= 2.0);
    assert_eq!(cl(&m, "open_connections", "server", "tail"), 1.0);

    std::fs::write(&go, b"").unwrap();
    let status = b.wait();
    let err = String::from_utf8_lossy(&b_err.join().unwrap()).into_owned();
    assert!(status.success(), "{status}: {err}");
    // The stream is complete: every follower ends.
    assert!(grpc.wait().success());
    wait_until("the followers to leave", || {
        let m = Metrics::scrape(&http);
        ["grpc", "viewer", "tail"]
            .iter()
            .all(|k| cl(&m, "followers", "kind", k) == 0.0)
    });
    drop(viewer_conn);
    drop(tail_conn);
    let tail_got = tail_read.join().unwrap();
    assert_eq!(tail_got.len() as u64, size + last.len() as u64);
    drop(viewer_read);

    let m = Metrics::scrape(&http);
    let bundles = c(&m, "bundles_stored_total");
    assert!(bundles >= 1.0, "{}", m.text);
    assert_eq!(store_seconds_count(&m), bundles);
    assert_eq!(
        c(&m, "bytes_stored_total"),
        (size + last.len() as u64) as f64,
        "{}",
        m.text
    );
    assert_eq!(
        c(&m, "entries_stored_total"),
        verified_entries(&data) as f64,
        "{}",
        m.text
    );
    assert_eq!(c(&m, "duplicate_entries_total"), 0.0);
    assert!(c(&m, "store_size_bytes") > size as f64);
    assert_eq!(c(&m, "inflight_request_bytes"), 0.0);
    for reason in ["invalid", "conflict", "damaged", "permission_denied"] {
        assert_eq!(cl(&m, "refusals_total", "reason", reason), 0.0, "{reason}");
    }

    // A second butler under the same prefix: refused (the prefix is the first one's).
    let r = run_butler(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "m",
            "run",
            "--no-echo",
            "--stdout",
            "name=other",
            "--",
            "echo",
            "refused",
        ],
    );
    assert!(r.stderr_str().contains("LOST"), "{}", r.stderr_str());
    let after = Metrics::scrape(&http);
    assert!(cl(&after, "refusals_total", "reason", "permission_denied") >= 1.0);
    // Nothing of it was stored.
    assert_eq!(c(&after, "bundles_stored_total"), bundles);
    assert_eq!(
        c(&after, "entries_stored_total"),
        c(&m, "entries_stored_total")
    );
    collector.stop();
}

#[test]
fn collector_metrics_on_their_own_port_without_the_viewer() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = Collector::start_with(
        &d.join("data"),
        "127.0.0.1:0",
        &["--metrics", "127.0.0.1:0"],
    );
    assert!(collector.http.is_none());
    let addr = collector.metrics.clone().unwrap();
    let r = run_butler(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "own",
            "run",
            // The command's 8 bytes alone.
            "--no-run-record",
            "--no-echo",
            "--",
            "printf",
            "one\\ntwo\\n",
        ],
    );
    r.assert_code(0);
    let m = Metrics::scrape(&addr);
    assert!(c(&m, "bundles_stored_total") >= 1.0);
    assert_eq!(store_seconds_count(&m), c(&m, "bundles_stored_total"));
    assert_eq!(c(&m, "bytes_stored_total"), 8.0);
    assert_eq!(
        c(&m, "entries_stored_total"),
        verified_entries(&d.join("data")) as f64
    );
    // Only /metrics there.
    let (head, _) = get(&addr, "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    collector.stop();
}

/// A handshake asking for a verdict, for a text stream called `name`.
fn handshake(name: &str) -> Vec<u8> {
    let json = format!(r#"{{"name":"{name}","verdict":true}}"#);
    let mut out = b"BTLR1\x1E".to_vec();
    out.push(u8::try_from(json.len()).unwrap());
    out.extend_from_slice(json.as_bytes());
    out
}

const B: &str = "logdog_butler_";

fn b(m: &Metrics, name: &str) -> f64 {
    m.get(&format!("{B}{name}"))
}

#[test]
fn butler_serve_metrics_count_streams_bytes_and_refusals() {
    use std::io::BufRead;
    use std::os::unix::net::UnixStream;

    let tmp = tempdir();
    let d = tmp.path();
    let collector = Collector::start_with(
        &d.join("data"),
        "127.0.0.1:0",
        &["--metrics", "127.0.0.1:0"],
    );
    let mut cmd = butler(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "served",
            "serve",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guarded = Guarded::spawn(&mut cmd);
    let err = drain(guarded.child.stderr.take().unwrap());
    let mut stdout = std::io::BufReader::new(guarded.child.stdout.take().unwrap());
    let mut lines = [String::new(), String::new()];
    for l in &mut lines {
        stdout.read_line(l).unwrap();
    }
    let socket = lines[0]
        .trim_end()
        .strip_prefix("LOGDOG_STREAM_SERVER_PATH=unix:")
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_string();
    let addr = lines[1]
        .trim_end()
        .strip_prefix("LOGDOG_METRICS=")
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_string();

    let m = Metrics::scrape(&addr);
    assert_eq!(b(&m, "streams_open"), 0.0);
    assert_eq!(b(&m, "bytes_captured_total"), 0.0);

    let data = b"one line\nand another\n".repeat(1000);
    let mut s = UnixStream::connect(&socket).unwrap();
    let mut msg = handshake("a");
    msg.extend_from_slice(&data);
    s.write_all(&msg).unwrap();
    let mut verdict = Vec::new();
    let mut byte = [0u8; 1];
    while verdict.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "no verdict");
        verdict.push(byte[0]);
    }
    assert_eq!(verdict, b"accepted\n");
    wait_until("the stream's bytes to be captured", || {
        let m = Metrics::scrape(&addr);
        b(&m, "streams_open") == 1.0 && b(&m, "bytes_captured_total") == data.len() as f64
    });
    // Garbage is refused at the handshake, and counted.
    let mut garbage = UnixStream::connect(&socket).unwrap();
    garbage.write_all(b"NOT A HANDSHAKE\n").unwrap();
    // (A reason of the stream server appears once it has happened.)
    let bad_magic = ("reason", "bad_magic");
    wait_until("the refusal to be counted", || {
        let m = Metrics::scrape(&addr);
        let name = format!("{B}refusals_total");
        m.has(&name, bad_magic) && m.value(&name, Some(bad_magic)) == 1.0
    });
    drop(garbage);
    // The stream ends; the collector acknowledges every byte of it.
    drop(s);
    wait_until("the stream to be stored", || {
        let m = Metrics::scrape(&addr);
        b(&m, "streams_open") == 0.0 && b(&m, "bytes_acknowledged_total") == data.len() as f64
    });
    let m = Metrics::scrape(&addr);
    assert_eq!(b(&m, "spool_backlog_bytes"), 0.0);
    assert_eq!(
        m.value(&format!("{B}refusals_total"), Some(("reason", "collector"))),
        0.0
    );
    let cm = Metrics::scrape(collector.metrics.as_deref().unwrap());
    assert_eq!(c(&cm, "bytes_stored_total"), data.len() as f64);

    nix::sys::signal::kill(guarded.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = guarded.wait();
    let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert!(status.success(), "{status}: {err}");
    collector.stop();
}
