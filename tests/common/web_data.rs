//! A CI-like run for the viewer's tests, written through a real butler's stream server into a
//! real collector: a `build` log with GitHub Actions, GitLab and Buildkite section markers
//! and lines to search for, a `steps` log written between parts of it (so the interleaved
//! view has a known order), and the run record `logdog/run`.
//!
//! Each part is written once the one before is stored, so the butler takes the parts, and
//! numbers their entries (`prefix_index`), in the order written.
//!
//! Test files that only need its HTTP helpers (`get_json`) include it too.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{Collector, Guarded, TIMEOUT, butler, drain};

/// The handshake magic of a stream-server connection.
const MAGIC: &[u8; 6] = b"BTLR1\x1E";

/// Lines with `needle` in them, past the markers.
pub const NEEDLES: usize = 40;

/// What [`write_ci_run`] wrote.
#[derive(Debug, Clone)]
pub struct CiRun {
    /// `PROJECT/PREFIX`.
    pub scope: String,
    /// The `build` lines as the viewer shows them (escape sequences and what a carriage
    /// return overwrote left out).
    pub build: Vec<String>,
    /// The `steps` lines.
    pub steps: Vec<String>,
    /// Every line of both, in the order written: (stream, line number, text).
    pub interleaved: Vec<(String, u64, String)>,
    /// The run record's command.
    pub command: Vec<String>,
    /// The run record's exit code and duration.
    pub exit_code: i32,
    pub duration_secs: f64,
}

/// A minimal HTTP/1.0 GET: the status and the body.
pub fn get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).expect("a read timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("sending the request");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("reading the response");
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no end of headers"));
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line in {head:?}"));
    (status, resp[split + 4..].to_vec())
}

/// A GET whose answer must be JSON: the status and the value.
pub fn get_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = get(addr, path);
    let v = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "GET {path}: {status}, not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, v)
}

/// Waits until the viewer has `rows` whole lines of `path` stored.
fn wait_stored(http: &str, path: &str, rows: u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (status, v) = get_json(http, &format!("/api/rows/{path}?from=0&count=5000"));
        let whole = if status == 200 {
            v["rows"]
                .as_array()
                .map_or(0, |r| r.iter().filter(|r| r["p"] != true).count() as u64)
        } else {
            0
        };
        if whole >= rows {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: {whole} of {rows} lines stored in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens a stream on the stream server at `socket`.
fn open(socket: &Path, name: &str, content_type: &str, tags: &[(&str, &str)]) -> UnixStream {
    let mut s = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    let tags: serde_json::Map<String, serde_json::Value> = tags
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    let header =
        serde_json::json!({ "name": name, "contentType": content_type, "tags": tags }).to_string();
    let mut hs = MAGIC.to_vec();
    let mut n = header.len() as u64;
    while n >= 0x80 {
        hs.push((n as u8) | 0x80);
        n >>= 7;
    }
    hs.push(n as u8);
    hs.extend_from_slice(header.as_bytes());
    s.write_all(&hs).expect("the handshake");
    s
}

/// Writes the CI-like run under `PREFIX` of project `default` through a `logdog_butler serve`
/// shipping to `collector`, waiting on its viewer at `http` for each part to be stored.
pub fn write_ci_run(dir: &Path, collector: &Collector, http: &str, prefix: &str) -> CiRun {
    let mut cmd = butler(
        dir,
        &["--output", &collector.output(), "--prefix", prefix, "serve"],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut serve = Guarded::spawn(&mut cmd);
    let stderr = drain(serve.child.stderr.take().expect("stderr"));
    let mut stdout = BufReader::new(serve.child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reading serve's stdout");
    let socket = line
        .trim_end()
        .strip_prefix("LOGDOG_STREAM_SERVER_PATH=unix:")
        .unwrap_or_else(|| panic!("serve printed {line:?}"))
        .to_string();
    let socket = Path::new(&socket);

    let command: Vec<String> = ["make", "-j2", "check", "NAME=it's"]
        .map(String::from)
        .to_vec();
    let (exit_code, duration_secs) = (3, 83.5);
    let mut run = open(
        socket,
        "logdog/run",
        "application/x-ndjson",
        &[("logdog.kind", "run")],
    );
    let start = serde_json::json!({
        "event": "start", "command": command, "start": "2026-11-26T23:51:37.123Z",
        "host": "ci-7", "pid": 1234, "unknown": {"fields": "are fine"},
    });
    run.write_all(format!("{start}\n").as_bytes())
        .expect("the run record");
    let mut build = open(socket, "build", "text/plain", &[]);
    let mut steps = open(socket, "steps", "text/plain", &[]);

    let scope = format!("default/{prefix}");
    let (bpath, spath) = (format!("{scope}/+/build"), format!("{scope}/+/steps"));
    let mut out = CiRun {
        scope: scope.clone(),
        build: Vec::new(),
        steps: Vec::new(),
        interleaved: Vec::new(),
        command,
        exit_code,
        duration_secs,
    };
    // (bytes, shown text) of each part, in turn build, steps, build, ...
    let mut needles: Vec<(String, String)> = Vec::new();
    for i in 0..NEEDLES {
        let l = format!("item {i}: \x1b[1mneedle\x1b[0m {}", i * 7);
        needles.push((l, format!("item {i}: needle {}", i * 7)));
    }
    let plain = |l: &str| (l.to_string(), l.to_string());
    let parts: Vec<(bool, Vec<(String, String)>)> = vec![
        (
            true,
            vec![
                plain("starting the build"),
                plain("::group::Install dependencies"),
                plain("fetching serde"),
                plain("fetching tokio"),
            ],
        ),
        (false, vec![plain("step 1: install")]),
        (
            true,
            vec![
                plain("::endgroup::"),
                (
                    "\x1b[0Ksection_start:1700000000:compile[collapsed=true]\r\x1b[0KCompiling the code"
                        .to_string(),
                    "Compiling the code".to_string(),
                ),
                plain("compiling a.rs"),
                plain("compiling b.rs"),
                (
                    "\x1b[0Ksection_end:1700000042:compile\r\x1b[0K".to_string(),
                    String::new(),
                ),
            ],
        ),
        (false, vec![plain("step 2: compile")]),
        (true, {
            let mut v = vec![
                plain("--- :package: Package"),
                plain("packing the crate"),
                plain("+++ :test_tube: Tests"),
                plain("test one ... ok"),
                plain("test two ... FAILED   Needle"),
            ];
            v.extend(needles);
            v
        }),
        (false, vec![plain("step 3: test")]),
        (true, vec![plain("build finished")]),
    ];
    for (is_build, lines) in parts {
        let (stream, name, path, shown) = if is_build {
            (&mut build, "build", &bpath, &mut out.build)
        } else {
            (&mut steps, "steps", &spath, &mut out.steps)
        };
        let mut bytes = Vec::new();
        for (raw, text) in lines {
            bytes.extend_from_slice(raw.as_bytes());
            bytes.push(b'\n');
            out.interleaved
                .push((name.to_string(), shown.len() as u64, text.clone()));
            shown.push(text);
        }
        stream.write_all(&bytes).expect("writing a part");
        wait_stored(http, path, shown.len() as u64);
    }
    // While the command runs, the record has no end line: the viewer says it is running.
    let (status, v) = get_json(http, &format!("/api/run/{scope}"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["run"]["start"]["command"],
        serde_json::json!(out.command),
        "{v}"
    );
    assert_eq!(v["run"]["start"]["host"], "ci-7", "{v}");
    assert_eq!(v["run"]["end"], serde_json::Value::Null, "{v}");
    assert_eq!(v["run"]["state"], "open", "{v}");
    let end = serde_json::json!({
        "event": "end", "end": "2026-11-26T23:53:00.623Z", "exit_code": exit_code,
        "signal": null, "duration_secs": duration_secs, "streams": 3, "bytes_captured": 1000,
        "lines_dropped": 0,
    });
    run.write_all(format!("{end}\n").as_bytes())
        .expect("the run record");
    wait_stored(http, &format!("{scope}/+/logdog/run"), 2);
    drop((run, build, steps));
    nix::sys::signal::kill(serve.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("serve's stdout");
    let status = serve.wait();
    assert!(
        status.success(),
        "serve: {status}; stderr:\n{}",
        String::from_utf8_lossy(&stderr.join().expect("stderr"))
    );
    out
}
