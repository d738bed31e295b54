//! The web viewer in a real browser: a real `logdog_collector --http`, real butlers shipping
//! to it, and headless Chromium driven by playwright-core (`tests/web/viewer.mjs`). The
//! browser opens the stream list, then a stream whose writer is still running; it sees the
//! ANSI colours as styles, new lines appear without a reload, and the stream marked complete
//! at the end. It then pages through a 100 MiB log, which is never rendered whole. Last, on
//! a CI-like run (see `common/web_data.rs`): the run header (command, exit status,
//! duration), collapsed and expanded sections with their durations, the search with
//! next/previous, and the interleaved view of the prefix's streams.
//! Screenshots are saved under `$CARGO_TARGET_DIR/test-artifacts/web` (default
//! `target/test-artifacts/web`).
//!
//! Needs `/usr/bin/chromium` (or `$LOGDOG_CHROMIUM`), `node`, and `npm ci --prefix tests/web`.
//! Without them the test is skipped loudly, unless `LOGDOG_BROWSER_TESTS=1` (as in CI), when it
//! fails.

mod common;
#[path = "common/web_data.rs"]
mod web_data;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Collector, Guarded, TIMEOUT, butler, drain, tempdir, write_text_file};

/// Lines written before the first go-file.
const PHASE1: usize = 30;
/// Lines written between the go-files.
const PHASE2: usize = 25;
/// Size of the big log.
const BIG: u64 = 100 << 20;

/// What the browser test needs, or why it cannot run.
struct Browser {
    chromium: PathBuf,
    root: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The browser, node and playwright-core; `None` (after a loud message) when one is missing
/// and browser tests are not required.
fn browser() -> Option<Browser> {
    let root = workspace();
    let chromium = std::env::var_os("LOGDOG_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let mut missing = Vec::new();
    if !chromium.exists() {
        missing.push(format!("{} (apt-get install chromium)", chromium.display()));
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("node".to_string());
    }
    if !root.join("tests/web/node_modules/playwright-core").exists() {
        missing.push("playwright-core (npm ci --prefix tests/web)".to_string());
    }
    if missing.is_empty() {
        return Some(Browser { chromium, root });
    }
    let msg = format!("browser test needs: {}", missing.join(", "));
    if std::env::var("LOGDOG_BROWSER_TESTS").as_deref() == Ok("1") {
        panic!("{msg} (LOGDOG_BROWSER_TESTS=1 requires browser tests)");
    }
    common::skipped(&format!(
        "the web viewer browser test did not run. {msg}. \
         Set LOGDOG_BROWSER_TESTS=1 to make this a failure."
    ));
    None
}

/// A minimal HTTP/1.0 GET: the status, the headers and the body.
fn http_get(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
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
    (status, head, resp[split + 4..].to_vec())
}

/// The `rows` count of `/api/stream/PATH` (0 while the stream does not exist).
fn stored_rows(http: &str, path: &str) -> u64 {
    let (status, _, body) = http_get(http, &format!("/api/stream/{path}"));
    if status != 200 {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON from /api/stream");
    v["rows"].as_u64().unwrap_or(0)
}

/// The live writer: phase 1, the go-file `$1`, phase 2, the go-file `$2`, the last line. Each
/// line is ANSI-coloured; one is an attempt at HTML injection.
const SCRIPT: &str = r#"
    i=1
    while [ $i -le 30 ]; do
        printf '\033[1;31mERROR\033[0m phase 1 line %d \033[32mgreen\033[0m \033[38;5;208morange\033[0m \033[38;2;10;20;200mtruecolor\033[0m \033[4munder\033[0m\n' $i
        i=$((i + 1))
    done
    while [ ! -e "$1" ]; do sleep 0.02; done
    printf '<img src=x onerror=alert(1)><script>alert(2)</script> & "quotes"\n'
    i=1
    while [ $i -lt 25 ]; do
        printf '\033[33mphase 2\033[0m line %d\033[K\r\n' $i
        i=$((i + 1))
    done
    while [ ! -e "$2" ]; do sleep 0.02; done
    printf '\033[7mthe end\033[0m'
"#;

/// The lines of [`SCRIPT`] as the page shows them: (phase 1, phase 2, last), and its bytes.
fn expected() -> (Vec<String>, Vec<String>, Vec<String>, Vec<u8>) {
    let mut raw = Vec::new();
    let phase1: Vec<String> = (1..=PHASE1)
        .map(|i| {
            raw.extend_from_slice(format!(
                "\x1b[1;31mERROR\x1b[0m phase 1 line {i} \x1b[32mgreen\x1b[0m \x1b[38;5;208morange\x1b[0m \x1b[38;2;10;20;200mtruecolor\x1b[0m \x1b[4munder\x1b[0m\n"
            ).as_bytes());
            format!("ERROR phase 1 line {i} green orange truecolor under")
        })
        .collect();
    let inject = "<img src=x onerror=alert(1)><script>alert(2)</script> & \"quotes\"";
    raw.extend_from_slice(format!("{inject}\n").as_bytes());
    let mut phase2 = vec![inject.to_string()];
    for i in 1..PHASE2 {
        raw.extend_from_slice(format!("\x1b[33mphase 2\x1b[0m line {i}\x1b[K\r\n").as_bytes());
        phase2.push(format!("phase 2 line {i}"));
    }
    raw.extend_from_slice(b"\x1b[7mthe end\x1b[0m");
    (phase1, phase2, vec!["the end".to_string()], raw)
}

#[test]
fn web_viewer_follows_a_running_stream_in_headless_chromium() {
    let Some(env) = browser() else { return };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env.root.join("target"));
    let shots = target.join("test-artifacts").join("web");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();

    let tmp = tempdir();
    let d = tmp.path();
    let collector =
        Collector::start_with(&d.join("data"), "127.0.0.1:0", &["--http", "127.0.0.1:0"]);
    let http = collector.http.clone().expect("the web viewer's address");

    // A CI-like run with sections, lines to search for, two streams and a run record.
    let ci = web_data::write_ci_run(d, &collector, &http, "ci/7");

    // A complete 100 MiB log.
    let big = d.join("big.txt");
    let started = Instant::now();
    let size = write_text_file(&big, BIG, 0xB16_106);
    let lines = common::read(&big).iter().filter(|&&b| b == b'\n').count();
    let r = common::run_butler(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "big",
            "run",
            "--no-echo",
            "--",
            "cat",
            big.to_str().unwrap(),
        ],
    );
    r.assert_code(0);
    eprintln!(
        "stored the {} MiB log in {:?}",
        size >> 20,
        started.elapsed()
    );
    std::fs::remove_file(&big).unwrap();

    // The live stream; the browser creates the go-files.
    let (go1, go2) = (d.join("go1"), d.join("go2"));
    let mut args: Vec<String> = [
        "--output",
        &collector.output(),
        "--prefix",
        "web",
        "--tag",
        "note=<img src=x onerror=alert(3)>",
        "run",
        "--no-echo",
        "--",
        "sh",
        "-c",
        SCRIPT,
        "sh",
    ]
    .map(String::from)
    .to_vec();
    args.extend([go1.display().to_string(), go2.display().to_string()]);
    let mut cmd = butler(d, &args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut writer = Guarded::spawn(&mut cmd);
    let writer_err = drain(writer.child.stderr.take().unwrap());

    // Phase 1 stored (the writer then waits for go1).
    let deadline = Instant::now() + TIMEOUT;
    while stored_rows(&http, "default/web/+/stdout") < PHASE1 as u64 {
        assert!(Instant::now() < deadline, "phase 1 was not stored in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!writer.has_exited(), "the writer ended before go1");

    let (phase1, phase2, last, raw) = expected();
    let cfg = serde_json::json!({
        "base": format!("http://{http}"),
        "chromium": env.chromium,
        "shots": shots,
        "live": {
            "path": "default/web/+/stdout",
            "go1": go1, "go2": go2,
            "phase1": phase1, "phase2": phase2, "last": last,
        },
        "big": { "path": "default/big/+/stdout", "lines": lines },
        "ci": {
            "scope": ci.scope,
            "build": ci.build,
            "interleaved": ci.interleaved,
            "command": ci.command,
            "exit_code": ci.exit_code,
            "duration_secs": ci.duration_secs,
        },
    });
    let mut node = Command::new("node");
    node.current_dir(&env.root)
        .arg("tests/web/viewer.mjs")
        .arg(cfg.to_string())
        .stdin(Stdio::null());
    let result = common::run(&mut node, common::Input::Null);
    // Whatever happened in the browser, let the writer finish.
    for go in [&go1, &go2] {
        if !go.exists() {
            std::fs::write(go, b"").unwrap();
        }
    }
    let status = writer.wait();
    let writer_err = String::from_utf8_lossy(&writer_err.join().unwrap()).into_owned();
    assert!(
        result.status.success(),
        "the browser test failed ({}); screenshots in {}\nstdout:\n{}\nstderr:\n{}\ncollector log:\n{}",
        result.status,
        shots.display(),
        result.stdout_str(),
        result.stderr_str(),
        collector.log()
    );
    eprintln!("browser measurements: {}", result.stdout_str().trim());
    assert!(status.success(), "writer: {status}; stderr:\n{writer_err}");
    for name in [
        "1-list",
        "2-running",
        "3-live",
        "4-complete",
        "5-big",
        "6-run-header",
        "7-sections-collapsed",
        "8-section-expanded",
        "9-search",
        "10-interleaved",
    ] {
        let p = shots.join(format!("{name}.png"));
        assert!(p.exists(), "no screenshot {}", p.display());
        eprintln!("screenshot: {}", p.display());
    }

    // A search of the 100 MiB log reads at most its byte budget per request, and says where
    // to go on from.
    let started = Instant::now();
    let (code, head, body) = http_get(&http, "/api/search/default/big/+/stdout?q=zz%7Cnot-there");
    assert_eq!(code, 200, "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON from /api/search");
    assert_eq!(v["capped"], "bytes", "{v}");
    let scanned = v["scanned_bytes"].as_u64().expect("scanned_bytes");
    assert!((32 << 20..(32 << 20) + (1 << 20)).contains(&scanned), "{v}");
    let next = v["next"].as_u64().expect("a row to go on from");
    assert!(next > 0 && next < lines as u64, "{v}");
    eprintln!("one search page of the big log: {:?}", started.elapsed());

    // The raw link serves the exact bytes, as text that can never be a page of the site.
    let (code, head, body) = http_get(&http, "/raw/default/web/+/stdout");
    assert_eq!(code, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: text/plain; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("content-security-policy: sandbox"), "{head}");
    assert!(
        body == raw,
        "raw bytes differ:\n{:?}",
        String::from_utf8_lossy(&body)
    );
    collector.stop();
}

/// The `id:` and `data:` lines of the `rows` events in a server-sent event stream.
fn rows_events(body: &[u8]) -> Vec<(u64, serde_json::Value)> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    for event in text.split("\n\n") {
        let mut kind = "";
        let (mut id, mut data) = (None, None);
        for line in event.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                kind = v.trim();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse::<u64>().ok();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = serde_json::from_str::<serde_json::Value>(v.trim()).ok();
            }
        }
        if kind == "rows"
            && let (Some(id), Some(data)) = (id, data)
        {
            out.push((id, data));
        }
    }
    out
}

#[test]
fn a_reconnecting_event_stream_resumes_after_the_last_row_it_had() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector =
        Collector::start_with(&d.join("data"), "127.0.0.1:0", &["--http", "127.0.0.1:0"]);
    let http = collector.http.clone().expect("the web viewer's address");
    let r = common::run_butler(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "sse",
            "run",
            "--no-echo",
            "--",
            "sh",
            "-c",
            "i=0; while [ $i -lt 50 ]; do echo row $i; i=$((i + 1)); done",
        ],
    );
    r.assert_code(0);
    let path = "default/sse/+/stdout";

    // A first connection reads everything; the stream is complete, so the events end.
    let (status, _, body) = http_get(&http, &format!("/api/events/{path}"));
    assert_eq!(status, 200);
    let events = rows_events(&body);
    let rows: Vec<u64> = events
        .iter()
        .flat_map(|(_, d)| d["rows"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["n"].as_u64())
        .collect();
    assert_eq!(rows, (0..50).collect::<Vec<u64>>());
    let (last_id, _) = events.last().cloned().expect("rows events");
    assert_eq!(last_id, 50, "the id is the next row to send");

    // A browser that reconnects sends the last id it saw: it gets only what came after.
    let mut s = TcpStream::connect(&http).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    write!(
        s,
        "GET /api/events/{path} HTTP/1.0\r\nHost: {http}\r\nLast-Event-ID: 42\r\n\r\n"
    )
    .expect("request");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("response");
    let rows: Vec<u64> = rows_events(&resp)
        .iter()
        .flat_map(|(_, d)| d["rows"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["n"].as_u64())
        .collect();
    assert_eq!(rows, (42..50).collect::<Vec<u64>>());
    let r = http_get(&http, &format!("/api/rows/{path}?from=48&count=5"));
    assert_eq!(r.0, 200);
    collector.stop();
}
