//! End-to-end tests of the tail server's ceilings under hostile clients: followers that go
//! away while the stream is idle free their slots at once, and connections that never send a
//! request cannot keep real requests out.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Collector, Guarded, TIMEOUT, butler, drain, tempdir};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// What the child writes before it goes idle (the stream stays incomplete).
const HELLO: &[u8] = b"hello\n";
/// How long a request may take to be served once the server is under load: "at once", with
/// a wide margin for a busy machine.
const PROMPT: Duration = Duration::from_secs(10);

/// A butler whose child writes [`HELLO`] to stdout and then waits for the file `go`.
fn idle_stream(d: &Path, collector: &Collector, prefix: &str) -> Guarded {
    let script = r#"printf 'hello\n'; while [ ! -e "$1" ]; do sleep 0.05; done"#;
    let args = [
        "--output".to_string(),
        collector.output(),
        "--prefix".into(),
        prefix.into(),
        "run".into(),
        "--no-echo".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        d.join("go").display().to_string(),
    ];
    let mut cmd = butler(d, &args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut b = Guarded::spawn(&mut cmd);
    let _ = drain(b.child.stderr.take().expect("stderr pipe"));
    b
}

/// Connects and sends `line`, with a read timeout of `timeout`.
fn request(addr: &str, line: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(line.as_bytes())?;
    Ok(s)
}

/// Follows `path` and reads [`HELLO`] from it within `timeout`.
fn follow_hello(addr: &str, path: &str, timeout: Duration) -> Result<TcpStream, String> {
    let mut s = request(addr, &format!("stream {path}\n"), timeout).map_err(|e| e.to_string())?;
    let mut got = vec![0u8; HELLO.len()];
    s.read_exact(&mut got)
        .map_err(|e| format!("reading {path}: {e}"))?;
    if got != HELLO {
        return Err(format!("{path}: got {:?}", String::from_utf8_lossy(&got)));
    }
    Ok(s)
}

/// Open file descriptors of process `pid`.
fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading /proc/PID/fd")
        .count()
}

/// Waits until `cond` holds, checking every 50 ms, for at most `limit`; returns whether it did.
fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Raises this process's soft open-file limit to the hard one; returns the soft limit.
fn raise_nofile() -> u64 {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raising RLIMIT_NOFILE");
    }
    getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit").0
}

/// Starts a collector with a tail server and an idle, incomplete stream `default/idle/+/stdout`
/// whose first bytes can be read.
fn setup(d: &Path, extra: &[&str]) -> (Collector, Guarded, String) {
    let mut flags = vec!["--tail", "127.0.0.1:0"];
    flags.extend_from_slice(extra);
    let collector = Collector::start_with(&d.join("data"), "127.0.0.1:0", &flags);
    let tail = collector.tail.clone().expect("the tail server's address");
    let b = idle_stream(d, &collector, "idle");
    assert!(
        poll(TIMEOUT, || follow_hello(
            &tail,
            "default/idle/+/stdout",
            PROMPT
        )
        .is_ok()),
        "the idle stream never became readable; log:\n{}",
        collector.log()
    );
    (collector, b, tail)
}

#[test]
fn followers_that_go_away_while_the_stream_is_idle_free_their_slots_at_once() {
    let tmp = tempdir();
    let d = tmp.path();
    let (collector, mut b, tail) = setup(d, &[]);
    let pid = collector.guarded.pid().as_raw();
    let path = "default/idle/+/stdout";
    let baseline = fds(pid);

    // 5,000 followers, 500 at a time: each gets the stored bytes, is idle, and goes away.
    let mut served = 0;
    for round in 0..10 {
        let mut batch = Vec::new();
        for i in 0..500 {
            let s = follow_hello(&tail, path, PROMPT).unwrap_or_else(|e| {
                panic!(
                    "follower {} of round {round}: {e}; collector fds {} (baseline {baseline})",
                    i,
                    fds(pid)
                )
            });
            batch.push(s);
            served += 1;
        }
        drop(batch);
    }
    assert_eq!(served, 5000);

    // A new follower is served at once, and the collector is back to its descriptors.
    let started = Instant::now();
    let s = follow_hello(&tail, path, PROMPT).expect("a follower after 5,000 went away");
    assert!(started.elapsed() < PROMPT);
    drop(s);
    let margin = 50;
    assert!(
        poll(TIMEOUT, || fds(pid) <= baseline + margin),
        "the collector holds {} descriptors, {baseline} before the followers came",
        fds(pid)
    );

    std::fs::write(d.join("go"), b"").unwrap();
    assert!(b.wait().success());
    collector.stop();
}

#[test]
fn idle_connections_past_the_cap_cannot_keep_a_request_out() {
    const CAP: usize = 256;
    let soft = raise_nofile();
    // Well past the cap, within this process's descriptors.
    let idle_count = (soft.saturating_sub(200) as usize).min(3000);
    assert!(
        idle_count > 4 * CAP,
        "RLIMIT_NOFILE {soft} is too low for this test"
    );
    let tmp = tempdir();
    let d = tmp.path();
    let (collector, mut b, tail) = setup(d, &["--tail-max-connections", "256"]);
    let pid = collector.guarded.pid().as_raw();
    let path = "default/idle/+/stdout";
    let baseline = fds(pid);

    // A follower that is already being served keeps its slot.
    let mut early = follow_hello(&tail, path, PROMPT).expect("a follower before the flood");

    // Connections that never send a request, far more than the cap.
    let mut idle = Vec::with_capacity(idle_count);
    for i in 0..idle_count {
        match TcpStream::connect(&tail) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("idle connection {i}: {e}"),
        }
    }

    // Real requests are still served at once: a follower and a listing.
    let started = Instant::now();
    let s = follow_hello(&tail, path, PROMPT).unwrap_or_else(|e| {
        panic!(
            "a follower behind {idle_count} idle connections: {e}; log:\n{}",
            collector.log()
        )
    });
    let mut listing = String::new();
    request(&tail, "list default/idle\n", PROMPT)
        .and_then(|mut l| l.read_to_string(&mut listing))
        .expect("a listing behind the idle connections");
    assert!(listing.contains("default/idle/+/stdout\n"), "{listing:?}");
    assert!(
        started.elapsed() < 2 * PROMPT,
        "took {:?}",
        started.elapsed()
    );
    // The oldest idle connection was told why it was dropped.
    let mut told = String::new();
    idle[0]
        .set_read_timeout(Some(TIMEOUT))
        .expect("setting a timeout");
    idle[0]
        .read_to_string(&mut told)
        .expect("reading the oldest idle connection");
    assert_eq!(
        told,
        "error: dropped: no request line yet and the server needs the slot\n"
    );
    // The collector holds about the cap's worth of connections, not the flood (a dropped
    // connection's descriptor closes a moment after its slot is taken: give it time).
    assert!(
        poll(TIMEOUT, || fds(pid) <= baseline + CAP + 50),
        "the collector holds {} descriptors (baseline {baseline}, cap {CAP})",
        fds(pid)
    );
    drop(s);

    // The early follower was not dropped for the idle ones: it still gets new bytes... and
    // its connection ends when the stream completes.
    std::fs::write(d.join("go"), b"").unwrap();
    assert!(b.wait().success());
    let mut rest = Vec::new();
    early
        .set_read_timeout(Some(TIMEOUT))
        .expect("setting a timeout");
    early
        .read_to_end(&mut rest)
        .expect("the early follower runs to the end of the stream");
    assert!(rest.is_empty(), "{rest:?}");
    drop(idle);

    let log = collector.stop_with_log();
    assert!(
        log.contains("tail connection dropped"),
        "evictions are not logged:\n{log}"
    );
    assert!(
        log.contains("tail server stopped") && log.contains("evicted="),
        "the eviction count is not in the log:\n{log}"
    );
}

#[test]
fn a_table_full_of_followers_turns_a_new_connection_away_with_an_error_line() {
    const CAP: usize = 4;
    let tmp = tempdir();
    let d = tmp.path();
    let (collector, mut b, tail) = setup(d, &["--tail-max-connections", "4"]);
    let path = "default/idle/+/stdout";
    // `setup`'s probe has gone away; wait until its slot is free again.
    let mut followers = Vec::new();
    assert!(
        poll(TIMEOUT, || {
            followers.clear();
            (0..CAP).all(|_| match follow_hello(&tail, path, PROMPT) {
                Ok(s) => {
                    followers.push(s);
                    true
                }
                Err(_) => false,
            })
        }),
        "{CAP} followers were not served; log:\n{}",
        collector.log()
    );
    // Every slot is serving a request: the next connection is told why and closed (before
    // it sends anything, so that no unread request can turn the close into a reset).
    let mut answer = String::new();
    TcpStream::connect(&tail)
        .and_then(|mut s| {
            s.set_read_timeout(Some(PROMPT))?;
            s.read_to_string(&mut answer)
        })
        .expect("reading the answer of a connection past the cap");
    assert_eq!(answer, "error: too many connections (at most 4)\n");
    // A follower that leaves makes room.
    drop(followers.pop());
    assert!(
        poll(TIMEOUT, || {
            follow_hello(&tail, path, PROMPT).is_ok_and(|s| {
                followers.push(s);
                true
            })
        }),
        "no room after a follower left"
    );

    std::fs::write(d.join("go"), b"").unwrap();
    assert!(b.wait().success());
    drop(followers);
    let log = collector.stop_with_log();
    assert!(
        log.contains("tail connection turned away") && log.contains("turned_away="),
        "turning away is not logged:\n{log}"
    );
}
