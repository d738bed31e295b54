//! End-to-end: hostile clients against a real `logdog_butler serve`. Clients that connect and
//! never speak cannot lock real streams out, and streams beyond `--max-streams` are refused
//! with the reason, counted and listed at the end.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Guarded, butler, dir_output, drain, read, stream_path, tempdir};
use nix::sys::signal::{Signal, kill};

/// The handshake magic of a stream-server connection.
const MAGIC: &[u8; 6] = b"BTLR1\x1E";

/// How long a real stream may take to get its verdict while hostile clients hold the butler:
/// far below the handshake timeout the silent clients get, so only eviction lets it in.
const AT_ONCE: Duration = Duration::from_secs(30);

/// A handshake asking for a verdict, for a text stream called `name`.
fn handshake(name: &str) -> Vec<u8> {
    let json = format!(r#"{{"name":"{name}","verdict":true}}"#);
    let mut out = MAGIC.to_vec();
    let mut len = json.len() as u64;
    loop {
        let low = (len & 0x7F) as u8;
        len >>= 7;
        if len == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    out.extend_from_slice(json.as_bytes());
    out
}

/// Opens a stream asking for a verdict and returns the connection and the verdict line.
fn open(socket: &Path, name: &str, data: &[u8]) -> (UnixStream, String) {
    let mut s = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    let mut msg = handshake(name);
    msg.extend_from_slice(data);
    s.write_all(&msg).expect("writing the handshake");
    s.set_read_timeout(Some(AT_ONCE)).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => panic!("no verdict for {name} within {AT_ONCE:?}: {e}"),
        }
    }
    s.set_read_timeout(None).unwrap();
    (s, String::from_utf8_lossy(&line).into_owned())
}

fn raise_nofile_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        soft >= needed,
        "RLIMIT_NOFILE is {soft} even after raising it to the hard limit; this test needs {needed}"
    );
}

/// Closes our end of a stream and waits until the butler has read it all and closed its own.
fn finish(mut s: UnixStream) {
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

#[test]
fn silent_clients_are_evicted_and_streams_beyond_max_streams_are_refused() {
    const SILENT: usize = 6000;
    raise_nofile_limit(SILENT as u64 + 512);
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let mut cmd = butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "--log-level",
            "info",
            "serve",
            // Silent clients never time out here: only eviction can make room.
            "--handshake-timeout",
            "1h",
            "--max-streams",
            "2",
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guarded = Guarded::spawn(&mut cmd);
    let stderr = drain(guarded.child.stderr.take().unwrap());
    let mut stdout = BufReader::new(guarded.child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reading serve's stdout");
    let socket = PathBuf::from(
        line.trim_end()
            .strip_prefix("LOGDOG_STREAM_SERVER_PATH=unix:")
            .unwrap_or_else(|| panic!("serve printed {line:?}, not its address")),
    );

    // Two streams take every place --max-streams allows.
    let (a, verdict) = open(&socket, "a", b"from a\n");
    assert_eq!(verdict, "accepted\n");
    let (b, verdict) = open(&socket, "b", b"from b\n");
    assert_eq!(verdict, "accepted\n");
    // A third is refused, and told why.
    let (c, verdict) = open(&socket, "c", b"never kept\n");
    assert!(
        verdict.starts_with("refused: ") && verdict.contains("--max-streams"),
        "verdict: {verdict:?}"
    );
    finish(c);
    finish(b);

    // Thousands of clients that connect and never speak, more than the pending table holds.
    let silent: Vec<UnixStream> = (0..SILENT)
        .map(|i| {
            UnixStream::connect(&socket).unwrap_or_else(|e| panic!("silent connection {i}: {e}"))
        })
        .collect();
    // A real stream still opens at once, and its bytes arrive.
    let started = Instant::now();
    let (d, verdict) = open(&socket, "d", b"from d\n");
    assert_eq!(verdict, "accepted\n");
    assert!(started.elapsed() < AT_ONCE);
    finish(d);
    finish(a);
    drop(silent);

    kill(guarded.pid(), Signal::SIGTERM).expect("sending SIGTERM");
    let status = guarded.wait();
    let err = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    assert!(status.success(), "{status}; stderr:\n{err}");
    assert_eq!(read(&stream_path(&out, "a")), b"from a\n");
    assert_eq!(read(&stream_path(&out, "b")), b"from b\n");
    assert_eq!(read(&stream_path(&out, "d")), b"from d\n");
    assert!(!stream_path(&out, "c").exists());
    // The end-of-run account names both refusals.
    for kind in ["too_many_streams", "evicted"] {
        assert!(
            err.contains(&format!(
                "connection(s) to the stream server refused: {kind}"
            )),
            "no {kind} in stderr:\n{err}"
        );
    }
}

#[test]
fn max_streams_is_taken_by_run_and_serve_and_must_be_positive() {
    let tmp = tempdir();
    let out = dir_output(&tmp.path().join("out"));
    for sub in [&["serve"][..], &["run", "--", "true"][..]] {
        let mut args = vec!["--output", &out, sub[0], "--max-streams", "0"];
        args.extend_from_slice(&sub[1..]);
        let r = common::run_butler(tmp.path(), &args);
        assert_eq!(r.code(), 2, "{args:?}: stderr:\n{}", r.stderr_str());
        assert!(
            r.stderr_str().contains("--max-streams"),
            "{}",
            r.stderr_str()
        );
    }
    let r = common::run_butler(
        tmp.path(),
        &["--output", &out, "run", "--max-streams", "3", "--", "true"],
    );
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr_str());
}
