//! End-to-end tests of `logdog` as people use it: mistyped paths, the wrong port, listings
//! that match nothing, datagram streams, following a stream across a collector restart, and
//! streams whose butler was killed (`abandoned`). Every test runs a real `logdog_collector`,
//! real butlers and the real `logdog` binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Collector, Guarded, TIMEOUT, free_port, logdog, tempdir};

/// `logdog_butler FLAGS run --no-echo -- sh -c SCRIPT sh ARGS...` in `cwd`, stderr to /dev/null.
fn butler_script(cwd: &Path, flags: &[&str], script: &str, script_args: &[&Path]) -> Command {
    let mut cmd = common::butler_script(cwd, flags, &[], script, script_args);
    cmd.stderr(Stdio::null());
    cmd
}

/// `logdog --collector ADDR ARGS`, not started yet, with its output piped.
fn logdog_cmd(addr: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog"));
    cmd.arg("--collector")
        .arg(addr)
        .args(args)
        .env_remove("LOGDOG_COLLECTOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Collects what `r` gives, on a thread, into a buffer the test can look at any time.
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let out = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            out.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

/// The text collected so far.
fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// Waits until `cond` holds, checking every 20 ms, for at most [`TIMEOUT`].
#[track_caller]
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `line N\n` for N in `from..to`.
fn numbered(from: usize, to: usize) -> String {
    (from..to).map(|i| format!("line {i}\n")).collect()
}

/// The body of `GET path` from the viewer at `addr`.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    resp.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or(resp)
}

/// The state `logdog ls SCOPE` shows for `path`, if it lists it.
fn ls_state(addr: &str, scope: &str, path: &str) -> Option<String> {
    let r = logdog(addr, &["ls", scope]);
    r.stdout_str()
        .lines()
        .find(|l| l.split('\t').next() == Some(path))
        .and_then(|l| l.split('\t').nth(1).map(str::to_string))
}

#[test]
fn mistakes_get_plain_messages_and_datagrams_print_one_per_line() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = Collector::start_with(
        &d.join("data"),
        "127.0.0.1:0",
        &["--http", "127.0.0.1:0", "--tail", "127.0.0.1:0"],
    );
    let addr = collector.addr.clone();
    std::fs::write(d.join("dgrams"), "one\ntwo\nthree\n").unwrap();
    let mut b = Guarded::spawn(&mut butler_script(
        d,
        &["--output", &collector.output(), "--prefix", "build/42"],
        r#"echo hello; "$LOGDOG_TEST_BUTLER" pipe --type datagram packets < "$1/dgrams""#,
        &[d],
    ));
    assert!(b.wait().success(), "the butler failed");

    // A typo: not found at once (even with -f), with the closest names under the prefix.
    let r = logdog(&addr, &["tail", "-f", "default/build/42/+/stdot"]);
    r.assert_code(1);
    let err = r.stderr_str();
    assert!(
        err.contains("stream default/build/42/+/stdot not found")
            && err.contains("closest names under default/build/42: default/build/42/+/stdout"),
        "{err}"
    );
    assert_eq!(r.stdout_str(), "");
    // The project left out.
    let r = logdog(&addr, &["cat", "build/42/+/stdout"]);
    r.assert_code(1);
    assert!(
        r.stderr_str()
            .contains("paths start with the project: did you mean default/build/42/+/stdout?"),
        "{}",
        r.stderr_str()
    );
    // A prefix with nothing under it.
    let r = logdog(&addr, &["tail", "default/build/43/+/stdout"]);
    r.assert_code(1);
    assert!(r.stderr_str().contains("not found"), "{}", r.stderr_str());

    // The viewer's port, and the tail server's (not HTTP at all): a plain message.
    for (port, what) in [
        (collector.http.clone().unwrap(), "viewer"),
        (collector.tail.clone().unwrap(), "tail server"),
    ] {
        let r = logdog(&port, &["ls", "default"]);
        r.assert_code(1);
        let err = r.stderr_str();
        assert!(
            err.contains(&format!(
                "the server at {port} does not answer like a logdog collector"
            )),
            "{what}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
    }

    // No match: said on stderr, exit 1.
    let r = logdog(&addr, &["ls", "default/nothing"]);
    r.assert_code(1);
    assert!(
        r.stderr_str().contains("no streams match default/nothing"),
        "{}",
        r.stderr_str()
    );
    assert_eq!(r.stdout_str(), "");
    let r = logdog(&addr, &["query", "--tag", "team=none", "default"]);
    r.assert_code(1);
    assert!(
        r.stderr_str()
            .contains("no streams match default with tags team=none"),
        "{}",
        r.stderr_str()
    );
    let r = logdog(&addr, &["ls", "default/build/42"]);
    r.assert_code(0);
    assert!(
        r.stdout_str()
            .contains("default/build/42/+/packets\tcomplete")
    );

    // Datagrams: one per line; --raw as stored (uvarint length, bytes), as `cat` writes them.
    let r = logdog(&addr, &["tail", "default/build/42/+/packets"]);
    r.assert_code(0);
    assert_eq!(r.stdout_str(), "one\ntwo\nthree\n");
    let r = logdog(&addr, &["tail", "-n", "2", "default/build/42/+/packets"]);
    assert_eq!(r.stdout_str(), "two\nthree\n");
    let r = logdog(&addr, &["tail", "--raw", "default/build/42/+/packets"]);
    assert_eq!(r.stdout, b"\x03one\x03two\x05three");
    let r = logdog(&addr, &["cat", "default/build/42/+/packets"]);
    assert_eq!(r.stdout, b"\x03one\x03two\x05three");

    // --wait: a stream that does not exist yet is waited for.
    let mut waiting = Guarded::spawn(&mut logdog_cmd(
        &addr,
        &["tail", "-f", "--wait", "default/later/+/stdout"],
    ));
    let out = collect(waiting.child.stdout.take().unwrap());
    let mut later = Guarded::spawn(&mut butler_script(
        d,
        &["--output", &collector.output(), "--prefix", "later"],
        "echo arrived",
        &[],
    ));
    assert!(later.wait().success());
    assert!(waiting.wait().success(), "tail -f --wait failed");
    assert_eq!(text(&out), "arrived\n");
    collector.stop();
}

/// The child: phase 1, then after the go-file `$2`, phase 2.
const PHASES: &str = r#"
    cat "$1/phase1"
    while [ ! -e "$2" ]; do sleep 0.02; done
    cat "$1/phase2"
"#;

#[test]
fn tail_follow_reconnects_across_a_collector_restart_without_losing_or_repeating_lines() {
    let tmp = tempdir();
    let d = tmp.path();
    let data = d.join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let first = Collector::start(&data, &listen);
    let (phase1, phase2) = (numbered(0, 300), numbered(300, 700));
    std::fs::write(d.join("phase1"), &phase1).unwrap();
    std::fs::write(d.join("phase2"), &phase2).unwrap();
    let go = d.join("go");
    let mut b = Guarded::spawn(&mut butler_script(
        d,
        &["--output", &first.output(), "--prefix", "restart"],
        PHASES,
        &[d, &go],
    ));
    let mut tail = Guarded::spawn(&mut logdog_cmd(
        &listen,
        &[
            "tail",
            "-f",
            "--wait",
            "-n",
            "100000",
            "default/restart/+/stdout",
        ],
    ));
    let out = collect(tail.child.stdout.take().unwrap());
    let err = collect(tail.child.stderr.take().unwrap());
    wait_until("phase 1 to be followed", || text(&out) == phase1);

    // The collector goes away while the follower waits for more.
    first.stop();
    wait_until("the follower to say it is reconnecting", || {
        text(&err).contains("reconnecting")
    });
    assert!(!tail.has_exited(), "tail -f gave up: {}", text(&err));
    // Back on the same port and data.
    let second = Collector::start(&data, &listen);
    std::fs::write(&go, b"").unwrap();
    assert!(b.wait().success(), "the butler failed");
    let status = tail.wait();
    let (got, err) = (text(&out), text(&err));
    assert!(status.success(), "tail -f: {status}; stderr:\n{err}");
    // Every line exactly once, in order.
    let lines: Vec<&str> = got.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("line {i}"), "line {i} of the output");
    }
    assert_eq!(lines.len(), 700, "stderr:\n{err}");
    assert_eq!(got, format!("{phase1}{phase2}"));
    assert_eq!(
        err.lines().filter(|l| l.contains("reconnecting")).count(),
        1,
        "one line about the lost connection: {err}"
    );
    assert!(
        err.lines().all(|l| l.contains("lost the connection")),
        "{err}"
    );
    second.stop();
}

/// The child of the live butler: a line every 0.2 s until the stop-file `$1` exists.
const TICKING: &str = r#"
    i=0
    while [ ! -e "$1" ]; do echo "tick $i"; i=$((i+1)); sleep 0.2; done
"#;

#[test]
fn streams_of_a_killed_butler_become_abandoned_and_live_prefixes_do_not() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = Collector::start_with(
        &d.join("data"),
        "127.0.0.1:0",
        &["--abandon-after", "3s", "--http", "127.0.0.1:0"],
    );
    let addr = collector.addr.clone();
    let http = collector.http.clone().unwrap();
    let stop = d.join("stop");
    let mut live = Guarded::spawn(&mut butler_script(
        d,
        &["--output", &collector.output(), "--prefix", "live"],
        TICKING,
        &[&stop],
    ));
    // A command that prints one line and then nothing: only the run record's heartbeat
    // keeps its prefix alive.
    let mut quiet = Guarded::spawn(&mut common::butler_script(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "quiet",
            "--max-buffer-age",
            "100ms",
        ],
        &["--heartbeat", "500ms"],
        r#"echo started; while [ ! -e "$1" ]; do sleep 0.1; done"#,
        &[&stop],
    ));
    wait_until("the quiet butler's stream to be stored", || {
        ls_state(&addr, "default/quiet", "default/quiet/+/stdout").as_deref() == Some("open")
    });
    let quiet_seen = Instant::now();
    let mut dead = Guarded::spawn(&mut butler_script(
        d,
        &["--output", &collector.output(), "--prefix", "dead"],
        "echo started; exec sleep 1000",
        &[],
    ));
    wait_until("the killed butler's stream to be stored", || {
        ls_state(&addr, "default/dead", "default/dead/+/stdout").as_deref() == Some("open")
    });
    // The butler and its command, killed at once.
    nix::sys::signal::killpg(dead.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = dead.wait();

    wait_until("the killed butler's stream to be abandoned", || {
        ls_state(&addr, "default/dead", "default/dead/+/stdout").as_deref() == Some("abandoned")
    });
    let json = http_get(&http, "/api/stream/default/dead/+/stdout");
    assert!(json.contains(r#""state":"abandoned""#), "{json}");
    // Longer than --abandon-after since the live butler started: its prefix keeps getting
    // lines, so neither its stdout nor its silent stderr is abandoned.
    assert_eq!(
        ls_state(&addr, "default/live", "default/live/+/stdout").as_deref(),
        Some("open")
    );
    let json = http_get(&http, "/api/stream/default/live/+/stdout");
    assert!(json.contains(r#""state":"open""#), "{json}");
    // Its stderr gets nothing, but the prefix does.
    if let Some(state) = ls_state(&addr, "default/live", "default/live/+/stderr") {
        assert_eq!(state, "open", "default/live/+/stderr");
    }
    // The quiet run's line is older than --abandon-after (3s, and 1s more for slack), but
    // its heartbeats say it is alive.
    wait_until("4s since the quiet run's only line", || {
        quiet_seen.elapsed() > Duration::from_secs(4)
    });
    assert_eq!(
        ls_state(&addr, "default/quiet", "default/quiet/+/stdout").as_deref(),
        Some("open")
    );
    std::fs::write(&stop, b"").unwrap();
    assert!(live.wait().success());
    assert!(quiet.wait().success());
    let record = logdog(&addr, &["cat", "default/quiet/+/logdog/run"]);
    record.assert_code(0);
    let alive = record
        .stdout_str()
        .lines()
        .filter(|l| l.contains(r#""event":"alive""#))
        .count();
    assert!(alive >= 4, "{}", record.stdout_str());
    assert_eq!(
        ls_state(&addr, "default/live", "default/live/+/stdout").as_deref(),
        Some("complete")
    );
    collector.stop();
}
