//! End-to-end tests of the tail server: a real `logdog_collector --tail`, a real butler
//! shipping to it, and plain TCP clients speaking the protocol netcat would
//! (`printf 'stream P/X/+/stdout from byte 1000\n' | nc HOST PORT`).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Collector, Guarded, Rng, TIMEOUT, drain, random_line, tempdir};

/// `logdog_butler FLAGS run --no-echo -- sh -c SCRIPT sh ARGS...` in `cwd`.
fn butler_script(cwd: &Path, flags: &[&str], script: &str, script_args: &[&Path]) -> Command {
    // The command's streams alone (the test lists them).
    common::butler_script(cwd, flags, &["--no-run-record"], script, script_args)
}

/// Connects to the tail server and sends one request line.
fn request(addr: &str, line: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(line).unwrap();
    s
}

/// Reads exactly `n` bytes; fails the test at end of input.
#[track_caller]
fn read_n(s: &mut TcpStream, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: reading {n} bytes: {e}"));
    buf
}

/// Reads until the server closes the connection.
#[track_caller]
fn read_all(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: reading to the end: {e}"));
    buf
}

/// Sends `line` and returns everything the server answers (it must close the connection).
fn ask(addr: &str, line: &str) -> String {
    let mut s = request(addr, line.as_bytes());
    s.shutdown(Shutdown::Write).unwrap();
    String::from_utf8_lossy(&read_all(&mut s, line)).into_owned()
}

/// Fails the test unless `got` is `want`, naming the first difference.
#[track_caller]
fn assert_same_bytes(what: &str, want: &[u8], got: &[u8]) {
    if want == got {
        return;
    }
    let at = want.iter().zip(got).take_while(|(a, b)| a == b).count();
    panic!(
        "{what}: differs at byte {at} (got {} bytes, want {}): got {:?} want {:?}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(&got[at.min(got.len())..(at + 40).min(got.len())]),
        String::from_utf8_lossy(&want[at.min(want.len())..(at + 40).min(want.len())]),
    );
}

/// Waits until `cond` holds, checking every 20 ms, for at most [`TIMEOUT`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of text, `n` bytes or a little more.
fn text(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    while v.len() < n {
        v.extend_from_slice(random_line(rng).as_bytes());
    }
    v
}

/// The child: a binary stream `blob` from `$1/blob`, then `$1/phase1` on stdout; then it
/// waits for the go-file `$2` and writes `$1/phase2`.
const SCRIPT: &str = r#"
    "$LOGDOG_TEST_BUTLER" pipe --type binary blob < "$1/blob" || exit 90
    cat "$1/phase1"
    while [ ! -e "$2" ]; do sleep 0.02; done
    cat "$1/phase2"
"#;

#[test]
fn tail_server_serves_offsets_follows_until_complete_and_lists() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector =
        Collector::start_with(&d.join("data"), "127.0.0.1:0", &["--tail", "127.0.0.1:0"]);
    let tail = collector.tail.clone().expect("the tail server's address");
    let mut rng = Rng::new(0x7A11_5E4F);
    let phase1 = text(&mut rng, 8000);
    let phase2 = text(&mut rng, 5000);
    // Larger than what loopback sockets buffer, so a reader that does not read really stalls.
    let blob = rng.bytes(24 << 20);
    std::fs::write(d.join("phase1"), &phase1).unwrap();
    std::fs::write(d.join("phase2"), &phase2).unwrap();
    std::fs::write(d.join("blob"), &blob).unwrap();
    let go = d.join("go");

    let mut cmd = butler_script(
        d,
        &["--output", &collector.output(), "--prefix", "tail"],
        SCRIPT,
        &[d, &go],
    );
    let mut b = Guarded::spawn(&mut cmd);
    let b_err = drain(b.child.stderr.take().unwrap());

    // The stream exists once the server lists it.
    wait_until("stdout to be listed", || {
        ask(&tail, "list default/tail\n").contains("default/tail/+/stdout\n")
    });

    // From the start: reading all of phase 1 waits until it is stored.
    let mut from_start = request(&tail, b"stream default/tail/+/stdout\n");
    let got = read_n(&mut from_start, phase1.len(), "from the start");
    assert_same_bytes("phase 1 from the start", &phase1, &got);
    assert!(!b.has_exited(), "the butler exited before the go-file");

    // From byte 1000, as `printf '...\n' | nc` sends it (keeping its side open).
    let mut from_1000 = request(&tail, b"stream default/tail/+/stdout from byte 1000\n");
    // The last 200 bytes stored now (all of phase 1 is, and the child is waiting), then more.
    let mut last_200 = request(&tail, b"stream default/tail/+/stdout from byte -200\r\n");
    let got = read_n(&mut last_200, 200, "from byte -200");
    assert_same_bytes("from byte -200", &phase1[phase1.len() - 200..], &got);

    // A slow reader of the big binary stream does not hold up a fast one.
    let mut slow = request(&tail, b"stream default/tail/+/blob from byte 0\n");
    let mut fast = request(&tail, b"stream default/tail/+/blob\n");
    let got = read_all(&mut fast, "fast reader of blob");
    assert_same_bytes("blob, fast reader", &blob, &got);
    // Binary streams are searched by offset.
    for (line, want) in [
        (
            "stream default/tail/+/blob from byte 1234567\n".to_string(),
            &blob[1234567..],
        ),
        (
            "stream default/tail/+/blob from byte -5000\n".to_string(),
            &blob[blob.len() - 5000..],
        ),
        (
            format!("stream default/tail/+/blob from byte {}\n", blob.len() + 10),
            &blob[..0],
        ),
        (
            format!("stream default/tail/+/blob from byte -{}\n", blob.len() * 2),
            &blob[..],
        ),
    ] {
        let mut s = request(&tail, line.as_bytes());
        assert_same_bytes(line.trim_end(), want, &read_all(&mut s, &line));
    }

    std::fs::write(&go, b"").unwrap();
    let status = b.wait();
    let err = String::from_utf8_lossy(&b_err.join().unwrap()).into_owned();
    assert!(status.success(), "butler: {status}; stderr:\n{err}");

    let whole = [phase1.as_slice(), phase2.as_slice()].concat();
    let rest = read_all(&mut from_start, "from the start");
    assert_same_bytes("phase 2 from the start", &phase2, &rest);
    assert_same_bytes(
        "from byte 1000",
        &whole[1000..],
        &read_all(&mut from_1000, "from byte 1000"),
    );
    assert_same_bytes(
        "from byte -200, followed",
        &phase2,
        &read_all(&mut last_200, "from byte -200"),
    );
    assert_same_bytes(
        "blob, slow reader",
        &blob,
        &read_all(&mut slow, "slow reader of blob"),
    );

    // Listings: one path per line.
    let want = "default/tail/+/blob\ndefault/tail/+/stderr\ndefault/tail/+/stdout\n";
    assert_eq!(ask(&tail, "list\n"), want);
    assert_eq!(ask(&tail, "list default/tail\n"), want);
    assert_eq!(ask(&tail, "list default/other\n"), "");

    // Bad requests get one error line, and the connection is closed.
    let long = "a".repeat(5000);
    for (line, says) in [
        ("bogus\n", "expected `stream"),
        ("stream default/tail/+/nope\n", "not found"),
        (
            "stream default/tail/+/stdout from byte x\n",
            "not a byte offset",
        ),
        (
            "stream default/tail/+/stdout from 10\n",
            "expected `from byte`",
        ),
        ("stream Bad/x/+/y\n", "project"),
        ("stream default/no-plus\n", "PREFIX/+/NAME"),
        (long.as_str(), "longer than 4096 bytes"),
    ] {
        let answer = ask(&tail, line);
        assert!(
            answer.starts_with("error: ") && answer.ends_with('\n') && answer.lines().count() == 1,
            "{line:.40}: {answer:?}"
        );
        assert!(answer.contains(says), "{line:.40}: {answer:?}");
    }

    let log_before_stop = collector.log();
    assert!(
        log_before_stop.contains("tail request refused"),
        "refusals are not logged:\n{log_before_stop}"
    );
    let log = collector.stop_with_log();
    assert!(
        log.contains("tail server stopped") && log.contains("refused=7"),
        "the tail server's counters are not in its log:\n{log}"
    );
}

/// The child for the line and time test: phase 1 on stdout, a binary stream, then after the
/// go-file `$2`, phase 2.
const LINES_SCRIPT: &str = r#"
    printf 'b' | "$LOGDOG_TEST_BUTLER" pipe --type binary blob || exit 90
    cat "$1/phase1"
    while [ ! -e "$2" ]; do sleep 0.02; done
    cat "$1/phase2"
"#;

/// `n` numbered lines from `first`: `line 7\n`...
fn numbered(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("line {i}\n")).collect()
}

/// Now as RFC 3339 in UTC with milliseconds.
fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[test]
fn tail_server_starts_at_a_line_or_a_time_and_refuses_bad_arguments() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector =
        Collector::start_with(&d.join("data"), "127.0.0.1:0", &["--tail", "127.0.0.1:0"]);
    let tail = collector.tail.clone().expect("the tail server's address");
    let phase1 = numbered(0, 100);
    let phase2 = numbered(100, 50);
    std::fs::write(d.join("phase1"), &phase1).unwrap();
    std::fs::write(d.join("phase2"), &phase2).unwrap();
    let go = d.join("go");
    let mut cmd = butler_script(
        d,
        &["--output", &collector.output(), "--prefix", "lines"],
        LINES_SCRIPT,
        &[d, &go],
    );
    let mut b = Guarded::spawn(&mut cmd);
    let b_err = drain(b.child.stderr.take().unwrap());
    const STDOUT: &str = "stream default/lines/+/stdout";
    wait_until("stdout to be listed", || {
        ask(&tail, "list default/lines\n").contains("default/lines/+/stdout\n")
    });

    // All of phase 1 is stored once the last line of it can be read.
    let mut last = request(&tail, format!("{STDOUT} from line 99\n").as_bytes());
    assert_eq!(read_n(&mut last, 8, "line 99"), b"line 99\n");
    // Whatever comes from now on was written after this time.
    let after_phase1 = rfc3339_now();

    // Line numbers count from 0; -N is the last N lines stored when the request arrives.
    let mut from_10 = request(&tail, format!("{STDOUT} from line 10\n").as_bytes());
    let got = read_n(
        &mut from_10,
        phase1.len() - numbered(0, 10).len(),
        "from line 10",
    );
    assert_same_bytes("from line 10", numbered(10, 90).as_bytes(), &got);
    let mut last_3 = request(&tail, format!("{STDOUT} from line -3\n").as_bytes());
    let got = read_n(&mut last_3, numbered(97, 3).len(), "from line -3");
    assert_same_bytes("from line -3", numbered(97, 3).as_bytes(), &got);
    // A line not written yet: nothing until it is.
    let mut ahead = request(&tail, format!("{STDOUT} from line 120\n").as_bytes());
    // A time after phase 1: nothing until phase 2.
    let mut since = request(
        &tail,
        format!("{STDOUT} from time {after_phase1}\n").as_bytes(),
    );
    // A time long ago: everything.
    let mut ago = request(
        &tail,
        format!("{STDOUT} from time 2000-01-01T00:00:00Z\n").as_bytes(),
    );

    std::fs::write(&go, b"").unwrap();
    let status = b.wait();
    let err = String::from_utf8_lossy(&b_err.join().unwrap()).into_owned();
    assert!(status.success(), "butler: {status}; stderr:\n{err}");

    let whole = format!("{phase1}{phase2}");
    assert_same_bytes(
        "from line 10, followed",
        phase2.as_bytes(),
        &read_all(&mut from_10, "from line 10"),
    );
    assert_same_bytes(
        "from line -3, followed",
        phase2.as_bytes(),
        &read_all(&mut last_3, "from line -3"),
    );
    assert_same_bytes(
        "from line 120",
        numbered(120, 30).as_bytes(),
        &read_all(&mut ahead, "from line 120"),
    );
    assert_same_bytes(
        "from a time after phase 1",
        phase2.as_bytes(),
        &read_all(&mut since, "from time"),
    );
    assert_same_bytes(
        "from a time long ago",
        whole.as_bytes(),
        &read_all(&mut ago, "from time long ago"),
    );
    // On a complete stream: past its end, nothing, and the connection is closed.
    assert_eq!(ask(&tail, &format!("{STDOUT} from line 500\n")), "");
    assert_eq!(
        ask(&tail, &format!("{STDOUT} from time 2999-01-01T00:00:00Z\n")),
        ""
    );
    assert_eq!(
        ask(&tail, &format!("{STDOUT} from line -2\n")),
        numbered(148, 2)
    );
    assert_eq!(ask(&tail, &format!("{STDOUT} from line -1000\n")), whole);
    // Binary streams have no lines, but times.
    assert_eq!(
        ask(
            &tail,
            "stream default/lines/+/blob from time 2000-01-01T00:00:00Z\n"
        ),
        "b"
    );

    for (line, says) in [
        (format!("{STDOUT} from line x\n"), "not a line number"),
        (format!("{STDOUT} from line --2\n"), "not a line number"),
        (format!("{STDOUT} from line\n"), "needs a value"),
        (
            format!("{STDOUT} from time yesterday\n"),
            "not an RFC 3339 time",
        ),
        (
            format!("{STDOUT} from time 2026-11-27\n"),
            "not an RFC 3339 time",
        ),
        (
            format!("{STDOUT} from page 2\n"),
            "expected `from byte`, `from line` or `from time`",
        ),
        (
            "stream default/lines/+/blob from line 1\n".to_string(),
            "binary and has no lines",
        ),
        (
            "stream default/lines/+/nope from line 1\n".to_string(),
            "not found",
        ),
    ] {
        let answer = ask(&tail, &line);
        assert!(
            answer.starts_with("error: ") && answer.ends_with('\n') && answer.lines().count() == 1,
            "{line:.60}: {answer:?}"
        );
        assert!(answer.contains(says), "{line:.60}: {answer:?}");
    }
    collector.stop();
}
